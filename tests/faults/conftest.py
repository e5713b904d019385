"""The running system for fault tests: the test database, a private Redis, the session's KIS simulator,
and Daphne / Celery worker / Celery beat subprocesses pointed at them, with a short sync interval."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from devtools.asgi_server import AsgiServer
from devtools.processes import AppProcess, celery_beat, celery_worker, wait_for
from devtools.redis_server import PrivateRedis
from tests.fixtures.servers import server_env
from trading.models import BrokerAccount
from watchlist.models import SyncState, WatchlistItem

SYNC_INTERVAL = 3  # seconds: short, so that "within one interval" is quick to observe
WAIT = 90  # seconds: generous bound for anything the system does by itself on a noisy machine


class System:
    """Starts the application's processes against one environment; the test stops nothing by hand."""

    def __init__(self, env: dict[str, str], tmp_path: Path, start) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self._start = start
        self.workers: list[AppProcess] = []
        self.daphnes: list[AsgiServer] = []

    def worker(self, name: str = "worker1", **options) -> AppProcess:
        worker = self._start(celery_worker(name, self.env, self.tmp_path / f"{name}.log", **options))
        self.workers.append(worker)
        return worker

    def beat(self) -> AppProcess:
        return self._start(celery_beat(self.env, self.tmp_path / "beat.log", self.tmp_path / "beat-schedule"))

    def daphne(self, **env: str) -> AsgiServer:
        """A Daphne process; `env` adds to its environment."""
        server = AsgiServer(self.tmp_path / "daphne.log", self.env | env)
        server.start()
        self.daphnes.append(server)
        return server

    def stop_daphnes(self) -> None:
        for server in self.daphnes:
            server.stop()

    def logs(self) -> str:
        """Every log of the run, for assertion messages."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}"
            for path in sorted(self.tmp_path.glob("*.log"))
        )


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app_processes():
    """Start AppProcess objects with `app_processes(process)`; those still running stop after the test."""
    started: list[AppProcess] = []

    def start(process: AppProcess) -> AppProcess:
        started.append(process)
        return process.start()

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def system_env(private_redis, kis_simulator):
    """The environment of the application's processes: test database, private Redis, short intervals."""
    return server_env(
        REDIS_URL=private_redis.url(),
        WATCHLIST_SYNC_INTERVAL=str(SYNC_INTERVAL),
        WATCHLIST_DISPATCH_EVERY="1",
    )


@pytest.fixture
def system(system_env, tmp_path, app_processes):
    running = System(system_env, tmp_path, app_processes)
    yield running
    running.stop_daphnes()


def pause(process: AppProcess) -> None:
    os.killpg(process.pid, signal.SIGSTOP)


def resume(process: AppProcess) -> None:
    os.killpg(process.pid, signal.SIGCONT)


def watchlist_quantities(account: BrokerAccount) -> dict[str, int]:
    items = WatchlistItem.objects.filter(watchlist__account=account)
    return dict(items.values_list("stock_code", "quantity"))


def simulator_quantities(simulator, cano: str) -> dict[str, int]:
    return {h["stock_code"]: h["quantity"] for h in simulator.account(cano)["holdings"]}


def in_step(account: BrokerAccount, simulator) -> bool:
    """The watchlist shows exactly the simulator's holdings, nothing pending, and the last sync succeeded."""
    state = SyncState.objects.filter(account=account).first()
    return (
        state is not None
        and state.status == "ok"
        and not WatchlistItem.objects.filter(watchlist__account=account, pending=True).exists()
        and watchlist_quantities(account) == simulator_quantities(simulator, account.account_number)
    )


def wait_in_step(accounts: list[BrokerAccount], simulator, system: System, timeout: float = WAIT) -> None:
    try:
        wait_for(
            lambda: all(in_step(account, simulator) for account in accounts),
            timeout,
            "every watchlist to equal the simulator's holdings",
            interval=0.25,
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{system.logs()}") from None


def api_token(server: AsgiServer, username: str, password: str) -> str:
    credentials = {"username": username, "password": password}
    response = httpx.post(f"{server.url}/api/auth/token/", json=credentials, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["token"]
