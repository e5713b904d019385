"""/readyz of a Daphne process against the real system on a private Redis: 200 with everything up, 503
while Redis is stopped or the beat or the price feed is silent (paused), 200 again once each is back.
Every process's metrics exposition (Daphne, a Celery worker, the price feed) parses as Prometheus."""

from __future__ import annotations

import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.processes import AppProcess, free_port, wait_for

from .conftest import WAIT, pause, resume

pytestmark = pytest.mark.django_db(transaction=True)

MAX_AGE = "4"  # seconds of heartbeat silence before /readyz fails: short, so that the test is quick


def readiness(server) -> tuple[int, dict]:
    try:
        response = httpx.get(f"{server.url}/readyz", timeout=10)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def wait_ready(server, system, expected: int, failing: set[str] = frozenset()):
    """Until /readyz answers `expected` with exactly the `failing` checks failing."""

    def reached():
        status, report = readiness(server)
        bad = {name for name, check in report.get("checks", {}).items() if not check["ok"]}
        return status == expected and bad == set(failing) and report

    try:
        return wait_for(
            reached, WAIT, f"/readyz {expected} with failing checks {sorted(failing)}", interval=0.5
        )
    except AssertionError as error:
        raise AssertionError(f"{error}; last: {readiness(server)}\n{system.logs()}") from None


def families(url: str) -> dict:
    text = httpx.get(url, timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_readyz_follows_redis_the_beat_and_the_price_feed(
    system, system_env, private_redis, app_processes, sim_account, tmp_path
):
    env = system_env | {"READY_BEAT_MAX_AGE": MAX_AGE, "READY_PRICE_FEED_MAX_AGE": MAX_AGE}
    worker_port, feed_port = free_port(), free_port()
    system.env = env | {"METRICS_PORT": str(worker_port)}
    system.worker()
    system.env = env
    beat = system.beat()
    feed = app_processes(
        AppProcess(
            "price feed",
            [sys.executable, "manage.py", "run_price_feed"],
            env | {"METRICS_PORT": str(feed_port)},
            tmp_path / "feed.log",
            ready_line="metrics of the price feed",
        )
    )
    server = system.daphne(**{key: env[key] for key in ("READY_BEAT_MAX_AGE", "READY_PRICE_FEED_MAX_AGE")})

    report = wait_ready(server, system, 200)
    assert report["status"] == "ok" and report["checks"]["workers"]["answering"] >= 1

    worker_metrics = wait_for(  # once the dispatcher's first sync ran there
        lambda: (
            (found := families(f"http://127.0.0.1:{worker_port}/metrics"))["watchlist_syncs"].samples
            and found
        ),
        WAIT,
        "a sync counted by the worker",
    )
    assert worker_metrics["watchlist_sync_lateness_seconds"].samples
    assert families(f"{server.url}/metrics")["watchlist_accounts"].samples
    assert "price_feed_subscriptions" in families(f"http://127.0.0.1:{feed_port}/metrics")

    private_redis.stop()
    wait_ready(server, system, 503, {"redis", "channel_layer", "beat", "price_feed", "workers"})
    private_redis.start()
    wait_ready(server, system, 200)

    pause(beat)
    wait_ready(server, system, 503, {"beat"})
    resume(beat)
    wait_ready(server, system, 200)

    pause(feed)
    wait_ready(server, system, 503, {"price_feed"})
    resume(feed)
    wait_ready(server, system, 200)
