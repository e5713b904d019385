"""The live price feed: the real simulator feed over WebSocket, the real PostgreSQL, the real
channels-redis layer (a test listens on an account's group as a consumer does) and, for fills, a real
Celery worker. The feed runs on its own event loop in a thread, as `run_price_feed` runs it."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings

from tests.fixtures.servers import server_env
from tests.fixtures.simulator import DEMO_CANO
from tests.trading.test_realtime import feed_control, feed_view, registrations_of
from trading.brokers.realtime import FILL_TR_PAPER, PRICE_TR
from watchlist.models import SyncState, Watchlist, WatchlistItem
from watchlist.prices import PriceFeed, assign_codes, store_prices
from watchlist.trades import place_trade

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db(transaction=True)

CONTRACT_KEYS = {"type", "stock_code", "price", "change", "change_rate", "volume", "timestamp"}


class FeedThread:
    """Runs a PriceFeed on its own event loop in a thread, and stops it cleanly."""

    def __init__(self, feed: PriceFeed) -> None:
        self.feed = feed
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> PriceFeed:
        self.thread.start()
        self.stopped = asyncio.run_coroutine_threadsafe(self._run(), self.loop)
        return self.feed

    def __exit__(self, *exc_info) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.stopped.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _run(self) -> None:
        self.stop = asyncio.Event()
        task = asyncio.create_task(self.feed.run())
        await self.stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def price_feed(redis_client):
    with FeedThread(PriceFeed()) as feed:
        yield feed


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        time.sleep(interval)
    return result


def next_price(listener: GroupListener, code: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while (message := listener.wait_for("price.update", max(0.1, deadline - time.monotonic())))[
        "stock_code"
    ] != code:
        pass
    return message


def prices_of(listener: GroupListener, code: str) -> list[dict]:
    return [m for m in listener.messages("price.update") if m["stock_code"] == code]


def watch(account, code: str, quantity: int = 10, avg_price: float = 70_000.0) -> WatchlistItem:
    watchlist, _ = Watchlist.objects.get_or_create(account=account)
    return WatchlistItem.objects.create(
        watchlist=watchlist,
        stock_code=code,
        name=code,
        quantity=quantity,
        avg_price=avg_price,
        current_price=int(avg_price),
        eval_amount=int(quantity * avg_price),
        pnl=0,
        pnl_rate=0.0,
    )


def unwatch(account, code: str) -> None:
    WatchlistItem.objects.filter(watchlist__account=account, stock_code=code).delete()


@pytest.fixture
def sim_user_account(user, make_account, simulator):
    return make_account(
        user, cano=DEMO_CANO, base_url=simulator.url, app_key="feed-key-a", hts_id=f"sim{DEMO_CANO}"
    )


# --- pure parts -----------------------------------------------------------------------------------


def test_codes_stay_on_their_session_and_new_ones_go_where_there_is_most_room():
    assigned, unplaced = assign_codes(
        {"a": 3, "b": 2}, ["000001", "000002", "000003"], {"b": {"000003", "000009"}}
    )
    assert assigned == {"a": {"000001", "000002"}, "b": {"000003"}} and unplaced == set()

    codes = [f"{i:06d}" for i in range(7)]
    assigned, unplaced = assign_codes({"a": 3, "b": 2}, codes, {})
    assert sorted(len(c) for c in assigned.values()) == [2, 3] and unplaced == {"000005", "000006"}
    assert assign_codes({}, ["000001"], {}) == ({}, {"000001"})


def test_stored_prices_revalue_items_from_their_own_quantity_and_average(user, other_user, make_account):
    mine = make_account(user, cano="50000001")
    theirs = make_account(other_user, cano="50000002")
    item = watch(mine, "005930", quantity=10, avg_price=71_250.5)
    other = watch(theirs, "005930", quantity=10, avg_price=71_250.5)
    empty = watch(mine, "000660", quantity=0, avg_price=0.0)

    assert store_prices([mine.id], {"005930": 72_100, "000660": 180_000}) == 2

    item.refresh_from_db()
    # The contract's own example item.
    assert (item.current_price, item.eval_amount, item.pnl, item.pnl_rate) == (72_100, 721_000, 8_495, 1.19)
    empty.refresh_from_db()
    assert (empty.current_price, empty.eval_amount, empty.pnl_rate) == (180_000, 0, 0.0)
    other.refresh_from_db()
    assert other.current_price == 71_250
    assert Watchlist.objects.get(account=mine).version == 0


# --- the feed against the simulator ---------------------------------------------------------------


def test_adding_a_code_streams_it_to_the_account_and_removing_it_stops_it(
    simulator, sim_user_account, price_feed
):
    account = sim_user_account
    with GroupListener(account.id) as listener:
        watch(account, "005930")
        watch(account, "000660")
        message = next_price(listener, "005930")
        assert set(message) == CONTRACT_KEYS and message["type"] == "price_update"
        assert isinstance(message["price"], int) and message["price"] > 0
        assert isinstance(message["volume"], int) and isinstance(message["timestamp"], int)

        unwatch(account, "005930")
        wait_until(lambda: registrations_of(simulator, PRICE_TR, "005930") == 0)
        listener.messages()  # everything sent so far
        seen = len(listener.received)
        for _ in range(2):  # the other code keeps streaming meanwhile
            next_price(listener, "000660")
        assert not [e for e in listener.received[seen:] if e["message"].get("stock_code") == "005930"]


def test_a_code_watched_by_two_accounts_reaches_both_and_is_registered_once(
    simulator, sim_user_account, other_user, make_account, price_feed
):
    mine = sim_user_account
    theirs = make_account(
        other_user, cano="50123457", base_url=simulator.url, app_key="feed-key-b", hts_id="sim50123457"
    )
    with GroupListener(mine.id) as my_listener, GroupListener(theirs.id) as their_listener:
        watch(mine, "000660")
        watch(theirs, "000660")
        watch(theirs, "035720")
        assert (
            next_price(my_listener, "000660")["stock_code"]
            == next_price(their_listener, "000660")["stock_code"]
        )
        next_price(their_listener, "035720")

        assert registrations_of(simulator, PRICE_TR, "000660") == 1
        assert not prices_of(my_listener, "035720")
    # One session per app key, each with its own account's fill notices.
    fill_sessions = [
        [tuple(r) for r in session["registrations"] if r[0] == FILL_TR_PAPER]
        for session in feed_view(simulator)["sessions"]
    ]
    assert sorted(s for s in fill_sessions if s) == [
        [(FILL_TR_PAPER, "sim50123456")],
        [(FILL_TR_PAPER, "sim50123457")],
    ]


def test_1000_trades_in_a_second_reach_a_client_as_a_few_messages_ending_with_the_last_price(
    simulator, sim_user_account, price_feed
):
    simulator.set_prices_moving(False)
    watch(sim_user_account, "035420")
    wait_until(lambda: registrations_of(simulator, PRICE_TR, "035420") == 1)

    with GroupListener(sim_user_account.id) as listener:
        started = time.monotonic()
        burst = feed_control(simulator, "/burst", stock_code="035420", trades=1000, seconds=1.0)
        # The accumulated volume grows with every trade: only the last trade's message carries this one.
        while next_price(listener, "035420")["volume"] != burst["volume"]:
            pass
        elapsed = time.monotonic() - started
        messages = prices_of(listener, "035420")

    assert messages[-1]["price"] == burst["last_price"]
    # At most one message per flush while the burst lasted, whatever the machine's speed.
    assert 1 <= len(messages) <= math.ceil(elapsed / price_feed.flush_interval) + 2
    assert len(messages) < 1000 / 20


def test_prices_refresh_the_stored_items_without_a_version_and_are_sent_again_when_still(
    simulator, sim_user_account, price_feed
):
    simulator.set_prices_moving(False)
    item = watch(sim_user_account, "005380", quantity=10, avg_price=240_000.0)
    wait_until(lambda: registrations_of(simulator, PRICE_TR, "005380") == 1)

    with GroupListener(sim_user_account.id) as listener:
        simulator.set_price("005380", 250_000)
        first = next_price(listener, "005380")
        again = next_price(listener, "005380", timeout=price_feed.resend_interval + 10)  # no trade since
        changes = listener.changes()

    assert first["price"] == again["price"] == 250_000
    assert again["timestamp"] == first["timestamp"]  # the time of the trade, not of the message
    item.refresh_from_db()
    assert (item.current_price, item.eval_amount, item.pnl, item.pnl_rate) == (
        250_000,
        2_500_000,
        100_000,
        4.17,
    )
    assert Watchlist.objects.get(account=sim_user_account).version == 0 and changes == []


def test_codes_beyond_one_session_are_logged_and_another_app_key_makes_room(
    simulator, sim_user_account, other_user, make_account, price_feed, caplog
):
    codes = [f"9{i:05d}" for i in range(45)]
    for code in codes:
        watch(sim_user_account, code)
    wait_until(lambda: len(price_feed.unstreamed) == 5)
    assert any(len(s["registrations"]) == 41 for s in feed_view(simulator)["sessions"])
    assert "5 watched codes are not streamed" in caplog.text

    make_account(other_user, cano="50123458", base_url=simulator.url, app_key="feed-key-c")  # no HTS id
    wait_until(lambda: not price_feed.unstreamed)
    wait_until(lambda: all(registrations_of(simulator, PRICE_TR, code) == 1 for code in codes))
    assert "has no HTS id" in caplog.text
    for secret in ("feed-key-a", "feed-key-c", "secret"):
        assert secret not in caplog.text


# --- fills ---------------------------------------------------------------------------------------


def pending(account, code: str) -> bool | None:
    item = WatchlistItem.objects.filter(watchlist__account=account, stock_code=code).first()
    return item.pending if item else None


def test_a_market_buy_fill_notice_is_decrypted_and_confirms_the_pending_item(
    simulator, sim_user_account, price_feed, celery_worker_process, caplog
):
    caplog.set_level(logging.INFO, logger="watchlist.prices")
    simulator.set_holdings(DEMO_CANO, [])
    wait_until(lambda: registrations_of(simulator, FILL_TR_PAPER, f"sim{DEMO_CANO}") == 1)

    result = place_trade(
        user=sim_user_account.owner, account_id=sim_user_account.id, stock_code="000660", side="buy", qty=2
    )
    assert result.success

    wait_until(
        lambda: (
            f"fill notice account={sim_user_account.id} order={result.order_id} buy 000660 x2" in caplog.text
        )
    )
    wait_until(lambda: pending(sim_user_account, "000660") is False)  # the periodic sync is 30 s away


def test_a_limit_buy_that_fills_later_is_confirmed_by_its_fill_notice(
    simulator, sim_user_account, price_feed, celery_worker_process
):
    simulator.set_prices_moving(False)
    simulator.set_holdings(DEMO_CANO, [])
    price = simulator.price("035720")["price"]
    limit = price - 500
    wait_until(lambda: registrations_of(simulator, FILL_TR_PAPER, f"sim{DEMO_CANO}") == 1)

    result = place_trade(
        user=sim_user_account.owner,
        account_id=sim_user_account.id,
        stock_code="035720",
        side="buy",
        qty=3,
        price=limit,
    )
    assert result.success and pending(sim_user_account, "035720") is True
    # The trade's own reconciling sync runs and finds nothing filled yet.
    wait_until(
        lambda: SyncState.objects.filter(account=sim_user_account, last_success_at__isnull=False).exists()
    )
    assert pending(sim_user_account, "035720") is True

    simulator.set_price("035720", limit)  # the market comes down to the order: it fills now
    wait_until(lambda: pending(sim_user_account, "035720") is False)
    assert WatchlistItem.objects.get(watchlist__account=sim_user_account, stock_code="035720").quantity == 3


# --- the command ---------------------------------------------------------------------------------


def test_run_price_feed_streams_watched_prices_and_stops_on_sigterm(
    simulator, sim_user_account, redis_client, tmp_path
):
    watch(sim_user_account, "005930")
    log_path = tmp_path / "price-feed.log"
    with GroupListener(sim_user_account.id) as listener, log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_price_feed"],
            cwd=settings.BASE_DIR,
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert next_price(listener, "005930", timeout=60)["price"] > 0
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(30)
    assert returncode == 0, log_path.read_text()
    assert "feed-key-a" not in log_path.read_text()
