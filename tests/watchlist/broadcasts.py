"""Listen to an account's channel-layer group the way a consumer does (the real channels-redis layer)."""

from __future__ import annotations

import asyncio
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from watchlist.events import watchlist_group

END_MARK = "test.end-mark"


class GroupListener:
    """Joins the account's group on enter. `messages()` returns what was broadcast since, in order.

    It sends an end mark to the group itself and reads up to it, so "nothing was sent" is checked
    without waiting for a timeout."""

    def __init__(self, account_id: int) -> None:
        self.group = watchlist_group(account_id)
        self.channel = f"test-listener-{uuid.uuid4().hex}"
        self.layer = get_channel_layer()
        self.received: list[dict] = []

    def __enter__(self) -> GroupListener:
        async_to_sync(self.layer.group_add)(self.group, self.channel)
        return self

    def __exit__(self, *exc_info) -> None:
        async_to_sync(self.layer.group_discard)(self.group, self.channel)

    def messages(self, event_type: str | None = None, timeout: float = 20) -> list[dict]:
        """The `message` of every event broadcast since entering (of `event_type` when given)."""
        self.received += async_to_sync(self._read_to_end_mark)(timeout)
        return [event["message"] for event in self.received if event_type is None or event["type"] == event_type]

    def changes(self) -> list[dict]:
        return self.messages("watchlist.changed")

    async def _read_to_end_mark(self, timeout: float) -> list[dict]:
        await self.layer.group_send(self.group, {"type": END_MARK})
        received = []
        async with asyncio.timeout(timeout):
            while (event := await self.layer.receive(self.channel))["type"] != END_MARK:
                received.append(event)
        return received
