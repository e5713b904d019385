"""Readiness: can this deployment serve traders now? (GET /readyz; GET /healthz needs nothing.)

Each check answers `{"ok": bool, "ms": <time it took>, ...}` with no secret and no account data:
the database and Redis answer, a message goes round the channel layer, the beat dispatcher ran
lately, the price feed beat lately, and at least one Celery worker answers a ping. The checks run
side by side, each within CHECK_TIMEOUT, and the report is reused for READY_CACHE_SECONDS, so a load
balancer asking every few seconds from several addresses costs a few Redis and database calls.

The beat dispatcher (watchlist.tasks.dispatch_due_syncs) and the price feed (watchlist.prices)
record a heartbeat in Redis each round (`record_heartbeat`); a heartbeat older than its limit
(READY_BEAT_MAX_AGE, READY_PRICE_FEED_MAX_AGE seconds) means that process stopped working.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import lru_cache

import redis
from celery import current_app
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

BEAT = "beat"
PRICE_FEED = "price_feed"
CHECK_TIMEOUT = 1.5  # seconds, the whole report's bound
WORKER_PING_TIMEOUT = 1.0
READY_CACHE_SECONDS = 2.0

Check = Callable[[], dict]


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    """A client of its own with short timeouts: a readiness probe must not hang on a dead Redis."""
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def heartbeat_key(name: str) -> str:
    return f"lw:heartbeat:{name}"


def record_heartbeat(name: str) -> None:
    """Note that process `name` (BEAT, PRICE_FEED) completed a round now. Never raises: a process
    without Redis has its own failure to report, and /readyz reports Redis."""
    try:
        _redis(settings.REDIS_URL).set(heartbeat_key(name), repr(time.time()))
    except redis.RedisError as error:
        logger.debug("heartbeat of %s not recorded: %s", name, error)


def check_database() -> dict:
    connection = connections.create_connection("default")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()
    return {}


def check_redis() -> dict:
    _redis(settings.REDIS_URL).ping()
    return {}


def check_channel_layer() -> dict:
    """A message sent to a new channel of the layer comes back: in an event loop of its own, whose
    closing releases whatever the layer opened for it."""

    async def round_trip() -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel("readyz.")
        token = uuid.uuid4().hex
        await layer.send(channel, {"type": "readyz.probe", "token": token})
        message = await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT)
        if message.get("token") != token:
            raise RuntimeError("the channel layer returned another message")

    asyncio.run(round_trip())
    return {}


def heartbeat_check(name: str, max_age: float) -> Check:
    def check() -> dict:
        value = _redis(settings.REDIS_URL).get(heartbeat_key(name))
        if value is None:
            return {"ok": False, "error": "no heartbeat recorded"}
        age = round(time.time() - float(value), 1)
        return {"ok": age <= max_age, "age_s": age, "max_age_s": max_age}

    return check


def check_workers() -> dict:
    answers = current_app.control.ping(timeout=WORKER_PING_TIMEOUT, limit=1)
    return {"ok": bool(answers), "answering": len(answers)}


def checks() -> dict[str, Check]:
    return {
        "database": check_database,
        "redis": check_redis,
        "channel_layer": check_channel_layer,
        "beat": heartbeat_check(BEAT, settings.READY_BEAT_MAX_AGE),
        "price_feed": heartbeat_check(PRICE_FEED, settings.READY_PRICE_FEED_MAX_AGE),
        "workers": check_workers,
    }


def _timed(check: Check) -> dict:
    started = time.perf_counter()
    try:
        result = {"ok": True, **check()}
    except Exception as error:  # noqa: BLE001 - any failure is the check's answer
        # The kind of failure only: a message could carry a host name or a URL with its password.
        result = {"ok": False, "error": type(error).__name__}
    return {**result, "ms": round((time.perf_counter() - started) * 1000, 1)}


def readiness(selected: dict[str, Check] | None = None) -> dict:
    """{"status": "ok" | "failing", "checks": {name: {"ok": bool, "ms": float, ...}}}."""
    selected = checks() if selected is None else selected
    pool = ThreadPoolExecutor(max_workers=len(selected), thread_name_prefix="readyz")
    futures = {name: pool.submit(_timed, check) for name, check in selected.items()}
    deadline = time.monotonic() + CHECK_TIMEOUT + 0.5
    report = {}
    for name, future in futures.items():
        try:
            report[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            report[name] = {"ok": False, "error": "timeout", "ms": CHECK_TIMEOUT * 1000}
    pool.shutdown(wait=False)  # a hung check finishes (or not) on its own; nobody waits for it
    return {"status": "ok" if all(r["ok"] for r in report.values()) else "failing", "checks": report}


class CachedReadiness:
    """The last report, for READY_CACHE_SECONDS; one request computes it while others wait."""

    def __init__(self, compute: Callable[[], dict] = readiness) -> None:
        self.compute = compute
        self._lock = threading.Lock()
        self._report: dict | None = None
        self._at = 0.0

    def get(self) -> dict:
        with self._lock:
            if self._report is None or time.monotonic() - self._at > READY_CACHE_SECONDS:
                self._report = self.compute()
                self._at = time.monotonic()
            return self._report

    def clear(self) -> None:
        with self._lock:
            self._report = None


cached_readiness = CachedReadiness()
