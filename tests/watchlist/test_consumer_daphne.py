"""The consumer under a real Daphne (subprocess) with the real channels-redis layer, over real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from knox.models import AuthToken
from websockets.asyncio.client import connect

from trading.brokers.memory import MemoryBroker
from watchlist.services import WatchlistService

pytestmark = pytest.mark.django_db(transaction=True)

STORM = 300  # more than redis-py's default pool of 100 connections, more than the 256 a user may hold
TIMEOUT = 120


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Groups of this Redis db start empty."""


async def snapshot_over_a_new_socket(url: str, token: str, opened: list) -> dict:
    socket = await connect(url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=TIMEOUT)
    opened.append(socket)
    return json.loads(await socket.recv())


async def test_300_sockets_of_one_user_connecting_at_once_all_get_their_snapshot(
    daphne_server, user, account
):
    token = (await database_sync_to_async(AuthToken.objects.create)(user=user))[1]
    opened: list = []
    try:
        async with asyncio.timeout(TIMEOUT):
            snapshots = await asyncio.gather(
                *(snapshot_over_a_new_socket(daphne_server.ws_url(), token, opened) for _ in range(STORM))
            )
    finally:
        await asyncio.gather(*(socket.close() for socket in opened), return_exceptions=True)

    assert len(snapshots) == STORM
    assert all(s["type"] == "watchlist_snapshot" and s["account"]["id"] == account.id for s in snapshots)
    assert "MaxConnectionsError" not in daphne_server.log_tail(200)


RECONNECTING = 200


async def test_after_a_restart_every_socket_reconnecting_at_once_gets_its_snapshot_and_the_next_change(
    daphne_server, user, account
):
    """A reconnect storm (clients without jitter) on a freshly started process: each socket's snapshot,
    then a change committed afterwards reaches every one of them through the process's fan-out."""
    token = (await database_sync_to_async(AuthToken.objects.create)(user=user))[1]
    opened: list = []
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(
                *(
                    snapshot_over_a_new_socket(daphne_server.ws_url(), token, opened)
                    for _ in range(RECONNECTING)
                )
            )
        await asyncio.to_thread(daphne_server.restart)
        await asyncio.gather(*(socket.wait_closed() for socket in opened))
        opened.clear()
        async with asyncio.timeout(TIMEOUT):
            snapshots = await asyncio.gather(
                *(
                    snapshot_over_a_new_socket(daphne_server.ws_url(), token, opened)
                    for _ in range(RECONNECTING)
                )
            )
        assert all(s["type"] == "watchlist_snapshot" and s["version"] == 0 for s in snapshots)

        broker = MemoryBroker()
        broker.set_holdings({"005930": 10})
        await database_sync_to_async(WatchlistService(account, broker).sync_with_account)()
        async with asyncio.timeout(TIMEOUT):
            changes = [json.loads(message) for message in await asyncio.gather(*(s.recv() for s in opened))]
    finally:
        await asyncio.gather(*(socket.close() for socket in opened), return_exceptions=True)

    assert {(c["type"], c["version"]) for c in changes} == {("watchlist_changed", 1)}
    assert len(changes) == RECONNECTING
