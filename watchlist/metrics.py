"""Prometheus metrics of syncs, sockets, the fan-out, the channel layer and the price feed.

Each process counts in its own registry and is scraped on its own (docs/OPERATIONS.md, "Metrics"): an
ASGI server at GET /metrics, a Celery worker or the price feed on the port in METRICS_PORT
(`serve_metrics`). The sync-health gauges are read from the database when an ASGI server is scraped
(`SyncHealthCollector`), so every server reports the same figures, whichever processes synced."""

from __future__ import annotations

import logging
import os
import re
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

SYNC_LATENESS = Histogram(
    "watchlist_sync_lateness_seconds",
    "How long past its due time a periodic sync started.",
    buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120),
)
SYNC_OUTCOMES = Counter(
    "watchlist_syncs",
    "Sync attempts by result (ok, failed, skipped) and failure reason.",
    ["result", "reason"],
)
OPEN_SOCKETS = Gauge("watchlist_open_sockets", "WebSockets open in this process.")
FANOUT_DELIVERY = Histogram(
    "watchlist_fanout_delivery_seconds",
    "Time this process's fan-out took to hand one channel-layer event to its sockets.",
    ["event"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
CHANNEL_LAYER_DROPPED = Counter(
    "watchlist_channel_layer_dropped",
    "Messages this process sent that the channel layer dropped: receivers over capacity.",
)
PRICE_SUBSCRIPTIONS = Gauge("price_feed_subscriptions", "Watched codes the price feed streams.")
PRICE_UNSTREAMED = Gauge("price_feed_unstreamed_codes", "Watched codes no real-time session has room for.")
PRICE_TICKS = Counter("price_feed_ticks", "Trades (ticks) received for watched codes.")


class SyncHealthCollector(Collector):
    """Accounts by sync state and the age of the oldest last success, read at scrape time."""

    def collect(self):
        from .selectors import sync_health  # the models load after the app registry

        try:
            health = sync_health()
        except Exception:
            logger.warning("metrics: the sync health could not be read", exc_info=True)
            return
        by_state = GaugeMetricFamily("watchlist_accounts", "Accounts by sync state.", labels=["state"])
        for state, count in health.accounts_by_state.items():
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily(
            "watchlist_accounts_failing",
            "Accounts whose last sync failed.",
            value=health.accounts_by_state["failing"],
        )
        if health.oldest_success is not None:
            yield GaugeMetricFamily(
                "watchlist_oldest_sync_success_age_seconds",
                "Age of the oldest last successful sync among accounts that ever synced.",
                value=time.time() - health.oldest_success.timestamp(),
            )


class ChannelLayerDropCounter(logging.Filter):
    """Counts the messages channels_redis drops, from the one line it logs when a group send finds
    receivers over capacity (it reports them nowhere else). Installed on its logger by LOGGING."""

    OVER_CAPACITY = re.compile(r"^(\d+) of \d+ channels over capacity")

    def filter(self, record: logging.LogRecord) -> bool:
        if match := self.OVER_CAPACITY.match(record.getMessage()):
            CHANNEL_LAYER_DROPPED.inc(int(match.group(1)))
        return True


def serve_metrics(what: str) -> None:
    """Serve this process's metrics on 127.0.0.1:METRICS_PORT, when that is set (a Celery worker, the
    price feed: each process its own port)."""
    port = os.environ.get("METRICS_PORT")
    if port:
        start_http_server(int(port), addr=os.environ.get("METRICS_ADDR", "127.0.0.1"))
        logger.info("metrics of the %s on port %s", what, port)
