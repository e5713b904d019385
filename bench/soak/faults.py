"""The fault schedule: holdings changed behind the app's back, every broker fault of the simulator in
turn, one Redis restart and one Celery worker killed (SIGKILL) and replaced."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import httpx

from bench.soak.record import Record, log
from bench.soak.system import CODES, Account, System
from devtools.simulator import SimulatorHandle

FAULT_MODES = ["http_500", "rate_limit", "token_expired", "timeout"]


async def change_behind_the_apps_back(
    simulator: SimulatorHandle, accounts: list[Account], until: float
) -> None:
    while time.time() < until:
        await asyncio.sleep(random.uniform(3, 8))
        account = random.choice(accounts)
        await asyncio.to_thread(change_holdings, simulator, account.cano)


def change_holdings(simulator: SimulatorHandle, cano: str) -> None:
    """A holding added, changed or removed, as a trade made elsewhere (another app, the HTS) would."""
    holdings = [
        {name: h[name] for name in ("stock_code", "quantity", "avg_price")}
        for h in simulator.account(cano)["holdings"]
    ]
    action = random.choice(["add", "change", "remove"])
    if action == "add" or not holdings:
        holdings.append(
            {"stock_code": random.choice(CODES), "quantity": random.randint(1, 30), "avg_price": 15_000}
        )
        holdings = list({h["stock_code"]: h for h in holdings}.values())
    elif action == "change":
        random.choice(holdings)["quantity"] = random.randint(1, 60)
    else:
        holdings.remove(random.choice(holdings))
    simulator.set_holdings(cano, holdings)


async def inject_broker_faults(simulator: SimulatorHandle, record: Record, until: float) -> None:
    """Every fault mode of the simulator in turn, a few calls' worth each, every few seconds."""
    for mode in itertools.cycle(FAULT_MODES):
        await asyncio.sleep(random.uniform(4, 10))
        if time.time() >= until:
            return
        start = time.time()
        await asyncio.to_thread(simulator.inject_fault, mode, random.randint(1, 4), 3)
        await asyncio.to_thread(wait_until_faults_are_used, simulator, 30)
        # A timeout fault's answer comes after its delay, and a failed read is retried: some margin.
        record.fault_windows.append((start, time.time() + 5))


def wait_until_faults_are_used(simulator: SimulatorHandle, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        # A fault of count 0 adds nothing: the answer lists what is left.
        left = httpx.post(f"{simulator.url}/_fake/faults", json={"mode": "http_500", "count": 0}, timeout=10)
        if not left.json()["faults"]:
            return
        time.sleep(0.2)


async def restart_redis(system: System, record: Record, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))
    log("restarting Redis (it keeps nothing: locks, token cache, queued tasks and groups are gone)")
    start = time.time()
    await asyncio.to_thread(system.redis.restart)
    record.redis_restarted_at = time.time()
    # Requests racing the restart and the first reconnects answer 503; the sockets reconnect.
    record.fault_windows.append((start, record.redis_restarted_at + 5))


async def kill_a_worker(system: System, record: Record, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))
    victim = random.choice([worker for worker in system.workers if worker.alive()])
    log(f"killing {victim.name} (SIGKILL) and starting a replacement, as a process manager would")
    await asyncio.to_thread(victim.kill)
    record.worker_killed_at = time.time()
    await asyncio.to_thread(system.start_worker)
