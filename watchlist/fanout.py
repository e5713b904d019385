"""Group events to this process's sockets: one channel-layer member per process, not one per socket.

With a member per socket (Channels' usual pattern), one price tick for a code that N accounts watch
is N group sends, read back from Redis one by one, then dispatched by each socket's own receive
loop and encoded to JSON by each socket: 1,000 sockets got a tick 0.4-0.8 s after it was sent
(bench/fanout.py). Here each process (each event loop) has one `Fanout`. It joins the group of
every account with a socket in the process, and the prices group; for each event it reads, it
encodes the message to JSON once and hands it to the sockets of the accounts it is for, in order.
It is also in the revocations group: a revocation (watchlist/socket_revocation.py) names a user or
an account, and the Fanout hands it to that user's or account's sockets here, which check themselves
again. It counts each user's sockets here (the per-process cap, watchlist/socket_limits.py).

A socket joins with its account before it reads its snapshot (watchlist/consumers.py holds what
arrives meanwhile until the snapshot is sent). The group of an account is left when its last socket
here closes, and the Fanout stops (leaves the prices group, stops reading) when its last socket
closes; the next socket starts it again. On RedisChannelLayer it joins its groups again every half
`group_expiry` (after which that layer forgets a member); RedisPubSubChannelLayer has no expiry (a
membership is a subscription, which it renews itself after a reconnect). Every PROBE_EVERY seconds it
sends itself a probe through a group of its own: a probe that has not come back by the next one means
the layer lost its memberships (a restarted Redis keeps none) or stopped delivering. Then, as when
reading from the layer fails, every socket here is closed, so that its client reconnects and starts
again from a snapshot rather than miss changes unaware.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Protocol

from channels.layers import get_channel_layer

from .events import PRICES_GROUP, REVOCATIONS_GROUP, watchlist_group
from .metrics import FANOUT_DELIVERY

logger = logging.getLogger(__name__)

# Like HTTP 503: try again. The client reconnects (any code but 4401 and 4403); Daphne refuses
# 1011 from an application (only 1000 and 3000-4999).
CLOSE_LAYER_FAILED = 4503
PROBE_EVERY = 5.0  # seconds


class Socket(Protocol):
    user_id: int

    async def deliver(self, event: dict) -> None: ...

    async def revoke(self, event: dict) -> None: ...

    async def close(self, code: int | None = None) -> None: ...


@dataclass(eq=False)
class Room:
    """The sockets of one account in this process, and whether the Fanout is in the account's group."""

    sockets: set[Socket] = field(default_factory=set)
    member: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Fanout:
    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.rooms: dict[int, Room] = {}
        self.users: dict[int, set[Socket]] = {}
        self.channel: str | None = None
        self._reader: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._probe_group = ""
        self._probe_returned = False
        self._lifecycle = asyncio.Lock()

    async def join(self, account_id: int, socket: Socket) -> None:
        """From when this returns, every event for the account reaches the socket. The socket counts
        among its user's at once (before the first await: a count read just before is still true)."""
        self.users.setdefault(socket.user_id, set()).add(socket)
        room = self.rooms.setdefault(account_id, Room())
        room.sockets.add(socket)
        try:
            await self._start()
            async with room.lock:
                if not room.member:
                    await self.layer.group_add(watchlist_group(account_id), self.channel)
                    room.member = True
        except BaseException:
            await self.leave(account_id, socket)
            raise

    async def leave(self, account_id: int, socket: Socket) -> None:
        self._forget_user_socket(socket)
        room = self.rooms.get(account_id)
        if room is None or socket not in room.sockets:
            return
        room.sockets.discard(socket)
        async with room.lock:
            if room.member and not room.sockets:
                room.member = False
                await self.layer.group_discard(watchlist_group(account_id), self.channel)
        if not room.sockets and not room.member and self.rooms.get(account_id) is room:
            del self.rooms[account_id]
        if not self.rooms:
            await self._stop()

    def sockets_of_user(self, user_id: int) -> int:
        return len(self.users.get(user_id, ()))

    def _forget_user_socket(self, socket: Socket) -> None:
        sockets = self.users.get(socket.user_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.users[socket.user_id]

    async def _start(self) -> None:
        async with self._lifecycle:
            if self._reader is None:
                self.channel = await self.layer.new_channel()
                self._probe_group = f"fanout-probe-{uuid.uuid4().hex}"
                for group in self._own_groups():
                    await self.layer.group_add(group, self.channel)
                self._reader = asyncio.create_task(self._read(self.channel), name="watchlist fan-out")
                self._watcher = asyncio.create_task(self._watch(self.channel), name="fan-out watcher")

    async def _stop(self) -> None:
        async with self._lifecycle:
            if self._reader is not None and not self.rooms:
                self._reader.cancel()
                self._watcher.cancel()
                self._reader = self._watcher = None
                await self._leave_groups(self.channel, self._own_groups())

    async def _read(self, channel: str) -> None:
        try:
            while True:
                event = await self.layer.receive(channel)
                with FANOUT_DELIVERY.labels(event["type"]).time():
                    await self._deliver(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("fan-out: reading the channel layer failed")
            self._watcher.cancel()
            await self._close_every_socket()

    async def _watch(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        group_expiry = getattr(self.layer, "group_expiry", None)
        joined_at = loop.time()
        try:
            while True:
                self._probe_returned = False
                await self.layer.group_send(self._probe_group, {"type": "fanout.probe"})
                await asyncio.sleep(PROBE_EVERY)
                if not self._probe_returned:
                    logger.error(
                        "fan-out: a probe did not come back within %gs: the channel layer lost "
                        "this process's group memberships or stopped delivering",
                        PROBE_EVERY,
                    )
                    break
                if group_expiry is not None and loop.time() - joined_at > group_expiry / 2:
                    joined_at = loop.time()
                    await self._join_again(channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("fan-out: the channel layer failed")
        self._reader.cancel()
        await self._close_every_socket()

    def _own_groups(self) -> list[str]:
        """The groups the process's channel is in whatever its sockets: prices and its probe."""
        return [PRICES_GROUP, REVOCATIONS_GROUP, self._probe_group]

    async def _join_again(self, channel: str) -> None:
        for group in self._own_groups():
            await self.layer.group_add(group, channel)
        for account_id, room in list(self.rooms.items()):
            async with room.lock:
                if room.member:
                    await self.layer.group_add(watchlist_group(account_id), channel)

    async def _close_every_socket(self) -> None:
        """Forget every socket and close it: its client reconnects, to a Fanout started afresh."""
        rooms, self.rooms, self._reader, self._watcher = self.rooms, {}, None, None
        self.users = {}
        # A socket joining meanwhile starts a new channel and probe group: these are the old ones.
        groups = [*self._own_groups(), *(watchlist_group(a) for a, room in rooms.items() if room.member)]
        channel = self.channel
        sockets = [socket for room in rooms.values() for socket in room.sockets]
        logger.warning(
            "fan-out: closing this process's %d sockets so that their clients reconnect", len(sockets)
        )
        for socket in sockets:
            try:
                await socket.close(code=CLOSE_LAYER_FAILED)
            except Exception:
                logger.exception("fan-out: a socket failed to close")
        await self._leave_groups(channel, groups)

    async def _leave_groups(self, channel: str, groups: list[str]) -> None:
        """Best effort, for a channel given up: a layer that kept its memberships (the pub/sub layer
        resubscribes by itself) would otherwise go on taking its groups' messages for nobody."""
        for group in groups:
            try:
                await self.layer.group_discard(group, channel)
            except Exception as exc:  # noqa: BLE001 - the layer is failing: nothing left to leave
                logger.info("fan-out: could not leave %s: %s", group, exc)
                return

    async def _deliver(self, event: dict) -> None:
        if event["type"] == "fanout.probe":
            self._probe_returned = True
        elif event["type"] == "price.updates":
            for update in event["updates"]:
                rooms = [self.rooms[a] for a in update["accounts"] if a in self.rooms]
                if rooms:
                    await self._hand(rooms, {"type": "price.update", **encoded(update["message"])})
        elif event["type"] == "sockets.revoke":
            await self._revoke(event)
        elif room := self.rooms.get(event["account"]):
            await self._hand([room], {"type": event["type"], **encoded(event["message"])})

    async def _revoke(self, event: dict) -> None:
        if event.get("user") is not None:
            sockets = set(self.users.get(event["user"], ()))
        else:
            room = self.rooms.get(event["account"])
            sockets = set(room.sockets) if room else set()
        for socket in sockets:
            try:
                await socket.revoke(event)
            except Exception:
                logger.exception("fan-out: a socket failed to take a revocation")

    @staticmethod
    async def _hand(rooms: list[Room], event: dict) -> None:
        for room in rooms:
            for socket in list(room.sockets):
                try:
                    await socket.deliver(event)
                except Exception:
                    logger.exception("fan-out: a socket failed to take a %s event", event["type"])


def encoded(message: dict) -> dict:
    """The message and its JSON text, encoded once for every socket it goes to."""
    return {"message": message, "text": json.dumps(message, ensure_ascii=False)}


_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Fanout] = weakref.WeakKeyDictionary()


def process_fanout() -> Fanout:
    """The Fanout of the running event loop (a process serves its sockets from one loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _fanouts:
        _fanouts[loop] = Fanout()
    return _fanouts[loop]
