"""The `/ws/watchlist/` consumer in-process (WebsocketCommunicator), on the real channels-redis layer
and the real database: changes are committed by WatchlistService and broadcast by watchlist/events.py."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.test import Client
from knox.models import AuthToken

from config.asgi import application
from trading.brokers.memory import MemoryBroker
from watchlist import events
from watchlist.consumers import WatchlistConsumer
from watchlist.fanout import CLOSE_LAYER_FAILED, Fanout
from watchlist.selectors import watchlist_snapshot
from watchlist.services import WatchlistService

pytestmark = pytest.mark.django_db(transaction=True)

HOST = b"127.0.0.1:8000"
SAME_SITE = b"http://127.0.0.1:8000"
TIMEOUT = 10


@pytest.fixture(autouse=True)
def fresh_channel_layer(redis_client):
    """An empty Redis db and a new layer object per test: a layer's receive state is bound to one event
    loop, and every test has its own."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
async def socket_to():
    """Makes communicators on config.asgi.application; every one is disconnected at the end."""
    opened: list[WebsocketCommunicator] = []

    def make(
        path: str = "/ws/watchlist/", headers: list[tuple[bytes, bytes]] | None = None
    ) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(application, path, headers=headers or [])
        opened.append(communicator)
        return communicator

    yield make
    for communicator in opened:
        await communicator.disconnect(timeout=TIMEOUT)


@pytest.fixture
def broker():
    return MemoryBroker()


def session_headers(user, origin: bytes | None = SAME_SITE) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    headers = [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()), (b"host", HOST)]
    if origin is not None:
        headers.append((b"origin", origin))
    return headers


def token_headers(user, accept_language: bytes | None = b"en") -> list[tuple[bytes, bytes]]:
    """A token socket's handshake; its texts in English unless `accept_language` says otherwise (None:
    no Accept-Language, Korean)."""
    headers = [(b"authorization", f"Token {AuthToken.objects.create(user=user)[1]}".encode())]
    if accept_language is not None:
        headers.append((b"accept-language", accept_language))
    return headers


async def connected(communicator: WebsocketCommunicator) -> dict:
    """Connect; return the snapshot that must come first."""
    accepted, _ = await communicator.connect(timeout=TIMEOUT)
    assert accepted
    snapshot = await communicator.receive_json_from(timeout=TIMEOUT)
    assert snapshot["type"] == "watchlist_snapshot"
    return snapshot


async def refusal_code(communicator: WebsocketCommunicator) -> int:
    """Refused sockets are closed with a code (accepted first, so that the client sees the code)."""
    await communicator.connect(timeout=TIMEOUT)
    output = await communicator.receive_output(timeout=TIMEOUT)
    assert output["type"] == "websocket.close"
    return output["code"]


def sync(account, broker: MemoryBroker, holdings: dict, prices: dict | None = None):
    """Commit a change the way production does: WatchlistService syncs with the (in-memory) broker."""
    broker.set_holdings(holdings, prices)
    return WatchlistService(account, broker).sync_with_account()


def without_timestamp(message: dict) -> dict:
    return {key: value for key, value in message.items() if key != "timestamp"}


# --- connect and snapshot


async def test_a_snapshot_comes_first_on_connect(user, account, broker, socket_to):
    await database_sync_to_async(sync)(account, broker, {"005930": (10, 71250.5), "000660": (3, 180_000.0)})
    headers = await database_sync_to_async(session_headers)(user)

    snapshot = await connected(socket_to(headers=headers))

    expected = await database_sync_to_async(watchlist_snapshot)(account)
    assert without_timestamp(snapshot) == {"type": "watchlist_snapshot", **without_timestamp(expected)}
    assert isinstance(snapshot["timestamp"], int)
    assert [item["stock_code"] for item in snapshot["full_list"]] == ["000660", "005930"]
    assert snapshot["version"] == 1 and "rows_html" not in snapshot


async def test_account_parameter_picks_one_of_the_users_accounts(user, account, make_account, socket_to):
    second = await database_sync_to_async(make_account)(user, cano="50999999")
    headers = await database_sync_to_async(token_headers)(user)

    first_snapshot = await connected(socket_to(headers=headers))
    second_snapshot = await connected(socket_to(f"/ws/watchlist/?account={second.id}", headers=headers))

    assert first_snapshot["account"]["id"] == account.id
    assert second_snapshot["account"] == {
        "id": second.id,
        "name": second.display_name,
        "number": "50999999-01",
    }


# --- group events


async def test_a_committed_change_arrives_with_its_diff_full_list_and_version(
    user, account, broker, socket_to
):
    headers = await database_sync_to_async(session_headers)(user)
    socket = socket_to(headers=headers)
    assert (await connected(socket))["version"] == 0

    await database_sync_to_async(sync)(account, broker, {"005930": (10, 70_000.0), "000660": (3, 180_000.0)})
    added = await socket.receive_json_from(timeout=TIMEOUT)
    await database_sync_to_async(sync)(account, broker, {"005930": (15, 70_500.0)})
    changed = await socket.receive_json_from(timeout=TIMEOUT)

    assert added["type"] == "watchlist_changed" and added["version"] == 1
    assert added["changes"] == {"added": ["000660", "005930"], "removed": [], "updated": []}
    assert changed["version"] == 2
    assert changed["changes"] == {"added": [], "removed": ["000660"], "updated": ["005930"]}
    final = await database_sync_to_async(watchlist_snapshot)(account)
    assert changed["full_list"] == final["full_list"]
    assert [(i["stock_code"], i["quantity"], i["avg_price"]) for i in changed["full_list"]] == [
        ("005930", 15, 70_500.0)
    ]
    assert "rows_html" not in changed


async def test_render_html_sockets_get_rows_from_the_row_template(user, account, broker, socket_to):
    await database_sync_to_async(sync)(
        account, broker, {"000660": (3, 180_000.0)}, prices={"000660": 175_500}
    )
    headers = await database_sync_to_async(session_headers)(user)
    socket = socket_to("/ws/watchlist/?render=html", headers=headers)

    snapshot = await connected(socket)
    await database_sync_to_async(sync)(
        account,
        broker,
        {"000660": (3, 180_000.0), "005930": (10, 71250.5)},
        prices={"000660": 175_500, "005930": 72_100},
    )
    change = await socket.receive_json_from(timeout=TIMEOUT)

    assert set(snapshot["rows_html"]) == {"000660"}
    sk_hynix = snapshot["rows_html"]["000660"]
    assert sk_hynix.startswith("<tr") and 'data-code="000660"' in sk_hynix
    assert "175,500원" in sk_hynix and "-13,500원" in sk_hynix and 'class="num fall"' in sk_hynix
    assert change["changes"]["added"] == ["005930"]
    assert set(change["rows_html"]) == {"005930"}, "only added and updated rows are rendered"
    samsung = change["rows_html"]["005930"]
    assert 'data-code="005930"' in samsung and "72,100원" in samsung and "71,250.5원" in samsung
    assert "+8,495원" in samsung and "+1.19%" in samsung and 'class="num rise"' in samsung


async def test_error_messages_and_rows_follow_the_handshakes_language(user, account, broker, socket_to):
    await database_sync_to_async(sync)(
        account, broker, {"000660": (3, 180_000.0)}, prices={"000660": 175_500}
    )
    session = await database_sync_to_async(session_headers)(user)
    english = socket_to(
        "/ws/watchlist/?render=html", headers=[*session, (b"accept-language", b"en-US,en;q=0.9")]
    )
    korean = socket_to("/ws/watchlist/?render=html", headers=session)

    english_rows = (await connected(english))["rows_html"]["000660"]
    korean_rows = (await connected(korean))["rows_html"]["000660"]
    for socket in (english, korean):
        await socket.send_to(text_data="not json")
        await socket.send_to(text_data='{"type": "hello"}')

    assert "175,500 KRW" in english_rows and "175,500원" in korean_rows
    assert [await english.receive_json_from(timeout=TIMEOUT) for _ in range(2)] == [
        {"type": "error", "message": "Invalid JSON."},
        {"type": "error", "message": "Unknown message type: 'hello'."},
    ]
    assert [await korean.receive_json_from(timeout=TIMEOUT) for _ in range(2)] == [
        {"type": "error", "message": "올바른 JSON이 아닙니다."},
        {"type": "error", "message": "알 수 없는 메시지 유형입니다: 'hello'."},
    ]


@pytest.mark.parametrize(
    ("accept_language", "language"),
    [
        (None, "ko"),
        (b"en", "en"),
        (b"en-GB,en;q=0.9", "en"),
        (b"fr-FR, en;q=0.5, ko;q=0.4", "en"),
        (b"ko-KR,ko;q=0.9,en-US;q=0.8", "ko"),
        (b"fr", "ko"),
        (b"*", "ko"),
        (b"\xff\xfe", "ko"),
    ],
)
def test_a_sockets_language_is_the_handshakes_first_supported_one(accept_language, language):
    from watchlist.consumers import socket_language

    headers = [(b"host", HOST)] + ([(b"accept-language", accept_language)] if accept_language else [])
    assert socket_language(headers) == language


async def test_sync_status_is_forwarded(user, account, socket_to):
    headers = await database_sync_to_async(token_headers)(user)
    socket = socket_to(headers=headers)
    await connected(socket)
    sync_state = {
        "status": "failing",
        "last_success_at": 1764000000,
        "consecutive_failures": 2,
        "next_attempt_at": 1764000060,
        "last_error": "broker unreachable",
    }

    await database_sync_to_async(events.send_sync_status)(account.id, sync_state)

    message = await socket.receive_json_from(timeout=TIMEOUT)
    assert message["type"] == "sync_status" and message["sync"] == sync_state


async def test_price_updates_never_reach_the_watchlist_handler(user, account, broker, socket_to, monkeypatch):
    forwarded_changes = []
    original = WatchlistConsumer.watchlist_changed

    async def spy(self, event):
        forwarded_changes.append(event)
        await original(self, event)

    monkeypatch.setattr(WatchlistConsumer, "watchlist_changed", spy)
    headers = await database_sync_to_async(token_headers)(user)
    socket = socket_to("/ws/watchlist/?render=html", headers=headers)
    await connected(socket)
    tick = events.price_update_message("005930", 72_100, 600, 0.84, 1_234_567)

    await database_sync_to_async(events.send_price_update)(account.id, tick)
    received = await socket.receive_json_from(timeout=TIMEOUT)

    assert received == tick, "forwarded as is, no rows_html, no version"
    assert forwarded_changes == []
    await database_sync_to_async(sync)(account, broker, {"005930": 10})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "watchlist_changed"
    assert len(forwarded_changes) == 1, "the spy does see watchlist changes"


async def test_a_change_reaches_only_its_accounts_sockets(
    user, other_user, account, make_account, broker, socket_to
):
    other_account = await database_sync_to_async(make_account)(other_user, cano="50888888")
    mine = socket_to(headers=await database_sync_to_async(token_headers)(user))
    theirs = socket_to(headers=await database_sync_to_async(token_headers)(other_user))
    await connected(mine)
    assert (await connected(theirs))["account"]["id"] == other_account.id

    await database_sync_to_async(sync)(account, broker, {"005930": 10})

    assert (await mine.receive_json_from(timeout=TIMEOUT))["version"] == 1
    theirs_ping = await ping(theirs)
    assert theirs_ping["type"] == "pong", "nothing arrived before the answer to a later ping"


# --- client messages


async def ping(socket: WebsocketCommunicator) -> dict:
    await socket.send_json_to({"type": "ping"})
    return await socket.receive_json_from(timeout=TIMEOUT)


async def test_ping_resync_and_garbage(user, account, broker, socket_to):
    headers = await database_sync_to_async(session_headers)(user)
    socket = socket_to("/ws/watchlist/?render=html", headers=headers)
    await connected(socket)

    pong = await ping(socket)
    assert pong["type"] == "pong" and isinstance(pong["timestamp"], int)

    await database_sync_to_async(sync)(account, broker, {"005930": 10})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "watchlist_changed"
    await socket.send_json_to({"type": "resync"})
    snapshot = await socket.receive_json_from(timeout=TIMEOUT)
    assert snapshot["type"] == "watchlist_snapshot" and snapshot["version"] == 1
    assert set(snapshot["rows_html"]) == {"005930"}

    for garbage in [
        "not json",
        "[1, 2]",
        '"ping"',
        "null",
        '{"type": "hello"}',
        '{"kind": "ping"}',
        '{"type": 5}',
    ]:
        await socket.send_to(text_data=garbage)
        error = await socket.receive_json_from(timeout=TIMEOUT)
        assert error["type"] == "error" and error["message"], garbage
    await socket.send_to(bytes_data=b"\x00\x01")
    assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "error"

    assert (await ping(socket))["type"] == "pong", "the socket stays open after errors"


# --- who may connect


async def test_anonymous_sockets_are_refused_with_4401(socket_to):
    assert await refusal_code(socket_to(headers=[(b"origin", SAME_SITE)])) == 4401


async def test_a_bad_token_is_refused_with_4401_even_with_a_session(user, socket_to):
    headers = await database_sync_to_async(session_headers)(user)
    assert (
        await refusal_code(socket_to(headers=[*headers, (b"authorization", b"Token not-a-real-token")]))
        == 4401
    )


async def test_a_session_is_checked_as_for_http_an_unknown_or_outdated_one_is_refused_with_4401(
    user, account, socket_to
):
    unknown = [(b"cookie", b"sessionid=no-such-session"), (b"origin", SAME_SITE)]
    assert await refusal_code(socket_to(headers=unknown)) == 4401

    headers = await database_sync_to_async(session_headers)(user)

    def change_password():
        user.set_password("a-new-password-1")
        user.save()

    await database_sync_to_async(change_password)()  # Django ends the user's other sessions
    assert await refusal_code(socket_to(headers=headers)) == 4401


async def test_another_users_or_an_unknown_account_is_refused_with_4403(
    user, other_user, account, make_account, socket_to
):
    theirs = await database_sync_to_async(make_account)(other_user, cano="50777777")
    headers = await database_sync_to_async(token_headers)(user)
    for query in [f"account={theirs.id}", "account=987654321", "account=abc", "account=", "account=-1"]:
        assert await refusal_code(socket_to(f"/ws/watchlist/?{query}", headers=headers)) == 4403, query


async def test_a_session_socket_needs_its_own_or_a_trusted_origin_by_scheme_host_and_port(
    user, account, socket_to, settings
):
    settings.CSRF_TRUSTED_ORIGINS = ["https://watch.example.com", "https://*.trusted.example"]
    for origin in [
        b"https://evil.example",
        b"http://127.0.0.1.evil.example",
        b"null",
        None,
        b"http://127.0.0.1:54321",  # another port of the same host: another origin
        b"http://127.0.0.1",
        b"https://127.0.0.1:8000",
        b"http://localhost:8000",
        b"http://watch.example.com",
        b"https://watch.example.com:8443",
        b"https://trusted.example.evil.example",
    ]:
        headers = await database_sync_to_async(session_headers)(user, origin)
        assert await refusal_code(socket_to(headers=headers)) == 4403, origin
    for origin in [SAME_SITE, b"https://watch.example.com", b"https://app.trusted.example"]:
        headers = await database_sync_to_async(session_headers)(user, origin)
        await connected(socket_to(headers=headers))


async def test_behind_a_tls_proxy_the_own_origin_is_https(user, account, socket_to, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    headers = await database_sync_to_async(session_headers)(user, b"https://127.0.0.1:8000")
    assert await refusal_code(socket_to(headers=headers)) == 4403, "no X-Forwarded-Proto: a plain-HTTP page"
    await connected(socket_to(headers=[*headers, (b"x-forwarded-proto", b"https")]))


async def test_a_token_socket_needs_no_origin(user, account, socket_to):
    headers = await database_sync_to_async(token_headers)(user)
    snapshot = await connected(socket_to(headers=headers))
    assert snapshot["account"]["id"] == account.id


# --- the redis-py 8 socket_timeout trap


async def test_a_socket_idle_for_30_s_still_receives_a_change(user, account, broker, socket_to):
    socket = socket_to(headers=await database_sync_to_async(token_headers)(user))
    await connected(socket)

    await asyncio.sleep(31)  # longer than redis-py 8's default 5 s socket timeout, many times over
    await database_sync_to_async(sync)(account, broker, {"005930": 10})

    message = await socket.receive_json_from(timeout=TIMEOUT)
    assert message["type"] == "watchlist_changed" and message["version"] == 1


# --- the Python 3.11 wait_for trap (config/settings.py, CHANNEL_LAYERS socket_timeout)


async def test_sockets_closed_right_after_connecting_end_cleanly(user, account):
    """A consumer whose socket closes while its channel-layer receive is mid-send must stop: with a
    redis-py socket timeout, asyncio.wait_for on Python 3.11 can swallow that cancellation and leave
    the receive loop running forever."""
    token = await database_sync_to_async(token_headers)(user)
    for attempt in range(100):
        headers = token if attempt % 2 else [(b"origin", SAME_SITE)]  # accepted, then refused (4401)
        communicator = WebsocketCommunicator(application, "/ws/watchlist/", headers=headers)
        await communicator.connect(timeout=TIMEOUT)
        await communicator.receive_output(timeout=TIMEOUT)
        await asyncio.sleep((attempt % 20) / 1000)
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        done, _ = await asyncio.wait([communicator.future], timeout=TIMEOUT)
        assert done, f"the consumer of socket {attempt} is still running after its disconnect"


async def test_a_socket_the_fan_out_closes_while_it_connects_is_sent_nothing_after_the_close(
    user, account, socket_to, monkeypatch
):
    """The fan-out closes every socket of its process when the channel layer fails, also one between
    its join and its snapshot: an ASGI server refuses anything sent after a close (uvicorn raises)."""
    join = Fanout.join

    async def join_as_the_layer_fails(self, account_id, socket):
        await join(self, account_id, socket)
        await self._close_every_socket()

    monkeypatch.setattr(Fanout, "join", join_as_the_layer_fails)
    headers = await database_sync_to_async(token_headers)(user)
    communicator = socket_to(headers=headers)

    assert await refusal_code(communicator) == CLOSE_LAYER_FAILED
    assert await communicator.receive_nothing(timeout=1)
