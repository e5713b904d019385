"""The end checks, once the faults are used up, the pending grace has passed and every account had a final
sync: one line each, PASS or FAIL (what they check: bench/soak/__main__.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from bench.soak.faults import wait_until_faults_are_used
from bench.soak.load import Api
from bench.soak.memory import MemoryWatch
from bench.soak.record import Record
from bench.soak.sockets import SocketClient
from bench.soak.system import PENDING_GRACE, Account, System
from bench.sync_throughput import SyncObserver
from devtools.simulator import SimulatorHandle

MEMORY_BOUND_MB = 64


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        self.passed += ok
        self.failed += not ok
        why = f"\n      {detail}" if detail and not ok else ""
        print(f"{'PASS' if ok else 'FAIL'}  {what}{why}", flush=True)


async def settle_and_sync(api: Api, system: System, accounts: list[Account]) -> dict[int, dict]:
    """Faults used up, the pending grace over, a sync of every account; then the server's snapshots
    (read after the syncs, so that one finishing just after another's answer is in them too)."""
    await asyncio.to_thread(wait_until_faults_are_used, system.simulator, 60)
    await asyncio.sleep(PENDING_GRACE + 1)
    for account in accounts:
        for _ in range(10):
            synced = await api.call(account.token, "POST", f"/api/watchlist/sync/?account={account.id}")
            if synced.status == 200:
                break
            await asyncio.sleep(2)
    await asyncio.sleep(2)
    snapshots = {}
    for account in accounts:
        answer = await api.call(account.token, "GET", f"/api/watchlist/?account={account.id}")
        if answer.status == 200:
            snapshots[account.id] = answer.body
    return snapshots


async def wait_for_sockets(clients: list[SocketClient], snapshots: dict[int, dict], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(
            client.version == snapshots.get(client.account.id, {}).get("version")
            and not client.awaiting_snapshot
            for client in clients
        ):
            return
        await asyncio.sleep(0.5)


def server_view(snapshot: dict) -> dict[str, tuple]:
    return {
        item["stock_code"]: (item["quantity"], item["avg_price"], item["pending"])
        for item in snapshot["full_list"]
    }


def run_checks(
    record: Record,
    clients: list[SocketClient],
    accounts: list[Account],
    snapshots: dict[int, dict],
    simulator: SimulatorHandle,
    memory: MemoryWatch,
    syncs: SyncObserver,
) -> Checks:
    from trading.models import Order
    from watchlist.models import Watchlist, WatchlistChange

    checks = Checks()
    checks.check(
        len(snapshots) == len(accounts),
        "a final sync of every account succeeded",
        f"synced {sorted(snapshots)} of {[a.id for a in accounts]}",
    )

    for client in clients:
        snapshot = snapshots.get(client.account.id)
        same = snapshot is not None and client.view() == server_view(snapshot)
        checks.check(
            same,
            f"socket {client.name}: its list equals the server's (v{client.version})",
            f"socket {client.view()} v{client.version}\n      server {snapshot and server_view(snapshot)}",
        )
    for account in accounts:
        snapshot = snapshots.get(account.id)
        holdings = {h["stock_code"]: h["quantity"] for h in simulator.account(account.cano)["holdings"]}
        view = server_view(snapshot) if snapshot else {}
        listed = {code: quantity for code, (quantity, _, _) in view.items()}
        pending = [code for code, (_, _, is_pending) in view.items() if is_pending]
        checks.check(
            snapshot is not None and listed == holdings and not pending,
            f"account {account.id}: the server's list is the simulator's holdings, none pending",
            f"server {listed} pending {pending}\n      simulator {holdings}",
        )

    for watchlist in Watchlist.objects.filter(account__id__in=[a.id for a in accounts]):
        versions = list(
            WatchlistChange.objects.filter(watchlist=watchlist)
            .order_by("version")
            .values_list("version", flat=True)
        )
        checks.check(
            versions == list(range(1, watchlist.version + 1)),
            f"account {watchlist.account_id}: change log versions 1..{watchlist.version} contiguous",
            f"versions {versions}",
        )

    statuses = Counter(answer.status for answer in record.answers)
    bad = [a for a in record.answers if a.body is None or a.status == 500 or a.status >= 504]
    checks.check(
        not bad,
        f"no 500 and every answer JSON ({len(record.answers)} answers: {dict(statuses)})",
        "; ".join(f"{a.method} {a.path} {a.status}" for a in bad[:10]),
    )
    outside = [a for a in record.answers if a.status >= 500 and not record.in_fault_window(a.at)]
    checks.check(
        not outside,
        "5xx only while a fault was on (502 broker faults, 503 Redis down)",
        "; ".join(f"{a.method} {a.path} {a.status} {a.body}" for a in outside[:10]),
    )

    check_orders(checks, record, accounts, simulator, Order)

    restarted, killed = record.redis_restarted_at, record.worker_killed_at
    for event, at in (("the Redis restart", restarted), ("the worker kill", killed)):
        # Periodic syncs seen while the soak ran, not the final ones.
        after = {
            account_id for account_id, when, _ in syncs.syncs if at is not None and when.timestamp() > at
        }
        missing = [a.id for a in accounts if a.id not in after]
        checks.check(
            at is not None and not missing,
            f"every account synced again by itself after {event}",
            f"not synced since: {missing}",
        )
    silent = [client.name for client in clients if client.pushed_after_restart == 0]
    checks.check(
        restarted is not None and not silent,
        "every socket got pushed changes after the Redis restart (same socket or a new one)",
        f"no pushed change since the restart on: {silent}",
    )
    problems = [f"{client.name}: {problem}" for client in clients for problem in client.problems]
    checks.check(
        not problems,
        "every change applied to a socket's list gave the list sent with it; "
        "html sockets got rows for every added and updated code",
        "; ".join(problems[:10]),
    )

    growth = memory.growth()
    checks.check(
        bool(growth) and all(mb <= MEMORY_BOUND_MB for mb in growth.values()),
        f"resident memory of server processes grew by at most {MEMORY_BOUND_MB} MB after warm-up "
        f"({', '.join(f'{name} {mb:+.1f}' for name, mb in sorted(growth.items()))} MB)",
    )
    return checks


def check_orders(
    checks: Checks, record: Record, accounts: list[Account], simulator: SimulatorHandle, order_model
) -> None:
    """No order placed twice: every accepted answer of a key names one order, the same for its retry, and
    every order in the simulator's log is an accepted answer or the one unknown outcome of a request."""
    replays_differ = [
        t.key
        for t in record.trades
        if len({a.body.get("order_id") for a in t.answers if a.status == 200 and a.body}) > 1
    ]
    checks.check(
        not replays_differ,
        "a retried Idempotency-Key got its first answer, never a second order",
        f"keys: {replays_differ[:5]}",
    )
    accepted = Counter(
        next(a.body["order_id"] for a in t.answers if a.status == 200)
        for t in record.trades
        if any(a.status == 200 for a in t.answers)
    )
    placed = Counter(order["order_no"] for account in accounts for order in simulator.orders(account.cano))
    unexplained = placed - accepted
    # An order whose answer was lost (a timeout: "state unknown") is in the log with no accepted answer.
    unknown = Counter(
        (t.cano, t.side, t.code, t.qty)
        for t in record.trades
        if not any(a.status == 200 for a in t.answers)
        and any(a.status == 502 and a.body and "unknown" in a.body.get("message", "") for a in t.answers)
    )
    orders = {
        order["order_no"]: (account.cano, order["side"], order["stock_code"], order["qty"])
        for account in accounts
        for order in simulator.orders(account.cano)
    }
    unmatched = []
    for order_no in unexplained.elements():
        if unknown[orders[order_no]] > 0:
            unknown[orders[order_no]] -= 1
        else:
            unmatched.append(order_no)
    checks.check(
        all(count == 1 for count in accepted.values()) and not unmatched,
        f"no order placed twice ({sum(placed.values())} orders in the simulator's log, "
        f"{len(accepted)} accepted answers, {len(record.trades)} trades)",
        f"orders without a request to explain them: {unmatched[:10]}; "
        f"order ids answered twice: {[o for o, n in accepted.items() if n > 1][:10]}",
    )
    recorded = order_model.objects.filter(status="accepted").count()
    checks.check(
        recorded == len(accepted),
        f"the app's order audit holds every accepted order ({recorded})",
        f"{recorded} recorded, {len(accepted)} accepted answers",
    )
