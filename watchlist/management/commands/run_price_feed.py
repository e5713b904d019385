"""`manage.py run_price_feed`: the long-running live price feed (see watchlist/prices.py)."""

import asyncio
import contextlib
import signal

from django.core.management.base import BaseCommand

from watchlist.metrics import serve_metrics
from watchlist.prices import PriceFeed


async def run_until_stopped(feed: PriceFeed) -> None:
    """Run the feed until SIGINT or SIGTERM, then close its sessions cleanly."""
    task = asyncio.create_task(feed.run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Command(BaseCommand):
    help = "Stream live prices of every watched code, and fill notices, from the KIS real-time feed."

    def handle(self, *args, **options):
        serve_metrics("price feed")
        asyncio.run(run_until_stopped(PriceFeed()))
