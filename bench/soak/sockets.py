"""The soak's socket clients: each keeps one `/ws/watchlist/` connection open, following the rules of the
browser client (static/js/watchlist.js): a version gap or a stale sync line asks for a snapshot, a dead
or closed socket reconnects."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from bench.soak.record import Record
from bench.soak.system import Account

# The browser client's timings (static/js/watchlist.js).
PING_EVERY, PONG_DEADLINE = 20.0, 10.0
STALE_SYNC_GRACE, STALE_SYNC_MIN_INTERVAL = 15, 30


class SocketClient:
    """One `/ws/watchlist/` connection kept open forever, following the browser client's rules."""

    def __init__(self, name: str, url: str, account: Account, record: Record, html: bool = False) -> None:
        self.name = name
        self.url = url + (f"?account={account.id}" + ("&render=html" if html else ""))
        self.account = account
        self.record = record
        self.html = html
        self.items: dict[str, dict] = {}
        self.version: int | None = None
        self.sync: dict = {}
        self.awaiting_snapshot = True
        self.stale_asked_at: float | None = None
        self.counts: Counter[str] = Counter()
        self.pushed_after_restart = 0
        self.problems: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Token {self.account.token}"}
        attempt = 0
        while not stop.is_set():
            try:
                async with connect(
                    self.url, additional_headers=headers, open_timeout=15, max_size=2**22
                ) as socket:
                    attempt = 0
                    self.counts["connections"] += 1
                    await self._serve(socket, stop)
            except (OSError, WebSocketException, TimeoutError) as error:
                self.counts["disconnects"] += 1
                self.counts[f"disconnect: {type(error).__name__}"] += 1
            self.awaiting_snapshot = True
            attempt += 1
            if not stop.is_set():
                await asyncio.sleep(min(5.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0))

    async def _serve(self, socket, stop: asyncio.Event) -> None:
        last_pong = time.monotonic()
        next_ping = time.monotonic() + PING_EVERY
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(socket.recv(), timeout=1.0)
            except TimeoutError:
                raw = None
            now = time.monotonic()
            if raw is not None:
                message = json.loads(raw)
                if message["type"] == "pong":
                    last_pong = now
                await self._handle(socket, message)
            if now >= next_ping:
                await socket.send(json.dumps({"type": "ping"}))
                next_ping = now + PING_EVERY
            if now - last_pong > PING_EVERY + PONG_DEADLINE:
                self.counts["dead (no pong)"] += 1
                return
            await self._ask_if_sync_looks_stale(socket)

    async def _handle(self, socket, message: dict) -> None:
        kind = message["type"]
        self.counts[kind] += 1
        if kind == "watchlist_snapshot":
            self.items = {item["stock_code"]: item for item in message["full_list"]}
            self.version, self.awaiting_snapshot = message["version"], False
            if self.html and set(message.get("rows_html", {})) != set(self.items):
                self.problems.append(f"snapshot v{message['version']} without a row for every item")
        elif kind == "watchlist_changed":
            await self._apply(socket, message)
        elif kind == "sync_status":
            self.sync = message["sync"]
        elif kind == "error":
            self.problems.append(f"server error message: {message['message']}")

    async def _apply(self, socket, message: dict) -> None:
        if self.awaiting_snapshot or self.version is None or message["version"] <= self.version:
            return  # a snapshot is on its way, or this change is in it already
        if message["version"] != self.version + 1:
            self.counts["gaps"] += 1
            return await self._resync(socket)
        changes, full = message["changes"], {item["stock_code"]: item for item in message["full_list"]}
        for code in changes["removed"]:
            self.items.pop(code, None)
        for code in changes["added"] + changes["updated"]:
            self.items[code] = full[code]
        if set(self.items) != set(full):
            self.problems.append(f"v{message['version']}: the changes applied differ from the list sent")
            self.items = full
        if self.html and set(message.get("rows_html", {})) != set(changes["added"] + changes["updated"]):
            self.problems.append(f"v{message['version']}: rows_html is not the added and updated codes")
        self.version = message["version"]
        if self.record.redis_restarted_at and time.time() > self.record.redis_restarted_at:
            self.pushed_after_restart += 1

    async def _ask_if_sync_looks_stale(self, socket) -> None:
        """The browser client asks for a snapshot once the next sync is overdue (static/js/watchlist.js)."""
        now = time.time()
        due = self.sync.get("next_attempt_at")
        if self.sync.get("status") != "ok" or not due or now < due + STALE_SYNC_GRACE:
            return
        if self.stale_asked_at is None or now - self.stale_asked_at >= STALE_SYNC_MIN_INTERVAL:
            self.stale_asked_at = now
            self.counts["stale-sync resyncs"] += 1
            await self._resync(socket)

    async def _resync(self, socket) -> None:
        self.awaiting_snapshot = True
        await socket.send(json.dumps({"type": "resync"}))

    def view(self) -> dict[str, tuple]:
        return {
            code: (item["quantity"], item["avg_price"], item["pending"]) for code, item in self.items.items()
        }
