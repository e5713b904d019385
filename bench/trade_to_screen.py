"""Trade to screen: `POST /execute-buy/{code}` sent -> `watchlist_changed` received on a socket of the same
user, through Daphne (or --server uvicorn), the --layer channel layer, PostgreSQL, a Celery worker and
the KIS simulator.

    scripts/bench trade_to_screen [--trades 200 --accounts 10]

`--accounts` users, each with one simulator account and one token socket open. Trades go one at a
time, round robin over the accounts, a market buy of 1 then a sell of 1 on each (holdings stay
bounded); every trade queues its reconciling sync on the worker, as in production. A trade's time
is from sending the POST until its socket has the watchlist_changed of the version the answer names
(the optimistic change: the order accepted and committed). The baselines, in the same run on the
same server: the POST's own HTTP round trip, and a plain GET /api/watchlist/ after each trade.
The KIS client-side rate limit is lifted (KIS_RATE_LIMIT_PAPER), and the simulator's with it (--rate-limit off).
Targets: p50 <= 50 ms, p99 <= 150 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench import ws_stack
from devtools.processes import celery_worker
from devtools.simulator import start_simulator

TARGET_P50, TARGET_P99 = 0.050, 0.150
CODE = "005930"
TIMEOUT = 30
FIRST_CANO = 81_000_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=10)
    ws_stack.add_common_arguments(parser)
    return parser.parse_args()


class Screen:
    """One socket; notes when each watchlist_changed version arrives."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.arrived: dict[int, float] = {}
        self.new_version = asyncio.Event()
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for text in self.socket:
            message = json.loads(text)
            if message["type"] == "watchlist_changed":
                self.arrived[message["version"]] = time.perf_counter()
                self.new_version.set()

    async def arrival_of(self, version: int) -> float:
        async with asyncio.timeout(TIMEOUT):
            while version not in self.arrived:
                self.new_version.clear()
                await self.new_version.wait()
        return self.arrived[version]


async def run_trades(url: str, seeded: list[tuple[int, str]], trades: int) -> dict[str, list[float]]:
    screens = []
    for _, token in seeded:
        socket = await connect(url.replace("http", "ws", 1) + "/ws/watchlist/",
                               additional_headers={"Authorization": f"Token {token}"}, open_timeout=TIMEOUT)
        await socket.recv()  # the snapshot
        screens.append(Screen(socket))
    times: dict[str, list[float]] = {"screen": [], "post": [], "get": []}
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        for number in range(trades):
            index = number % len(seeded)
            side = "buy" if (number // len(seeded)) % 2 == 0 else "sell"
            token = seeded[index][1]
            headers = {"Authorization": f"Token {token}"}
            started = time.perf_counter()
            answer = await http.post(f"/execute-{side}/{CODE}", json={"qty": 1}, headers=headers)
            answered = time.perf_counter()
            answer.raise_for_status()
            version = answer.json()["watchlist_version"]
            times["screen"].append(await screens[index].arrival_of(version) - started)
            times["post"].append(answered - started)
            started = time.perf_counter()
            (await http.get("/api/watchlist/", headers=headers)).raise_for_status()
            times["get"].append(time.perf_counter() - started)
    for screen in screens:
        await screen.socket.close()
    return times


def main() -> None:
    args = parse_args()
    stack = ws_stack.Stack(args.database_admin_url, CHANNEL_LAYER=args.layer, KIS_RATE_LIMIT_PAPER="100000",
                           KIS_TOKEN_MIN_INTERVAL="0")
    simulator = start_simulator(stack.workdir / "simulator.log", "--rate-limit", "off")
    seeded = ws_stack.seed_users(args.accounts, base_url=simulator.url, watched=None, cano_from=FIRST_CANO)
    for n in range(args.accounts):
        simulator.set_holdings(str(FIRST_CANO + n), [])
    worker = celery_worker("bench", stack.env, stack.workdir / "worker.log").start()
    server = ws_stack.start_server(stack, args.server)
    try:
        asyncio.run(run_trades(server.url, seeded[:1], 4))  # warm: KIS token, connections, templates
        print(f"{args.trades} trades over {args.accounts} accounts ...", flush=True)
        times = asyncio.run(run_trades(server.url, seeded, args.trades))
    finally:
        server.stop()
        worker.stop()
        simulator.close()
        stack.close()

    def p(kind: str, share: float) -> float:
        return ws_stack.percentile(times[kind], share)

    rows = []
    for label, share, target in (("p50", 0.5, TARGET_P50), ("p99", 0.99, TARGET_P99)):
        screen = p("screen", share)
        rows += [
            {"figure": f"POST sent -> watchlist_changed on the socket, {label} (ms)", "ours": ws_stack.millis(screen),
             "baseline": f"{ws_stack.millis(p('get', share))} (GET)", "ratio": round(screen / p("get", share), 2),
             "target": f"<= {target * 1000:g} ms", "met": screen <= target},
            {"figure": f"  the same POST's HTTP round trip, {label} (ms)", "ours": ws_stack.millis(p("post", share)),
             "baseline": f"{ws_stack.millis(p('get', share))} (GET)",
             "ratio": round(p("post", share) / p("get", share), 2)},
        ]
    ws_stack.report("trade_to_screen", args, f"trade to screen: {args.trades} trades over {args.accounts} "
                    "accounts (baseline: GET /api/watchlist/ on the same server)", rows,
                    {kind: [ws_stack.millis(t) for t in values] for kind, values in times.items()}
                    | {"logs": str(stack.workdir)})


if __name__ == "__main__":
    sys.exit(main())
