"""The call budget of one KIS app key, shared by every process through Redis: calls leave at most
`rate` a second, one every 1/rate s, and whoever waits with the most urgent priority goes next.

KIS counts calls per app key (paper 2/s, real 20/s; EGW00201 beyond). Every caller joins the key's
queue (a sorted set scored by priority, then arrival) and polls one Lua script that grants the next
slot only to the head of the queue once the slot is due; so an order that arrives while reads wait
goes before all of them, and a balance read's continuation pages go before any read not yet begun.
A waiter that stops polling (its process died) is dropped from the head after STALE_WAITER, so it
cannot hold the queue. Redis's clock keeps every process on the same schedule.

The priority of a read comes from its caller (`reads_at`), since the adapter cannot know who waits
for it; a caller that must do something the moment its read may begin (take a mark, clear what it
folds in) takes the read's first slot itself (`first_call_turn`) and then reads: the slot is spent
by the read's first call.
"""

from __future__ import annotations

import contextvars
import enum
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from ..redis import redis_client
from .base import ClientRateLimited


class NoCallSlot(ClientRateLimited):
    """Refused here, before sending (nothing left: an order so refused was not placed): the app key's
    queue would not reach this call within MAX_WAIT."""


class Priority(enum.IntEnum):
    """Lower goes first."""

    ORDER = 0
    CONTINUATION = 1  # the next page of a read already begun: the pages of one read stay together
    USER_READ = 2  # a read somebody waits for: a manual sync, the read confirming a trade
    BACKGROUND_READ = 3  # the periodic sync


MAX_WAIT = 10.0  # seconds: beyond this in the queue, the call is refused rather than sent late
STALE_WAITER = 2.0  # seconds without a poll after which a queued waiter counts as gone
LONGEST_POLL = 0.05  # a waiter not at the head looks again at least this often

# KEYS: queue (zset), alive (hash ticket -> last poll, µs), next slot (µs).
# ARGV: ticket, priority, interval µs, stale µs. Returns 0 when the slot is the ticket's, else the
# µs to wait before asking again (negative when the ticket is not at the head of the queue).
TAKE_TURN = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local ticket, priority = ARGV[1], tonumber(ARGV[2])
local score = priority * 10000000000000 + math.floor(now_us / 1000)
redis.call('ZADD', KEYS[1], 'LT', score, ticket)
redis.call('HSET', KEYS[2], ticket, now_us)
local head
while true do
  head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if head == ticket then break end
  local seen = tonumber(redis.call('HGET', KEYS[2], head) or '0')
  if now_us - seen <= tonumber(ARGV[4]) then break end
  redis.call('ZREM', KEYS[1], head)
  redis.call('HDEL', KEYS[2], head)
end
local next_free = tonumber(redis.call('GET', KEYS[3]) or '0')
local wait = math.max(0, next_free - now_us)
if head ~= ticket then return -math.max(wait, 1) end
if wait > 0 then return wait end
redis.call('ZREM', KEYS[1], ticket)
redis.call('HDEL', KEYS[2], ticket)
local interval = tonumber(ARGV[3])
redis.call('SET', KEYS[3], string.format('%.0f', now_us + interval), 'PX', math.floor(interval / 1000) + 1000)
redis.call('PEXPIRE', KEYS[1], 60000)
redis.call('PEXPIRE', KEYS[2], 60000)
return 0
"""

_read_priority: contextvars.ContextVar[Callable[[], Priority]] = contextvars.ContextVar(
    "read_priority", default=lambda: Priority.BACKGROUND_READ
)
_prepaid: contextvars.ContextVar[str | None] = contextvars.ContextVar("prepaid_turn", default=None)


@lru_cache(maxsize=4)
def _take_turn_script(client_id: int):
    return redis_client().register_script(TAKE_TURN)


def _keys(key_id: str) -> list[str]:
    return [f"kis:budget:{key_id}:queue", f"kis:budget:{key_id}:alive", f"kis:budget:{key_id}:next"]


def wait_for_turn(key_id: str, rate: float, priority: Priority | Callable[[], Priority]) -> None:
    """Block until this call of app key `key_id` may be sent. `priority` may be a function, asked
    again at every poll, so a read waited for by more urgent callers moves up. Raises NoCallSlot
    when the turn does not come within MAX_WAIT."""
    client = redis_client()
    script = _take_turn_script(id(client))
    keys = _keys(key_id)
    ticket = uuid.uuid4().hex
    interval_us = int(1_000_000 / rate)
    deadline = time.monotonic() + MAX_WAIT
    while True:
        current = priority() if callable(priority) else priority
        wait_us = script(keys=keys, args=[ticket, int(current), interval_us, int(STALE_WAITER * 1_000_000)])
        if wait_us == 0:
            return
        if time.monotonic() >= deadline:
            client.zrem(keys[0], ticket)
            client.hdel(keys[1], ticket)
            raise NoCallSlot(f"no call slot of this app key within {MAX_WAIT:g}s: too many calls are queued")
        pause = abs(wait_us) / 1_000_000
        time.sleep(pause if wait_us > 0 else min(max(pause, 0.002), LONGEST_POLL))


def call_turn(key_id: str, rate: float, *, is_order: bool, continuation: bool) -> None:
    """The adapter's one entry: wait for the turn of one call (a read's slot already taken by its
    caller with `first_call_turn` is used instead)."""
    if is_order:
        wait_for_turn(key_id, rate, Priority.ORDER)
    elif continuation:
        wait_for_turn(key_id, rate, Priority.CONTINUATION)
    elif _prepaid.get() == key_id:
        _prepaid.set(None)
    else:
        wait_for_turn(key_id, rate, _read_priority.get())


@contextmanager
def reads_at(priority: Priority | Callable[[], Priority]) -> Iterator[None]:
    """Reads sent by this thread meanwhile wait with `priority` (a function is asked at every poll)."""
    token = _read_priority.set(priority if callable(priority) else (lambda: priority))
    try:
        yield
    finally:
        _read_priority.reset(token)


@contextmanager
def first_call_turn(key_id: str, rate: float, priority: Callable[[], Priority]) -> Iterator[None]:
    """Take the slot of a read's first call now; the read sent inside the block spends it."""
    wait_for_turn(key_id, rate, priority)
    prepaid = _prepaid.set(key_id)
    try:
        with reads_at(priority):
            yield
    finally:
        _prepaid.reset(prepaid)
