"""Idempotency-Key across concurrent requests: real PostgreSQL, committed transactions, real threads.

Each thread is its own HTTP client with its own database connection, as two server processes would be.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.utils import timezone

from tests.fixtures.simulator import DEMO_CANO
from tests.fixtures.trade import token_client
from trading import services
from trading.models import IdempotencyKey, Order

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds: generous bounds for a shared, noisy machine; never an expectation


def post_buy(client, key: str, qty: int = 1):
    return client.post(
        "/execute-buy/005930",
        data=json.dumps({"qty": qty}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def in_threads(*calls):
    """Run the calls at once, each on its own thread and database connection; their results in order."""
    start = threading.Barrier(len(calls))

    def run(call):
        try:
            start.wait(timeout=WAIT)
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result(timeout=WAIT * 2) for future in [pool.submit(run, call) for call in calls]]


def test_a_request_arriving_while_the_first_is_in_flight_waits_and_gets_its_answer(
    user, account, make_account, memory_broker, sync_requests, monkeypatch
):
    """The order call is held until the second request is seen waiting for the key, so the
    interleaving is the worst one, whatever the machine's speed. (The second names another of the
    user's accounts: requests on one account already take turns, see the next test.)"""
    second_account = make_account(user, cano="50999999")
    second_is_waiting = threading.Event()

    def poll_pause(seconds):
        second_is_waiting.set()
        time.sleep(seconds)

    monkeypatch.setattr(services, "time", SimpleNamespace(sleep=poll_pause))
    place_order = memory_broker.place_order

    def held_place_order(*args, **kwargs):
        if not second_is_waiting.wait(timeout=WAIT):
            raise RuntimeError("the second request never waited for the key")
        return place_order(*args, **kwargs)

    monkeypatch.setattr(memory_broker, "place_order", held_place_order)
    client = token_client(user)

    def buy(account_id):
        return client.post(
            "/execute-buy/005930",
            data=json.dumps({"qty": 1, "account": account_id}),
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY="same-moment",
        )

    first, second = in_threads(lambda: buy(account.id), lambda: buy(second_account.id))

    assert first.status_code == second.status_code == 200, (first.json(), second.json())
    assert first.json() == second.json()
    assert len(memory_broker.orders) == 1 and Order.objects.count() == 1
    assert IdempotencyKey.objects.get().result["order_id"] == first.json()["order_id"]


def test_requests_with_one_key_on_one_account_at_the_same_moment_place_one_order(
    user, account, memory_broker, sync_requests
):
    clients = [token_client(user) for _ in range(3)]
    responses = in_threads(*(lambda client=client: post_buy(client, "same-account") for client in clients))
    assert {r.status_code for r in responses} == {200}
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert len(memory_broker.orders) == 1


def test_two_requests_with_one_key_at_the_same_moment_place_one_order_on_the_simulator(
    user, simulator, sim_account, sync_requests
):
    clients = [token_client(user) for _ in range(4)]

    responses = in_threads(*(lambda client=client: post_buy(client, "burst-1", qty=2) for client in clients))

    assert {r.status_code for r in responses} == {200}
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    [order] = simulator.orders(DEMO_CANO)
    assert order["order_no"] == responses[0].json()["order_id"]


def test_the_same_key_from_two_users_is_two_orders(
    user, other_user, make_account, account, memory_broker, sync_requests
):
    make_account(other_user, cano="50222222")
    first, second = in_threads(
        lambda: post_buy(token_client(user), "shared"), lambda: post_buy(token_client(other_user), "shared")
    )
    assert first.status_code == second.status_code == 200
    assert first.json()["order_id"] != second.json()["order_id"]
    assert len(memory_broker.orders) == 2


def test_a_key_expires_after_24_hours(api, account, memory_broker, sync_requests):
    first = post_buy(api, "daily")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=24, seconds=1))

    again = post_buy(api, "daily")

    assert again.status_code == 200 and again.json()["order_id"] != first.json()["order_id"]
    assert len(memory_broker.orders) == 2 and IdempotencyKey.objects.count() == 1


def test_a_key_whose_request_never_finished_is_refused_not_placed_again(
    user, api, account, memory_broker, sync_requests
):
    IdempotencyKey.objects.create(user=user, key="crashed")
    IdempotencyKey.objects.update(created_at=timezone.now() - services.IDEMPOTENCY_WAIT)

    response = post_buy(api, "crashed")

    assert response.status_code == 409
    assert "unknown" in response.json()["message"]
    assert memory_broker.place_order_calls == []


def test_a_failed_order_is_replayed_too(api, account, memory_broker, sync_requests):
    from trading.brokers.base import OrderRejected

    memory_broker.fail_with = OrderRejected("모의투자 장종료 입니다.", msg_cd="40580000")
    first = post_buy(api, "closed")
    memory_broker.fail_with = None
    second = post_buy(api, "closed")

    assert first.status_code == second.status_code == 502
    assert first.json() == second.json()
    assert len(memory_broker.place_order_calls) == 1


def test_invalid_input_does_not_use_up_the_key(api, account, memory_broker, sync_requests):
    invalid = post_buy(api, "fix-and-retry", qty=0)
    valid = post_buy(api, "fix-and-retry", qty=1)
    assert (invalid.status_code, valid.status_code) == (400, 200)
    assert len(memory_broker.orders) == 1
