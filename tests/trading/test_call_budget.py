"""The call budget of an app key (trading.brokers.call_budget): real Redis, and the KIS simulator
enforcing KIS's per-app-key rate limit (EGW00201 beyond it) over real HTTP."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from trading.brokers import call_budget
from trading.brokers.base import RateLimited
from trading.brokers.call_budget import Priority
from trading.brokers.kis import KoreaInvestService
from watchlist.models import Watchlist
from watchlist.services import sync_and_record

WAIT = 60  # seconds: a bound for a shared machine, never an expectation


@pytest.fixture
def key_id(redis_client):
    return "test-key"


def queue_length(redis_client, key_id: str) -> int:
    return redis_client.zcard(f"kis:budget:{key_id}:queue")


def test_an_order_goes_before_every_read_queued_ahead_of_it(key_id, redis_client):
    granted: list[str] = []
    rate = 1.0  # one call a second: the waiters below are all queued long before the next slot
    call_budget.wait_for_turn(key_id, rate, Priority.BACKGROUND_READ)
    granted.append("first read")

    def take(name: str, priority: Priority) -> None:
        call_budget.wait_for_turn(key_id, rate, priority)
        granted.append(name)

    with ThreadPoolExecutor(4) as pool:
        reads = [pool.submit(take, f"read {n}", Priority.BACKGROUND_READ) for n in (1, 2)]
        while queue_length(redis_client, key_id) < 2:
            threading.Event().wait(0.005)
        user_read = pool.submit(take, "user read", Priority.USER_READ)
        while queue_length(redis_client, key_id) < 3:
            threading.Event().wait(0.005)
        order = pool.submit(take, "order", Priority.ORDER)
        for future in [*reads, user_read, order]:
            future.result(WAIT)
    assert granted[:3] == ["first read", "order", "user read"]
    assert sorted(granted[3:]) == ["read 1", "read 2"]


def test_a_waiter_that_stops_polling_does_not_hold_the_queue(key_id, redis_client, monkeypatch):
    monkeypatch.setattr(call_budget, "STALE_WAITER", 0.05)
    redis_client.zadd(f"kis:budget:{key_id}:queue", {"dead": 0})  # at the head, never polls again
    redis_client.hset(f"kis:budget:{key_id}:alive", "dead", 0)
    call_budget.wait_for_turn(key_id, 1000.0, Priority.BACKGROUND_READ)
    assert queue_length(redis_client, key_id) == 0


def test_a_turn_that_does_not_come_in_time_is_refused_and_leaves_the_queue(key_id, redis_client, monkeypatch):
    monkeypatch.setattr(call_budget, "MAX_WAIT", 0.0)
    call_budget.wait_for_turn(key_id, 0.1, Priority.ORDER)  # the next slot is 10 s away
    with pytest.raises(RateLimited):
        call_budget.wait_for_turn(key_id, 0.1, Priority.ORDER)
    assert queue_length(redis_client, key_id) == 0
    redis_client.delete(f"kis:budget:{key_id}:next")


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_trades_and_syncs_on_several_accounts_keeps_the_simulators_limit(
    simulator, user, make_account, settings, redis_client
):
    """Paper accounts at KIS's 2 calls a second, each with its own app key: orders and balance reads
    from many threads at once never draw an EGW00201, and the simulator counts every call."""
    settings.KIS_RATE_LIMIT_PAPER = 2
    simulator.set_limits(rate_limits={"paper": 2, "real": 20})
    accounts = [
        make_account(
            user,
            cano=str(50_200_000 + n),
            base_url=simulator.url,
            app_key=f"burst-key-{n}",
            app_secret=f"burst-secret-{n}",
        )
        for n in range(3)
    ]
    for account in accounts:
        Watchlist.objects.create(account=account)

    def trade(account):
        return KoreaInvestService(account).place_order("005930", "buy", 1)

    def sync(account):
        try:
            return sync_and_record(account)
        finally:
            connection.close()

    try:
        with ThreadPoolExecutor(12) as pool:
            futures = [
                pool.submit(call, account) for account in accounts for call in (trade, sync, trade, sync)
            ]
            for future in futures:
                future.result(WAIT)
        limits = simulator.limits()
    finally:
        simulator.set_limits(rate_limits=None)
    assert limits["egw00201"] == {}
    # Two orders and at least one read per key: beyond the burst of two the simulator lets through.
    assert sorted(limits["calls"]) == [f"burst-key-{n}" for n in range(3)]
    assert all(calls >= 3 for calls in limits["calls"].values())
