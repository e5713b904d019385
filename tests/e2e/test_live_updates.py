"""End to end over real sockets: a real Daphne, the real channels-redis layer, a real Celery worker and
the KIS simulator. Changes come from the trade API (through Daphne) and from the account itself (the
simulator's holdings, synced by the worker)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from channels.db import database_sync_to_async
from knox.models import AuthToken
from websockets.asyncio.client import ClientConnection, connect

from tests.fixtures.simulator import DEMO_CANO
from watchlist.models import Watchlist
from watchlist.selectors import watchlist_snapshot
from watchlist.tasks import sync_account

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 60


def token_for(user) -> str:
    return AuthToken.objects.create(user=user)[1]


async def open_socket(server, token: str) -> tuple[ClientConnection, dict]:
    """A token socket and the snapshot it gets first."""
    socket = await connect(
        server.ws_url(), additional_headers={"Authorization": f"Token {token}"}, open_timeout=TIMEOUT
    )
    snapshot = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
    assert snapshot["type"] == "watchlist_snapshot"
    return socket, snapshot


async def changes_until_confirmed(socket: ClientConnection, code: str) -> list[dict]:
    """watchlist_changed messages up to the first one where `code` is held and no longer pending."""
    received = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = json.loads(await socket.recv())
            if message["type"] != "watchlist_changed":
                continue
            received.append(message)
            if any(i["stock_code"] == code and not i["pending"] for i in message["full_list"]):
                return received


async def wait_for_version(account, version: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while (
            await database_sync_to_async(lambda: Watchlist.objects.get(account=account).version)() < version
        ):
            await asyncio.sleep(0.1)


async def test_two_clients_of_a_user_get_the_same_change_and_another_user_nothing(
    live, user, other_user, sim_account, make_account
):
    await database_sync_to_async(make_account)(other_user, cano="50999999")
    mine, theirs = (
        await database_sync_to_async(token_for)(user),
        await database_sync_to_async(token_for)(other_user),
    )
    (desktop, _), (laptop, _), (stranger, stranger_snapshot) = [
        await open_socket(live, t) for t in (mine, mine, theirs)
    ]

    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
        answer = await http.post(
            "/execute-buy/005930", json={"qty": 3}, headers={"Authorization": f"Token {mine}"}
        )
    assert answer.status_code == 200, answer.text
    on_desktop, on_laptop = await asyncio.gather(
        changes_until_confirmed(desktop, "005930"), changes_until_confirmed(laptop, "005930")
    )

    assert on_desktop == on_laptop
    first = on_desktop[0]
    assert first["changes"]["added"] == ["005930"] and first["version"] == answer.json()["watchlist_version"]
    assert [i["pending"] for i in first["full_list"] if i["stock_code"] == "005930"] == [True]
    assert [m["version"] for m in on_desktop] == list(
        range(first["version"], first["version"] + len(on_desktop))
    )
    final = await database_sync_to_async(watchlist_snapshot)(sim_account)
    assert on_desktop[-1]["full_list"] == final["full_list"]

    await stranger.send(json.dumps({"type": "ping"}))
    assert json.loads(await asyncio.wait_for(stranger.recv(), TIMEOUT))["type"] == "pong", (
        "nothing reached the other user's socket before the answer to its ping"
    )
    assert stranger_snapshot["full_list"] == []
    for socket in (desktop, laptop, stranger):
        await socket.close()


async def test_a_client_that_missed_two_changes_reconnects_to_the_list_in_the_database(
    live, simulator, user, sim_account
):
    token = await database_sync_to_async(token_for)(user)
    socket, snapshot = await open_socket(live, token)
    assert snapshot["version"] == 0
    await socket.close()

    for holdings in (
        [{"stock_code": "005930", "quantity": 10, "avg_price": 70_000}],
        [
            {"stock_code": "005930", "quantity": 10, "avg_price": 70_000},
            {"stock_code": "000660", "quantity": 2, "avg_price": 180_000},
        ],
    ):
        simulator.set_holdings(DEMO_CANO, holdings)
        version = await database_sync_to_async(lambda: Watchlist.objects.get(account=sim_account).version)()
        sync_account.delay(sim_account.id)
        await wait_for_version(sim_account, version + 1)

    socket, snapshot = await open_socket(live, token)
    await socket.close()

    in_database = await database_sync_to_async(watchlist_snapshot)(sim_account)
    assert snapshot["version"] == in_database["version"] == 2
    assert snapshot["full_list"] == in_database["full_list"]
    assert [(i["stock_code"], i["quantity"]) for i in snapshot["full_list"]] == [
        ("000660", 2),
        ("005930", 10),
    ]
