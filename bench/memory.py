"""Memory: resident memory of the server process per idle open socket.

    scripts/bench memory [--accounts 500 --sockets-per-account 2]

Our side: one Daphne or --server uvicorn (the --layer channel layer, PostgreSQL), its RSS once warm (a
few sockets opened and closed) with no socket open, then with `--accounts` x `--sockets-per-account`
idle token sockets open (each got its snapshot). The baseline, in the same run: a bare `websockets`
server (bench/bare_ws_server.py) with as many idle sockets. The sockets live in a separate client
process. Reports KB per socket, (RSS with the sockets - RSS without) / sockets, of both and their ratio;
target: ours <= 30 KB.
"""

from __future__ import annotations

import argparse
import sys

from bench import ws_stack

TARGET_KB = 30
WARM_UP_SOCKETS = 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--sockets-per-account", type=int, default=2)
    ws_stack.add_common_arguments(parser)
    return parser.parse_args()


def per_socket_kb(
    clients: ws_stack.Clients, pid: int, url: str, headers: list[dict], *, snapshot: bool
) -> dict:
    """RSS of `pid` warm with no socket, then with one idle socket per `headers` entry."""
    clients.open("warm-up", url, headers[:WARM_UP_SOCKETS], first_message=snapshot)
    clients.command("close", "warm-up")
    idle = ws_stack.settle_rss_kb(pid)
    opened = clients.open("idle", url, headers, first_message=snapshot)
    loaded = ws_stack.settle_rss_kb(pid)
    clients.command("close", "idle")
    return {
        "rss_kb_without_sockets": idle,
        "rss_kb_with_sockets": loaded,
        "open_seconds": opened["seconds"],
        "kb_per_socket": round((loaded - idle) / len(headers), 1),
    }


def main() -> None:
    args = parse_args()
    stack = ws_stack.Stack(args.database_admin_url, CHANNEL_LAYER=args.layer)
    seeded = ws_stack.seed_users(args.accounts)
    headers = ws_stack.token_headers([token for _, token in seeded], args.sockets_per_account)

    server = ws_stack.start_server(stack, args.server)
    bare = ws_stack.BareServer(stack.workdir)
    clients = ws_stack.Clients()
    try:
        print(f"{len(headers)} idle sockets on {args.server}, then on the bare server ...", flush=True)
        ours = per_socket_kb(clients, server.process.pid, server.ws_url(), headers, snapshot=True)
        baseline = per_socket_kb(clients, bare.process.pid, bare.ws_url, [{}] * len(headers), snapshot=False)
    finally:
        clients.close()
        bare.stop()
        server.stop()
        stack.close()

    ratio = ours["kb_per_socket"] / baseline["kb_per_socket"]
    rows = [
        {
            "figure": f"RSS per idle socket, {len(headers)} sockets (KB)",
            "ours": ours["kb_per_socket"],
            "baseline": baseline["kb_per_socket"],
            "ratio": round(ratio, 2),
            "target": f"ours <= {TARGET_KB} KB",
            "met": ours["kb_per_socket"] <= TARGET_KB,
        },
        {
            "figure": "RSS with no socket open (MB)",
            "ours": round(ours["rss_kb_without_sockets"] / 1024, 1),
            "baseline": round(baseline["rss_kb_without_sockets"] / 1024, 1),
        },
        {
            "figure": f"RSS with {len(headers)} sockets open (MB)",
            "ours": round(ours["rss_kb_with_sockets"] / 1024, 1),
            "baseline": round(baseline["rss_kb_with_sockets"] / 1024, 1),
        },
    ]
    ws_stack.report(
        "memory",
        args,
        f"memory: {args.accounts} accounts x {args.sockets_per_account} idle "
        "sockets (baseline: bare websockets server)",
        rows,
        {"ours": ours, "baseline": baseline, "logs": str(stack.workdir)},
    )


if __name__ == "__main__":
    sys.exit(main())
