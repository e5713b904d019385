"""The soak: the whole system under use and faults for a bounded time, then checked end to end.

    scripts/bench soak [--duration 300]        (python -m bench.soak)

It starts everything it uses, all of its own: a redis-server, a database `lw_soak` (dropped and created
again) on the PostgreSQL of --database-admin-url, the KIS simulator, Daphne processes, Celery workers
and beat. Several users, each with accounts and sockets (`/ws/watchlist/`, `Authorization: Token`,
one per user with `?render=html`), then for --duration seconds: random market buys, partial and full
sells through the HTTP API (each with an Idempotency-Key, some sent twice as a client retry does),
holdings changed behind the app's back in the simulator, broker faults injected in turn, one Redis
restart and one Celery worker killed (SIGKILL; a replacement is started, as a process manager would).
The socket clients follow the rules of the browser client (static/js/watchlist.js): a version gap or
a stale sync line asks for a snapshot, a dead or closed socket reconnects.

Then, after the faults are used up, the pending grace has passed and a final sync of every account,
it checks, one line each, and ends with exactly `N passed, M failed` (exit status 1 if M > 0):
- every socket's list (snapshot plus applied changes) equals the server's list, which equals the
  simulator's holdings, nothing pending;
- every account's change log has contiguous versions up to the watchlist's version;
- no answer was a 500 or not JSON, and the only 5xx were the contract's 502 (broker faults) and 503
  (Redis down) while such a fault was on;
- no order was placed twice (the simulator's order log against the API's answers and retries);
- syncs resumed after the Redis restart and after the worker kill, and every socket got pushed changes
  after the Redis restart (on the same socket, or on a new one after the server closed it);
- `?render=html` sockets got a row for every added and updated code;
- resident memory of every server process grew by at most MEMORY_BOUND_MB after its warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.soak.checks import Checks, run_checks, settle_and_sync, wait_for_sockets
from bench.soak.faults import change_behind_the_apps_back, inject_broker_faults, kill_a_worker, restart_redis
from bench.soak.load import Api, read_watchlists, trade_randomly
from bench.soak.memory import MemoryWatch, watch_memory
from bench.soak.record import Record, log
from bench.soak.sockets import SocketClient
from bench.soak.system import (
    ACCOUNTS_PER_USER,
    Account,
    System,
    create_users_and_accounts,
    wait_until_every_account_synced,
)
from bench.sync_throughput import SyncObserver

SOCKETS_PER_ACCOUNT = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=300, help="seconds of use and faults (5 min)")
    parser.add_argument("--daphnes", type=int, default=2, help="Daphne processes; sockets spread over them")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    parser.add_argument("--database", default="lw_soak", help="the database it creates (dropped first)")
    parser.add_argument("--database-admin-url", default=default_admin_url())
    return parser.parse_args()


def default_admin_url() -> str:
    """The PostgreSQL of DATABASE_URL when it is one (as in CI), else the local server."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        return url.rsplit("/", 1)[0] + "/postgres"
    return "postgres://postgres@127.0.0.1:5432/postgres"


async def soak(args: argparse.Namespace, system: System, accounts: list[Account]) -> Checks:
    record = Record()
    memory = MemoryWatch(warm_up=0.25 * args.duration)
    syncs = SyncObserver()
    syncs.start()
    api = Api(system.daphnes, record)
    clients = []
    for account in accounts:
        for n in range(SOCKETS_PER_ACCOUNT):
            daphne = system.daphnes[(account.id + n) % len(system.daphnes)]
            clients.append(SocketClient(f"{account.user}/{account.id}#{n}", daphne.ws_url(), account, record))
    for account in accounts[::ACCOUNTS_PER_USER]:
        clients.append(
            SocketClient(
                f"{account.user}/{account.id}#html", system.daphnes[0].ws_url(), account, record, html=True
            )
        )
    stop_sockets = asyncio.Event()
    sockets = [asyncio.create_task(client.run(stop_sockets)) for client in clients]

    begin = time.time()
    until = begin + args.duration
    log(
        f"{len(accounts)} accounts, {len(clients)} sockets on {len(system.daphnes)} Daphne processes, "
        f"{len(system.workers)} workers: use and faults for {args.duration:g} s"
    )
    activity = [
        trade_randomly(api, system.simulator, accounts, record, until),
        trade_randomly(api, system.simulator, accounts, record, until),
        read_watchlists(api, accounts, until),
        change_behind_the_apps_back(system.simulator, accounts, until),
        inject_broker_faults(system.simulator, record, until - 10),
        restart_redis(system, record, begin + 0.35 * args.duration),
        kill_a_worker(system, record, begin + 0.6 * args.duration),
        watch_memory(system, memory, until),
    ]
    await asyncio.gather(*activity)
    syncs.stop()
    log(f"done: {len(record.trades)} trades, {len(record.answers)} answers; settling and a final sync")
    snapshots = await settle_and_sync(api, system, accounts)
    await wait_for_sockets(clients, snapshots, timeout=60)
    stop_sockets.set()
    await asyncio.gather(*sockets)
    await api.close()
    for client in clients:
        log(f"socket {client.name}: {dict(client.counts)}")
    return await asyncio.to_thread(
        run_checks, record, clients, accounts, snapshots, system.simulator, memory, syncs
    )


def main() -> None:
    args = parse_args()
    random.seed(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="lw-soak-"))
    log(f"logs of every process in {workdir}")
    system = System(args, workdir)
    try:
        system.start()
        accounts = create_users_and_accounts(system)
        system.start_servers()
        wait_until_every_account_synced(accounts)
        checks = asyncio.run(soak(args, system, accounts))
    finally:
        system.stop()
    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
