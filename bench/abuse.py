"""Abuse: hostile clients against one Daphne process while another user receives prices.

    scripts/bench abuse [--flood-seconds 60 --nested-sockets 5000 --quiet-seconds 30]

One Daphne (production settings, bench/ws_stack.py) and, in this process, a second user's socket that
gets a price_update every PRICE_EVERY seconds through the channel layer (as the price feed sends them);
its latency is from the send to the arrival. Phases, one after the other in one invocation:

- quiet: nothing else;
- flood: one `?render=html` socket (a watchlist of FLOOD_ITEMS codes) sending `{"type":"resync"}` as
  fast as it can and reading nothing, reconnecting whenever it is closed, for --flood-seconds;
- churn: the same number of sockets, WAVE at a time, each reading its snapshot and closing: what
  serving the sockets alone costs, the baseline of the next phase;
- nested: --nested-sockets sockets, WAVE at a time, each sending one frame of 50,000 `[` and reading
  the answer (after a warm-up wave of WAVE plain sockets, not measured);
- slow reader: a `?render=html` socket asking for a snapshot SLOW_READER_RATE times a second (within
  the inbound rate) and reading nothing, until it is closed, then once more.

The abusers run in a child process. Per phase: Daphne's RSS growth (settled after the phase minus
settled before), the other user's price latency p50/p99 and their ratio to the quiet run's, and the
count of "Exception inside application" in Daphne's log. Targets: the flood grows the process by at most
20 MB with a p99 within 2x of quiet; the nested frames leave RSS within 10 MB and no exception.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time

from bench import ws_stack
from devtools.seed import watch_many

PRICE_EVERY = 0.1  # seconds
FLOOD_ITEMS = 150
NESTED_FRAME = "[" * 50_000
WAVE = 250
SLOW_READER_RATE = 10  # resyncs a second: within the inbound rate, so only the outbound bound acts
SLOW_READER_SECONDS = 30
FLOOD_RSS_TARGET_MB = 20
NESTED_RSS_TARGET_MB = 10
P99_TARGET_RATIO = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quiet-seconds", type=float, default=30)
    parser.add_argument("--flood-seconds", type=float, default=60)
    parser.add_argument("--nested-sockets", type=int, default=5000)
    ws_stack.add_common_arguments(parser)
    return parser.parse_args()


# --- the abusers (child process) ------------------------------------------------------------------


async def connect_quietly(url: str, token: str):
    from websockets.asyncio.client import connect

    # max_queue=1: the client library stops reading from the connection once a message waits unread.
    return await connect(
        url,
        additional_headers={"Authorization": f"Token {token}"},
        max_queue=1,
        ping_interval=None,
        open_timeout=30,
    )


async def flood(url: str, token: str, seconds: float) -> dict:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    deadline = time.monotonic() + seconds
    sent = connections = 0
    while time.monotonic() < deadline:
        try:
            socket = await connect_quietly(url, token)
        except (OSError, TimeoutError, InvalidHandshake):  # refused while the server is busy: try again
            await asyncio.sleep(0.1)
            continue
        connections += 1
        try:
            while time.monotonic() < deadline:
                await socket.send('{"type": "resync"}')
                sent += 1
                if sent % 100 == 0:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        finally:
            socket.transport.abort()
    return {"resyncs_sent": sent, "connections": connections}


async def nested(url: str, token: str, count: int, frame: str | None = NESTED_FRAME) -> dict:
    from websockets.asyncio.client import connect

    answers: dict[str, int] = {}

    async def one() -> None:
        async with connect(
            url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=60, ping_interval=None
        ) as socket:
            kind = json.loads(await socket.recv())["type"]  # the snapshot
            if frame is not None:
                await socket.send(frame)
                kind = json.loads(await socket.recv())["type"]
            answers[kind] = answers.get(kind, 0) + 1

    for start in range(0, count, WAVE):
        results = await asyncio.gather(
            *(one() for _ in range(min(WAVE, count - start))), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                answers[type(result).__name__] = answers.get(type(result).__name__, 0) + 1
    return answers


async def slow_reader(url: str, token: str) -> dict:
    from websockets.exceptions import ConnectionClosed

    closes = []
    for _ in range(2):
        socket = await connect_quietly(url, token)
        started = time.monotonic()
        try:
            while time.monotonic() - started < SLOW_READER_SECONDS:
                await socket.send('{"type": "resync"}')
                await asyncio.sleep(1 / SLOW_READER_RATE)
            closes.append("still open")
        except ConnectionClosed:
            closes.append(f"closed after {time.monotonic() - started:.1f} s")
        socket.transport.abort()
    return {"slow_reader": closes}


def abuser(kind: str, url: str, token: str, amount: float, answer: multiprocessing.Queue) -> None:
    runs = {
        "flood": lambda: flood(url, token, amount),
        "nested": lambda: nested(url, token, int(amount)),
        "warm-up": lambda: nested(url, token, int(amount), frame=None),
        "churn": lambda: nested(url, token, int(amount), frame=None),
        "slow": lambda: slow_reader(url, token),
    }
    answer.put(asyncio.run(runs[kind]()))


# --- the other user's prices (this process) ------------------------------------------------------


async def price_latencies(
    url: str, token: str, account_id: int, until: multiprocessing.Process | float
) -> list[float]:
    """Price updates for `account_id` every PRICE_EVERY s until the process ends (or for so many seconds):
    seconds from each send to its arrival."""
    from websockets.asyncio.client import connect

    from watchlist.events import broadcast_price_updates, price_update_message

    sent: dict[int, float] = {}
    latencies: list[float] = []
    async with connect(url, additional_headers={"Authorization": f"Token {token}"}, max_size=None) as socket:
        await socket.recv()

        async def read() -> None:
            async for text in socket:
                message = json.loads(text)
                if message["type"] == "price_update" and message["volume"] in sent:
                    latencies.append(time.monotonic() - sent.pop(message["volume"]))

        reader = asyncio.create_task(read())
        deadline = time.monotonic() + until if isinstance(until, float) else None
        sequence = 0
        while until.is_alive() if deadline is None else time.monotonic() < deadline:
            sequence += 1
            sent[sequence] = time.monotonic()
            await broadcast_price_updates(
                [([account_id], price_update_message(ws_stack.WATCHED_CODE, 72_100, 600, 0.84, sequence))]
            )
            await asyncio.sleep(PRICE_EVERY)
        await asyncio.sleep(1)
        reader.cancel()
    return latencies


def run_phase(name: str, server, url: str, token: str, amount: float, victim: tuple[int, str]) -> dict:
    pid = server.process.pid
    answers: multiprocessing.Queue = multiprocessing.Queue()
    if name in ("churn", "nested"):
        # As many sockets at once as a wave, plainly: what the process grows by to serve them is not
        # what the nested frames cost.
        warm_up = multiprocessing.Process(target=abuser, args=("warm-up", url, token, WAVE, answers))
        warm_up.start()
        answers.get(timeout=120)
        warm_up.join()
    before = ws_stack.settle_rss_kb(pid)
    child = None
    if name != "quiet":
        child = multiprocessing.Process(target=abuser, args=(name, url, token, amount, answers))
        child.start()
    peak = [before]

    async def measure() -> list[float]:
        async def sample_rss() -> None:
            while True:
                peak[0] = max(peak[0], ws_stack.rss_kb(pid))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_rss())
        try:
            return await price_latencies(server.ws_url(), victim[1], victim[0], child or float(amount))
        finally:
            sampler.cancel()

    latencies = asyncio.run(measure())
    abuse = answers.get(timeout=60) if child else {}
    if child:
        child.join()
    after = ws_stack.settle_rss_kb(pid, seconds=5)
    return {
        "phase": name,
        "rss_before_mb": round(before / 1024, 1),
        "rss_after_mb": round(after / 1024, 1),
        "rss_peak_mb": round(peak[0] / 1024, 1),
        "rss_growth_mb": round((after - before) / 1024, 1),
        "prices": len(latencies),
        "p50_ms": ws_stack.millis(ws_stack.percentile(latencies, 0.5)),
        "p99_ms": ws_stack.millis(ws_stack.percentile(latencies, 0.99)),
        "exceptions_in_log": server.log_path.read_text(errors="replace").count(
            "Exception inside application"
        ),
        "abuse": abuse,
    }


def main() -> None:
    args = parse_args()
    if args.server != "daphne":
        sys.exit("the abuse bench measures Daphne (its outbound buffer is what it bounds)")
    stack = ws_stack.Stack(args.database_admin_url, CHANNEL_LAYER=args.layer)
    server = None
    try:
        (abuser_account, abuser_token), victim = ws_stack.seed_users(2)
        watch_many(abuser_account, FLOOD_ITEMS)
        server = ws_stack.start_server(stack, "daphne")
        html = server.ws_url("/ws/watchlist/?render=html")
        phases = [
            run_phase("quiet", server, html, abuser_token, args.quiet_seconds, victim),
            run_phase("flood", server, html, abuser_token, args.flood_seconds, victim),
            run_phase("churn", server, server.ws_url(), abuser_token, args.nested_sockets, victim),
            run_phase("nested", server, server.ws_url(), abuser_token, args.nested_sockets, victim),
            run_phase("slow", server, html, abuser_token, 0, victim),
        ]
    finally:
        if server is not None:
            server.stop()
        stack.close()
    quiet_p99 = phases[0]["p99_ms"]
    churn = next(phase for phase in phases if phase["phase"] == "churn")
    rows = [{"figure": "price latency p50 / p99, quiet (ms)", "ours": f"{phases[0]['p50_ms']} / {quiet_p99}"}]
    for phase in phases[1:]:
        ratio = round(phase["p99_ms"] / quiet_p99, 2) if quiet_p99 else None
        rows.append(
            {
                "figure": f"{phase['phase']}: price latency p50 / p99 (ms)",
                "ours": f"{phase['p50_ms']} / {phase['p99_ms']}",
                "ratio": ratio,
                "target": f"<= {P99_TARGET_RATIO}x" if phase["phase"] == "flood" else "",
                "met": (ratio is not None and ratio <= P99_TARGET_RATIO)
                if phase["phase"] == "flood"
                else None,
            }
        )
        target = {"flood": FLOOD_RSS_TARGET_MB, "nested": NESTED_RSS_TARGET_MB}.get(phase["phase"])
        rows.append(
            {
                "figure": f"{phase['phase']}: RSS growth (peak) MB",
                "ours": f"{phase['rss_growth_mb']} ({phase['rss_peak_mb'] - phase['rss_before_mb']:.1f})",
                # The same sockets without the nested frame, in the same run: what serving them costs.
                "baseline": f"churn {churn['rss_growth_mb']}" if phase["phase"] == "nested" else "",
                "target": f"<= {target}" if target else "",
                "met": abs(phase["rss_growth_mb"]) <= target if target else None,
            }
        )
    rows.append(
        {
            "figure": '"Exception inside application" in the log',
            "ours": phases[-1]["exceptions_in_log"],
            "target": "0",
            "met": phases[-1]["exceptions_in_log"] == 0,
        }
    )
    ws_stack.report(
        "abuse",
        args,
        "Hostile clients against one Daphne process, another user's prices",
        rows,
        {"phases": phases},
    )
    for phase in phases:
        print(f"  {phase['phase']}: {phase['abuse']}")


if __name__ == "__main__":
    main()
