"""Hostile sockets, in process (WebsocketCommunicator on config.asgi.application, the real channels-redis
layer and database): every limit of watchlist/socket_limits.py, and that no handler's failure escapes
or leaves the socket in its process's fan-out. The same probes under a real Daphne, where the server's
own buffers and limits play: tests/faults/test_hostile_sockets.py."""
# ruff: noqa: F811 (the fixtures imported from test_consumer are named as arguments)

from __future__ import annotations

import json
import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError

from tests.watchlist.test_consumer import (  # noqa: F401 (fixtures)
    TIMEOUT,
    connected,
    fresh_channel_layer,
    ping,
    refusal_code,
    socket_to,
    token_headers,
)
from watchlist import consumers, socket_limits
from watchlist.fanout import process_fanout

pytestmark = pytest.mark.django_db(transaction=True)


async def closing_code(socket: WebsocketCommunicator) -> tuple[list[dict], int]:
    """The messages until the close, and its code."""
    messages = []
    while True:
        output = await socket.receive_output(timeout=TIMEOUT)
        if output["type"] == "websocket.close":
            return messages, output["code"]
        messages.append(json.loads(output["text"]))


def fan_out_is_empty() -> bool:
    fanout = process_fanout()
    return not fanout.rooms and not fanout.users


async def test_a_frame_over_64_kb_is_answered_error_then_closed_4429(user, account, socket_to):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)

    await socket.send_to(
        text_data='{"type": "ping", "pad": "' + "é" * (socket_limits.MAX_FRAME_BYTES // 2) + '"}'
    )

    messages, code = await closing_code(socket)
    assert [m["type"] for m in messages] == ["error"] and "65536 bytes" in messages[0]["message"]
    assert code == socket_limits.CLOSE_TOO_MANY


async def test_a_frame_just_under_the_limit_is_read(user, account, socket_to):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)
    padding = "x" * (socket_limits.MAX_FRAME_BYTES - 100)

    await socket.send_to(text_data=f'{{"type": "ping", "pad": "{padding}"}}')

    assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "pong"


async def test_a_flood_is_answered_error_then_closed_4429(user, account, socket_to):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)

    for _ in range(socket_limits.BURST * 3):
        await socket.send_json_to({"type": "ping"})

    messages, code = await closing_code(socket)
    assert code == socket_limits.CLOSE_TOO_MANY
    assert messages[-1]["type"] == "error" and "Too many" in messages[-1]["message"]
    assert len(messages) - 1 < socket_limits.BURST * 2, "a burst is answered at most, then nothing"


async def test_a_burst_within_the_limit_is_answered(user, account, socket_to):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)

    for _ in range(socket_limits.BURST // 2):
        await socket.send_json_to({"type": "ping"})

    for _ in range(socket_limits.BURST // 2):
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "pong"


async def test_resyncs_sent_while_a_snapshot_is_read_fold_into_it(user, account, socket_to, monkeypatch):
    release = threading.Event()
    reads = []
    read = consumers.checked_snapshot

    def slow_read(credential, account_id):
        reads.append(account_id)
        release.wait(TIMEOUT)
        return read(credential, account_id)

    monkeypatch.setattr(consumers, "checked_snapshot", slow_read)
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)

    for _ in range(10):
        await socket.send_json_to({"type": "resync"})
    pong = await ping(socket)  # answered while the snapshot is still being read
    release.set()
    snapshot = await socket.receive_json_from(timeout=TIMEOUT)

    assert pong["type"] == "pong"
    assert snapshot["type"] == "watchlist_snapshot"
    assert (await ping(socket))["type"] == "pong", "one snapshot for the ten resyncs, nothing more"
    assert len(reads) == 1


async def test_a_deeply_nested_frame_is_answered_error_and_the_socket_stays_open(user, account, socket_to):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)

    for frame in ["[" * 50_000, '{"a":' * 12_000, "[" * 30_000 + "]" * 30_000]:
        await socket.send_to(text_data=frame)
        error = await socket.receive_json_from(timeout=TIMEOUT)
        assert error["type"] == "error", frame[:10]

    assert (await ping(socket))["type"] == "pong"


async def test_a_database_error_in_the_first_snapshot_closes_cleanly_and_leaves_the_fan_out(
    user, account, socket_to, monkeypatch
):
    def failing(account_id):
        raise OperationalError("the database went away")

    monkeypatch.setattr(consumers, "snapshot_of_account", failing)
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))

    assert await refusal_code(socket) == consumers.CLOSE_SERVER_ERROR
    assert fan_out_is_empty()


async def test_a_database_error_in_a_resync_closes_cleanly_and_leaves_the_fan_out(
    user, account, socket_to, monkeypatch
):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)
    assert not fan_out_is_empty()

    def failing(credential, account_id):
        raise OperationalError("the database went away")

    monkeypatch.setattr(consumers, "checked_snapshot", failing)
    await socket.send_json_to({"type": "resync"})

    assert (await socket.receive_output(timeout=TIMEOUT)) == {
        "type": "websocket.close",
        "code": consumers.CLOSE_SERVER_ERROR,
    }
    assert fan_out_is_empty()


async def test_any_handler_failure_closes_cleanly_and_leaves_the_fan_out(
    user, account, socket_to, monkeypatch
):
    async def failing_receive(self, text_data=None, bytes_data=None):
        raise RuntimeError("a bug")

    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)
    monkeypatch.setattr(consumers.WatchlistConsumer, "receive", failing_receive)

    await socket.send_json_to({"type": "ping"})

    assert (await socket.receive_output(timeout=TIMEOUT))["code"] == consumers.CLOSE_SERVER_ERROR
    assert fan_out_is_empty()


async def test_a_socket_whose_unsent_bytes_exceed_the_bound_is_closed_4408(
    user, account, socket_to, monkeypatch
):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)
    monkeypatch.setattr(consumers, "unsent_bytes", lambda send: socket_limits.MAX_UNSENT_BYTES + 1)

    await socket.send_json_to({"type": "ping"})

    assert (await socket.receive_output(timeout=TIMEOUT)) == {
        "type": "websocket.close",
        "code": socket_limits.CLOSE_FALLING_BEHIND,
    }


async def test_a_user_holds_at_most_the_cap_of_sockets_per_process(
    user, other_user, account, make_account, socket_to, monkeypatch
):
    monkeypatch.setattr(consumers, "MAX_SOCKETS_PER_USER", 3)
    await database_sync_to_async(make_account)(other_user, cano="50888888")
    headers = await database_sync_to_async(token_headers)(user)
    held = [socket_to(headers=headers) for _ in range(3)]
    for socket in held:
        await connected(socket)

    assert await refusal_code(socket_to(headers=headers)) == socket_limits.CLOSE_TOO_MANY
    await connected(socket_to(headers=await database_sync_to_async(token_headers)(other_user)))

    await held[0].disconnect(timeout=TIMEOUT)
    await connected(socket_to(headers=headers))
