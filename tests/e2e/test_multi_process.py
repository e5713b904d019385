"""Several processes, as in production: two Daphne processes and a Celery worker on one database and one
Redis. A socket gets its account's changes and prices whichever process holds it, and whichever
process (a worker's sync, a trade answered by the other Daphne) committed the change."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from channels.db import database_sync_to_async

from tests.fixtures.simulator import DEMO_CANO
from watchlist import events
from watchlist.tasks import sync_account

from .sockets import next_of_type
from .test_live_updates import TIMEOUT, open_socket, token_for

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_change_committed_by_a_worker_reaches_sockets_on_two_daphne_processes(
    live, second_daphne_server, simulator, user, sim_account
):
    token = await database_sync_to_async(token_for)(user)
    (first, _), (second, _) = [await open_socket(server, token) for server in (live, second_daphne_server)]

    simulator.set_holdings(DEMO_CANO, [{"stock_code": "000660", "quantity": 4, "avg_price": 180_000}])
    sync_account.delay(sim_account.id)
    on_first, on_second = await asyncio.gather(
        next_of_type(first, "watchlist_changed"), next_of_type(second, "watchlist_changed")
    )

    assert on_first == on_second
    assert on_first["changes"]["added"] == ["000660"] and on_first["version"] == 1

    tick = events.price_update_message("000660", 181_000, 1_000, 0.56, 42)
    await database_sync_to_async(events.send_price_update)(sim_account.id, tick)
    assert await next_of_type(first, "price_update") == tick == await next_of_type(second, "price_update")
    for socket in (first, second):
        await socket.close()


async def test_a_trade_answered_by_one_daphne_process_reaches_a_socket_on_the_other(
    live, second_daphne_server, user
):
    token = await database_sync_to_async(token_for)(user)
    watcher, _ = await open_socket(second_daphne_server, token)

    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
        answer = await http.post(
            "/execute-buy/005930", json={"qty": 2}, headers={"Authorization": f"Token {token}"}
        )
    assert answer.status_code == 200, answer.text
    change = await next_of_type(watcher, "watchlist_changed")

    assert change["version"] == answer.json()["watchlist_version"]
    assert change["changes"]["added"] == ["005930"]
    assert [(i["stock_code"], i["quantity"]) for i in change["full_list"]] == [("005930", 2)]
    await watcher.close()
