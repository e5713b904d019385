"""A user can never read, trade on, sync or subscribe to another user's account, whatever id they guess,
by every door: the HTTP API and the page (token and session), the WebSocket (token and session, on a
real Daphne) and the admin (signed in, but not staff). An account that exists but is not yours is
answered exactly like one that does not exist, so guessing cannot even find out which ids exist."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.contrib.auth import get_user_model
from knox.models import AuthToken
from rest_framework.test import APIClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fixtures.trade import token_client
from watchlist.models import Watchlist
from watchlist.services import WatchlistService

VICTIM_CANO = "50123456"
NEVER_AN_ID = 987_654_321


@pytest.fixture
def victims_account(user, make_account, memory_broker):
    account = make_account(user, cano=VICTIM_CANO, display_name="피해자 계좌")
    memory_broker.set_holdings({"005930": 10, "000660": 3})
    WatchlistService(account, memory_broker).sync_with_account()
    memory_broker.balance_calls = 0
    make_account(user, cano="50123457", display_name="피해자 두번째")
    return account


@pytest.fixture
def intruders_account(other_user, make_account):
    return make_account(other_user, cano="59999999")


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def guessed_ids(account) -> list[int]:
    """The victim's accounts, and an id no account has."""
    return [*account.owner.broker_accounts.values_list("id", flat=True), NEVER_AN_ID]


def attempts(account_id: int, *, page: bool) -> list[tuple[str, str, dict | None]]:
    """(method, path, JSON body) of every way to read, sync or trade on account `account_id`."""
    trade = {"qty": 1, "account": account_id}
    api = [
        ("get", f"/api/watchlist/?account={account_id}", None),
        ("post", f"/api/watchlist/sync/?account={account_id}", None),
        ("post", "/execute-buy/005930", trade),
        ("post", "/execute-sell/005930", trade),
    ]
    return [*api, ("get", f"/?account={account_id}", None)] if page else api


def without_id(body: dict, account_id: int) -> dict:
    return body | {"message": body["message"].replace(str(account_id), "?")}


def answer(client: APIClient, method: str, path: str, body: dict | None):
    return getattr(client, method)(path, body, format="json") if body else getattr(client, method)(path)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "login, page", [(token_client, False), (session_client, True)], ids=["token", "session"]
)
def test_no_http_door_opens_on_another_users_account(
    login, page, victims_account, intruders_account, other_user, memory_broker, sync_requests
):
    intruder = login(other_user)
    for account_id in guessed_ids(victims_account):
        for guess, never in zip(
            attempts(account_id, page=page), attempts(NEVER_AN_ID, page=page), strict=True
        ):
            response, nonexistent = answer(intruder, *guess), answer(intruder, *never)
            assert response.status_code == 404, (guess, response.status_code, response.content[:300])
            content = response.content.decode()
            assert VICTIM_CANO not in content and "피해자" not in content and "000660" not in content, guess
            assert nonexistent.status_code == 404
            if response["Content-Type"].startswith("application/json"):
                # Indistinguishable from an id that never existed (but for the id the intruder sent).
                assert without_id(response.json(), account_id) == without_id(nonexistent.json(), NEVER_AN_ID)

    assert memory_broker.place_order_calls == [] and memory_broker.balance_calls == 0
    assert sync_requests == []
    assert Watchlist.objects.get(account=victims_account).version == 1


# --- WebSocket, on a real Daphne --------------------------------------------------------------------


async def socket_outcome(url: str, headers: list[tuple[str, str]]) -> str | int:
    """ "snapshot" if the socket got a watchlist, else its close code ("rejected": no handshake)."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=30) as socket:
            message = json.loads(await asyncio.wait_for(socket.recv(), 30))
            return "snapshot" if message["type"] == "watchlist_snapshot" else message["type"]
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else "closed"
    except InvalidStatus:
        return "rejected"


@pytest.mark.django_db(transaction=True)
def test_no_socket_subscribes_to_another_users_account(
    daphne_server, victims_account, intruders_account, other_user
):
    session = session_client(other_user).cookies["sessionid"].value
    doors = {
        "token": [("Authorization", f"Token {AuthToken.objects.create(user=other_user)[1]}")],
        "session": [("Cookie", f"sessionid={session}"), ("Origin", daphne_server.url)],
    }
    for door, headers in doors.items():
        own_url = daphne_server.ws_url(f"/ws/watchlist/?account={intruders_account.id}")
        own = asyncio.run(socket_outcome(own_url, headers))
        assert own == "snapshot", door  # the door works: the intruder's own account opens
        for account_id in guessed_ids(victims_account):
            url = daphne_server.ws_url(f"/ws/watchlist/?account={account_id}")
            assert asyncio.run(socket_outcome(url, headers)) in (4403, "rejected"), (door, account_id)


# --- admin ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_shows_no_account_to_a_user_who_is_not_staff(client, victims_account, other_user):
    client.force_login(other_user)
    watchlist = Watchlist.objects.get(account=victims_account)
    pages = [
        "/admin/",
        "/admin/trading/brokeraccount/",
        f"/admin/trading/brokeraccount/{victims_account.id}/change/",
        f"/admin/watchlist/watchlist/{watchlist.id}/change/",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), page


@pytest.mark.django_db
def test_staff_without_permissions_sees_no_account_in_the_admin(client, victims_account):
    staff = get_user_model().objects.create_user("helpdesk", password="helpdesk-pass-123", is_staff=True)
    client.force_login(staff)
    response = client.get(f"/admin/trading/brokeraccount/{victims_account.id}/change/")
    assert response.status_code == 403
    assert VICTIM_CANO not in client.get("/admin/").content.decode()
