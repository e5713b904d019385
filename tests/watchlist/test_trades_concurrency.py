"""Trades and syncs of one account at the same time.

The hazard: a sync reads the balance after the broker filled an order but writes before that
trade's optimistic change exists; the change then lands on a list that already holds the fill
and counts it twice. No lock keeps the sync out (a trade never waits for a read): the trade
registers its order before it leaves, and a read that overlaps it leaves its code alone.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from tests.fixtures.simulator import DEMO_CANO
from tests.fixtures.trade import token_client
from trading.brokers.base import BrokerError
from watchlist.models import Watchlist, WatchlistChange, WatchlistItem
from watchlist.services import sync_and_record

pytestmark = pytest.mark.django_db(transaction=True)

CODES = ["005930", "000660", "035420"]
TRADES = 20
WAIT = 120  # seconds: a bound for a shared, noisy machine, never an expectation
SYNC_PAUSE = 0.02


def buy_five_005930(user):
    """A buy through the API, from a thread of its own (which closes its database connection)."""
    try:
        return token_client(user).post(
            "/execute-buy/005930", data=json.dumps({"qty": 5}), content_type="application/json"
        )
    finally:
        connection.close()


def test_a_sync_during_a_trade_cannot_count_its_fill_twice(user, account, memory_broker, sync_requests):
    memory_broker.set_holdings({"005930": 10})
    sync_and_record(account, memory_broker)
    filled, sync_attempted = threading.Event(), threading.Event()
    place_order = memory_broker.place_order

    def place_order_then_stall(*args, **kwargs):
        order_no = place_order(*args, **kwargs)  # the broker has filled it: the balance shows 15
        filled.set()
        assert sync_attempted.wait(timeout=WAIT)
        return order_no

    memory_broker.place_order = place_order_then_stall

    with ThreadPoolExecutor(1) as pool:
        trade = pool.submit(buy_five_005930, user)
        assert filled.wait(timeout=WAIT)
        during = sync_and_record(account, memory_broker)
        sync_attempted.set()
        assert trade.result(timeout=WAIT).status_code == 200

    assert not during.skipped and not during.changes  # it read, saw the fill and left the code alone
    sync_and_record(account, memory_broker)
    assert {i.stock_code: (i.quantity, i.pending) for i in WatchlistItem.objects.all()} == {
        "005930": (15, False)
    }


def test_with_a_tiny_lock_timeout_and_a_slow_broker_a_fill_is_never_counted_twice(
    user, account, memory_broker, sync_requests, settings
):
    """Every section outlives the locks' timeout: the trade's order with the broker, the sync's read,
    and the sync's write (slow on purpose); renewal keeps each lock with its live holder."""
    settings.WATCHLIST_LOCK_TIMEOUT = 1
    memory_broker.set_holdings({"005930": 10})
    sync_and_record(account, memory_broker)
    place_order, read = memory_broker.place_order, memory_broker.get_acct_balance
    filled = threading.Event()

    def slow_order(*args, **kwargs):
        order_no = place_order(*args, **kwargs)
        filled.set()
        time.sleep(2.5)
        return order_no

    def slow_read():
        frame = read()
        time.sleep(2.5)
        return frame

    memory_broker.place_order, memory_broker.get_acct_balance = slow_order, slow_read

    with ThreadPoolExecutor(1) as pool:
        trade = pool.submit(buy_five_005930, user)
        assert filled.wait(timeout=WAIT)
        sync_and_record(account, memory_broker)
        assert trade.result(timeout=WAIT).status_code == 200
    memory_broker.get_acct_balance = read
    assert {i.stock_code: i.quantity for i in WatchlistItem.objects.all()} == {"005930": 15}
    sync_and_record(account, memory_broker)
    assert {i.stock_code: (i.quantity, i.pending) for i in WatchlistItem.objects.all()} == {
        "005930": (15, False)
    }


def test_an_order_given_up_by_a_read_is_not_applied_late(
    user, account, memory_broker, sync_requests, settings
):
    """Past WATCHLIST_ORDER_DEADLINE a read settles the code of a registered order (its trade may have
    died); the trade, alive after all, finds its registration given up and only asks for a sync."""
    settings.WATCHLIST_ORDER_DEADLINE = 0
    memory_broker.set_holdings({"005930": 10})
    sync_and_record(account, memory_broker)
    place_order = memory_broker.place_order
    filled, synced = threading.Event(), threading.Event()

    def order_then_stall(*args, **kwargs):
        order_no = place_order(*args, **kwargs)
        filled.set()
        assert synced.wait(WAIT)
        return order_no

    memory_broker.place_order = order_then_stall

    with ThreadPoolExecutor(1) as pool:
        trade = pool.submit(buy_five_005930, user)
        assert filled.wait(timeout=WAIT)
        sync_and_record(account, memory_broker)  # the read counts the fill: 15
        synced.set()
        answer = trade.result(timeout=WAIT)
    assert answer.status_code == 200 and answer.json().get("watchlist_version") is None
    assert {i.stock_code: i.quantity for i in WatchlistItem.objects.all()} == {"005930": 15}


def test_20_concurrent_trades_and_syncs_end_in_the_accounts_state_with_gapless_versions(
    user, simulator, sim_account, sync_requests
):
    """Afterwards one sync brings the watchlist to exactly the simulator's holdings, and the change log
    holds every version from 1 to the current one exactly once."""
    simulator.set_prices_moving(False)
    simulator.set_holdings(
        DEMO_CANO, [{"stock_code": code, "quantity": 20, "avg_price": 50_000} for code in CODES]
    )
    sync_and_record(sim_account)
    rng = random.Random(5)
    trades = [(rng.choice(["buy", "sell"]), rng.choice(CODES), rng.randint(1, 8)) for _ in range(TRADES)]
    trading_done = threading.Event()
    sync_outcomes: list[str] = []

    def trade(side: str, code: str, qty: int):
        try:
            return token_client(user).post(
                f"/execute-{side}/{code}", data=json.dumps({"qty": qty}), content_type="application/json"
            )
        finally:
            connection.close()

    def keep_syncing():
        """Sync again and again (a pause between attempts, as the dispatcher's beat has) until the trades end."""
        try:
            while not trading_done.wait(SYNC_PAUSE):
                try:
                    sync_outcomes.append("skipped" if sync_and_record(sim_account).skipped else "synced")
                except BrokerError as exc:
                    sync_outcomes.append(f"failed: {exc}")
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as syncers:
        sync_futures = [syncers.submit(keep_syncing) for _ in range(2)]
        with ThreadPoolExecutor(8) as traders:
            responses = [f.result(timeout=WAIT) for f in [traders.submit(trade, *t) for t in trades]]
        trading_done.set()
        for future in sync_futures:
            future.result(timeout=WAIT)

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409}, [r.json() for r in responses]
    assert statuses.count(200) == len(simulator.orders(DEMO_CANO)) >= TRADES // 2
    assert sync_outcomes and not [o for o in sync_outcomes if o.startswith("failed")]

    sync_and_record(sim_account)

    holdings = {h["stock_code"]: h["quantity"] for h in simulator.account(DEMO_CANO)["holdings"]}
    watchlist = {
        i.stock_code: (i.quantity, i.pending)
        for i in WatchlistItem.objects.filter(watchlist__account=sim_account)
    }
    assert watchlist == {code: (quantity, False) for code, quantity in holdings.items()}
    version = Watchlist.objects.get(account=sim_account).version
    versions = list(
        WatchlistChange.objects.filter(watchlist__account=sim_account)
        .order_by("version")
        .values_list("version", flat=True)
    )
    assert versions == list(range(1, version + 1))
    reported = [r.json()["watchlist_version"] for r in responses if r.status_code == 200]
    assert len(set(reported)) == len(reported) and max(reported) <= version
