"""The trade endpoints over HTTP (Django test client), on the in-memory broker: every status code,
every field error, authentication, CSRF and the JSON-only error shape."""

from __future__ import annotations

import json

import pytest
from django.db import OperationalError
from rest_framework.test import APIClient

from trading.brokers.base import (
    BadBrokerResponse,
    BrokerTimeout,
    BrokerUnavailable,
    BrokerUnreachable,
    ClientRateLimited,
    NotSent,
    OrderRejected,
    RateLimited,
    SentButUnconfirmed,
)
from trading.models import Order
from watchlist.models import SyncState, Watchlist, WatchlistItem
from watchlist.services import sync_and_record

pytestmark = pytest.mark.django_db

BUY = "/execute-buy/005930"
SELL = "/execute-sell/005930"


def post(client: APIClient, path: str, body=None, **extra):
    return client.post(
        path, data=json.dumps(body if body is not None else {}), content_type="application/json", **extra
    )


def items(account) -> dict[str, WatchlistItem]:
    return {item.stock_code: item for item in WatchlistItem.objects.filter(watchlist__account=account)}


def assert_trade_shape(response, *, stock_code="005930"):
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["success"], bool) and isinstance(body["message"], str) and body["message"]
    assert body["stock_code"] == stock_code and "qty" in body
    return body


@pytest.fixture
def synced(account, memory_broker):
    """The account holds 10 x 005930 and 5 x 000660, and the watchlist has synced with it."""
    memory_broker.set_holdings({"005930": (10, 70_000.0), "000660": (5, 180_000.0)})
    sync_and_record(account, memory_broker)
    return account


# --- 200 -----------------------------------------------------------------------------------------


def test_buy_places_one_order_and_adds_a_pending_item(api, account, memory_broker, sync_requests):
    response = post(api, BUY, {"qty": 10})

    assert response.status_code == 200
    body = assert_trade_shape(response)
    assert body["success"] is True and body["qty"] == 10
    assert body["order_id"] == memory_broker.orders[0]["order_no"]
    assert body["watchlist_version"] == Watchlist.objects.get(account=account).version == 1
    assert [o | {} for o in memory_broker.orders] == [
        {"order_no": body["order_id"], "stock_code": "005930", "side": "buy", "qty": 10, "price": None}
    ]
    item = items(account)["005930"]
    assert (item.quantity, item.pending) == (10, True)
    assert sync_requests == [account.id]  # the reconciling sync
    order = Order.objects.get()
    assert (order.status, order.order_no, order.side, order.qty, order.price) == (
        "accepted",
        body["order_id"],
        "buy",
        10,
        None,
    )


@pytest.mark.parametrize("path", ["/execute-buy/005930", "/execute-buy/005930/"])
def test_both_path_forms_are_answered_directly(api, account, memory_broker, sync_requests, path):
    response = post(api, path, {"qty": 1, "price": 70_000})
    assert response.status_code == 200, response.content
    assert memory_broker.orders[0]["price"] == 70_000


@pytest.mark.parametrize("path", ["/execute-sell/005930", "/execute-sell/005930/"])
def test_sell_path_forms_are_answered_directly(api, synced, memory_broker, sync_requests, path):
    assert post(api, path, {"qty": 1}).status_code == 200


def test_full_sell_removes_the_item(api, synced, memory_broker, sync_requests):
    response = post(api, SELL, {"qty": 10, "account": synced.id})
    assert response.status_code == 200, response.content
    assert "005930" not in items(synced) and "000660" in items(synced)
    assert response.json()["watchlist_version"] == Watchlist.objects.get(account=synced).version


def test_partial_sell_lowers_the_quantity(api, synced, memory_broker, sync_requests):
    response = post(api, SELL, {"qty": 4})
    assert response.status_code == 200, response.content
    item = items(synced)["005930"]
    assert (item.quantity, item.pending) == (6, True)


def test_the_account_field_picks_one_of_the_users_accounts(
    api, user, account, make_account, memory_broker, sync_requests
):
    second = make_account(user, cano="50999999")
    response = post(api, BUY, {"qty": 2, "account": second.id})
    assert response.status_code == 200
    assert items(second)["005930"].quantity == 2 and not items(account)


# --- 400 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"qty": 0}, "qty"),
        ({"qty": -1}, "qty"),
        ({"qty": 1.5}, "qty"),
        ({"qty": 1.0}, "qty"),
        ({"qty": "10"}, "qty"),
        ({"qty": True}, "qty"),
        ({"qty": None}, "qty"),
        ({"qty": [1]}, "qty"),
        ({"qty": {"n": 1}}, "qty"),
        ({"qty": 1_000_001}, "qty"),
        ({"qty": 10**40}, "qty"),
        ({}, "qty"),
        ({"qty": 1, "price": 0}, "price"),
        ({"qty": 1, "price": -5}, "price"),
        ({"qty": 1, "price": "abc"}, "price"),
        ({"qty": 1, "price": "70000"}, "price"),
        ({"qty": 1, "price": 70_000.5}, "price"),
        ({"qty": 1, "price": False}, "price"),
        ({"qty": 1, "price": 10**30}, "price"),
        ({"qty": 1, "account": "1"}, "account"),
        ({"qty": 1, "account": True}, "account"),
        ({"qty": 1, "account": 0}, "account"),
        ({"qty": 1, "account": 10**30}, "account"),
    ],
)
def test_each_bad_field_is_named_and_nothing_reaches_the_broker(api, account, memory_broker, body, field):
    response = post(api, BUY, body)

    assert response.status_code == 400, response.content
    result = assert_trade_shape(response)
    assert result["success"] is False
    assert list(result["errors"]) == [field]
    assert field in result["message"]
    assert memory_broker.place_order_calls == [] and not Order.objects.exists()


@pytest.mark.parametrize("code", ["5930", "00593a", "ABCDEFG", "005930 ", "００５９３０", "%2e%2e", "0059-0"])
def test_bad_stock_codes_in_the_path_are_refused_with_the_reason(api, account, memory_broker, code):
    response = post(api, f"/execute-buy/{code}", {"qty": 1})

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["success"] is False and body["qty"] == 1
    assert "6 characters" in body["errors"]["stock_code"][0] and "6 characters" in body["message"]
    assert memory_broker.place_order_calls == []


def test_an_empty_stock_code_is_refused(api, account, memory_broker):
    response = post(api, "/execute-sell/", {"qty": 1})
    assert response.status_code == 400 and "stock_code" in response.json()["errors"]


def test_code_and_body_errors_are_reported_together(api, account, memory_broker):
    response = post(api, "/execute-buy/5930", {"qty": 0, "price": "abc"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"stock_code", "qty", "price"}


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        ('{"qty": 1', "application/json", 400),
        ("{'qty': 1}", "application/json", 400),
        ('{"qty": NaN}', "application/json", 400),
        ('{"qty": 1e999}', "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ('"qty"', "application/json", 400),
        ("null", "application/json", 400),
        ("", "application/json", 400),
        ("[" * 100_000 + "]" * 100_000, "application/json", 400),
        ("\xff\xfe", "application/json", 400),
        ("qty=1", "application/x-www-form-urlencoded", 415),
        ("qty=1", "text/plain", 415),
    ],
)
def test_malformed_bodies_answer_json_never_500(api, account, memory_broker, raw, content_type, status):
    response = api.generic("POST", BUY, raw.encode("utf-8", "surrogatepass"), content_type=content_type)

    assert response.status_code == status, response.content
    body = assert_trade_shape(response)
    assert body["success"] is False and body["qty"] is None
    assert memory_broker.place_order_calls == []


def test_a_bad_idempotency_key_is_refused(api, account, memory_broker):
    response = post(api, BUY, {"qty": 1}, HTTP_IDEMPOTENCY_KEY="k" * 256)
    assert response.status_code == 400 and "idempotency_key" in response.json()["errors"]
    assert memory_broker.place_order_calls == []


# --- 401 / 403 -----------------------------------------------------------------------------------


def test_unauthenticated_requests_are_refused_as_json(account, memory_broker):
    response = post(APIClient(), BUY, {"qty": 1})
    assert response.status_code == 401
    body = assert_trade_shape(response)
    assert body["success"] is False and body["qty"] == 1
    assert memory_broker.place_order_calls == []


def test_a_wrong_token_is_refused(account, memory_broker):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    assert post(client, BUY, {"qty": 1}).status_code == 401
    assert memory_broker.place_order_calls == []


def test_session_authentication_enforces_csrf(user, account, memory_broker, sync_requests):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)

    refused = post(browser, BUY, {"qty": 1})
    assert refused.status_code == 403 and "CSRF" in refused.json()["message"]
    assert memory_broker.place_order_calls == []

    browser.get("/accounts/login/")  # sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    assert post(browser, BUY, {"qty": 1}, HTTP_X_CSRFTOKEN=token).status_code == 200
    assert len(memory_broker.orders) == 1


# --- 404 -----------------------------------------------------------------------------------------


def test_another_users_account_is_not_found_and_nothing_is_placed(intruder_api, account, memory_broker):
    for path in (BUY, SELL):
        response = post(intruder_api, path, {"qty": 1, "account": account.id})
        assert response.status_code == 404
        assert assert_trade_shape(response)["success"] is False
    assert memory_broker.place_order_calls == [] and not Order.objects.exists()
    assert not WatchlistItem.objects.exists()


def test_a_user_without_accounts_gets_404(intruder_api, account, memory_broker):
    response = post(intruder_api, BUY, {"qty": 1})
    assert response.status_code == 404 and "no brokerage account" in response.json()["message"]


def test_an_unknown_account_id_gets_404(api, account, memory_broker):
    assert post(api, BUY, {"qty": 1, "account": account.id + 1000}).status_code == 404


@pytest.mark.parametrize(
    "path", ["/api/nothing", "/api/", "/execute-buy", "/execute-buy/005930/extra", "/api/watchlist/x"]
)
def test_unknown_api_paths_are_json_404s(api, path):
    response = api.get(path)
    assert response.status_code == 404 and response.json()["success"] is False


def test_wrong_method_is_json_405(api, account):
    response = api.get(BUY)
    assert response.status_code == 405
    assert assert_trade_shape(response)["success"] is False


# --- 409 -----------------------------------------------------------------------------------------


def test_selling_more_than_the_watchlist_holds_is_409_without_an_order(
    api, synced, memory_broker, sync_requests
):
    response = post(api, SELL, {"qty": 11})

    assert response.status_code == 409
    body = assert_trade_shape(response)
    assert body["success"] is False and "holds 10" in body["message"]
    assert memory_broker.place_order_calls == []
    assert items(synced)["005930"].quantity == 10


def test_selling_a_code_not_held_is_409(api, synced, memory_broker):
    assert post(api, "/execute-sell/035420", {"qty": 1}).status_code == 409
    assert memory_broker.place_order_calls == []


def test_the_brokers_own_orderable_quantity_refusal_is_409(api, account, memory_broker, sync_requests):
    # Never synced: the watchlist has nothing to go by, so the broker decides.
    response = post(api, SELL, {"qty": 3})

    assert response.status_code == 409
    body = assert_trade_shape(response)
    assert body["broker_code"] == "APBK0400" and "주문가능수량" in body["message"]
    assert len(memory_broker.place_order_calls) == 1 and not WatchlistItem.objects.exists()
    assert Order.objects.get().status == "rejected"


# --- 502 -----------------------------------------------------------------------------------------


def test_a_rejected_order_is_502_with_the_brokers_code_and_no_watchlist_change(
    api, synced, memory_broker, sync_requests
):
    version = Watchlist.objects.get(account=synced).version
    memory_broker.fail_with = OrderRejected("모의투자 장종료 입니다.", msg_cd="40580000")

    response = post(api, BUY, {"qty": 1})

    assert response.status_code == 502
    body = assert_trade_shape(response)
    assert body["success"] is False and body["broker_code"] == "40580000" and "장종료" in body["message"]
    assert "order_id" not in body and "watchlist_version" not in body
    assert Watchlist.objects.get(account=synced).version == version
    assert items(synced)["005930"].quantity == 10 and sync_requests == []
    assert (Order.objects.get().status, Order.objects.get().broker_code) == ("rejected", "40580000")


NOT_SENT = [
    BrokerUnreachable("KIS cannot be reached for VTTC0012U (ConnectError)"),
    ClientRateLimited("more than 10s of calls are already queued for this app key"),
    NotSent("no KIS access token for the order (timeout): KIS did not answer tokenP within 5s"),
    RateLimited("초당 거래건수를 초과하였습니다.", msg_cd="EGW00201"),  # KIS's gateway turned it away
]
MAYBE_SENT = [
    BrokerTimeout("no answer in 5 s"),
    SentButUnconfirmed("the call VTTC0012U to KIS failed (ReadError)"),
    BrokerUnavailable("KIS answered HTTP 500 to VTTC0012U"),
    BadBrokerResponse("KIS accepted the order but its answer has no order number (ODNO)"),
    RateLimited("a rate limit without KIS's code"),  # not known to come from the gateway
]


@pytest.mark.parametrize("error", NOT_SENT, ids=lambda error: type(error).__name__)
def test_an_order_that_never_left_or_was_turned_away_is_not_placed(
    api, account, memory_broker, sync_requests, error
):
    memory_broker.fail_with = error
    response = post(api, BUY, {"qty": 1})

    assert response.status_code == 502
    body = assert_trade_shape(response)
    assert body["success"] is False and body["outcome"] == "unreachable" and "not placed" in body["message"]
    assert len(memory_broker.place_order_calls) == 1
    assert not WatchlistItem.objects.exists() and sync_requests == []
    assert Order.objects.get().status == "failed"


@pytest.mark.parametrize("error", MAYBE_SENT, ids=lambda error: type(error).__name__)
def test_an_order_that_may_have_left_is_502_state_unknown_queues_a_sync_and_is_not_retried(
    api, account, memory_broker, sync_requests, error
):
    memory_broker.fail_with = error
    response = post(api, BUY, {"qty": 1})

    assert response.status_code == 502
    body = assert_trade_shape(response)
    assert body["outcome"] == "state_unknown" and "unknown" in body["message"]
    assert "not placed" not in body["message"]
    assert len(memory_broker.place_order_calls) == 1
    assert sync_requests == [account.id]
    assert Order.objects.get().status == "unknown"


def test_the_order_row_exists_before_the_request_leaves(
    api, account, memory_broker, sync_requests, monkeypatch
):
    seen: list[tuple] = []

    def place_order(*args, **kwargs):
        seen.extend(Order.objects.values_list("stock_code", "qty", "status"))
        raise SystemExit("the process dies while the request is out")

    monkeypatch.setattr(memory_broker, "place_order", place_order)
    with pytest.raises(SystemExit):
        post(api, BUY, {"qty": 3})
    assert seen == [("005930", 3, "sending")]
    assert Order.objects.get().status == "sending"  # the trace of an order that may exist


def test_an_order_that_cannot_be_recorded_is_not_sent(
    api, account, memory_broker, sync_requests, monkeypatch
):
    def no_database(*args, **kwargs):
        raise OperationalError("the database is down")

    monkeypatch.setattr(Order.objects, "create", no_database)
    response = post(api, BUY, {"qty": 1})
    assert response.status_code == 503
    assert memory_broker.place_order_calls == []


def test_an_adapter_bug_is_treated_as_state_unknown(api, account, memory_broker, sync_requests, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("ODNO")

    monkeypatch.setattr(memory_broker, "place_order", broken)
    response = post(api, BUY, {"qty": 1})
    assert response.status_code == 502 and "unknown" in response.json()["message"]
    assert sync_requests == [account.id]


# --- Authentication endpoints ------------------------------------------------------------------


def test_token_for_username_and_password(user, redis_client):
    response = APIClient().post(
        "/api/auth/token/", {"username": "trader", "password": "trader-pass-123"}, format="json"
    )
    assert response.status_code == 200
    assert set(response.json()) == {"token", "expiry"} and len(response.json()["token"]) == 64
    no_slash = APIClient().post(
        "/api/auth/token", {"username": "trader", "password": "trader-pass-123"}, format="json"
    )
    assert (
        no_slash.status_code == 200 and no_slash.json()["token"] != response.json()["token"]
    )  # one per client


def test_bad_credentials_are_400_json(user, redis_client):
    response = APIClient().post("/api/auth/token/", {"username": "trader", "password": "nope"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False and "token" not in body and body["message"]


def test_password_guessing_is_throttled(user, redis_client):
    client = APIClient()
    statuses = [
        client.post(
            "/api/auth/token/", {"username": "trader", "password": f"guess-{n}"}, format="json"
        ).status_code
        for n in range(21)
    ]
    assert statuses[:20] == [400] * 20 and statuses[20] == 429
    throttled = client.post(
        "/api/auth/token/", {"username": "trader", "password": "trader-pass-123"}, format="json"
    )
    assert throttled.status_code == 429 and throttled.json()["success"] is False


def test_the_login_form_is_throttled(user, redis_client):
    statuses = [
        APIClient().post("/accounts/login/", {"username": "trader", "password": f"guess-{n}"}).status_code
        for n in range(21)
    ]
    assert 429 not in statuses[:20] and statuses[20] == 429


# --- Watchlist endpoints -------------------------------------------------------------------------


def test_watchlist_snapshot(api, synced):
    for path in ("/api/watchlist/", "/api/watchlist"):
        response = api.get(path)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"account", "version", "timestamp", "full_list", "totals", "sync"}
        assert body["account"] == {"id": synced.id, "name": synced.display_name, "number": "50123456-01"}
        assert [item["stock_code"] for item in body["full_list"]] == ["000660", "005930"]
        assert body["sync"]["status"] == "ok"


def test_watchlist_snapshot_picks_an_account_and_refuses_others(
    api, intruder_api, user, account, make_account
):
    second = make_account(user, cano="50999999")
    assert api.get(f"/api/watchlist/?account={second.id}").json()["account"]["id"] == second.id
    assert api.get("/api/watchlist/?account=abc").status_code == 400
    assert api.get(f"/api/watchlist/?account={10**30}").status_code == 400
    refused = intruder_api.get(f"/api/watchlist/?account={account.id}")
    assert refused.status_code == 404 and refused.json()["success"] is False
    assert APIClient().get("/api/watchlist/").status_code == 401


def test_sync_now_answers_the_snapshot_and_the_changes(api, account, memory_broker):
    memory_broker.set_holdings({"005930": 3})
    for path in ("/api/watchlist/sync/", "/api/watchlist/sync"):
        response = api.post(path)
        assert response.status_code == 200, response.content
    body = response.json()
    assert body["changes"] == {"added": [], "removed": [], "updated": []}
    assert [item["stock_code"] for item in body["full_list"]] == ["005930"] and body["version"] == 1
    assert body["sync"]["status"] == "ok"


@pytest.mark.django_db(transaction=True)
def test_sync_now_during_a_running_sync_answers_holdings_changed_before_the_request(
    user, account, monkeypatch, redis_client
):
    """The running sync read the account before the change; the manual sync's answer comes from a read
    that began after the request, not from that one."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from tests.fixtures.trade import token_client
    from tests.watchlist.test_concurrency import StaleReadBroker

    broker = StaleReadBroker()
    monkeypatch.setattr("trading.brokers.broker_for", lambda account: broker)
    broker.set_holdings({"005930": 3})
    sync_and_record(account, broker)
    broker.hold_reads = True

    def running_sync():
        try:
            return sync_and_record(account, broker)
        finally:
            connection.close()

    def manual_sync():
        try:
            return token_client(user).post("/api/watchlist/sync/")
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(running_sync)
        assert broker.read_taken.wait(30)  # its read is taken: 3 x 005930
        broker.hold_reads = False
        broker.set_holdings({"005930": 3, "000660": 7})  # changed before the manual sync is asked for
        manual = pool.submit(manual_sync)
        threading.Event().wait(0.2)  # the manual sync finds the running one (it cannot end yet)
        broker.release.set()
        running.result(30)
        response = manual.result(30)
    assert response.status_code == 200, response.content
    assert {item["stock_code"]: item["quantity"] for item in response.json()["full_list"]} == {
        "005930": 3,
        "000660": 7,
    }


def test_sync_now_is_503_with_retry_after_when_no_read_can_begin_in_time(
    api, account, memory_broker, settings, redis_client
):
    from watchlist.jobs import request_sync
    from watchlist.locks import sync_in_progress

    settings.WATCHLIST_MANUAL_SYNC_WAIT = 0.1
    with sync_in_progress(account.id, on_sync_wanted=request_sync) as acquired:
        assert acquired  # a sync whose read never ends in time
        response = api.post("/api/watchlist/sync/")
    assert response.status_code == 503 and response.json()["success"] is False
    assert int(response["Retry-After"]) >= 1


def test_a_failed_sync_now_is_502_and_recorded(api, account, memory_broker):
    memory_broker.fail_with = BrokerUnavailable("HTTP 500 from the broker")
    response = api.post(f"/api/watchlist/sync/?account={account.id}")
    assert response.status_code == 502
    assert response.json()["success"] is False
    assert SyncState.objects.get(account=account).consecutive_failures == 1


# --- 503 -----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_is_503_json(user, account, memory_broker, monkeypatch, redis_client):
    from django.db import connection

    from tests.fixtures.trade import token_client

    client = token_client(user)
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")  # nothing listens there

    trade = post(client, BUY, {"qty": 1})
    snapshot = client.get("/api/watchlist/")
    token = APIClient().post(
        "/api/auth/token/", {"username": "trader", "password": "trader-pass-123"}, format="json"
    )

    assert trade.status_code == 503
    assert assert_trade_shape(trade)["success"] is False and "database" in trade.json()["message"]
    for response in (snapshot, token):
        assert response.status_code == 503 and response.json()["success"] is False
    assert memory_broker.place_order_calls == []
    connection.close()


def test_a_trade_goes_through_at_once_while_a_sync_of_its_account_runs(
    api, account, memory_broker, redis_client
):
    from watchlist.jobs import request_sync
    from watchlist.locks import sync_in_progress

    with sync_in_progress(account.id, on_sync_wanted=request_sync) as acquired:
        assert acquired  # a sync holds its lock for as long as its read takes
        response = post(api, BUY, {"qty": 1})
    assert response.status_code == 200, response.content
    assert len(memory_broker.place_order_calls) == 1


def test_djangos_own_error_pages_are_json_under_the_api_paths(rf):
    from config.exceptions import page_not_found, server_error

    for path in ("/api/watchlist/", "/execute-buy/005930"):
        for response, status in (
            (server_error(rf.post(path)), 500),
            (page_not_found(rf.get(path), None), 404),
        ):
            assert response.status_code == status and json.loads(response.content)["success"] is False
    assert server_error(rf.get("/")).headers["Content-Type"].startswith("text/html")


# --- the trader's language -----------------------------------------------------------------------

MACHINE_FIELDS = ("success", "stock_code", "qty", "broker_code")


def test_a_trade_answer_is_korean_by_default_and_english_when_asked(
    user, account, memory_broker, sync_requests
):
    from tests.fixtures.trade import token_client

    korean = post(token_client(user, accept_language=None), BUY, {"qty": 3}).json()
    english = post(
        token_client(user, accept_language="en-US,en;q=0.9,ko;q=0.8"), BUY, {"qty": 3, "price": 70_000}
    ).json()
    explicit_korean = post(
        token_client(user, accept_language="ko-KR,ko;q=0.9,en;q=0.8"), SELL, {"qty": 1}
    ).json()

    assert (
        korean["message"]
        == f"매수 주문 3주(005930, 시장가)가 접수되었습니다 (주문번호 {korean['order_id']})."
    )
    assert (
        english["message"]
        == f"The buy order for 3 of 005930 at 70,000 KRW was accepted (order {english['order_id']})."
    )
    assert explicit_korean["message"] == (
        f"매도 주문 1주(005930, 시장가)가 접수되었습니다 (주문번호 {explicit_korean['order_id']})."
    )
    assert [{field: answer.get(field) for field in MACHINE_FIELDS} for answer in (korean, english)] == [
        {"success": True, "stock_code": "005930", "qty": 3, "broker_code": None}
    ] * 2


def test_a_brokers_refusal_keeps_its_words_and_code_in_either_language(user, account, memory_broker):
    from tests.fixtures.trade import token_client

    memory_broker.fail_with = OrderRejected("모의투자 장종료 입니다.", msg_cd="40580000")
    korean = post(token_client(user, accept_language=None), BUY, {"qty": 1}).json()
    memory_broker.fail_with = OrderRejected("모의투자 장종료 입니다.", msg_cd="40580000")
    english = post(token_client(user), BUY, {"qty": 1}).json()

    assert korean["message"] == "증권사가 주문을 거부했습니다: 모의투자 장종료 입니다."
    assert english["message"] == "The broker rejected the order: 모의투자 장종료 입니다."
    assert korean["broker_code"] == english["broker_code"] == "40580000"


def test_field_errors_are_korean_by_default_and_english_when_asked(user, account, memory_broker):
    from tests.fixtures.trade import token_client

    korean = post(token_client(user, accept_language=None), "/execute-buy/5930", {"qty": 0, "price": "x"})
    english = post(token_client(user), "/execute-buy/5930", {"qty": 0, "price": "x"})

    assert korean.status_code == english.status_code == 400
    korean, english = korean.json(), english.json()
    assert korean["errors"] == {
        "stock_code": ["종목코드는 숫자나 영문 대문자 6자리입니다 (예: 005930)."],
        "qty": ["수량은 1주에서 1,000,000주 사이로 입력하세요."],
        "price": ["가격은 원 단위 정수로 입력하세요."],
    }
    assert english["errors"] == {
        "stock_code": ["A stock code is exactly 6 characters, digits or upper-case letters (e.g. 005930)."],
        "qty": ["Quantity must be between 1 and 1,000,000."],
        "price": ["Price must be a whole number of KRW."],
    }
    assert korean["message"].startswith("입력값이 올바르지 않습니다. stock_code: 종목코드는")
    assert english["message"].startswith("Invalid input. stock_code: A stock code")
    assert korean["success"] is english["success"] is False
    assert memory_broker.place_order_calls == []


def test_an_error_of_the_api_layer_follows_the_language_too(user, account):
    from tests.fixtures.trade import token_client

    # DRF's own texts come from its catalogues.
    korean = token_client(user, accept_language=None).get("/api/watchlist/?account=x").json()
    english = token_client(user).get("/api/watchlist/?account=x").json()
    assert english["errors"] == {"account": ["A valid integer is required."]}
    assert list(korean["errors"]) == ["account"] and korean["errors"] != english["errors"]
    assert token_client(user).get("/api/nothing").json()["message"] == "No API endpoint at /api/nothing."
    assert token_client(user, accept_language=None).get("/api/nothing").json()["message"] == (
        "/api/nothing 주소에는 API가 없습니다."
    )
