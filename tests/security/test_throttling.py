"""Password guessing is slow on both doors (the token endpoint and the login form), however the guesser
dresses its requests: many usernames from one address, one username from many addresses, or a forged
X-Forwarded-For on every request. (The plain cases are in tests/trading/test_api.py.)"""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

LIMIT = 20  # settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["auth"] in tests: 20/min


@pytest.fixture(autouse=True)
def empty_throttle_cache(redis_client):
    """The throttles count in the Django cache (Redis): every test starts from zero."""


def try_token(client: APIClient, username: str) -> int:
    answer = client.post("/api/auth/token/", {"username": username, "password": "guess"}, format="json")
    return answer.status_code


def try_login_form(client: APIClient, username: str) -> int:
    return client.post("/accounts/login/", {"username": username, "password": "guess"}).status_code


@pytest.mark.parametrize("attempt", [try_token, try_login_form])
def test_a_forged_forwarded_for_does_not_reset_the_limit(user, attempt):
    """Password spraying: a new username and a new forged client address on every request."""
    statuses = [attempt(APIClient(HTTP_X_FORWARDED_FOR=f"203.0.113.{n}"), f"user{n}")
                for n in range(LIMIT + 1)]
    assert 429 not in statuses[:LIMIT] and statuses[LIMIT] == 429


@pytest.mark.parametrize("attempt", [try_token, try_login_form])
def test_one_username_from_many_addresses_is_limited(user, attempt):
    statuses = [attempt(APIClient(REMOTE_ADDR=f"198.51.100.{n}"), "trader") for n in range(LIMIT + 1)]
    assert statuses[LIMIT] == 429


def test_behind_a_proxy_the_address_it_saw_is_the_one_counted(user, settings):
    settings.REST_FRAMEWORK = settings.REST_FRAMEWORK | {"NUM_PROXIES": 1}
    proxy = "10.0.0.1"

    def from_client(client_address: str, forged: str) -> APIClient:
        # The proxy appends the address it saw to whatever the client sent.
        return APIClient(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=f"{forged}, {client_address}")

    guesser = [try_token(from_client("192.0.2.7", f"203.0.113.{n}"), f"user{n}") for n in range(LIMIT + 1)]
    assert guesser[LIMIT] == 429
    another_client = try_token(from_client("192.0.2.8", "203.0.113.1"), "someone")
    assert another_client == 400  # refused for its password, not throttled
