"""Prometheus metrics of orders (exposed by each process: docs/OPERATIONS.md); the adapter's are in
trading/brokers/metrics.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter

Result = TypeVar("Result")

ORDERS = Counter("orders", "Orders sent to the broker, by side and outcome.", ["side", "outcome"])


def counts_order_outcomes(place: Callable[..., Result]) -> Callable[..., Result]:
    """Count each order `place(*, side, ...)` returns an OrderResult for, by side and outcome."""

    @functools.wraps(place)
    def counted(*args, side: str, **kwargs) -> Result:
        result = place(*args, side=side, **kwargs)
        ORDERS.labels(side, result.outcome.value).inc()
        return result

    return counted
