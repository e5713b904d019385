"""Concurrent syncs and trades on one account: real Redis locks, real PostgreSQL commits, threads."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from django.db import connection

from trading.brokers.memory import MemoryBroker
from watchlist.models import PendingTrade, Watchlist, WatchlistChange, WatchlistItem
from watchlist.services import WatchlistService

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db(transaction=True)
WAIT = 30  # seconds: generous bound for any wait on another thread


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks, groups and the Celery queue of this Redis db start empty."""


class StaleReadBroker(MemoryBroker):
    """Reads the balance, then holds the answer until released: a slow answer, stale on arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_reads = False
        self.read_taken = threading.Event()
        self.release = threading.Event()

    def get_acct_balance(self) -> pd.DataFrame:
        frame = super().get_acct_balance()
        if self.hold_reads:
            self.read_taken.set()
            assert self.release.wait(WAIT)
        return frame


def in_threads(*calls):
    """Run the calls at the same moment, each on its own thread and database connection."""
    start = threading.Barrier(len(calls))

    def run(call):
        try:
            start.wait(WAIT)
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result(WAIT) for future in [pool.submit(run, call) for call in calls]]


def items(account) -> dict[str, tuple[int, bool]]:
    return {
        i.stock_code: (i.quantity, i.pending)
        for i in WatchlistItem.objects.filter(watchlist__account=account)
    }


def test_two_syncs_started_together_make_one_change_and_one_version(account):
    broker = MemoryBroker()
    broker.set_holdings({"005930": 10, "000660": 3})
    with GroupListener(account.id) as listener:
        results = in_threads(*[WatchlistService(account, broker).sync_with_account] * 2)
        messages = listener.changes()
    assert sorted(bool(result.changes) for result in results) == [False, True]
    assert Watchlist.objects.get(account=account).version == 1
    assert WatchlistChange.objects.filter(watchlist__account=account).count() == 1
    assert [message["version"] for message in messages] == [1]


def test_a_sync_that_finds_another_running_does_nothing(account):
    broker = StaleReadBroker()
    broker.set_holdings({"005930": 10})
    broker.hold_reads = True
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            lambda: (WatchlistService(account, broker).sync_with_account(), connection.close())[0]
        )
        assert broker.read_taken.wait(WAIT)
        second = WatchlistService(account, broker).sync_with_account()
        broker.release.set()
        assert first.result(WAIT).changes.added == ("005930",)
    assert second.skipped and not second.changes
    assert broker.balance_calls == 1


def race_a_trade_against_a_stale_sync(account, broker, code, side, qty):
    """A sync reads the balance; a trade is placed and applied; then the sync applies its stale read."""
    broker.hold_reads = True
    with ThreadPoolExecutor(1) as pool:
        stale_sync = pool.submit(
            lambda: (WatchlistService(account, broker).sync_with_account(), connection.close())[0]
        )
        assert broker.read_taken.wait(WAIT)
        order_id = broker.place_order(code, side, qty)
        WatchlistService(account, broker).handle_trade_event(code, side, qty, order_id=order_id)
        broker.release.set()
        result = stale_sync.result(WAIT)
    broker.hold_reads = False
    return result


def test_a_stale_sync_committing_after_a_buy_keeps_the_bought_item(account):
    broker = StaleReadBroker()
    broker.set_holdings({"000660": 3})
    WatchlistService(account, broker).sync_with_account()

    with GroupListener(account.id) as listener:
        stale = race_a_trade_against_a_stale_sync(account, broker, "005930", "buy", 10)
        messages = listener.changes()
    assert not stale.changes
    assert items(account) == {"000660": (3, False), "005930": (10, True)}
    assert [m["version"] for m in messages] == [2]
    assert PendingTrade.objects.get().resolved_at is None

    confirmed = WatchlistService(account, broker).sync_with_account()  # a fresh read confirms the buy
    assert confirmed.changes.updated == ("005930",)
    assert items(account) == {"000660": (3, False), "005930": (10, False)}


def test_a_stale_sync_does_not_bring_back_an_item_sold_out_during_its_read(account):
    broker = StaleReadBroker()
    broker.set_holdings({"005930": 10, "000660": 3})
    WatchlistService(account, broker).sync_with_account()

    stale = race_a_trade_against_a_stale_sync(account, broker, "005930", "sell", 10)
    assert not stale.changes
    assert items(account) == {"000660": (3, False)}

    later = WatchlistService(account, broker).sync_with_account()
    assert not later.changes and items(account) == {"000660": (3, False)}
    assert PendingTrade.objects.get().resolution == PendingTrade.Resolution.CONFIRMED


def test_concurrent_trades_and_syncs_give_gapless_versions_broadcast_in_order(account):
    broker = MemoryBroker()
    broker.set_holdings({"005930": 100})
    WatchlistService(account, broker).sync_with_account()

    def buy_and_apply(code):
        def call():
            service = WatchlistService(account, broker)
            intent = service.register_order(code, "buy", 1)  # as the trade API does, before the order leaves
            order_id = broker.place_order(code, "buy", 1)
            return service.handle_trade_event(code, "buy", 1, order_id=order_id, intent=intent)

        return call

    codes = ["005930", "000660", "035420", "035720", "005380", "000660", "005930", "035420"]
    with GroupListener(account.id) as listener:
        in_threads(
            *[buy_and_apply(code) for code in codes],
            *[WatchlistService(account, broker).sync_with_account] * 4,
        )
        messages = listener.changes()

    final_version = Watchlist.objects.get(account=account).version
    logged = list(
        WatchlistChange.objects.filter(watchlist__account=account)
        .order_by("version")
        .values_list("version", flat=True)
    )
    assert logged == list(range(1, final_version + 1))
    assert [m["version"] for m in messages] == list(range(2, final_version + 1))
    WatchlistService(account, broker).sync_with_account()
    assert {code: quantity for code, (quantity, _) in items(account).items()} == {
        code: position.quantity for code, position in broker.positions.items()
    }
