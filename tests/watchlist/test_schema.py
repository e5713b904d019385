"""The OpenAPI schema, its offline docs page, and generated input against every endpoint: no 5xx.

Schemathesis generates requests from the schema (valid and invalid ones) and checks each answer
against the schema; a Hypothesis test sends arbitrary JSON and arbitrary path codes on top.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import schemathesis
from django.contrib.staticfiles import finders
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from knox.models import AuthToken
from rest_framework.test import APIClient
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from trading.brokers.base import MAX_ORDER_PRICE, MAX_ORDER_QTY

pytestmark = pytest.mark.django_db

SWAGGER_BUNDLE = "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"
TRADE_STATUSES = {"200", "400", "401", "403", "404", "409", "429", "502", "503"}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_the_schema_is_openapi_3_and_describes_every_endpoint():
    response = APIClient().get("/api/schema/?format=json")

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for side in ("buy", "sell"):
        operation = paths[f"/execute-{side}/{{stock_code}}/"]["post"]
        assert set(operation["responses"]) == TRADE_STATUSES
        parameters = {p["name"]: p for p in operation["parameters"]}
        assert set(parameters) == {"stock_code", "Idempotency-Key"}
        assert parameters["stock_code"]["schema"]["pattern"] == "^[0-9A-Z]{6}$"
        body = schema["components"]["schemas"]["TradeRequest"]
        assert body["required"] == ["qty"]
        assert (body["properties"]["qty"]["minimum"], body["properties"]["qty"]["maximum"]) == (
            1,
            MAX_ORDER_QTY,
        )
    assert {"/api/auth/token/", "/api/auth/token/revoke/", "/api/watchlist/", "/api/watchlist/sync/"} <= set(
        paths
    )
    assert {"429", "502"} <= set(paths["/api/watchlist/sync/"]["post"]["responses"])


def test_the_schema_answers_without_the_slash_too():
    assert APIClient().get("/api/schema").status_code == 200


def test_the_docs_page_serves_swagger_ui_from_this_server():
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert f"/static/{SWAGGER_BUNDLE}" in page and 'url: "/api/schema"' in page
    assert "cdn." not in page and "jsdelivr" not in page and "unpkg" not in page
    assert finders.find(SWAGGER_BUNDLE)


def test_the_docs_page_works_in_a_browser_without_the_internet(live_server):
    """Chromium with every request off this server refused: Swagger UI still renders the operations."""
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()

            def only_this_server(route):
                if route.request.url.startswith(live_server.url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_this_server)
            page.goto(f"{live_server.url}/api/docs/")
            page.get_by_text("/execute-buy/{stock_code}/").first.wait_for(timeout=30_000)
        finally:
            browser.close()
    assert outside == []


# --- generated input ------------------------------------------------------------------------------


@pytest.fixture
def token(user, account, memory_broker, sync_requests) -> str:
    memory_broker.set_holdings({"005930": 100})
    return AuthToken.objects.create(user=user)[1]


# Loaded at collection through the WSGI app: generating the schema needs no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture
def wsgi_on_test_connection(db):
    """Django closes the database connection around each real request; the WSGI app here runs in
    the test's thread and transaction, so it must keep that connection."""
    request_signals = (signals.request_started, signals.request_finished)
    for signal in request_signals:
        signal.disconnect(close_old_connections)
    yield
    for signal in request_signals:
        signal.connect(close_old_connections)


@schema.parametrize()
@FUZZ
def test_generated_requests_never_get_a_server_error_and_match_the_schema(
    case, token, wsgi_on_test_connection, redis_client
):
    response = case.call(headers={"Authorization": f"Token {token}"})
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
# Valid requests often enough (2 branches in 4) to get past validation to the service and the broker.
valid_codes = st.sampled_from(["005930", "000660", "0088M0"])
codes = st.one_of(valid_codes, valid_codes, st.text(max_size=10))
valid_bodies = st.fixed_dictionaries(
    {"qty": st.integers(1, 50)}, optional={"price": st.integers(1, MAX_ORDER_PRICE)}
)
trade_bodies = st.one_of(
    valid_bodies,
    valid_bodies,
    st.fixed_dictionaries({}, optional={"qty": json_values, "price": json_values, "account": json_values}),
    json_values,
)
keys = st.one_of(st.none(), st.none(), st.text(max_size=300))


@given(side=st.sampled_from(["buy", "sell"]), code=codes, body=trade_bodies, slash=st.booleans(), key=keys)
@settings(FUZZ, max_examples=300)
def test_any_json_body_code_and_key_answers_json_without_a_server_error(token, side, code, body, slash, key):
    client = APIClient()
    extra = {"HTTP_AUTHORIZATION": f"Token {token}"}
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = key
    path = f"/execute-{side}/{quote(code, safe='')}" + ("/" if slash else "")

    response = client.post(path, data=json.dumps(body), content_type="application/json", **extra)

    assert response.status_code < 500, response.content
    assert response["Content-Type"].startswith("application/json")
    answer = response.json()
    assert isinstance(answer["success"], bool) and answer["message"]
    if response.status_code == 200:
        assert isinstance(body, dict) and type(body["qty"]) is int and 1 <= body["qty"] <= MAX_ORDER_QTY
