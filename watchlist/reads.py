"""Balance reads of an account, as the callers that wait for them see them (Redis, every process).

- Who waits: a read asked for by somebody waiting (a manual sync, a trade to confirm) raises the
  priority of the account's next read in the app key's call budget (`want_read`, `read_priority`).
- Which reads began after a moment: every read that begins takes the next number (`read_begins`)
  and, once written, records it (`read_written`); a caller that needs a read begun after its request
  notes `begun()` first and waits for a written number above it.
"""

from __future__ import annotations

from trading.brokers.call_budget import Priority
from trading.redis import redis_client

from .locks import clear_sync_wanted

PRIORITY_TTL = 120  # seconds: an unanswered request's priority does not outlive any read it waits for

# KEYS[1] priority; ARGV[1] the priority asked for: the key keeps the most urgent one.
KEEP_LOWER = """
local current = tonumber(redis.call('GET', KEYS[1]) or '99')
if tonumber(ARGV[1]) < current then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
"""
KEEP_HIGHER = """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], ARGV[1]) end
"""


def _key(account_id: int, what: str) -> str:
    return f"watchlist:account:{account_id}:read-{what}"


def want_read(account_id: int, priority: Priority = Priority.USER_READ) -> None:
    redis_client().eval(KEEP_LOWER, 1, _key(account_id, "priority"), int(priority), PRIORITY_TTL)


def read_priority(account_id: int) -> Priority:
    asked = redis_client().get(_key(account_id, "priority"))
    return min(Priority(int(asked)), Priority.BACKGROUND_READ) if asked else Priority.BACKGROUND_READ


def read_begins(account_id: int) -> int:
    """The read of the sync lock's holder begins: it serves every request so far; its number."""
    clear_sync_wanted(account_id)
    client = redis_client()
    client.delete(_key(account_id, "priority"))
    return client.incr(_key(account_id, "begun"))


def read_written(account_id: int, number: int) -> None:
    redis_client().eval(KEEP_HIGHER, 1, _key(account_id, "written"), number)


def begun(account_id: int) -> int:
    return int(redis_client().get(_key(account_id, "begun")) or 0)


def written(account_id: int) -> int:
    return int(redis_client().get(_key(account_id, "written")) or 0)
