"""The soak: the whole system under use and faults for a bounded time, then checked end to end.

    .venv/bin/python bench/soak.py [--duration 300]

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
import itertools
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import WebSocketException  # noqa: E402

from tests.fixtures.faults import AppProcess, PrivateRedis, celery_beat, celery_worker  # noqa: E402
from tests.fixtures.servers import AsgiServer  # noqa: E402
from tests.fixtures.simulator import SimulatorHandle, start_simulator  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from sync_throughput import SyncObserver  # noqa: E402

USERS = 3
ACCOUNTS_PER_USER = 2
SOCKETS_PER_ACCOUNT = 2
SYNC_INTERVAL = 5  # seconds: frequent syncs, so that they race the trades
PENDING_GRACE = 10  # seconds: an optimistic change the account never confirms is reverted this soon
LOCK_TIMEOUT = 10  # seconds: a killed worker's lock blocks its account no longer
MEMORY_BOUND_MB = 64
# Low-priced stocks, so that hundreds of buys stay within the paper cash.
CODES = ["011200", "024110", "015760", "316140", "055550", "030200", "035720", "017670"]
FAULT_MODES = ["http_500", "rate_limit", "token_expired", "timeout"]
# The browser client's timings (static/js/watchlist.js).
PING_EVERY, PONG_DEADLINE = 20.0, 10.0
STALE_SYNC_GRACE, STALE_SYNC_MIN_INTERVAL = 15, 30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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


STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[soak +{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


# --- the record of what happened -------------------------------------------------------------------

@dataclass
class Answer:
    method: str
    path: str
    status: int
    body: dict | None  # None: not JSON
    at: float


@dataclass
class Trade:
    account_id: int
    cano: str
    side: str
    code: str
    qty: int
    key: str
    answers: list[Answer] = field(default_factory=list)


@dataclass
class Record:
    answers: list[Answer] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    # (start, end) of each window in which a fault was on: broker faults, Redis down, ...
    fault_windows: list[tuple[float, float]] = field(default_factory=list)
    redis_restarted_at: float | None = None
    worker_killed_at: float | None = None

    def in_fault_window(self, at: float) -> bool:
        return any(start <= at <= end for start, end in self.fault_windows)


# --- the system ------------------------------------------------------------------------------------

class System:
    """Every process of the soak, started and stopped here."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.redis = PrivateRedis(workdir / "redis.log")
        self.simulator: SimulatorHandle | None = None
        self.daphnes: list[AsgiServer] = []
        self.workers: list[AppProcess] = []
        self.beat: AppProcess | None = None
        self.env: dict[str, str] = {}

    def start(self) -> None:
        self.redis.start()
        database_url = create_database(self.args.database_admin_url, self.args.database)
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": database_url,
            "DATABASE_CONN_MAX_AGE": "60",
            "REDIS_URL": self.redis.url(),
            "WATCHLIST_SYNC_INTERVAL": str(SYNC_INTERVAL),
            "WATCHLIST_DISPATCH_EVERY": "1",
            "WATCHLIST_PENDING_GRACE": str(PENDING_GRACE),
            "WATCHLIST_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
            "KIS_RATE_LIMIT_PAPER": "10000",
            "KIS_TOKEN_MIN_INTERVAL": "0",
            "KIS_TIMEOUT": "2",
            "AUTH_THROTTLE_RATE": "1000/min",
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.simulator = start_simulator(self.workdir / "simulator.log", "--rate-limit", "off")

    def start_servers(self) -> None:
        for n in range(self.args.daphnes):
            # As scripts/run starts it: Daphne takes its database connections from a pool.
            daphne = AsgiServer(self.workdir / f"daphne{n}.log", self.env | {"DATABASE_POOL": "1"})
            daphne.start()
            self.daphnes.append(daphne)
        for _ in range(self.args.workers):
            self.start_worker()
        self.beat = celery_beat(self.env, self.workdir / "beat.log", self.workdir / "beat-schedule")
        self.beat.start()

    def start_worker(self) -> AppProcess:
        name = f"worker{len(self.workers)}"
        worker = celery_worker(name, self.env, self.workdir / f"{name}.log", pool="threads", concurrency=4)
        self.workers.append(worker)  # before it starts: stopped at the end even if starting fails
        return worker.start()

    def server_pids(self) -> dict[str, int]:
        pids = {f"daphne{n}": daphne.process.pid for n, daphne in enumerate(self.daphnes) if daphne.process}
        pids |= {worker.name: worker.pid for worker in self.workers if worker.alive()}
        if self.beat and self.beat.alive():
            pids["beat"] = self.beat.pid
        return pids

    def stop(self) -> None:
        for process in [self.beat, *self.workers]:
            if process is not None:
                process.stop()
        for daphne in self.daphnes:
            daphne.stop()
        if self.simulator is not None:
            self.simulator.close()
        self.redis.stop()


def create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class Account:
    id: int
    cano: str
    user: str
    token: str


def create_users_and_accounts(system: System) -> list[Account]:
    from django.contrib.auth import get_user_model
    from knox.models import AuthToken

    from trading.models import BrokerAccount

    accounts = []
    for u in range(USERS):
        user = get_user_model().objects.create_user(f"soak{u}", password=f"soak-pass-{u}-xyz")
        token = AuthToken.objects.create(user=user)[1]
        for a in range(ACCOUNTS_PER_USER):
            cano = f"{61_000_000 + u * 100 + a}"
            system.simulator.configure_account(cano, cash=100_000_000_000)
            system.simulator.set_holdings(cano, [
                {"stock_code": code, "quantity": random.randint(5, 50), "avg_price": 20_000}
                for code in random.sample(CODES, 3)
            ])
            account = BrokerAccount.objects.create(
                owner=user, display_name=f"soak {u}-{a}", account_number=cano, base_url=system.simulator.url,
                app_key=f"PSsoakKey{u}{a}{uuid.uuid4().hex}", app_secret=f"soakSecret{uuid.uuid4().hex}",
            )
            accounts.append(Account(account.id, cano, user.username, token))
    return accounts


# --- socket clients ----------------------------------------------------------------------------------

class SocketClient:
    """One `/ws/watchlist/` connection kept open forever, following the browser client's rules."""

    def __init__(self, name: str, url: str, account: Account, record: Record, html: bool = False) -> None:
        self.name = name
        self.url = url + (f"?account={account.id}" + ("&render=html" if html else ""))
        self.account = account
        self.record = record
        self.html = html
        self.items: dict[str, dict] = {}
        self.version: int | None = None
        self.sync: dict = {}
        self.awaiting_snapshot = True
        self.stale_asked_at: float | None = None
        self.counts: Counter[str] = Counter()
        self.pushed_after_restart = 0
        self.problems: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Token {self.account.token}"}
        attempt = 0
        while not stop.is_set():
            try:
                async with connect(self.url, additional_headers=headers, open_timeout=15,
                                   max_size=2**22) as socket:
                    attempt = 0
                    self.counts["connections"] += 1
                    await self._serve(socket, stop)
            except (OSError, WebSocketException, TimeoutError) as error:
                self.counts["disconnects"] += 1
                self.counts[f"disconnect: {type(error).__name__}"] += 1
            self.awaiting_snapshot = True
            attempt += 1
            if not stop.is_set():
                await asyncio.sleep(min(5.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0))

    async def _serve(self, socket, stop: asyncio.Event) -> None:
        last_pong = time.monotonic()
        next_ping = time.monotonic() + PING_EVERY
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(socket.recv(), timeout=1.0)
            except TimeoutError:
                raw = None
            now = time.monotonic()
            if raw is not None:
                message = json.loads(raw)
                if message["type"] == "pong":
                    last_pong = now
                await self._handle(socket, message)
            if now >= next_ping:
                await socket.send(json.dumps({"type": "ping"}))
                next_ping = now + PING_EVERY
            if now - last_pong > PING_EVERY + PONG_DEADLINE:
                self.counts["dead (no pong)"] += 1
                return
            await self._ask_if_sync_looks_stale(socket)

    async def _handle(self, socket, message: dict) -> None:
        kind = message["type"]
        self.counts[kind] += 1
        if kind == "watchlist_snapshot":
            self.items = {item["stock_code"]: item for item in message["full_list"]}
            self.version, self.awaiting_snapshot = message["version"], False
            if self.html and set(message.get("rows_html", {})) != set(self.items):
                self.problems.append(f"snapshot v{message['version']} without a row for every item")
        elif kind == "watchlist_changed":
            await self._apply(socket, message)
        elif kind == "sync_status":
            self.sync = message["sync"]
        elif kind == "error":
            self.problems.append(f"server error message: {message['message']}")

    async def _apply(self, socket, message: dict) -> None:
        if self.awaiting_snapshot or self.version is None or message["version"] <= self.version:
            return  # a snapshot is on its way, or this change is in it already
        if message["version"] != self.version + 1:
            self.counts["gaps"] += 1
            return await self._resync(socket)
        changes, full = message["changes"], {item["stock_code"]: item for item in message["full_list"]}
        for code in changes["removed"]:
            self.items.pop(code, None)
        for code in changes["added"] + changes["updated"]:
            self.items[code] = full[code]
        if set(self.items) != set(full):
            self.problems.append(f"v{message['version']}: the changes applied differ from the list sent")
            self.items = full
        if self.html and set(message.get("rows_html", {})) != set(changes["added"] + changes["updated"]):
            self.problems.append(f"v{message['version']}: rows_html is not the added and updated codes")
        self.version = message["version"]
        if self.record.redis_restarted_at and time.time() > self.record.redis_restarted_at:
            self.pushed_after_restart += 1

    async def _ask_if_sync_looks_stale(self, socket) -> None:
        """The browser client asks for a snapshot once the next sync is overdue (static/js/watchlist.js)."""
        now = time.time()
        due = self.sync.get("next_attempt_at")
        if self.sync.get("status") != "ok" or not due or now < due + STALE_SYNC_GRACE:
            return
        if self.stale_asked_at is None or now - self.stale_asked_at >= STALE_SYNC_MIN_INTERVAL:
            self.stale_asked_at = now
            self.counts["stale-sync resyncs"] += 1
            await self._resync(socket)

    async def _resync(self, socket) -> None:
        self.awaiting_snapshot = True
        await socket.send(json.dumps({"type": "resync"}))

    def view(self) -> dict[str, tuple]:
        return {code: (item["quantity"], item["avg_price"], item["pending"])
                for code, item in self.items.items()}


# --- the users' HTTP traffic -------------------------------------------------------------------------

class Api:
    def __init__(self, daphnes: list[AsgiServer], record: Record) -> None:
        self.clients = [httpx.AsyncClient(base_url=daphne.url, timeout=60) for daphne in daphnes]
        self.record = record

    async def call(self, token: str, method: str, path: str, body: dict | None = None,
                   headers: dict | None = None) -> Answer:
        client = random.choice(self.clients)
        try:
            response = await client.request(method, path, json=body,
                                             headers={"Authorization": f"Token {token}", **(headers or {})})
        except httpx.TransportError as error:  # a server process gone is a 5xx to the user, too
            answer = Answer(method, path, 599, {"transport_error": type(error).__name__}, time.time())
        else:
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
            answer = Answer(method, path, response.status_code, parsed, time.time())
        self.record.answers.append(answer)
        return answer

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


async def trade_randomly(api: Api, simulator: SimulatorHandle, accounts: list[Account], record: Record,
                         until: float) -> None:
    """Market buys, partial and full sells, each with its own Idempotency-Key; a tenth sent twice."""
    while time.time() < until:
        account = random.choice(accounts)
        held = await asyncio.to_thread(lambda: {h["stock_code"]: h["orderable_quantity"]
                                                for h in simulator.account(account.cano)["holdings"]})
        choice = random.random()
        if choice < 0.5 or not held:
            side, code, qty = "buy", random.choice(CODES), random.randint(1, 20)
        else:
            code = random.choice(sorted(held))
            full = choice > 0.8 or held[code] <= 1
            side, qty = "sell", held[code] if full else random.randint(1, held[code] - 1)
        if qty < 1:
            continue
        trade = Trade(account.id, account.cano, side, code, qty, key=uuid.uuid4().hex)
        await place(api, record, trade, account)
        await asyncio.sleep(random.uniform(0.05, 0.4))


async def place(api: Api, record: Record, trade: Trade, account: Account) -> None:
    record.trades.append(trade)
    sends = 2 if random.random() < 0.1 else 1  # a client retrying after a lost answer
    for _ in range(sends):
        body = {"qty": trade.qty, "account": trade.account_id}
        answer = await api.call(account.token, "POST", f"/execute-{trade.side}/{trade.code}", body,
                                {"Idempotency-Key": trade.key})
        trade.answers.append(answer)


async def read_watchlists(api: Api, accounts: list[Account], until: float) -> None:
    while time.time() < until:
        account = random.choice(accounts)
        await api.call(account.token, "GET", f"/api/watchlist/?account={account.id}")
        await asyncio.sleep(random.uniform(0.2, 1.0))


# --- chaos ---------------------------------------------------------------------------------------------

async def change_behind_the_apps_back(simulator: SimulatorHandle, accounts: list[Account],
                                      until: float) -> None:
    while time.time() < until:
        await asyncio.sleep(random.uniform(3, 8))
        account = random.choice(accounts)

        def change() -> None:
            holdings = [{name: h[name] for name in ("stock_code", "quantity", "avg_price")}
                        for h in simulator.account(account.cano)["holdings"]]
            action = random.choice(["add", "change", "remove"])
            if action == "add" or not holdings:
                holdings.append({"stock_code": random.choice(CODES), "quantity": random.randint(1, 30),
                                 "avg_price": 15_000})
                holdings = list({h["stock_code"]: h for h in holdings}.values())
            elif action == "change":
                random.choice(holdings)["quantity"] = random.randint(1, 60)
            else:
                holdings.remove(random.choice(holdings))
            simulator.set_holdings(account.cano, holdings)

        await asyncio.to_thread(change)


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


# --- memory ----------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


class MemoryWatch:
    """Each server process's resident memory once it has run `warm_up` seconds, and at the end."""

    def __init__(self, warm_up: float) -> None:
        self.warm_up = warm_up
        self.seen: dict[int, float] = {}
        self.first: dict[str, tuple[int, float]] = {}
        self.last: dict[str, tuple[int, float]] = {}

    def sample(self, pids: dict[str, int]) -> None:
        now = time.time()
        for name, pid in pids.items():
            rss = rss_mb(pid)
            if rss is None:
                continue
            warm = now - self.seen.setdefault(pid, now) >= self.warm_up
            if warm and (name not in self.first or self.first[name][0] != pid):
                self.first[name] = (pid, rss)
            self.last[name] = (pid, rss)

    def growth(self) -> dict[str, float]:
        return {name: self.last[name][1] - rss for name, (pid, rss) in self.first.items()
                if name in self.last and self.last[name][0] == pid}


# --- checks ----------------------------------------------------------------------------------------------

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
        if all(client.version == snapshots.get(client.account.id, {}).get("version")
               and not client.awaiting_snapshot for client in clients):
            return
        await asyncio.sleep(0.5)


def server_view(snapshot: dict) -> dict[str, tuple]:
    return {item["stock_code"]: (item["quantity"], item["avg_price"], item["pending"])
            for item in snapshot["full_list"]}


def run_checks(record: Record, clients: list[SocketClient], accounts: list[Account],
               snapshots: dict[int, dict], simulator: SimulatorHandle, memory: MemoryWatch,
               syncs: SyncObserver) -> Checks:
    from trading.models import Order
    from watchlist.models import Watchlist, WatchlistChange

    checks = Checks()
    checks.check(len(snapshots) == len(accounts), "a final sync of every account succeeded",
                 f"synced {sorted(snapshots)} of {[a.id for a in accounts]}")

    for client in clients:
        snapshot = snapshots.get(client.account.id)
        same = snapshot is not None and client.view() == server_view(snapshot)
        checks.check(same, f"socket {client.name}: its list equals the server's (v{client.version})",
                     f"socket {client.view()} v{client.version}\n"
                     f"      server {snapshot and server_view(snapshot)}")
    for account in accounts:
        snapshot = snapshots.get(account.id)
        holdings = {h["stock_code"]: h["quantity"] for h in simulator.account(account.cano)["holdings"]}
        view = server_view(snapshot) if snapshot else {}
        listed = {code: quantity for code, (quantity, _, _) in view.items()}
        pending = [code for code, (_, _, is_pending) in view.items() if is_pending]
        checks.check(snapshot is not None and listed == holdings and not pending,
                     f"account {account.id}: the server's list is the simulator's holdings, none pending",
                     f"server {listed} pending {pending}\n      simulator {holdings}")

    for watchlist in Watchlist.objects.filter(account__id__in=[a.id for a in accounts]):
        versions = list(WatchlistChange.objects.filter(watchlist=watchlist).order_by("version")
                        .values_list("version", flat=True))
        checks.check(versions == list(range(1, watchlist.version + 1)),
                     f"account {watchlist.account_id}: change log versions 1..{watchlist.version} contiguous",
                     f"versions {versions}")

    statuses = Counter(answer.status for answer in record.answers)
    bad = [a for a in record.answers if a.body is None or a.status == 500 or a.status >= 504]
    checks.check(not bad, f"no 500 and every answer JSON ({len(record.answers)} answers: {dict(statuses)})",
                 "; ".join(f"{a.method} {a.path} {a.status}" for a in bad[:10]))
    outside = [a for a in record.answers if a.status >= 500 and not record.in_fault_window(a.at)]
    checks.check(not outside, "5xx only while a fault was on (502 broker faults, 503 Redis down)",
                 "; ".join(f"{a.method} {a.path} {a.status} {a.body}" for a in outside[:10]))

    check_orders(checks, record, accounts, simulator, Order)

    restarted, killed = record.redis_restarted_at, record.worker_killed_at
    for event, at in (("the Redis restart", restarted), ("the worker kill", killed)):
        # Periodic syncs seen while the soak ran, not the final ones.
        after = {account_id for account_id, when, _ in syncs.syncs
                 if at is not None and when.timestamp() > at}
        missing = [a.id for a in accounts if a.id not in after]
        checks.check(at is not None and not missing, f"every account synced again by itself after {event}",
                     f"not synced since: {missing}")
    silent = [client.name for client in clients if client.pushed_after_restart == 0]
    checks.check(restarted is not None and not silent,
                 "every socket got pushed changes after the Redis restart (same socket or a new one)",
                 f"no pushed change since the restart on: {silent}")
    problems = [f"{client.name}: {problem}" for client in clients for problem in client.problems]
    checks.check(not problems, "every change applied to a socket's list gave the list sent with it; "
                               "html sockets got rows for every added and updated code",
                 "; ".join(problems[:10]))

    growth = memory.growth()
    checks.check(bool(growth) and all(mb <= MEMORY_BOUND_MB for mb in growth.values()),
                 f"resident memory of server processes grew by at most {MEMORY_BOUND_MB} MB after warm-up "
                 f"({', '.join(f'{name} {mb:+.1f}' for name, mb in sorted(growth.items()))} MB)")
    return checks


def check_orders(checks: Checks, record: Record, accounts: list[Account], simulator: SimulatorHandle,
                 order_model) -> None:
    """No order placed twice: every accepted answer of a key names one order, the same for its retry, and
    every order in the simulator's log is an accepted answer or the one unknown outcome of a request."""
    replays_differ = [t.key for t in record.trades
                      if len({a.body.get("order_id") for a in t.answers if a.status == 200 and a.body}) > 1]
    checks.check(not replays_differ, "a retried Idempotency-Key got its first answer, never a second order",
                 f"keys: {replays_differ[:5]}")
    accepted = Counter(next(a.body["order_id"] for a in t.answers if a.status == 200)
                       for t in record.trades if any(a.status == 200 for a in t.answers))
    placed = Counter(order["order_no"] for account in accounts for order in simulator.orders(account.cano))
    unexplained = placed - accepted
    # An order whose answer was lost (a timeout: "state unknown") is in the log with no accepted answer.
    unknown = Counter((t.cano, t.side, t.code, t.qty) for t in record.trades
                      if not any(a.status == 200 for a in t.answers)
                      and any(a.status == 502 and a.body and "unknown" in a.body.get("message", "")
                              for a in t.answers))
    orders = {order["order_no"]: (account.cano, order["side"], order["stock_code"], order["qty"])
              for account in accounts for order in simulator.orders(account.cano)}
    unmatched = []
    for order_no in unexplained.elements():
        if unknown[orders[order_no]] > 0:
            unknown[orders[order_no]] -= 1
        else:
            unmatched.append(order_no)
    checks.check(all(count == 1 for count in accepted.values()) and not unmatched,
                 f"no order placed twice ({sum(placed.values())} orders in the simulator's log, "
                 f"{len(accepted)} accepted answers, {len(record.trades)} trades)",
                 f"orders without a request to explain them: {unmatched[:10]}; "
                 f"order ids answered twice: {[o for o, n in accepted.items() if n > 1][:10]}")
    recorded = order_model.objects.filter(status="accepted").count()
    checks.check(recorded == len(accepted), f"the app's order audit holds every accepted order ({recorded})",
                 f"{recorded} recorded, {len(accepted)} accepted answers")


# --- main ----------------------------------------------------------------------------------------------

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
        clients.append(SocketClient(f"{account.user}/{account.id}#html", system.daphnes[0].ws_url(), account,
                                    record, html=True))
    stop_sockets = asyncio.Event()
    sockets = [asyncio.create_task(client.run(stop_sockets)) for client in clients]

    begin = time.time()
    until = begin + args.duration
    log(f"{len(accounts)} accounts, {len(clients)} sockets on {len(system.daphnes)} Daphne processes, "
        f"{len(system.workers)} workers: use and faults for {args.duration:g} s")
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
    return await asyncio.to_thread(run_checks, record, clients, accounts, snapshots, system.simulator, memory,
                                   syncs)


async def watch_memory(system: System, memory: MemoryWatch, until: float) -> None:
    while time.time() < until:
        memory.sample(system.server_pids())
        await asyncio.sleep(1)
    memory.sample(system.server_pids())


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


def wait_until_every_account_synced(accounts: list[Account], timeout: float = 120) -> None:
    from watchlist.models import SyncState

    deadline = time.time() + timeout
    synced = SyncState.objects.filter(account_id__in=[a.id for a in accounts], last_success_at__isnull=False)
    while synced.count() < len(accounts):
        if time.time() > deadline:
            raise RuntimeError("the accounts did not sync within 120 s of the start")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
