"""Limits on hostile clients. Password guessing is slow on both doors (the token endpoint and the login
form) however the guesser dresses its requests (many usernames from one address, compatibility forms
of one name, a forged X-Forwarded-For), yet no stranger can use the limit to lock a user out. Trades
and manual syncs are throttled above the contract's floor, with a JSON 429 and `Retry-After`."""

import pytest
from rest_framework.test import APIClient

from tests.fixtures.trade import token_client

pytestmark = pytest.mark.django_db

# settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] in tests
PAIR_LIMIT = 20  # "auth": one username from one address, a minute
ADDRESS_LIMIT = 60  # "auth-address": one address, whatever the name, a minute
CREDENTIALS = {"username": "trader", "password": "trader-pass-123"}


@pytest.fixture(autouse=True)
def empty_throttle_cache(redis_client):
    """The throttles count in the Django cache (Redis): every test starts from zero."""


def try_token(client: APIClient, username: str, password: str = "guess") -> int:
    answer = client.post("/api/auth/token/", {"username": username, "password": password}, format="json")
    return answer.status_code


def try_login_form(client: APIClient, username: str, password: str = "guess") -> int:
    return client.post("/accounts/login/", {"username": username, "password": password}).status_code


DOORS = [try_token, try_login_form]
LOGGED_IN = {try_token: 200, try_login_form: 302}


@pytest.mark.parametrize("attempt", DOORS)
def test_a_forged_forwarded_for_does_not_reset_the_limit(user, attempt):
    """Password spraying: a new username and a new forged client address on every request."""
    statuses = [
        attempt(APIClient(HTTP_X_FORWARDED_FOR=f"203.0.113.{n}"), f"user{n}")
        for n in range(ADDRESS_LIMIT + 1)
    ]
    assert 429 not in statuses[:ADDRESS_LIMIT] and statuses[ADDRESS_LIMIT] == 429


@pytest.mark.parametrize("attempt", DOORS)
def test_one_username_from_one_address_is_limited_in_every_spelling(user, attempt):
    """`ｔｒａｄｅｒ` (full-width) and `Trader` are `trader` to the limit, as NFKC makes them to the form."""
    spellings = ["trader", "ｔｒａｄｅｒ", "Trader", " trader "]
    statuses = [attempt(APIClient(), spellings[n % len(spellings)]) for n in range(PAIR_LIMIT + 1)]
    assert 429 not in statuses[:PAIR_LIMIT] and statuses[PAIR_LIMIT] == 429


@pytest.mark.parametrize("attempt", DOORS)
def test_a_stranger_cannot_lock_a_user_out(user, attempt):
    """Guessing `trader` from many addresses and past the limit from one leaves trader's own door open."""
    stranger = [attempt(APIClient(REMOTE_ADDR="198.51.100.7"), "ｔｒａｄｅｒ") for _ in range(PAIR_LIMIT + 5)]
    botnet = [attempt(APIClient(REMOTE_ADDR=f"198.51.100.{n}"), "trader") for n in range(10, 20)]
    assert stranger[-1] == 429 and 429 not in botnet
    own = attempt(APIClient(REMOTE_ADDR="192.0.2.50"), "trader", CREDENTIALS["password"])
    assert own == LOGGED_IN[attempt]


def test_behind_a_proxy_the_address_it_saw_is_the_one_counted(user, settings):
    settings.REST_FRAMEWORK = settings.REST_FRAMEWORK | {"NUM_PROXIES": 1}
    proxy = "10.0.0.1"

    def from_client(client_address: str, forged: str) -> APIClient:
        # The proxy appends the address it saw to whatever the client sent.
        return APIClient(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=f"{forged}, {client_address}")

    guesser = [
        try_token(from_client("192.0.2.7", f"203.0.113.{n}"), f"user{n}") for n in range(ADDRESS_LIMIT + 1)
    ]
    assert guesser[ADDRESS_LIMIT] == 429
    another_client = try_token(from_client("192.0.2.8", "203.0.113.1"), "someone")
    assert another_client == 400  # refused for its password, not throttled


# --- trades and manual syncs ----------------------------------------------------------------------

TRADES_PER_SECOND, TRADES_PER_MINUTE, SYNCS_PER_MINUTE = 20, 120, 12  # the contract's floor


@pytest.fixture
def frozen_clock(monkeypatch):
    """DRF's throttles read time from their `timer`: a clock the test moves makes 'a second' exact."""
    now = [1_000_000.0]
    monkeypatch.setattr("rest_framework.throttling.SimpleRateThrottle.timer", lambda self: now[0])
    return now


def assert_throttled(response):
    assert response.status_code == 429
    assert response.json()["success"] is False and response.json()["message"]
    assert int(response["Retry-After"]) >= 1


def test_trades_are_refused_beyond_20_a_second_not_below(
    user, account, memory_broker, sync_requests, frozen_clock
):
    api = token_client(user)

    def buy():
        return api.post("/execute-buy/005930", {"qty": 1}, format="json")

    assert {buy().status_code for _ in range(TRADES_PER_SECOND)} == {200}
    assert_throttled(buy())
    assert_throttled(api.post("/execute-sell/005930", {"qty": 1}, format="json"))  # one limit for both sides
    assert len(memory_broker.place_order_calls) == TRADES_PER_SECOND
    frozen_clock[0] += 1.0
    assert buy().status_code == 200


def test_trades_are_refused_beyond_120_a_minute_not_below(
    user, account, memory_broker, sync_requests, frozen_clock
):
    api = token_client(user)
    for _ in range(TRADES_PER_MINUTE // TRADES_PER_SECOND):
        # Invalid orders are answered quickly, and count as trade requests all the same.
        answers = {
            api.post("/execute-buy/005930", {"qty": 0}, format="json").status_code
            for _ in range(TRADES_PER_SECOND)
        }
        assert answers == {400}
        frozen_clock[0] += 1.0
    assert_throttled(api.post("/execute-buy/005930", {"qty": 1}, format="json"))
    assert memory_broker.place_order_calls == []
    frozen_clock[0] += 60
    assert api.post("/execute-buy/005930", {"qty": 1}, format="json").status_code == 200


def test_one_users_trades_do_not_use_up_anothers(
    user, other_user, account, make_account, memory_broker, sync_requests, frozen_clock
):
    make_account(other_user, cano="50999999")
    busy, other = token_client(user), token_client(other_user)
    for _ in range(TRADES_PER_SECOND):
        busy.post("/execute-buy/005930", {"qty": 1}, format="json")
    assert_throttled(busy.post("/execute-buy/005930", {"qty": 1}, format="json"))
    assert other.post("/execute-buy/005930", {"qty": 1}, format="json").status_code == 200


def test_manual_syncs_are_refused_beyond_12_a_minute_per_account_not_below(
    user, account, make_account, memory_broker, frozen_clock
):
    second_account = make_account(user, cano="50999999")
    api = token_client(user)
    by_default = [api.post("/api/watchlist/sync/") for _ in range(SYNCS_PER_MINUTE // 2)]
    by_id = [api.post(f"/api/watchlist/sync/?account={account.id}") for _ in range(SYNCS_PER_MINUTE // 2)]
    assert {answer.status_code for answer in by_default + by_id} == {200}
    # The first account, however it is named (its id written otherwise too), has had its 12.
    for path in ("/api/watchlist/sync/", f"/api/watchlist/sync/?account=0{account.id}"):
        assert_throttled(api.post(path))
    assert api.post(f"/api/watchlist/sync/?account={second_account.id}").status_code == 200
    frozen_clock[0] += 60
    assert api.post("/api/watchlist/sync/").status_code == 200
