"""/healthz, /readyz and /metrics in-process, on the real database, Redis and a real Celery worker; the
metrics move when a sync fails, an order is placed and a socket opens. The faults that need processes
of their own (Redis stopped, the beat or the price feed silent) are in tests/faults/test_readiness.py."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from config.asgi import application
from tests.fixtures.accounts import APP_KEY, APP_SECRET
from trading.brokers.base import BrokerUnavailable
from trading.brokers.memory import MemoryBroker
from watchlist import health
from watchlist.services import sync_and_record

pytestmark = pytest.mark.django_db

SIGNED_IN_ONLY = "/api/watchlist/"


@pytest.fixture(autouse=True)
def fresh_readiness(redis_client):
    health.cached_readiness.clear()
    channel_layers.backends.clear()
    yield
    health.cached_readiness.clear()
    channel_layers.backends.clear()


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def exposition(client: Client, **extra) -> dict:
    """Every metric family of GET /metrics, parsed as a Prometheus server would: name -> family."""
    response = client.get("/metrics", **extra)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def test_healthz_answers_anyone_without_dependencies(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")  # not even a database
    response = Client(enforce_csrf_checks=True).get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_readyz_is_200_with_every_part_up_503_without_the_database_and_200_again(
    celery_worker_process, monkeypatch
):
    health.record_heartbeat(health.BEAT)
    health.record_heartbeat(health.PRICE_FEED)
    anyone = Client()

    ready = anyone.get("/readyz")
    assert ready.status_code == 200, ready.json()
    report = ready.json()
    assert report["status"] == "ok"
    assert set(report["checks"]) == {"database", "redis", "channel_layer", "beat", "price_feed", "workers"}
    assert all(check["ok"] and check["ms"] >= 0 for check in report["checks"].values())
    assert report["checks"]["workers"]["answering"] >= 1

    monkeypatch.setitem(connection.settings_dict, "PORT", "1")  # nothing listens there
    health.cached_readiness.clear()
    down = anyone.get("/readyz")
    assert down.status_code == 503 and down.json()["status"] == "failing"
    checks = down.json()["checks"]
    assert checks["database"] == {"ok": False, "error": "OperationalError", "ms": checks["database"]["ms"]}
    assert all(check["ok"] for name, check in checks.items() if name != "database")

    monkeypatch.undo()
    health.cached_readiness.clear()
    assert anyone.get("/readyz").status_code == 200


def test_readyz_reports_silent_processes_and_is_cached(settings, redis_client):
    settings.READY_BEAT_MAX_AGE = 5
    redis_client.set(health.heartbeat_key(health.BEAT), "0")  # last ran in 1970
    first = Client().get("/readyz")
    checks = first.json()["checks"]
    assert first.status_code == 503
    assert checks["beat"]["ok"] is False and checks["beat"]["age_s"] > 5 and checks["beat"]["max_age_s"] == 5
    assert checks["price_feed"] == {
        "ok": False,
        "error": "no heartbeat recorded",
        "ms": checks["price_feed"]["ms"],
    }
    assert checks["workers"] == {"ok": False, "answering": 0, "ms": checks["workers"]["ms"]}

    health.record_heartbeat(health.BEAT)
    assert Client().get("/readyz").json() == first.json()  # the same report for a second or two


def test_metrics_answer_loopback_scrapers_only():
    families = exposition(Client(), REMOTE_ADDR="::1")
    assert {
        "watchlist_syncs",
        "kis_calls",
        "orders",
        "watchlist_open_sockets",
        "watchlist_accounts_failing",
        "watchlist_sync_lateness_seconds",
        "kis_rate_limit_wait_seconds",
        "price_feed_ticks",
        "watchlist_fanout_delivery_seconds",
        "watchlist_channel_layer_dropped",
    } <= set(families)
    assert Client().get("/metrics", REMOTE_ADDR="10.0.0.7").status_code == 404
    # Through the reverse proxy, which connects from loopback too but says for whom:
    assert Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 404


def test_a_failed_sync_moves_the_sync_metrics_and_accounts_failing(account):
    failed_before = sample("watchlist_syncs_total", result="failed", reason="unreachable")
    with pytest.raises(BrokerUnavailable):
        sync_and_record(account, MemoryBroker(fail_with=BrokerUnavailable()))

    assert sample("watchlist_syncs_total", result="failed", reason="unreachable") == failed_before + 1
    families = exposition(Client())
    assert families["watchlist_accounts_failing"].samples[0].value == 1
    by_state = {s.labels["state"]: s.value for s in families["watchlist_accounts"].samples}
    assert by_state == {"ok": 0, "failing": 1, "never": 0}

    sync_and_record(account, MemoryBroker())
    assert exposition(Client())["watchlist_accounts_failing"].samples[0].value == 0
    assert "watchlist_oldest_sync_success_age_seconds" in exposition(Client())


def test_an_order_moves_the_order_metric(api, account, memory_broker):
    before = sample("orders_total", side="buy", outcome="accepted")
    response = api.post("/execute-buy/005930", {"qty": 1}, format="json")
    assert response.status_code == 200, response.json()
    assert sample("orders_total", side="buy", outcome="accepted") == before + 1


def test_a_kis_call_moves_the_broker_metrics(sim_account):
    from trading.brokers.kis import KoreaInvestService

    waited_before = sample("kis_rate_limit_wait_seconds_count")
    KoreaInvestService(sim_account).get_acct_balance()
    assert sample("kis_calls_total", tr_id="VTTC8434R", outcome="ok") >= 1
    assert sample("kis_rate_limit_wait_seconds_count") > waited_before


@pytest.mark.django_db(transaction=True)
async def test_an_open_socket_moves_the_socket_gauge(user, account):
    from tests.watchlist.test_consumer import connected, token_headers

    before = sample("watchlist_open_sockets")
    communicator = WebsocketCommunicator(
        application, "/ws/watchlist/", headers=await database_sync_to_async(token_headers)(user)
    )
    await connected(communicator)
    assert sample("watchlist_open_sockets") == before + 1
    await communicator.disconnect()
    assert sample("watchlist_open_sockets") == before


def test_no_account_data_or_secret_in_readyz_or_metrics(account):
    with pytest.raises(BrokerUnavailable):
        sync_and_record(
            account, MemoryBroker(fail_with=BrokerUnavailable("KIS at kis.internal:9443 is down"))
        )
    texts = [Client().get("/readyz").content.decode(), Client().get("/metrics").content.decode()]
    for text in texts:
        for secret in (APP_KEY, APP_SECRET, account.account_number, "kis.internal"):
            assert secret not in text
