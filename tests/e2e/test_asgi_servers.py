"""The application under uvicorn (ASGI_SERVER=uvicorn, with the options scripts/run gives it) as under
Daphne: a token socket gets its snapshot, then a committed change and a price update; a session socket
from a foreign Origin is refused (4403); a trade over HTTP is answered and reaches the user's socket."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from channels.db import database_sync_to_async
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.fixtures.simulator import DEMO_CANO

from .sockets import assert_a_change_then_a_price_update_arrive, next_of_type
from .test_live_updates import TIMEOUT, open_socket, token_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live_uvicorn(sim_account, simulator, celery_worker_process, uvicorn_server):
    """`live` (conftest.py) with uvicorn in place of Daphne."""
    simulator.set_holdings(DEMO_CANO, [])
    return uvicorn_server


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def test_a_token_socket_gets_its_snapshot_a_change_and_a_price_update(uvicorn_server, user, account):
    token = await database_sync_to_async(token_for)(user)
    socket, snapshot = await open_socket(uvicorn_server, token)
    assert (snapshot["account"]["id"], snapshot["version"]) == (account.id, 0)
    assert "Sec-WebSocket-Extensions" not in socket.response.headers  # no compression, as under Daphne

    await assert_a_change_then_a_price_update_arrive(socket, account)
    await socket.close()


async def test_a_session_socket_from_a_foreign_origin_is_refused_with_4403(uvicorn_server, user, account):
    cookie = await database_sync_to_async(session_cookie)(user)
    same_site = [("Cookie", cookie), ("Origin", uvicorn_server.url)]
    async with connect(uvicorn_server.ws_url(), additional_headers=same_site, open_timeout=TIMEOUT) as socket:
        assert "watchlist_snapshot" in await asyncio.wait_for(socket.recv(), TIMEOUT)  # the door works

    foreign = [("Cookie", cookie), ("Origin", "https://evil.example")]
    async with connect(uvicorn_server.ws_url(), additional_headers=foreign, open_timeout=TIMEOUT) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd.code == 4403


async def test_a_trade_over_http_is_answered_and_its_change_reaches_the_socket(live_uvicorn, user):
    token = await database_sync_to_async(token_for)(user)
    watcher, _ = await open_socket(live_uvicorn, token)

    async with httpx.AsyncClient(base_url=live_uvicorn.url, timeout=TIMEOUT) as http:
        answer = await http.post(
            "/execute-buy/005930", json={"qty": 2}, headers={"Authorization": f"Token {token}"}
        )
    assert answer.status_code == 200, answer.text
    change = await next_of_type(watcher, "watchlist_changed")

    assert change["version"] == answer.json()["watchlist_version"]
    assert [(i["stock_code"], i["quantity"]) for i in change["full_list"]] == [("005930", 2)]
    await watcher.close()
