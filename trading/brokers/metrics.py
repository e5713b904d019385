"""Prometheus metrics of the broker adapter (exposed by each process: docs/OPERATIONS.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter, Histogram

from .base import BrokerError

Result = TypeVar("Result")

BROKER_CALLS = Counter(
    "kis_calls", "KIS REST calls by TR id and outcome (ok, or the BrokerError reason).", ["tr_id", "outcome"]
)
RATE_LIMIT_WAIT = Histogram(
    "kis_rate_limit_wait_seconds",
    "Time a KIS call waited for its app key's next free slot (the shared client-side rate limit).",
    buckets=(0, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)


def counts_broker_calls(send: Callable[..., Result]) -> Callable[..., Result]:
    """Count each call of `send(self, method, path, tr_id, ...)` by its TR id and outcome."""

    @functools.wraps(send)
    def counted(self, method: str, path: str, tr_id: str, *args, **kwargs) -> Result:
        try:
            result = send(self, method, path, tr_id, *args, **kwargs)
        except BrokerError as error:
            BROKER_CALLS.labels(tr_id, error.reason).inc()
            raise
        except Exception:
            BROKER_CALLS.labels(tr_id, "error").inc()
            raise
        BROKER_CALLS.labels(tr_id, "ok").inc()
        return result

    return counted
