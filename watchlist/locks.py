"""Per-account Redis locks, shared by every process (Daphne, Celery workers, scripts).

Two locks per account, for two different jobs:

- `account_lock` guards the short write section (read the stored list, diff, write, broadcast on
  commit) of a sync and of a trade event, so they never interleave and the broadcasts of one account
  leave in version order. Waiters block. It expires after `WATCHLIST_LOCK_TIMEOUT` so a crashed
  holder cannot block the account for good; a waiter waits a little longer than that, so it gets the
  lock of a crashed holder instead of failing.
- the sync lock keeps a sync of the account from overlapping another sync (`sync_in_progress`, which
  never waits) or a trade (`trade_in_flight`, which waits): a balance read that overlapped a trade
  could see its fill before the trade's optimistic change exists and count it twice.

A sync that finds the sync lock taken does not just give up: the reason it was asked for (a fill
notice, a trade to reconcile) may postdate the holder's balance read. It leaves a "sync wanted" mark,
and whoever releases the sync lock finds the mark and tells its caller (`on_sync_wanted`), which
queues one more sync. The mark is set before trying the lock and read after releasing it, so a
request is never lost between the two. This module only locks: it queues nothing itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from trading.redis import redis_client

logger = logging.getLogger(__name__)


class AccountLockTimeout(RuntimeError):
    """The account's write lock could not be taken in time."""


def _key(account_id: int, purpose: str) -> str:
    return f"watchlist:account:{account_id}:{purpose}"


def _lock(account_id: int, purpose: str) -> Lock:
    return redis_client().lock(_key(account_id, purpose), timeout=settings.WATCHLIST_LOCK_TIMEOUT)


def _release(lock: Lock, account_id: int, purpose: str) -> None:
    """Best effort: what the section did stands (an order may have left), so a failed release must not
    turn it into an error; the lock expires by itself."""
    try:
        lock.release()
    except LockError:
        # It expired while held (a section ran longer than WATCHLIST_LOCK_TIMEOUT) and may belong to
        # someone else now: never delete another holder's lock.
        logger.warning("%s lock of account=%s expired before release", purpose, account_id)
    except RedisError as error:
        logger.warning("%s lock of account=%s not released (%s): it expires by itself", purpose, account_id,
                       type(error).__name__)


@contextmanager
def account_lock(account_id: int) -> Iterator[None]:
    lock = _lock(account_id, "write")
    if not lock.acquire(blocking_timeout=settings.WATCHLIST_LOCK_TIMEOUT + 5):
        raise AccountLockTimeout(f"watchlist write lock of account {account_id} not acquired")
    try:
        yield
    finally:
        _release(lock, account_id, "write")


SyncWanted = Callable[[int], None]


@contextmanager
def sync_in_progress(account_id: int, *, on_sync_wanted: SyncWanted) -> Iterator[bool]:
    """Yields True when this caller may sync the account, False when the sync lock is taken (then the
    holder's `on_sync_wanted` is called when it is done)."""
    wanted = _key(account_id, "sync-wanted")
    redis_client().set(wanted, 1, ex=2 * settings.WATCHLIST_LOCK_TIMEOUT)
    lock = _lock(account_id, "sync")
    acquired = lock.acquire(blocking=False)
    if acquired:
        redis_client().delete(wanted)  # this sync reads the balance after every request so far
    try:
        yield acquired
    finally:
        if acquired:
            _release_sync_lock(lock, account_id, on_sync_wanted)


@contextmanager
def trade_in_flight(account_id: int, *, on_sync_wanted: SyncWanted) -> Iterator[None]:
    """Held by a trade from before its order leaves until its optimistic change is committed.

    It is the sync lock, taken with waiting: a trade waits for a running sync, and a sync that comes
    meanwhile is reported to `on_sync_wanted` once the trade is done."""
    lock = _lock(account_id, "sync")
    if not lock.acquire(blocking_timeout=settings.WATCHLIST_LOCK_TIMEOUT + 5):
        raise AccountLockTimeout(f"sync lock of account {account_id} not acquired for a trade")
    try:
        yield
    finally:
        _release_sync_lock(lock, account_id, on_sync_wanted)


def _release_sync_lock(lock: Lock, account_id: int, on_sync_wanted: SyncWanted) -> None:
    _release(lock, account_id, "sync")
    try:
        wanted = redis_client().getdel(_key(account_id, "sync-wanted"))
    except RedisError:
        wanted = True  # unknown: a spare sync costs a read, a lost one leaves the list stale
    if wanted:
        logger.info("sync of account=%s was asked for while its sync lock was held: asking again", account_id)
        on_sync_wanted(account_id)
