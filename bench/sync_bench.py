"""Times the periodic-sync machinery without a broker in the way (the in-memory one stands in):

    DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379/<scratch db> \
        scripts/bench sync_bench [accounts]

It creates a throw-away test database (Django's test database of DATABASE_URL) and uses REDIS_URL
for the locks and the channel layer: point it at a Redis db nothing else uses. Prints the time to
claim every due account (the dispatcher's one UPDATE) and the time per account of a full
`sync_and_record` of an unchanged 20-item account (queries, the Redis locks, the sync state).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(count: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test.utils import setup_databases, teardown_databases

    from trading.brokers.memory import MemoryBroker
    from trading.models import BrokerAccount
    from watchlist.services import claim_due_syncs, sync_and_record

    databases = setup_databases(verbosity=0, interactive=False)
    try:
        owner = get_user_model().objects.create_user("bench")
        accounts = [
            BrokerAccount(
                owner=owner,
                display_name=f"bench {n}",
                account_number=f"{60_000_000 + n}",
                base_url="http://127.0.0.1:9",
                app_key="k",
                app_secret="s",
            )
            for n in range(count)
        ]
        BrokerAccount.objects.bulk_create(accounts)

        started = time.perf_counter()
        claimed = claim_due_syncs()
        elapsed = (time.perf_counter() - started) * 1000
        print(f"claim_due_syncs: {len(claimed)} due accounts claimed in {elapsed:.1f} ms")

        broker = MemoryBroker()
        broker.set_holdings({f"{n:06d}": 10 for n in range(20)})
        sample = BrokerAccount.objects.order_by("id")[:200]
        for account in sample:  # the first sync adds the 20 items
            sync_and_record(account, broker)
        timings = []
        for account in sample:
            started = time.perf_counter()
            sync_and_record(account, broker)
            timings.append((time.perf_counter() - started) * 1000)
        print(
            f"sync_and_record, unchanged 20-item account: median {statistics.median(timings):.2f} ms, "
            f"p95 {sorted(timings)[int(len(timings) * 0.95)]:.2f} ms over {len(timings)} accounts"
        )
    finally:
        teardown_databases(databases, verbosity=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("accounts", type=int, nargs="?", default=2_000, help="due accounts (default 2000)")
    main(parser.parse_args().accounts)
