"""The account's totals from the KIS balance (output2) through the sync to the snapshot, the page and the
change message; the admin's sync-health overview."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.fixtures.simulator import DEMO_CANO
from trading.brokers.base import BrokerUnavailable
from trading.brokers.kis import KoreaInvestService, totals_of
from trading.brokers.memory import MemoryBroker
from watchlist.models import Watchlist
from watchlist.selectors import watchlist_snapshot
from watchlist.services import WatchlistService, sync_and_record

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks and the Celery queue of this Redis db start empty."""


def test_the_totals_of_a_balance_answer():
    summary = {
        "tot_evlu_amt": "10,500,000",
        "pchs_amt_smtl_amt": "2000000",
        "evlu_amt_smtl_amt": "2500000",
        "evlu_pfls_smtl_amt": "500000",
        "dnca_tot_amt": "8000000",
        "nass_amt": "10500000",
    }
    assert totals_of({"output2": [summary]}) == {
        "total_eval": 10_500_000,
        "purchase": 2_000_000,
        "eval_amount": 2_500_000,
        "pnl": 500_000,
        "deposit": 8_000_000,
    }
    assert totals_of({"output2": [{**summary, "dnca_tot_amt": "n/a"}]}) is None
    assert totals_of({"output2": []}) is None and totals_of({}) is None


def test_a_sync_keeps_the_brokers_totals_and_the_snapshot_shows_them(sim_account, simulator):
    sync_and_record(sim_account)
    sim = simulator.account(DEMO_CANO)
    frame = KoreaInvestService(sim_account).get_acct_balance()
    expected = frame.attrs["totals"]
    assert expected["deposit"] == sim["cash"] and expected["total_eval"] > expected["deposit"]

    totals = watchlist_snapshot(sim_account)["totals"]
    assert {key: totals[key] for key in expected} == expected
    assert totals["pnl_rate"] == round(expected["pnl"] * 100 / expected["purchase"], 2)

    page = Client()
    page.force_login(sim_account.owner)
    html = page.get("/").content.decode()
    assert 'id="account-totals"' in html and f"{expected['total_eval']:,}원" in html
    assert "총평가금액" in html and "예수금" in html
    english = page.get("/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Total evaluation" in english and "Deposit" in english and "총평가금액" not in english


def test_a_broker_without_totals_leaves_the_last_ones_and_the_change_carries_them(
    account, monkeypatch, django_capture_on_commit_callbacks
):
    from watchlist import events

    Watchlist.objects.create(
        account=account, totals={"total_eval": 5, "purchase": 0, "eval_amount": 0, "pnl": 0, "deposit": 5}
    )
    broker = MemoryBroker()  # its balance has no totals
    broker.set_holdings({"005930": 3})
    sent = []
    monkeypatch.setattr(events, "send_watchlist_changed", lambda account_id, message: sent.append(message))
    with django_capture_on_commit_callbacks(execute=True):
        WatchlistService(account, broker).sync_with_account()

    assert watchlist_snapshot(account)["totals"]["total_eval"] == 5
    assert [message["totals"] for message in sent] == [
        {"total_eval": 5, "purchase": 0, "eval_amount": 0, "pnl": 0, "deposit": 5, "pnl_rate": 0.0}
    ]


def test_the_admin_shows_the_sync_health_overview(account, make_account, user):
    healthy = make_account(user, cano="50000002")
    make_account(user, cano="50000003")  # never synced
    sync_and_record(healthy, MemoryBroker())
    with pytest.raises(BrokerUnavailable):
        sync_and_record(account, MemoryBroker(fail_with=BrokerUnavailable("KIS is down")))
    boss = Client()
    boss.force_login(get_user_model().objects.create_superuser("boss", password="boss-pass-123"))

    html = boss.get("/admin/watchlist/syncstate/").content.decode()

    assert 'id="sync-health"' in html
    assert "ok 1 · failing 1 · never synced 1" in html
    assert html.count('class="failing-account"') == 1 and "unreachable: KIS is down" in html
