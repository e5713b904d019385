"""The sync and trade events against the KIS simulator over real HTTP, through the real KIS adapter."""

import contextlib
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from tests.fixtures.simulator import DEMO_CANO
from trading.brokers import broker_for
from trading.brokers.base import BrokerUnavailable
from watchlist.models import SyncState, Watchlist, WatchlistItem
from watchlist.selectors import watchlist_snapshot
from watchlist.services import WatchlistService, sync_and_record

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks, groups, tokens and the Celery queue of this Redis db start empty."""


def hold(simulator, **quantities: int) -> None:
    simulator.set_holdings(
        DEMO_CANO,
        [
            {"stock_code": code.removeprefix("c"), "quantity": quantity, "avg_price": 50_000}
            for code, quantity in quantities.items()
        ],
    )


def items(account) -> dict[str, tuple[int, bool]]:
    return {
        i.stock_code: (i.quantity, i.pending)
        for i in WatchlistItem.objects.filter(watchlist__account=account)
    }


def sync(run, account, *, after=timedelta(0)):
    clock = lambda: timezone.now() + after
    return run(WatchlistService(account, clock=clock).sync_with_account)


def test_a_new_holding_is_added(simulator, sim_account, run):
    hold(simulator, c005930=10)
    sync(run, sim_account)
    hold(simulator, c005930=10, c000660=5)
    with GroupListener(sim_account.id) as listener:
        result = sync(run, sim_account)
        [message] = listener.changes()
    assert result.changes.as_dict() == {"added": ["000660"], "removed": [], "updated": []}
    assert message["version"] == 2 and [row["stock_code"] for row in message["full_list"]] == [
        "000660",
        "005930",
    ]
    assert items(sim_account) == {"005930": (10, False), "000660": (5, False)}
    assert WatchlistItem.objects.get(stock_code="000660").name  # the account's name for it


def test_the_seeded_account_is_followed_in_full(simulator, sim_account, run):
    result = sync(run, sim_account)
    expected = {
        h["stock_code"]: h["quantity"] for h in simulator.account(DEMO_CANO)["holdings"] if h["quantity"] > 0
    }
    assert set(result.changes.added) == set(expected)
    assert {code: quantity for code, (quantity, _) in items(sim_account).items()} == expected


def test_a_holding_sold_out_is_removed(simulator, sim_account, run):
    hold(simulator, c005930=10, c000660=5)
    sync(run, sim_account)
    hold(simulator, c005930=10)
    with GroupListener(sim_account.id) as listener:
        result = sync(run, sim_account)
        [message] = listener.changes()
    assert result.changes.as_dict() == {"added": [], "removed": ["000660"], "updated": []}
    assert message["changes"]["removed"] == ["000660"]
    assert items(sim_account) == {"005930": (10, False)}


def test_a_partial_sale_updates_the_quantity(simulator, sim_account, run):
    hold(simulator, c005930=10)
    sync(run, sim_account)
    hold(simulator, c005930=4)
    with GroupListener(sim_account.id) as listener:
        result = sync(run, sim_account)
        [message] = listener.changes()
    assert result.changes.as_dict() == {"added": [], "removed": [], "updated": ["005930"]}
    assert message["full_list"][0]["quantity"] == 4


def test_an_unchanged_account_sends_nothing_and_keeps_its_version(simulator, sim_account, run):
    hold(simulator, c005930=10, c000660=5)
    first = sync(run, sim_account)
    with GroupListener(sim_account.id) as listener:
        again = sync(run, sim_account)  # prices may have moved meanwhile: still no change
        assert listener.messages() == []
    assert not again.changes and again.version == first.version == 1
    assert Watchlist.objects.get(account=sim_account).version == 1


def test_broker_faults_back_off_30_60_120_120_keep_the_watchlist_and_a_success_returns_to_30(
    simulator, sim_account, django_capture_on_commit_callbacks
):
    def attempt() -> float:
        with django_capture_on_commit_callbacks(execute=True), contextlib.suppress(BrokerUnavailable):
            sync_and_record(sim_account)
        state = SyncState.objects.get(account=sim_account)
        return (state.next_attempt_at - state.last_attempt_at).total_seconds()

    hold(simulator, c005930=10)
    assert attempt() == settings.WATCHLIST_SYNC_INTERVAL == 30
    before = watchlist_snapshot(sim_account)

    simulator.inject_fault("http_500", count=1000)  # every call fails, the adapter's own retries too
    hold(simulator, c005930=4, c000660=5)
    with GroupListener(sim_account.id) as listener:
        intervals = [attempt() for _ in range(4)]
        statuses = listener.messages("sync.status")
        assert listener.changes() == []
    assert intervals == [30, 60, 120, 120]
    assert [s["sync"]["status"] for s in statuses] == ["failing"] * 4
    after = watchlist_snapshot(sim_account)
    assert (after["version"], after["full_list"]) == (before["version"], before["full_list"])

    simulator.reset()  # clears the faults (and the holdings: set them again)
    hold(simulator, c005930=4, c000660=5)
    with GroupListener(sim_account.id) as listener:
        assert attempt() == 30
        assert [s["sync"]["status"] for s in listener.messages("sync.status")] == ["ok"]
        [changed] = listener.changes()
    assert changed["changes"] == {"added": ["000660"], "removed": [], "updated": ["005930"]}


def trade(run, account, code, side, qty, price=None):
    broker = broker_for(account)
    order_id = broker.place_order(code, side, qty, price)
    return run(
        WatchlistService(account, broker).handle_trade_event, code, side, qty, order_id=order_id, price=price
    )


def test_a_market_buy_is_added_pending_then_confirmed(simulator, sim_account, run):
    hold(simulator, c005930=10)
    sync(run, sim_account)
    trade(run, sim_account, "000660", "buy", 3)
    assert items(sim_account) == {"005930": (10, False), "000660": (3, True)}
    result = sync(run, sim_account)
    assert result.changes.updated == ("000660",)
    assert items(sim_account) == {"005930": (10, False), "000660": (3, False)}


def test_a_full_and_a_partial_sell_on_the_simulator(simulator, sim_account, run):
    hold(simulator, c005930=10, c000660=5)
    sync(run, sim_account)
    trade(run, sim_account, "000660", "sell", 5)
    trade(run, sim_account, "005930", "sell", 4)
    assert items(sim_account) == {"005930": (6, True)}
    sync(run, sim_account)
    assert items(sim_account) == {"005930": (6, False)}


def test_a_limit_buy_that_does_not_fill_is_reverted_after_the_grace_period(simulator, sim_account, run):
    hold(simulator, c005930=10)
    simulator.set_prices_moving(False)
    simulator.set_price("035420", 200_000)
    sync(run, sim_account)
    low = simulator.price("035420")["lower_limit"]
    trade(run, sim_account, "035420", "buy", 2, price=low)
    assert items(sim_account)["035420"] == (2, True)

    sync(run, sim_account, after=timedelta(seconds=30))
    assert items(sim_account)["035420"] == (2, True)
    with GroupListener(sim_account.id) as listener:
        sync(run, sim_account, after=timedelta(seconds=settings.WATCHLIST_PENDING_GRACE))
        [message] = listener.changes()
    assert message["changes"]["removed"] == ["035420"]
    assert items(sim_account) == {"005930": (10, False)}
