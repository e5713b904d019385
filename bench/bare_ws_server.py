"""The baseline of the WebSocket benchmarks: a bare `websockets` server, nothing else.

    .venv/bin/python -m bench.bare_ws_server --port N

Every socket is held in one set; a text message from any socket is sent to all the others with
`websockets.broadcast()` (the benchmark's sender is one of its sockets). It prints
"listening on <port>" once it accepts connections. Started by bench/ws_stack.py.
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, broadcast, serve


async def main(port: int) -> None:
    sockets: set[ServerConnection] = set()

    async def hold(socket: ServerConnection) -> None:
        sockets.add(socket)
        try:
            async for message in socket:
                broadcast([other for other in sockets if other is not socket], message)
        finally:
            sockets.discard(socket)

    async with serve(hold, "127.0.0.1", port, ping_interval=None, backlog=2048):
        print(f"listening on {port}", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
