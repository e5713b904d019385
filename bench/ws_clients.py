"""The client side of the WebSocket benchmarks: one process holding many sockets, driven by its parent.

    .venv/bin/python -m bench.ws_clients     (started by bench/ws_stack.py `Clients`)

It runs apart from the servers it measures so that they never share an event loop. Commands come
as JSON lines on stdin and each is answered by one JSON line on stdout. Sockets are kept in named
fleets (one per server). Times are `time.monotonic()`, which every process of the machine shares,
so the parent compares them with its own.

  {"cmd": "open", "fleet": f, "url": u, "headers": [{...}, ...], "first_message": bool}
      open one socket per headers dict, at most OPEN_AT_ONCE handshakes at a time; with
      first_message, each waits for its first message (our server's snapshot)
  {"cmd": "arm", "fleet": f, "marker": m}       from now on, note when each socket first gets a
                                                message containing the text m
  {"cmd": "collect", "fleet": f, "timeout": s}  wait until every socket has (or the timeout):
                                                {"received", "missing", "first", "last"}
  {"cmd": "send", "fleet": f, "text": t}        send t on the fleet's first socket, which from
                                                then on is the sender and not waited for
  {"cmd": "wait_closed", "fleet": f, "timeout": s}   until the server has closed every socket
  {"cmd": "reconnect", "fleet": f, "timeout": s}     reopen every socket at once, each retried
                                                until it gets its first message: {"started",
                                                "served": [times], "retries", "unserved"}
  {"cmd": "close", "fleet": f}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

OPEN_AT_ONCE = 100
HANDSHAKE_TIMEOUT = 30
RETRY_AFTER = 0.2


@dataclass
class Fleet:
    url: str
    headers: list[dict[str, str]]
    first_message: bool
    sockets: list[ClientConnection | None] = field(default_factory=list)
    readers: list[asyncio.Task] = field(default_factory=list)
    marker: str | None = None
    sender: int | None = None
    arrived: dict[int, float] = field(default_factory=dict)
    all_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def open_one(self, index: int) -> None:
        socket = await connect(
            self.url,
            additional_headers=self.headers[index],
            open_timeout=HANDSHAKE_TIMEOUT,
            ping_interval=None,
            max_size=None,
        )
        if self.first_message:
            await asyncio.wait_for(socket.recv(), HANDSHAKE_TIMEOUT)
        self.sockets[index] = socket
        self.readers[index] = asyncio.create_task(self.read(index, socket))

    async def open(self) -> dict:
        self.sockets = [None] * len(self.headers)
        self.readers = [None] * len(self.headers)
        gate = asyncio.Semaphore(OPEN_AT_ONCE)

        async def gated(index: int) -> None:
            async with gate:
                await self.open_one(index)

        started = time.monotonic()
        await asyncio.gather(*(gated(i) for i in range(len(self.headers))))
        return {"opened": len(self.sockets), "seconds": time.monotonic() - started}

    async def read(self, index: int, socket: ClientConnection) -> None:
        try:
            async for message in socket:
                if self.marker is not None and index not in self.arrived and self.marker in message:
                    self.arrived[index] = time.monotonic()
                    if len(self.arrived) == self.receivers:
                        self.all_arrived.set()
        except Exception:  # noqa: BLE001, S110 - the server went away: wait_closed and reconnect deal with it
            pass

    @property
    def receivers(self) -> int:
        return len(self.sockets) - (self.sender is not None)

    def arm(self, marker: str) -> dict:
        self.marker, self.arrived, self.all_arrived = marker, {}, asyncio.Event()
        return {"armed": True}

    async def collect(self, timeout: float) -> dict:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_arrived.wait(), timeout)
        times = list(self.arrived.values())
        self.marker = None
        return {
            "received": len(times),
            "missing": self.receivers - len(times),
            "first": min(times, default=None),
            "last": max(times, default=None),
        }

    async def send(self, text: str) -> dict:
        self.sender = 0
        await self.sockets[self.sender].send(text)
        return {"sent": True}

    async def wait_closed(self, timeout: float) -> dict:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self.readers)
        return {"closed": len(self.readers)}

    async def reconnect(self, timeout: float) -> dict:
        """Every socket at once, no jitter: a retry follows a refused or failed handshake."""
        retries = 0
        served: list[float] = []

        async def until_served(index: int) -> None:
            nonlocal retries
            while True:
                try:
                    await self.open_one(index)
                    served.append(time.monotonic())
                    return
                except Exception:  # noqa: BLE001 - any failed handshake is retried; the count is the figure
                    retries += 1
                    await asyncio.sleep(RETRY_AFTER)

        started = time.monotonic()
        pending = [asyncio.create_task(until_served(i)) for i in range(len(self.headers))]
        _, unserved = await asyncio.wait(pending, timeout=timeout)
        for task in unserved:
            task.cancel()
        return {"started": started, "served": served, "retries": retries, "unserved": len(unserved)}

    async def close(self) -> dict:
        await asyncio.gather(*(s.close() for s in self.sockets if s is not None), return_exceptions=True)
        for reader in self.readers:
            if reader is not None:
                reader.cancel()
        return {"closed": True}


async def serve_commands() -> None:
    fleets: dict[str, Fleet] = {}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        name = command["fleet"]
        match command["cmd"]:
            case "open":
                fleets[name] = Fleet(command["url"], command["headers"], command["first_message"])
                answer = await fleets[name].open()
            case "arm":
                answer = fleets[name].arm(command["marker"])
            case "collect":
                answer = await fleets[name].collect(command["timeout"])
            case "send":
                answer = await fleets[name].send(command["text"])
            case "wait_closed":
                answer = await fleets[name].wait_closed(command["timeout"])
            case "reconnect":
                answer = await fleets[name].reconnect(command["timeout"])
            case "close":
                answer = await fleets.pop(name).close()
            case other:
                answer = {"error": f"unknown command {other!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(serve_commands())
