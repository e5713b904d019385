"""Reconnect storm: every socket of a server process reconnects at once after it restarts.

    scripts/bench reconnect_storm [--accounts 500 --sockets-per-account 2 --storms 3]

Our side: `--accounts` x `--sockets-per-account` token sockets open on one Daphne or --server uvicorn
(the --layer channel layer, PostgreSQL). The server is restarted (the clients see their sockets close);
once it answers again, every socket reconnects at the same moment, without the browser client's jitter,
and each counts as served when its snapshot arrives (a refused or timed-out handshake is retried after
0.2 s). Reported: how long until the last socket is served, and the median. The baseline, in the same
run: the same number of sockets reconnecting at once to a bare `websockets` server just restarted
(served: the handshake is done; it has no snapshot to send). The sockets live in a separate client
process.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench import ws_stack

STORM_TIMEOUT = 120


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--sockets-per-account", type=int, default=2)
    parser.add_argument("--storms", type=int, default=3, help="restarts, each followed by a storm")
    ws_stack.add_common_arguments(parser)
    return parser.parse_args()


def storm(clients: ws_stack.Clients, fleet: str, restart) -> dict:
    """Restart the server under the open fleet, then reconnect it all at once."""
    restart()
    clients.command("wait_closed", fleet, timeout=60)
    answer = clients.command("reconnect", fleet, timeout=STORM_TIMEOUT)
    served = sorted(at - answer["started"] for at in answer["served"])
    return {
        "last_s": served[-1] if served else None,
        "median_s": statistics.median(served) if served else None,
        "retries": answer["retries"],
        "unserved": answer["unserved"],
    }


def main() -> None:
    args = parse_args()
    stack = ws_stack.Stack(args.database_admin_url, CHANNEL_LAYER=args.layer)
    seeded = ws_stack.seed_users(args.accounts)
    headers = ws_stack.token_headers([token for _, token in seeded], args.sockets_per_account)

    server = ws_stack.start_server(stack, args.server)
    bare = ws_stack.BareServer(stack.workdir)
    clients = ws_stack.Clients()
    ours, baseline = [], []
    try:
        clients.open("ours", server.ws_url(), headers, first_message=True)
        clients.open("bare", bare.ws_url, [{}] * len(headers), first_message=False)
        for number in range(args.storms):
            print(f"storm {number + 1} of {args.storms}: {len(headers)} sockets ...", flush=True)
            baseline.append(storm(clients, "bare", bare.restart))
            ours.append(storm(clients, "ours", server.restart))
    finally:
        clients.close()
        bare.stop()
        server.stop()
        stack.close()

    def worst(storms: list[dict], key: str) -> float:
        return max(s[key] if s[key] is not None else float("inf") for s in storms)

    last, base_last = worst(ours, "last_s"), worst(baseline, "last_s")
    median, base_median = worst(ours, "median_s"), worst(baseline, "median_s")
    rows = [
        {
            "figure": f"{len(headers)} reconnects at once -> last served (s), worst storm",
            "ours": round(last, 2),
            "baseline": round(base_last, 2),
            "ratio": round(last / base_last, 1),
            "target": "all served",
            "met": not any(s["unserved"] for s in ours),
        },
        {
            "figure": "median socket served after (s), worst storm",
            "ours": round(median, 2),
            "baseline": round(base_median, 2),
            "ratio": round(median / base_median, 1),
        },
        {
            "figure": "handshakes retried, all storms",
            "ours": sum(s["retries"] for s in ours),
            "baseline": sum(s["retries"] for s in baseline),
        },
    ]
    ws_stack.report(
        "reconnect_storm",
        args,
        f"reconnect storm: {args.accounts} accounts x "
        f"{args.sockets_per_account} sockets, {args.storms} restarts "
        "(baseline: bare websockets server)",
        rows,
        {"ours": ours, "baseline": baseline, "logs": str(stack.workdir)},
    )


if __name__ == "__main__":
    sys.exit(main())
