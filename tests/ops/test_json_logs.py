"""LOG_FORMAT=json: one JSON object a line, with the context fields, and never a secret."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.test import Client

from config.logs import JsonFormatter
from tests.fixtures.accounts import APP_KEY, APP_SECRET
from trading.brokers.base import BrokerUnavailable
from trading.brokers.memory import MemoryBroker
from watchlist.services import sync_and_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def json_log():
    """Everything logged at INFO and above, formatted as LOG_FORMAT=json formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def entries(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_setting_picks_the_json_formatter(settings):
    from importlib import reload

    import config.settings

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LOG_FORMAT", "json")
            assert reload(config.settings).LOGGING["handlers"]["console"]["formatter"] == "json"
    finally:
        reload(config.settings)


def test_each_line_is_an_object_with_its_context_fields(json_log, api, account, memory_broker):
    with pytest.raises(BrokerUnavailable):
        sync_and_record(account, MemoryBroker(fail_with=BrokerUnavailable()))
    response = api.post("/execute-buy/005930", {"qty": 2}, format="json", HTTP_X_REQUEST_ID="req-12345678")
    assert response.status_code == 200 and response["X-Request-ID"] == "req-12345678"

    logged = entries(json_log)
    failed = next(e for e in logged if e["message"].startswith("sync failed"))
    assert failed["account"] == str(account.id) and failed["reason"] == "unreachable"
    assert failed["level"] == "WARNING" and failed["logger"] == "watchlist.services" and failed["time"]
    accepted = next(e for e in logged if e["message"].startswith("order accepted"))
    assert (
        accepted["stock_code"] == "005930" and accepted["order_no"] and accepted["account"] == str(account.id)
    )
    assert accepted["request_id"] == "req-12345678"
    updated = next(e for e in logged if e["message"].startswith("watchlist updated"))
    assert updated["version"] == str(response.json()["watchlist_version"])
    assert "request_id" not in failed  # outside a request


def test_a_request_without_an_id_gets_one_and_a_forged_one_is_replaced(json_log):
    assert len(Client().get("/healthz")["X-Request-ID"]) == 32
    assert Client().get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith=newline")["X-Request-ID"] != "bad id"


def test_only_the_context_fields_leave_a_record_and_exceptions_are_one_line(json_log):
    logger = logging.getLogger("tests.json")
    logger.info("sync of account=7 at version=3", extra={"app_secret": APP_SECRET, "stock_code": "005930"})
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        logger.exception("failed order=0000123")

    lines = json_log.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {key: first[key] for key in ("account", "version", "stock_code")} == {
        "account": "7",
        "version": "3",
        "stock_code": "005930",
    }
    assert APP_SECRET not in json_log.getvalue() and APP_KEY not in json_log.getvalue()
    assert second["order_no"] == "0000123" and "RuntimeError: broken" in second["exception"]
