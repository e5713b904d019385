"""Per-account Redis locks, shared by every process (Daphne, Celery workers, scripts).

Two locks per account, for two different jobs:

- `account_lock` guards the short write section (read the stored list, diff, write, broadcast on
  commit) of a sync and of a trade event, so they never interleave and the broadcasts of one account
  leave in version order. Waiters block. It expires after `WATCHLIST_LOCK_TIMEOUT` so a crashed
  holder cannot block the account for good; a waiter waits a little longer than that, so it gets the
  lock of a crashed holder instead of failing.
- `sync_in_progress` keeps a second sync of the account from starting while one runs (including its
  slow broker read, which stays outside the write lock so trades are never blocked behind it). It
  never waits: a sync that finds it taken has nothing to do, the dispatcher comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
from redis.lock import Lock
from django.conf import settings
from redis.exceptions import LockError

logger = logging.getLogger(__name__)


class AccountLockTimeout(RuntimeError):
    """The account's write lock could not be taken in time."""


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def redis_client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def _lock(account_id: int, purpose: str) -> Lock:
    return redis_client().lock(f"watchlist:account:{account_id}:{purpose}", timeout=settings.WATCHLIST_LOCK_TIMEOUT)


def _release(lock: Lock, account_id: int, purpose: str) -> None:
    try:
        lock.release()
    except LockError:
        # It expired while held (a section ran longer than WATCHLIST_LOCK_TIMEOUT) and may belong to
        # someone else now: never delete another holder's lock.
        logger.warning("%s lock of account=%s expired before release", purpose, account_id)


@contextmanager
def account_lock(account_id: int) -> Iterator[None]:
    lock = _lock(account_id, "write")
    if not lock.acquire(blocking_timeout=settings.WATCHLIST_LOCK_TIMEOUT + 5):
        raise AccountLockTimeout(f"watchlist write lock of account {account_id} not acquired")
    try:
        yield
    finally:
        _release(lock, account_id, "write")


@contextmanager
def sync_in_progress(account_id: int) -> Iterator[bool]:
    """Yields True when this caller may sync the account, False when another sync is running."""
    lock = _lock(account_id, "sync")
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            _release(lock, account_id, "sync")


@contextmanager
def trade_in_flight(account_id: int) -> Iterator[None]:
    """Held by a trade from before its order leaves until its optimistic change is committed.

    It is the `sync_in_progress` lock, taken with waiting: a sync whose balance read overlapped a
    trade could see the fill before the trade's optimistic change exists and then have that change
    counted twice, so a sync finds the lock taken and skips, and a trade waits for a running sync."""
    lock = _lock(account_id, "sync")
    if not lock.acquire(blocking_timeout=settings.WATCHLIST_LOCK_TIMEOUT + 5):
        raise AccountLockTimeout(f"sync lock of account {account_id} not acquired for a trade")
    try:
        yield
    finally:
        _release(lock, account_id, "sync")
