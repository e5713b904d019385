"""python -m kis_simulator --host 127.0.0.1 --port 8765  (--port 0 picks a free port)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

from aiohttp import web

from .app import create_app
from .state import RATE_LIMITS, TOKEN_ISSUE_INTERVAL, SimulatorState

logger = logging.getLogger("kis_simulator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kis_simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--tick-interval", type=float, default=1.0, help="seconds between price moves (0: still)"
    )
    parser.add_argument(
        "--timeout-delay", type=float, default=30.0, help="how long a 'timeout' fault holds its answer back"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the price walk, for repeatable runs")
    parser.add_argument(
        "--token-issue-interval",
        type=float,
        default=TOKEN_ISSUE_INTERVAL,
        help="seconds before an app key may have another token: EGW00133 before (0: no such rule)",
    )
    parser.add_argument(
        "--rate-limit",
        choices=("on", "off"),
        default="on",
        help="answer EGW00201 beyond the per-app-key call budget (off: no budget, for benchmarks)",
    )
    parser.add_argument("--rate-limit-paper", type=float, default=RATE_LIMITS["paper"], help="calls/s, paper")
    parser.add_argument("--rate-limit-real", type=float, default=RATE_LIMITS["real"], help="calls/s, real")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    rate_limits = (
        {"paper": args.rate_limit_paper, "real": args.rate_limit_real} if args.rate_limit == "on" else None
    )
    state = SimulatorState(
        seed=args.seed, token_issue_interval=args.token_issue_interval, rate_limits=rate_limits
    )
    app = create_app(state, tick_interval=args.tick_interval, timeout_delay=args.timeout_delay)
    runner = web.AppRunner(
        app, shutdown_timeout=1.0, access_log=logging.getLogger("aiohttp.access") if args.access_log else None
    )
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    await web.SockSite(runner, sock, backlog=1024).start()
    # The fixture reads this line to learn the port when it asked for port 0.
    print(f"KIS simulator listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
