"""Trades through the HTTP API against the KIS simulator over real HTTP, with the real KIS adapter.

The reconciling sync is run directly (`sync_with_account`) instead of by a Celery worker; the
`sync_requests` fixture records that the API asked for it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.fixtures.simulator import DEMO_CANO
from trading.models import Order
from watchlist.models import Watchlist, WatchlistItem
from watchlist.services import WatchlistService, sync_and_record

pytestmark = pytest.mark.django_db


def post(client, path, body, **extra):
    return client.post(path, data=json.dumps(body), content_type="application/json", **extra)


def items(account) -> dict[str, tuple[int, bool]]:
    return {
        i.stock_code: (i.quantity, i.pending)
        for i in WatchlistItem.objects.filter(watchlist__account=account)
    }


def version(account) -> int:
    return Watchlist.objects.get_or_create(account=account)[0].version


def simulator_holdings(simulator) -> dict[str, int]:
    holdings = simulator.account(DEMO_CANO)["holdings"]
    return {h["stock_code"]: h["quantity"] for h in holdings if h["quantity"] > 0}


@pytest.fixture
def holding(simulator, sim_account):
    """The account holds 10 x 005930, and the watchlist has synced with it."""
    simulator.set_holdings(DEMO_CANO, [{"stock_code": "005930", "quantity": 10, "avg_price": 70_000}])
    sync_and_record(sim_account)
    assert items(sim_account) == {"005930": (10, False)}
    return sim_account


def test_new_buy_is_added_pending_then_confirmed_by_the_sync(api, simulator, holding, sync_requests):
    sim_account = holding
    response = post(api, "/execute-buy/035420", {"qty": 3})

    assert response.status_code == 200, response.content
    body = response.json()
    [order] = simulator.orders(DEMO_CANO)
    assert (order["order_no"], order["stock_code"], order["side"], order["qty"]) == (
        body["order_id"],
        "035420",
        "buy",
        3,
    )
    assert items(sim_account)["035420"] == (3, True)
    assert body["watchlist_version"] == version(sim_account)
    assert sync_requests == [sim_account.id]

    WatchlistService(sim_account).sync_with_account()
    assert items(sim_account)["035420"] == (3, False)


def test_full_sell_removes_the_item(api, simulator, holding, sync_requests):
    response = post(api, "/execute-sell/005930/", {"qty": 10, "account": holding.id})

    assert response.status_code == 200, response.content
    assert "005930" not in items(holding)
    WatchlistService(holding).sync_with_account()
    assert "005930" not in items(holding) and "005930" not in simulator_holdings(simulator)


def test_partial_sell_updates_the_quantity(api, simulator, holding, sync_requests):
    assert post(api, "/execute-sell/005930", {"qty": 4}).status_code == 200
    assert items(holding) == {"005930": (6, True)}
    WatchlistService(holding).sync_with_account()
    assert items(holding) == {"005930": (6, False)} and simulator_holdings(simulator) == {"005930": 6}


def test_a_limit_buy_that_does_not_fill_is_reverted_after_the_grace_period(
    api, simulator, holding, settings, sync_requests
):
    simulator.set_prices_moving(False)
    simulator.set_price("035720", 50_000)
    assert post(api, "/execute-buy/035720", {"qty": 2, "price": 45_000}).status_code == 200
    assert items(holding)["035720"] == (2, True)

    WatchlistService(holding).sync_with_account()
    assert items(holding)["035720"] == (2, True)  # within the grace period: kept

    later = timezone.now() + timedelta(seconds=settings.WATCHLIST_PENDING_GRACE + 1)
    WatchlistService(holding, clock=lambda: later).sync_with_account()
    assert items(holding) == {"005930": (10, False)}


def test_selling_more_than_held_is_409_and_never_reaches_the_simulator(api, simulator, holding):
    response = post(api, "/execute-sell/005930", {"qty": 11})
    assert response.status_code == 409
    assert simulator.orders(DEMO_CANO) == []


def test_the_simulators_orderable_quantity_refusal_is_409(api, simulator, sim_account):
    simulator.set_holdings(DEMO_CANO, [{"stock_code": "005930", "quantity": 2, "avg_price": 70_000}])
    response = post(api, "/execute-sell/005930", {"qty": 5})  # never synced: the broker decides
    assert response.status_code == 409 and response.json()["broker_code"] == "APBK0400"
    assert items(sim_account) == {}


def test_a_rejected_order_is_502_with_the_brokers_code_and_changes_nothing(
    api, simulator, holding, sync_requests
):
    simulator.set_market_open(False)
    before = version(holding)

    response = post(api, "/execute-buy/000660", {"qty": 1})

    assert response.status_code == 502
    body = response.json()
    assert body["success"] is False and body["broker_code"] == "40580000" and "장종료" in body["message"]
    assert items(holding) == {"005930": (10, False)} and version(holding) == before
    assert simulator.orders(DEMO_CANO) == [] and sync_requests == []


@pytest.mark.parametrize("mode", ["http_500", "rate_limit"])
def test_broker_faults_are_502_and_the_order_is_sent_once(api, simulator, holding, mode, sync_requests):
    simulator.inject_fault(mode, 1)  # the token is cached since the sync: the fault hits the order

    response = post(api, "/execute-buy/000660", {"qty": 1})

    assert response.status_code == 502
    assert response.json()["success"] is False
    # A 500 without KIS's code may follow the order's placement; KIS's EGW00201 is its gateway's refusal.
    assert response.json()["outcome"] == {"http_500": "state_unknown", "rate_limit": "unreachable"}[mode]
    assert sync_requests == ([holding.id] if mode == "http_500" else [])
    assert simulator.calls("order-cash") == 1 and simulator.orders(DEMO_CANO) == []
    assert items(holding) == {"005930": (10, False)}


def test_a_timeout_is_502_state_unknown_syncs_and_never_retries(
    api, simulator, holding, settings, sync_requests
):
    settings.KIS_TIMEOUT = 1
    simulator.inject_fault("timeout", 1, delay=3)

    response = post(api, "/execute-buy/000660", {"qty": 1})

    assert response.status_code == 502
    assert response.json()["outcome"] == "state_unknown" and "unknown" in response.json()["message"]
    assert sync_requests == [holding.id]
    assert Order.objects.get(stock_code="000660").status == "unknown"
    assert simulator.calls("order-cash") == 1 and len(simulator.orders(DEMO_CANO)) == 1  # it took effect
    WatchlistService(holding).sync_with_account()  # the requested sync finds it
    assert items(holding) == {"005930": (10, False), "000660": (1, False)}


def test_the_same_idempotency_key_twice_places_one_order(api, simulator, holding, sync_requests):
    first = post(api, "/execute-buy/005930", {"qty": 1}, HTTP_IDEMPOTENCY_KEY="order-42")
    second = post(api, "/execute-buy/005930", {"qty": 1}, HTTP_IDEMPOTENCY_KEY="order-42")
    third = post(api, "/execute-buy/005930", {"qty": 1}, HTTP_IDEMPOTENCY_KEY="order-43")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert third.json()["order_id"] != first.json()["order_id"]
    assert len(simulator.orders(DEMO_CANO)) == 2
    assert items(holding)["005930"] == (12, True)
