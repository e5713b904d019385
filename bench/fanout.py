"""Fan-out: one price_update for a code reaches every open socket watching it.

    scripts/bench fanout [--accounts 500 --sockets-per-account 2 --rounds 30]

Our side: `--accounts` accounts, all watching one code, each with `--sockets-per-account` token sockets
open on one Daphne or --server uvicorn (the --layer channel layer, PostgreSQL). Each round sends one
price_update for that code the way the price feed does (watchlist.events.broadcast_price_updates, from
this process, on the same layer) and times it from the send until the last socket has it. The baseline,
in the same run and alternating round by round: a bare `websockets` server holding as many sockets,
sending the same bytes to all of them with `websockets.broadcast()` when its sender socket asks. The
sockets live in a separate client process (bench/ws_clients.py). Reports p50/p99 of both and their
ratio; target: our p99 within 3x of the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from bench import ws_stack

TARGET_RATIO = 3.0
PAUSE = 0.3  # between rounds, so one round's tail never overlaps the next


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--sockets-per-account", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    ws_stack.add_common_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stack = ws_stack.Stack(args.database_admin_url, CHANNEL_LAYER=args.layer)
    from watchlist import events

    seeded = ws_stack.seed_users(args.accounts)
    account_ids = frozenset(account_id for account_id, _ in seeded)
    headers = ws_stack.token_headers([token for _, token in seeded], args.sockets_per_account)
    sockets = len(headers)

    server = ws_stack.start_server(stack, args.server)
    bare = ws_stack.BareServer(stack.workdir)
    clients = ws_stack.Clients()
    loop = asyncio.new_event_loop()
    ours_times, bare_times, missing = [], [], {"ours": 0, "bare": 0}
    try:
        print(f"opening {sockets} sockets on {args.server} and {sockets} on the bare server ...", flush=True)
        opened_ours = clients.open("ours", server.ws_url(), headers, first_message=True)
        clients.open("bare", bare.ws_url, [{}] * (sockets + 1), first_message=False)
        for round_number in range(args.rounds):
            message = events.price_update_message(
                ws_stack.WATCHED_CODE, 72_100 + round_number, 600, 0.84, 900_000_000 + round_number
            )
            marker = str(message["volume"])
            clients.command("arm", "bare", marker=marker)
            started = time.monotonic()
            clients.command("send", "bare", text=json.dumps(message, ensure_ascii=False))
            arrived = clients.command("collect", "bare", timeout=30)
            bare_times.append(arrived["last"] - started)
            missing["bare"] += arrived["missing"]
            time.sleep(PAUSE)

            clients.command("arm", "ours", marker=marker)
            started = time.monotonic()
            loop.run_until_complete(events.broadcast_price_updates([(account_ids, message)]))
            arrived = clients.command("collect", "ours", timeout=30)
            if arrived["last"] is not None:
                ours_times.append(arrived["last"] - started)
            missing["ours"] += arrived["missing"]
            time.sleep(PAUSE)
        ours_rss = ws_stack.rss_kb(server.process.pid)
    finally:
        clients.close()
        bare.stop()
        server.stop()
        stack.close()

    p50, p99 = ws_stack.percentile(ours_times, 0.5), ws_stack.percentile(ours_times, 0.99)
    base50, base99 = ws_stack.percentile(bare_times, 0.5), ws_stack.percentile(bare_times, 0.99)
    rows = [
        {
            "figure": f"send -> last of {sockets} sockets, p50 (ms)",
            "ours": ws_stack.millis(p50),
            "baseline": ws_stack.millis(base50),
            "ratio": round(p50 / base50, 2),
        },
        {
            "figure": f"send -> last of {sockets} sockets, p99 (ms)",
            "ours": ws_stack.millis(p99),
            "baseline": ws_stack.millis(base99),
            "ratio": round(p99 / base99, 2),
            "target": f"ratio <= {TARGET_RATIO:g}",
            "met": p99 / base99 <= TARGET_RATIO and not missing["ours"],
        },
        {"figure": "messages missing", "ours": missing["ours"], "baseline": missing["bare"]},
    ]
    ws_stack.report(
        "fanout",
        args,
        f"fan-out: {args.accounts} accounts x {args.sockets_per_account} "
        f"sockets, {args.rounds} rounds (baseline: bare websockets.broadcast)",
        rows,
        {
            "ours_ms": [ws_stack.millis(t) for t in ours_times],
            "baseline_ms": [ws_stack.millis(t) for t in bare_times],
            "open_seconds": opened_ours["seconds"],
            "server_rss_kb": ours_rss,
            "logs": str(stack.workdir),
        },
    )


if __name__ == "__main__":
    sys.exit(main())
