"""The system under soak: every process it starts (a private redis-server, a fresh database, the KIS
simulator, Daphne processes, Celery workers and beat) and the users and accounts it seeds."""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from devtools.asgi_server import AsgiServer
from devtools.processes import AppProcess, celery_beat, celery_worker
from devtools.redis_server import PrivateRedis
from devtools.simulator import SimulatorHandle, start_simulator

USERS = 3
ACCOUNTS_PER_USER = 2
SYNC_INTERVAL = 5  # seconds: frequent syncs, so that they race the trades
PENDING_GRACE = 10  # seconds: an optimistic change the account never confirms is reverted this soon
LOCK_TIMEOUT = 10  # seconds: a killed worker's lock blocks its account no longer
# Low-priced stocks, so that hundreds of buys stay within the paper cash.
CODES = ["011200", "024110", "015760", "316140", "055550", "030200", "035720", "017670"]


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
        # Limits lifted: the soak packs a day of trading into minutes, so KIS's one-token-a-minute rule
        # would refuse the token every process asks for again after the Redis restart (tests/trading
        # test_kis_conformance.py holds that rule; the soak checks consistency under faults).
        self.simulator = start_simulator(
            self.workdir / "simulator.log", "--rate-limit", "off", "--token-issue-interval", "0"
        )

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
            system.simulator.set_holdings(
                cano,
                [
                    {"stock_code": code, "quantity": random.randint(5, 50), "avg_price": 20_000}
                    for code in random.sample(CODES, 3)
                ],
            )
            account = BrokerAccount.objects.create(
                owner=user,
                display_name=f"soak {u}-{a}",
                account_number=cano,
                base_url=system.simulator.url,
                app_key=f"PSsoakKey{u}{a}{uuid.uuid4().hex}",
                app_secret=f"soakSecret{uuid.uuid4().hex}",
            )
            accounts.append(Account(account.id, cano, user.username, token))
    return accounts


def wait_until_every_account_synced(accounts: list[Account], timeout: float = 120) -> None:
    from watchlist.models import SyncState

    deadline = time.time() + timeout
    synced = SyncState.objects.filter(account_id__in=[a.id for a in accounts], last_success_at__isnull=False)
    while synced.count() < len(accounts):
        if time.time() > deadline:
            raise RuntimeError("the accounts did not sync within 120 s of the start")
        time.sleep(0.5)
