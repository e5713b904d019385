"""Per-account Redis locks, shared by every process (Daphne, Celery workers, scripts).

Two locks per account, for two different jobs, and neither is ever held across an order:

- `account_lock` guards the short write section (read the stored list, diff, write, broadcast on
  commit) of a sync, a trade's change and a fill notice, so they never interleave and the
  broadcasts of one account leave in version order. Waiters block.
- the sync lock keeps a sync of the account from overlapping another sync (`sync_in_progress`,
  which never waits): two reads of one account at once would spend the app key's call budget twice
  for one answer. Trades do not take it (docs/ARCHITECTURE.md, "Consistency").

Both are renewed while held (`HeldLock`), so a holder that is alive never loses its lock however slow
its section (a slow broker, a long wait for the call budget); a crashed holder's lock expires after
`WATCHLIST_LOCK_TIMEOUT`.

A sync that finds the sync lock taken does not just give up: the reason it was asked for (a fill
notice, a trade to reconcile) may postdate the holder's balance read. It leaves a "sync wanted" mark;
a holder whose read has not begun yet clears it when the read begins (`clear_sync_wanted`: that
read serves the request), and whoever releases the sync lock and still finds the mark tells its
caller (`on_sync_wanted`), which queues one more sync. This module only locks: it queues nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from trading.redis import redis_client

logger = logging.getLogger(__name__)

RENEWALS_PER_TIMEOUT = 3


class AccountLockTimeout(RuntimeError):
    """The account's write lock could not be taken in time."""


def _key(account_id: int, purpose: str) -> str:
    return f"watchlist:account:{account_id}:{purpose}"


class HeldLock:
    """A Redis lock renewed by a thread of its own while held, so it expires only with its holder."""

    def __init__(self, account_id: int, purpose: str) -> None:
        self.account_id, self.purpose = account_id, purpose
        self.timeout = settings.WATCHLIST_LOCK_TIMEOUT
        self.lock: Lock = redis_client().lock(
            _key(account_id, purpose), timeout=self.timeout, thread_local=False
        )
        self._released = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, **kwargs) -> bool:
        if not self.lock.acquire(**kwargs):
            return False
        self._renewer = threading.Thread(target=self._renew, name=f"renew {self.purpose} lock", daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._released.wait(self.timeout / RENEWALS_PER_TIMEOUT):
            try:
                self.lock.reacquire()
            except (LockError, RedisError):
                logger.warning("%s lock of account=%s could not be renewed", self.purpose, self.account_id)
                return

    def release(self) -> None:
        """Best effort: what the section did stands (an order may have left), so a failed release must
        not turn it into an error; a lock left behind expires by itself."""
        self._released.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.lock.release()
        except LockError:
            # Lost while held (Redis restarted, or renewal failed): never delete another holder's lock.
            logger.warning("%s lock of account=%s was lost before release", self.purpose, self.account_id)
        except RedisError as error:
            logger.warning(
                "%s lock of account=%s not released (%s): it expires by itself",
                self.purpose,
                self.account_id,
                type(error).__name__,
            )


@contextmanager
def account_lock(account_id: int) -> Iterator[None]:
    lock = HeldLock(account_id, "write")
    if not lock.acquire(blocking_timeout=settings.WATCHLIST_LOCK_TIMEOUT + 5):
        raise AccountLockTimeout(f"watchlist write lock of account {account_id} not acquired")
    try:
        yield
    finally:
        lock.release()


SyncWanted = Callable[[int], None]


@contextmanager
def sync_in_progress(account_id: int, *, on_sync_wanted: SyncWanted) -> Iterator[bool]:
    """Yields True when this caller may sync the account, False when the sync lock is taken (then the
    holder's `on_sync_wanted` is called when it is done, unless its read began after this request)."""
    wanted = _key(account_id, "sync-wanted")
    redis_client().set(wanted, 1, ex=2 * settings.WATCHLIST_LOCK_TIMEOUT)
    lock = HeldLock(account_id, "sync")
    acquired = lock.acquire(blocking=False)
    if acquired:
        redis_client().delete(wanted)  # this sync reads the balance after every request so far
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()
            if _still_wanted(wanted):
                logger.info("sync of account=%s was asked for after its read began: asking again", account_id)
                on_sync_wanted(account_id)


def _still_wanted(wanted: str) -> bool:
    try:
        return bool(redis_client().getdel(wanted))
    except RedisError:
        return True  # unknown: a spare sync costs a read, a lost one leaves the list stale


def clear_sync_wanted(account_id: int) -> None:
    """Called by the sync lock's holder as its balance read begins: it serves every request so far."""
    redis_client().delete(_key(account_id, "sync-wanted"))
