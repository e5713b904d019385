"""Hostile clients against a real Daphne (subprocess) over real sockets: the server's own frame limit,
a flood, deeply nested frames and a reader that stops reading. The in-process probes of every limit
are tests/security/test_socket_limits.py; the figures (memory, the other users' latency) are
bench/abuse.py's."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from knox.models import AuthToken
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devtools.seed import watch_many
from watchlist.socket_limits import CLOSE_FALLING_BEHIND, CLOSE_TOO_MANY, MAX_FRAME_BYTES, RATE

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 60
# Daphne (autobahn) fails the connection on a frame too big before the application sees it: by dropping
# the TCP connection (autobahn's failByDrop, which Daphne does not set), so the client sees 1006, not 1009.
SERVER_REFUSED_FRAME = (1006, 1009)


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Groups of this Redis db start empty."""


@pytest.fixture
def token_key(user):
    return AuthToken.objects.create(user=user)[1]


async def opened(server, key: str, path: str = "/ws/watchlist/", **options) -> ClientConnection:
    socket = await connect(
        server.ws_url(path),
        open_timeout=TIMEOUT,
        additional_headers={"Authorization": f"Token {key}"},
        **options,
    )
    assert json.loads(await socket.recv())["type"] == "watchlist_snapshot"
    return socket


async def messages_until_closed(socket: ClientConnection) -> list[dict]:
    messages = []
    async with asyncio.timeout(TIMEOUT):
        try:
            while True:
                messages.append(json.loads(await socket.recv()))
        except ConnectionClosed:
            return messages


async def test_daphne_refuses_a_frame_over_64_kb_itself(daphne_server, user, account, token_key):
    socket = await opened(daphne_server, token_key)

    await socket.send(json.dumps({"type": "ping", "pad": "x" * MAX_FRAME_BYTES}))

    assert await messages_until_closed(socket) == [], (
        "refused by the server, never answered by the application"
    )
    assert socket.close_code in SERVER_REFUSED_FRAME
    assert (await opened(daphne_server, token_key)) is not None


async def test_a_flood_is_closed_4429(daphne_server, user, account, token_key):
    socket = await opened(daphne_server, token_key)

    for _ in range(int(RATE) * 20):
        try:
            await socket.send('{"type": "ping"}')
        except ConnectionClosed:
            break
    messages = await messages_until_closed(socket)

    assert socket.close_code == CLOSE_TOO_MANY
    assert messages[-1]["type"] == "error"


async def test_nested_frames_are_answered_error_and_leave_no_exception_in_the_log(
    daphne_server, user, account, token_key
):
    sockets = [await opened(daphne_server, token_key) for _ in range(20)]

    for socket in sockets:
        await socket.send("[" * 50_000)
    replies = [json.loads(await socket.recv()) for socket in sockets]
    for socket in sockets:
        await socket.send('{"type": "ping"}')
    pongs = [json.loads(await socket.recv()) for socket in sockets]

    assert {reply["type"] for reply in replies} == {"error"}
    assert {pong["type"] for pong in pongs} == {"pong"}, "every socket stays open"
    assert "Exception inside application" not in daphne_server.log_tail(10_000)


async def test_a_reader_that_stops_reading_is_closed_4408(daphne_server, user, account, token_key):
    """A `?render=html` socket asks for big snapshots and reads none: once what Daphne holds unsent for it
    passes the bound, it is closed (its client sees 4408 if it reads on, or the connection dropped when
    it never answers the close)."""
    await database_sync_to_async(watch_many)(account.id, 150)
    # The client library stops reading from the connection once one message waits unread.
    socket = await opened(daphne_server, token_key, "/ws/watchlist/?render=html", max_queue=1)

    async with asyncio.timeout(TIMEOUT):
        while f"socket closed ({CLOSE_FALLING_BEHIND})" not in daphne_server.log_tail(200):
            try:
                await socket.send('{"type": "resync"}')
            except ConnectionClosed:
                break
            await asyncio.sleep(1 / (RATE / 2))
    messages = await messages_until_closed(socket)

    assert socket.close_code in (CLOSE_FALLING_BEHIND, 1006), socket.close_code
    assert {m["type"] for m in messages} <= {"watchlist_snapshot"}
    assert "Exception inside application" not in daphne_server.log_tail(10_000)
