"""PostgreSQL unavailable for about 10 s (a proxy of ours between the application and the shared server
refuses connections and drops the open ones): the API answers 503 in its JSON error shape, never a
500 or an HTML page, and everything recovers by itself when the database is back."""

import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from devtools.processes import wait_for
from devtools.proxy import TcpProxy
from tests.fixtures import servers
from watchlist.models import SyncState

from .conftest import WAIT, api_token, wait_in_step

pytestmark = pytest.mark.django_db(transaction=True)

OUTAGE = 10  # seconds the database stays away
CANO = "52000001"


@pytest.fixture
def database_proxy():
    database = connection.settings_dict
    proxy = TcpProxy(database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432))
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def system_env(system_env, database_proxy):
    """The application reaches the test database only through the proxy, with persistent connections
    (the harder case: every pooled connection breaks in the outage)."""
    parts = urlsplit(servers.test_database_url())
    through_proxy = parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{database_proxy.port}")
    return system_env | {"DATABASE_URL": urlunsplit(through_proxy), "DATABASE_CONN_MAX_AGE": "60"}


@pytest.fixture
def account(user, make_account, simulator):
    simulator.set_holdings(CANO, [{"stock_code": "005930", "quantity": 10, "avg_price": 71000}])
    return make_account(user, cano=CANO, base_url=simulator.url)


def signed_in(server) -> httpx.Client:
    """A browser-like client signed in through the login form (session cookie, CSRF)."""
    browser = httpx.Client(base_url=server.url, timeout=60)
    browser.get("/accounts/login/")
    signed = browser.post(
        "/accounts/login/",
        data={
            "username": "trader",
            "password": "trader-pass-123",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
    )
    assert signed.status_code == 302, signed.text
    return browser


def is_json_error(response: httpx.Response) -> bool:
    is_json = response.headers.get("content-type", "").startswith("application/json")
    return is_json and response.json()["success"] is False


def test_the_api_answers_503_in_json_while_the_database_is_away_and_recovers(
    account, simulator, system, database_proxy
):
    server = system.daphne()
    system.worker()
    system.beat()
    wait_in_step([account], simulator, system)
    token = api_token(server, "trader", "trader-pass-123")
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=60)
    browser = signed_in(server)
    assert api.get("/api/watchlist/").status_code == browser.get("/api/watchlist/").status_code == 200

    database_proxy.cut()
    answers = []
    outage_ends = time.monotonic() + OUTAGE
    while time.monotonic() < outage_ends:
        answers += [
            api.get("/api/watchlist/"),
            api.post("/execute-buy/005930", json={"qty": 1}),
            api.post("/api/watchlist/sync/"),
            browser.get("/api/watchlist/"),
        ]
        time.sleep(0.5)
    database_proxy.restore()
    restored_at = timezone.now()

    assert answers and all(answer.status_code == 503 and is_json_error(answer) for answer in answers), [
        (answer.request.url.path, answer.status_code, answer.text[:200])
        for answer in answers
        if answer.status_code != 503 or not is_json_error(answer)
    ]
    assert all(answer.headers.get("retry-after") for answer in answers)

    # Back: the API answers again (a broken pooled connection may cost one more 503 first), trades
    # go through, and the periodic sync resumes on its own.
    wait_for(lambda: api.get("/api/watchlist/").status_code == 200, WAIT, "the API to answer 200 again")
    bought = api.post("/execute-buy/005930", json={"qty": 1})
    assert bought.status_code == 200, bought.text
    wait_for(
        lambda: SyncState.objects.filter(account=account, last_success_at__gt=restored_at).exists(),
        WAIT,
        "a sync after the database came back",
    )
    wait_in_step([account], simulator, system)
    assert [order["order_no"] for order in simulator.orders(CANO)] == [bought.json()["order_id"]]
