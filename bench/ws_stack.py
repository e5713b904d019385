"""What the WebSocket benchmarks (trade_to_screen, fanout, memory, reconnect_storm) share: the servers
they start, the client process, the seeded accounts and the report.

Everything a benchmark starts is its own and stops with it: a private redis-server on a free port
(devtools/redis_server.py), a PostgreSQL database `lw_bench_ws` dropped and created again on the server
of --database-admin-url, our application under Daphne or uvicorn (--server, devtools/asgi_server.py) on
either channel layer (--layer, the CHANNEL_LAYER setting), the bare `websockets` baseline
(bench/bare_ws_server.py) and the client process (bench/ws_clients.py), each on a free 127.0.0.1 port.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

from bench.production import production_settings_env
from devtools.asgi_server import AsgiServer
from devtools.processes import ROOT, free_port, stop_process, wait_for
from devtools.redis_server import PrivateRedis

BENCH_DATABASE = "lw_bench_ws"
WATCHED_CODE = "005930"
RESULTS = ROOT / "bench" / "results"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-admin-url",
        default=os.environ.get("DATABASE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument(
        "--server",
        choices=("daphne", "uvicorn"),
        default="daphne",
        help="the ASGI server of our side, as scripts/run's ASGI_SERVER starts it",
    )
    parser.add_argument(
        "--layer",
        choices=("redis", "pubsub"),
        default="redis",
        help="the channel layer (CHANNEL_LAYER) of every process, this one included",
    )


# --- the world: Redis, the database, Django in this process --------------------------------------


class Stack:
    """A private Redis and a fresh database, with Django set up on them in this process. `settings_env` is
    the environment of the settings for this process and every server it starts."""

    def __init__(self, admin_url: str, **settings_env: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="lw-bench-ws-"))
        self.redis = PrivateRedis(self.workdir / "redis.log")
        self.redis.start()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {BENCH_DATABASE}")
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": admin_url.rsplit("/", 1)[0] + f"/{BENCH_DATABASE}",
            "REDIS_URL": self.redis.url(),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **production_settings_env(),
            **settings_env,
        }
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)

    def close(self) -> None:
        self.redis.stop()


def seed_users(
    count: int,
    *,
    base_url: str = "http://127.0.0.1:9",
    watched: str | None = WATCHED_CODE,
    cano_from: int = 80_000_000,
) -> list[tuple[int, str]]:
    """`count` users with one account each (watching `watched`) and an API token: [(account id, token)]."""
    from django.contrib.auth import get_user_model
    from knox.models import AuthToken, get_digest_token
    from knox.settings import CONSTANTS

    from trading.models import BrokerAccount
    from watchlist.models import Watchlist, WatchlistItem

    User = get_user_model()
    users = User.objects.bulk_create(
        User(username=f"bench{cano_from + n}", password="!") for n in range(count)
    )
    digests_and_tokens = [
        get_digest_token() for _ in users
    ]  # knox stores the digest; the bench keeps the token
    AuthToken.objects.bulk_create(
        AuthToken(user=user, digest=digest, token_key=token[: CONSTANTS.TOKEN_KEY_LENGTH])
        for user, (digest, token) in zip(users, digests_and_tokens, strict=True)
    )
    tokens = [token for _, token in digests_and_tokens]
    accounts = BrokerAccount.objects.bulk_create(
        BrokerAccount(
            owner=user,
            display_name=f"bench {n}",
            account_number=str(cano_from + n),
            base_url=base_url,
            app_key=f"PSbenchKey{cano_from + n}",
            app_secret=f"benchSecret{n:06d}",
        )
        for n, user in enumerate(users)
    )
    watchlists = Watchlist.objects.bulk_create(Watchlist(account=account, version=1) for account in accounts)
    if watched:
        WatchlistItem.objects.bulk_create(
            WatchlistItem(
                watchlist=watchlist,
                stock_code=watched,
                name="삼성전자",
                quantity=10,
                avg_price=71250.5,
                current_price=72100,
                eval_amount=721000,
                pnl=8495,
                pnl_rate=1.19,
            )
            for watchlist in watchlists
        )
    return list(zip((account.id for account in accounts), tokens, strict=True))


# --- servers -------------------------------------------------------------------------------------


def start_server(stack: Stack, server: str) -> AsgiServer:
    """Our application under `server` (--server) on the stack's settings, as scripts/run starts it."""
    running = AsgiServer(stack.workdir / f"{server}.log", {**stack.env, "DATABASE_POOL": "1"}, server)
    running.start()
    return running


class BareServer:
    """bench/bare_ws_server.py on a free port; the port survives `restart()`."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "bare-ws-server.log"
        self.start()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.bare_ws_server", "--port", str(self.port)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "listening on" in self.log_path.read_text(), 30, "the bare websockets server")

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def settle_rss_kb(pid: int, seconds: float = 2.0) -> int:
    """RSS once the process stopped moving: the median of a few reads over `seconds`."""
    reads = []
    for _ in range(5):
        reads.append(rss_kb(pid))
        time.sleep(seconds / 5)
    return sorted(reads)[2]


# --- the client process --------------------------------------------------------------------------


class Clients:
    """bench/ws_clients.py as a subprocess; each method is one command and returns its answer."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.ws_clients"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def command(self, cmd: str, fleet: str, **fields) -> dict:
        self.process.stdin.write(json.dumps({"cmd": cmd, "fleet": fleet, **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the client process exited with {self.process.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def open(self, fleet: str, url: str, headers: list[dict[str, str]], *, first_message: bool) -> dict:
        return self.command("open", fleet, url=url, headers=headers, first_message=first_message)

    def close(self) -> None:
        self.process.stdin.close()
        stop_process(self.process)


def token_headers(tokens: list[str], sockets_per_token: int) -> list[dict[str, str]]:
    return [{"Authorization": f"Token {token}"} for token in tokens for _ in range(sockets_per_token)]


def get_round_trip(url: str, token: str, count: int) -> list[float]:
    """Plain GET /api/watchlist/ round trips on a kept-alive connection, in seconds."""
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=30) as http:
        http.get("/api/watchlist/").raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            http.get("/api/watchlist/").raise_for_status()
            times.append(time.perf_counter() - started)
    return times


# --- figures and the report ----------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def millis(seconds: float) -> float:
    return round(seconds * 1000, 1)


def report(bench: str, args: argparse.Namespace, title: str, rows: list[dict], details: dict) -> None:
    """Print the table (figure, ours, baseline, ratio, target, met) and write the JSON; both name the
    server and the channel layer of our side."""
    title = f"{title}; ours: {args.server}, {args.layer} channel layer"
    header = ("figure", "ours", "baseline", "ratio", "target", "met")
    cells = [header] + [
        (
            row["figure"],
            row["ours"],
            row.get("baseline", ""),
            row.get("ratio", ""),
            row.get("target", ""),
            {True: "yes", False: "NO", None: ""}[row.get("met")],
        )
        for row in rows
    ]
    widths = [max(len(str(cell[i])) for cell in cells) for i in range(len(header))]
    print(f"\n{title}")
    for cell in cells:
        print("  " + "  ".join(str(value).ljust(width) for value, width in zip(cell, widths, strict=True)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{bench}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "when": datetime.now().isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "server": args.server,
                "layer": args.layer,
                "rows": rows,
                **details,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"  written to {out.relative_to(ROOT)}")
