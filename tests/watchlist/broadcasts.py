"""Listen to an account's channel-layer events the way a process's fan-out does (watchlist/fanout.py):
its group and the prices group, on the real channels-redis layer."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import deque
from typing import Self

from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

from watchlist.events import PRICES_GROUP, watchlist_group

END_MARK = "test.end-mark"


class GroupListener:
    """Joins the account's group and the prices group on enter; `messages()` returns what was broadcast
    to the account since, in order (a price batch gives one "price.update" per message for the account).

    `messages()` sends an end mark to the group itself and reads up to it, so "nothing was sent" is
    checked without waiting for a timeout. The listener keeps its own layer on its own event loop,
    running all along: channels-redis clears each received message from a backup queue in a
    background task, and a loop that stopped after each read would get the message again."""

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self.group = watchlist_group(account_id)
        self.channel = f"test-listener-{uuid.uuid4().hex}"
        self.received: list[dict] = []
        self._unread: deque[dict] = deque()  # the rest of a price batch
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        self.layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        for group in (self.group, PRICES_GROUP):
            self._run(self.layer.group_add(group, self.channel))
        return self

    def __exit__(self, *exc_info) -> None:
        for group in (self.group, PRICES_GROUP):
            self._run(self.layer.group_discard(group, self.channel))
        self._run(self.layer.close_pools())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def _run(self, coroutine, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout + 5)

    def messages(self, event_type: str | None = None, timeout: float = 20) -> list[dict]:
        """The `message` of every event broadcast since entering (of `event_type` when given)."""
        self._run(self._read_to_end_mark(timeout), timeout)
        return [
            event["message"] for event in self.received if event_type is None or event["type"] == event_type
        ]

    def changes(self) -> list[dict]:
        return self.messages("watchlist.changed")

    def wait_for(self, event_type: str, timeout: float = 60) -> dict:
        """The next `message` of `event_type` (sent by another process), waiting up to `timeout`."""
        return self._run(self._receive_next(event_type, timeout), timeout)

    async def _read_to_end_mark(self, timeout: float) -> None:
        await self.layer.group_send(self.group, {"type": END_MARK})
        async with asyncio.timeout(timeout):
            while (event := await self._next_event())["type"] != END_MARK:
                self.received.append(event)

    async def _receive_next(self, event_type: str, timeout: float) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                event = await self._next_event()
                self.received.append(event)
                if event["type"] == event_type:
                    return event["message"]

    async def _next_event(self) -> dict:
        while not self._unread:
            event = await self.layer.receive(self.channel)
            if event["type"] != "price.updates":
                return event
            self._unread.extend(
                {"type": "price.update", "message": update["message"]}
                for update in event["updates"]
                if self.account_id in update["accounts"]
            )
        return self._unread.popleft()
