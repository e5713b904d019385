"""Sync throughput: accounts of many positions on the KIS simulator, kept in sync by the real dispatcher
(Celery beat running `dispatch_due_syncs`) and N real Celery worker processes.

    scripts/bench sync_throughput [--accounts 2000 --positions 50 --workers 2 --duration 90]

Everything it uses is its own: a private redis-server, a database `lw_bench_sync` (dropped and created
again) on the PostgreSQL of --database-admin-url, a simulator subprocess, the workers and beat. It runs
the baseline first: the same balance reads by a plain loop of the KIS adapter alone (one thread, no
Celery, no database), in reads per second. Then, with the workers:
- the first round (a cold start: every account due at once, each one's first sync adds its items and
  issues its KIS token): how long the workers take to drain it;
- the due times spread evenly over the interval (as in a system that has run a while; the cold
  start leaves them bunched), one interval to settle, then `--duration` seconds of steady state: how
  late each sync ran past its due time (its previous success + WATCHLIST_SYNC_INTERVAL; an account
  still waiting at the end counts as late as that), p50/p99/max, and the CPU per sync of each kind
  of process and the machine's load;
- capacity: every account made due at once again (warm: tokens cached, items stored, prices moved),
  drained by the workers, in syncs per second per worker process and as a ratio to the baseline;
- the diff alone on 2,000 items (bench/diff_bench.py), and the database queries of one sync of an
  unchanged account, and of one whose prices moved.
Results as a table and as JSON under bench/results/.
Target: every account kept within its 30 s interval by two worker processes, none more than 5 s late.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path

import psycopg

from bench.production import production_settings_env
from devtools.processes import ROOT, AppProcess, celery_beat, celery_worker
from devtools.redis_server import PrivateRedis
from devtools.simulator import SimulatorHandle, start_simulator

BENCH_DATABASE = "lw_bench_sync"
FIRST_CANO = 70_000_000
STOCK_UNIVERSE = 1_500  # distinct codes held across the accounts
SAMPLE_EVERY = 0.5  # seconds between two reads of every account's sync state
TARGET_MAX_LATE = 5.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--positions", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--pool", default="threads", help="each worker process's Celery pool (threads, solo)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker process")
    parser.add_argument(
        "--duration",
        type=float,
        default=90,
        help="seconds of steady state measured, after the first round and one more interval",
    )
    parser.add_argument("--interval", type=int, default=30, help="WATCHLIST_SYNC_INTERVAL, seconds")
    parser.add_argument("--baseline-reads", type=int, default=300, help="balance reads of the baseline loop")
    parser.add_argument(
        "--database-admin-url",
        default=os.environ.get("DATABASE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
    )
    return parser.parse_args()


# --- setting up ---------------------------------------------------------------------------------


def create_database(admin_url: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    return admin_url.rsplit("/", 1)[0] + f"/{BENCH_DATABASE}"


def holdings_of(account_number: int, positions: int) -> list[dict]:
    rng = random.Random(account_number)
    codes = rng.sample(range(100_000, 100_000 + STOCK_UNIVERSE), positions)
    return [
        {
            "stock_code": f"{code:06d}",
            "quantity": rng.randint(1, 500),
            "avg_price": rng.randint(1, 3000) * 100,
        }
        for code in codes
    ]


def seed(simulator: SimulatorHandle, accounts: int, positions: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        canos = [FIRST_CANO + n for n in range(accounts)]
        list(pool.map(lambda cano: simulator.set_holdings(str(cano), holdings_of(cano, positions)), canos))


def create_accounts(count: int, simulator_url: str) -> None:
    from django.contrib.auth import get_user_model

    from trading.models import BrokerAccount

    owner = get_user_model().objects.create_user("bench")
    BrokerAccount.objects.bulk_create(
        BrokerAccount(
            owner=owner,
            display_name=f"bench {n}",
            account_number=str(FIRST_CANO + n),
            base_url=simulator_url,
            app_key=f"PSbenchKey{n:06d}",
            app_secret=f"benchSecret{n:06d}",
        )
        for n in range(count)
    )


# --- measuring ----------------------------------------------------------------------------------


def baseline_reads_per_second(reads: int) -> float:
    """The KIS adapter alone, in one thread: balance reads per second (tokens issued beforehand)."""
    from trading.brokers.kis import KoreaInvestService
    from trading.models import BrokerAccount

    brokers = [KoreaInvestService(account) for account in BrokerAccount.objects.order_by("id")[:reads]]
    for broker in brokers[:50]:  # warm the connection pool and this process
        broker.get_acct_balance()
    started = time.perf_counter()
    for broker in brokers:
        broker.get_acct_balance()
    return len(brokers) / (time.perf_counter() - started)


class SyncObserver:
    """Reads every account's last success twice a second; each new value is one sync that ran."""

    def __init__(self) -> None:
        self.last_success: dict[int, datetime] = {}
        self.syncs: list[tuple[int, datetime, datetime | None]] = []  # account, when, the previous success
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wait_for_every_account(self, accounts: int, since: float, timeout: float) -> float:
        """When the last of `accounts` had synced after `since` (Unix time)."""
        deadline = time.time() + timeout
        while True:
            synced = [
                when
                for when in (success.timestamp() for success in list(self.last_success.values()))
                if when > since
            ]
            if len(synced) >= accounts:
                return max(synced)
            if time.time() > deadline:
                raise RuntimeError(f"only {len(synced)} of {accounts} accounts synced in {timeout:g} s")
            time.sleep(SAMPLE_EVERY)

    def _run(self) -> None:
        from django.db import connection

        from watchlist.models import SyncState

        while not self._stop.wait(SAMPLE_EVERY):
            rows = SyncState.objects.values_list("account_id", "last_success_at", "consecutive_failures")
            for account_id, success, failing in rows:
                self.failures += bool(failing)
                if success and success != self.last_success.get(account_id):
                    self.syncs.append((account_id, success, self.last_success.get(account_id)))
                    self.last_success[account_id] = success
        connection.close()


def spread_due_times(interval: int) -> None:
    """Due times spread evenly over one interval, as in a system that has been running for a while
    (a cold start leaves them bunched in the order of the first syncs, which later rounds inherit)."""
    from django.db import connection

    from watchlist.models import SyncState

    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {SyncState._meta.db_table} "
            "SET next_attempt_at = now() + random() * make_interval(secs => %s)",
            [interval],
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """Every PostgreSQL process of the machine (the server is shared: its CPU is an upper bound)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            if stat.read_text().strip() == "postgres":
                pids.append(int(stat.parent.name))
        except OSError:
            pass
    return pids


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over every core."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - values[3] - values[4]) / ticks, sum(values) / ticks


class CpuMeter:
    """CPU used by named groups of processes, and by the machine, between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        return {name: after[name] - self._before[name] for name in after}

    def _read(self) -> dict[str, float]:
        used = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        used["postgres (all)"] = sum(cpu_seconds(pid) for pid in postgres_pids())
        used["machine busy"], used["machine total"] = machine_busy_seconds()
        return used


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def queries_of_one_sync(simulator: SimulatorHandle, moving: bool) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from trading.models import BrokerAccount
    from watchlist.services import sync_and_record

    account = BrokerAccount.objects.order_by("id").first()
    simulator.set_prices_moving(moving)
    sync_and_record(account)  # absorbs whatever moved before
    time.sleep(2.5)  # a few price ticks (or none, when still)
    with CaptureQueriesContext(connection) as captured:
        result = sync_and_record(account)
    assert not result.changes, "the holdings did not change: neither should the watchlist"
    simulator.set_prices_moving(True)
    return len(captured.captured_queries)


def diff_millis(items: int) -> dict[str, float]:
    from bench import diff_bench
    from watchlist.diff import diff_items

    stored = diff_bench.watchlist(items)
    return {
        name: diff_bench.millis(partial(diff_items, stored, target))[0]
        for name, target in diff_bench.cases(stored).items()
    }


# --- the run ------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lw-bench-sync-"))
    redis_server = PrivateRedis(workdir / "redis.log")
    redis_server.start()
    database_url = create_database(args.database_admin_url)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url,
        # Workers keep their database connection between tasks, as docs/OPERATIONS.md recommends.
        "DATABASE_CONN_MAX_AGE": os.environ.get("DATABASE_CONN_MAX_AGE", "60"),
        "REDIS_URL": redis_server.url(),
        "WATCHLIST_SYNC_INTERVAL": str(args.interval),
        "WATCHLIST_DISPATCH_EVERY": "2",
        # The simulator has no rate limit; KIS paper's 2 calls/s per app key would make this a bench of sleep.
        "KIS_RATE_LIMIT_PAPER": "100000",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **production_settings_env(),
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from watchlist.models import SyncState

    processes: list[AppProcess] = []
    simulator = start_simulator(workdir / "simulator.log", "--rate-limit", "off")
    try:
        call_command("migrate", verbosity=0)
        print(f"seeding {args.accounts} accounts of {args.positions} positions ...", flush=True)
        seed(simulator, args.accounts, args.positions)
        create_accounts(args.accounts, simulator.url)

        print(f"baseline: {args.baseline_reads} balance reads by the adapter alone ...", flush=True)
        baseline = baseline_reads_per_second(args.baseline_reads)

        observer = SyncObserver()
        observer.start()
        workers = [
            celery_worker(
                f"bench{n}", env, workdir / f"worker{n}.log", pool=args.pool, concurrency=args.concurrency
            )
            for n in range(args.workers)
        ]
        beat = celery_beat(env, workdir / "beat.log", workdir / "beat-schedule")
        processes += [*workers, beat]  # before they start: stopped at the end even if starting fails
        for worker in workers:
            worker.start()
        meter = CpuMeter(
            {
                "workers": [worker.pid for worker in workers],
                "simulator": [simulator.process.pid],
                "redis": [redis_server.process.pid],
            }
        )
        print(f"first round: every account due at once, {args.workers} worker processes ...", flush=True)
        meter.start()
        cold_start = time.time()
        beat.start()
        patience = 20 * args.interval
        first_round = observer.wait_for_every_account(args.accounts, cold_start, patience) - cold_start
        first_round_cpu = meter.stop()
        print(
            f"due times spread over the interval, one interval to settle, then {args.duration:g} s of "
            "steady state ...",
            flush=True,
        )
        spread_at = time.time()
        spread_due_times(args.interval)
        time.sleep(args.interval)
        meter.start()
        window = (time.time(), time.time() + args.duration)
        time.sleep(args.duration)
        steady_cpu = meter.stop()
        print("saturated: every account due at once again ...", flush=True)
        saturated_start = time.time()
        SyncState.objects.update(next_attempt_at=timezone.now())
        saturated = observer.wait_for_every_account(args.accounts, saturated_start, patience)
        saturated -= saturated_start
        observer.stop()
        for process in processes:
            process.stop()

        queries_unchanged = queries_of_one_sync(simulator, moving=False)
        queries_repriced = queries_of_one_sync(simulator, moving=True)
        diff = diff_millis(2000)
    finally:
        for process in processes:
            process.stop()
        simulator.close()
        redis_server.stop()

    report(
        args,
        baseline=baseline,
        saturated=saturated,
        first_round=first_round,
        first_round_cpu=first_round_cpu,
        observer=observer,
        spread_at=spread_at,
        window=window,
        steady_cpu=steady_cpu,
        queries=(queries_unchanged, queries_repriced),
        diff=diff,
        workdir=workdir,
    )


def cpu_per_sync(cpu: dict[str, float], syncs: int) -> dict[str, float]:
    return {
        name: round(seconds * 1000 / max(1, syncs), 1)
        for name, seconds in cpu.items()
        if not name.startswith("machine")
    }


def report(
    args,
    *,
    baseline: float,
    saturated: float,
    first_round: float,
    first_round_cpu: dict[str, float],
    observer: SyncObserver,
    spread_at: float,
    window: tuple[float, float],
    steady_cpu: dict[str, float],
    queries: tuple[int, int],
    diff: dict[str, float],
    workdir: Path,
) -> None:
    begin, end = window
    in_window = [
        (when.timestamp(), previous)
        for _, when, previous in observer.syncs
        if begin <= when.timestamp() < end
    ]
    # Lateness is measured from a success after the spread (which moved every due time on purpose).
    late = [
        when - (previous.timestamp() + args.interval)
        for when, previous in in_window
        if previous is not None and previous.timestamp() > spread_at
    ]
    # An account still waiting at the end of the window is as late as that, at least.
    last_success: dict[int, float] = {}
    for account_id, when, _ in observer.syncs:
        if when.timestamp() < end:
            last_success[account_id] = max(when.timestamp(), last_success.get(account_id, 0.0))
    late += [
        late_by
        for late_by in (end - (success + args.interval) for success in last_success.values())
        if late_by > 0
    ]
    capacity = args.accounts / saturated / args.workers
    cold_rate = args.accounts / first_round / args.workers
    steady_rate = len(in_window) / args.duration / args.workers
    results = {
        "command": " ".join(sys.argv),
        "when": datetime.now().isoformat(timespec="seconds"),
        "accounts": args.accounts,
        "positions": args.positions,
        "workers": args.workers,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "interval_s": args.interval,
        "steady_window_s": args.duration,
        "baseline_adapter_reads_per_s": round(baseline, 1),
        "capacity_drain_s": round(saturated, 1),
        "capacity_syncs_per_s_per_worker": round(capacity, 1),
        "capacity_ratio_to_baseline": round(capacity / baseline, 3),
        "first_round_s": round(first_round, 1),
        "first_round_syncs_per_s_per_worker": round(cold_rate, 1),
        "first_round_cpu_ms_per_sync": cpu_per_sync(first_round_cpu, args.accounts),
        "needed_syncs_per_s_per_worker": round(args.accounts / args.interval / args.workers, 1),
        "steady_syncs": len(in_window),
        "steady_syncs_per_s_per_worker": round(steady_rate, 1),
        "late_s_p50": round(percentile(late, 0.50), 2),
        "late_s_p99": round(percentile(late, 0.99), 2),
        "late_s_max": round(max(late), 2) if late else None,
        "steady_cpu_ms_per_sync": cpu_per_sync(steady_cpu, len(in_window)),
        "steady_machine_busy_share": round(steady_cpu["machine busy"] / steady_cpu["machine total"], 3),
        "failed_attempts_seen": observer.failures,
        "diff_2000_items_ms": {name: round(ms, 3) for name, ms in diff.items()},
        "queries_per_sync_unchanged": queries[0],
        "queries_per_sync_repriced": queries[1],
        "logs": str(workdir),
    }
    results["target_met"] = bool(late) and results["late_s_max"] <= TARGET_MAX_LATE and not observer.failures

    def per_process(cpu: dict[str, float]) -> str:
        return ", ".join(f"{name} {ms}" for name, ms in cpu.items()) + " ms"

    r = results
    rows = [
        ("baseline: adapter balance reads, 1 thread", f"{r['baseline_adapter_reads_per_s']} /s"),
        (
            "capacity: every account due at once, warm",
            (
                f"{r['capacity_syncs_per_s_per_worker']} syncs/s/worker = {r['capacity_ratio_to_baseline']} x "
                f"baseline (drained in {r['capacity_drain_s']} s)"
            ),
        ),
        (
            "cold start: first sync of every account",
            f"drained in {r['first_round_s']} s = {r['first_round_syncs_per_s_per_worker']} syncs/s/worker",
        ),
        ("cold start: CPU per sync", per_process(r["first_round_cpu_ms_per_sync"])),
        ("steady: needed to keep up", f"{r['needed_syncs_per_s_per_worker']} syncs/s/worker"),
        (
            "steady: measured",
            (
                f"{len(in_window)} syncs in {args.duration:g} s = "
                f"{r['steady_syncs_per_s_per_worker']} syncs/s/worker"
            ),
        ),
        (
            "steady: late past due, p50 / p99 / max",
            f"{r['late_s_p50']} / {r['late_s_p99']} / {r['late_s_max']} s (target: max {TARGET_MAX_LATE:g} s)",
        ),
        ("steady: CPU per sync", per_process(r["steady_cpu_ms_per_sync"])),
        ("steady: machine CPU busy (all cores)", f"{r['steady_machine_busy_share']:.0%}"),
        ("failed sync attempts seen", str(observer.failures)),
        *[(f"diff alone, 2,000 items, {name}", f"{ms:.3f} ms") for name, ms in diff.items()],
        ("queries per sync: unchanged / repriced", f"{queries[0]} / {queries[1]}"),
        ("target met", "yes" if r["target_met"] else "NO"),
    ]
    width = max(len(name) for name, _ in rows)
    print(
        f"\nsync throughput: {args.accounts} accounts x {args.positions} positions, {args.workers} worker "
        f"processes ({args.pool} pool, concurrency {args.concurrency}), interval {args.interval} s"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"sync_throughput-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"  written to {out.relative_to(ROOT)}; process logs in {workdir}")


if __name__ == "__main__":
    main()
