"""Open sockets follow authorisation, across processes: each socket is held by one Daphne process and
the change that revokes it is made through another (the HTTP views of a second Daphne, or the ORM of
this test process as the admin does), so the revocation travels as it does in production
(watchlist/socket_revocation.py -> the channel layer -> every process's fan-out)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from knox.models import AuthToken
from websockets.asyncio.client import ClientConnection, connect

from trading.models import BrokerAccount
from watchlist.socket_auth import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "trader-pass-123"  # tests/fixtures/accounts.py
REVOKED_WITHIN = 1.0  # seconds: the contract's bound
TIMEOUT = 20


@pytest.fixture(autouse=True)
def fresh_channel_layer(redis_client):
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def signed_in(server, username: str = "trader", password: str = PASSWORD) -> httpx.Client:
    """An HTTP client signed in through the login form of `server`: its own session."""
    client = httpx.Client(base_url=server.url, timeout=TIMEOUT)
    client.get("/accounts/login/").raise_for_status()
    answer = client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
    )
    assert answer.status_code == 302, answer.text[:300]
    return client


def post_form(client: httpx.Client, path: str, **fields: str) -> httpx.Response:
    return client.post(path, data={"csrfmiddlewaretoken": client.cookies["csrftoken"], **fields})


async def session_socket(server, client: httpx.Client) -> ClientConnection:
    socket = await connect(
        server.ws_url(),
        open_timeout=TIMEOUT,
        additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}", "Origin": server.url},
    )
    assert json.loads(await socket.recv())["type"] == "watchlist_snapshot"
    return socket


async def token_socket(server, key: str, path: str = "/ws/watchlist/") -> ClientConnection:
    socket = await connect(
        server.ws_url(path), open_timeout=TIMEOUT, additional_headers={"Authorization": f"Token {key}"}
    )
    assert json.loads(await socket.recv())["type"] == "watchlist_snapshot"
    return socket


async def closed_with(socket: ClientConnection) -> int:
    """The close code of a socket the server closes now, within the contract's second."""
    async with asyncio.timeout(REVOKED_WITHIN):
        await socket.wait_closed()
    return socket.close_code


async def still_open(socket: ClientConnection) -> bool:
    await socket.send(json.dumps({"type": "ping"}))
    async with asyncio.timeout(TIMEOUT):
        while True:
            if json.loads(await socket.recv())["type"] == "pong":
                return True


@pytest.fixture
def token_key(user):
    return AuthToken.objects.create(user=user)[1]


async def test_logging_out_closes_that_sessions_sockets_4401(
    daphne_server, second_daphne_server, user, account, token_key
):
    browser = await asyncio.to_thread(signed_in, daphne_server)
    other_browser = await asyncio.to_thread(signed_in, daphne_server)
    socket = await session_socket(second_daphne_server, browser)
    other_session = await session_socket(second_daphne_server, other_browser)
    script = await token_socket(second_daphne_server, token_key)

    answer = await asyncio.to_thread(post_form, browser, "/accounts/logout/")

    assert answer.status_code in (200, 302)
    assert await closed_with(socket) == CLOSE_UNAUTHENTICATED
    assert await still_open(other_session) and await still_open(script), (
        "another session, a token: still valid"
    )


async def test_changing_the_password_closes_the_users_session_sockets_4401(
    daphne_server, second_daphne_server, user, account, token_key
):
    """Every one: Django ends the other sessions, and gives the one that changed it a new key (its
    page reconnects with the new cookie)."""
    browser = await asyncio.to_thread(signed_in, daphne_server)
    elsewhere = await asyncio.to_thread(signed_in, daphne_server)
    sockets = [
        await session_socket(second_daphne_server, elsewhere),
        await session_socket(second_daphne_server, browser),
    ]
    script = await token_socket(second_daphne_server, token_key)

    answer = await asyncio.to_thread(
        post_form,
        browser,
        "/accounts/password_change/",
        old_password=PASSWORD,
        new_password1="a-new-password-9",
        new_password2="a-new-password-9",
    )

    assert answer.status_code == 302, answer.text[:300]
    assert [await closed_with(socket) for socket in sockets] == [CLOSE_UNAUTHENTICATED] * 2
    assert await still_open(script), "a token stays valid"
    await session_socket(second_daphne_server, browser)  # with the session's new key


async def test_deleting_the_token_closes_its_sockets_4401(second_daphne_server, user, account, token_key):
    browser = await asyncio.to_thread(signed_in, second_daphne_server)
    sockets = [await token_socket(second_daphne_server, token_key) for _ in range(3)]
    session = await session_socket(second_daphne_server, browser)

    await database_sync_to_async(AuthToken.objects.filter(user=user).delete)()  # its only token

    assert [await closed_with(socket) for socket in sockets] == [CLOSE_UNAUTHENTICATED] * 3
    assert await still_open(session)


async def test_deactivating_the_user_closes_every_socket_of_theirs_4401(
    second_daphne_server, user, account, token_key
):
    browser = await asyncio.to_thread(signed_in, second_daphne_server)
    sockets = [
        await token_socket(second_daphne_server, token_key),
        await session_socket(second_daphne_server, browser),
    ]

    def deactivate():
        user.is_active = False
        user.save()

    await database_sync_to_async(deactivate)()

    assert [await closed_with(socket) for socket in sockets] == [CLOSE_UNAUTHENTICATED] * 2


async def test_giving_the_account_to_another_user_closes_its_sockets_4403(
    second_daphne_server, user, other_user, account, make_account, token_key
):
    kept = await database_sync_to_async(make_account)(user, cano="50222222")
    moved = await token_socket(second_daphne_server, token_key)
    other = await token_socket(second_daphne_server, token_key, f"/ws/watchlist/?account={kept.id}")

    def give_away():
        account.owner = other_user
        account.save()

    await database_sync_to_async(give_away)()

    assert await closed_with(moved) == CLOSE_FORBIDDEN
    assert await still_open(other)


async def test_a_resync_checks_ownership_again(second_daphne_server, user, other_user, account, token_key):
    socket = await token_socket(second_daphne_server, token_key)
    # As a bulk update would: no signal, no revocation message.
    await database_sync_to_async(BrokerAccount.objects.filter(pk=account.pk).update)(owner=other_user)
    assert await still_open(socket)

    await socket.send(json.dumps({"type": "resync"}))

    assert await closed_with(socket) == CLOSE_FORBIDDEN
