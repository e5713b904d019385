"""The per-account Redis locks (real Redis)."""

import time
from functools import partial

import pytest

from trading.redis import redis_client
from watchlist import locks
from watchlist.locks import account_lock

ACCOUNT, OTHER = 101, 102


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks of this Redis db start empty."""


@pytest.fixture
def wanted() -> list[int]:
    """The accounts whose sync a lock holder was told to ask for again."""
    return []


def ignore_wanted(account_id: int) -> None:
    pass


sync_in_progress = partial(locks.sync_in_progress, on_sync_wanted=ignore_wanted)


def test_a_second_sync_of_an_account_is_refused_at_once_while_one_runs():
    with (
        sync_in_progress(ACCOUNT) as first,
        sync_in_progress(ACCOUNT) as second,
        sync_in_progress(OTHER) as other_account,
    ):
        assert (first, second, other_account) == (True, False, True)
    with sync_in_progress(ACCOUNT) as again:
        assert again


def test_a_sync_skipped_while_another_runs_is_asked_for_again_when_that_one_ends(wanted):
    with locks.sync_in_progress(ACCOUNT, on_sync_wanted=wanted.append):
        with sync_in_progress(ACCOUNT) as skipped:
            assert not skipped
        assert wanted == []
    assert wanted == [ACCOUNT]


def test_a_sync_asked_for_before_the_holders_read_began_is_served_by_that_read(wanted):
    with locks.sync_in_progress(ACCOUNT, on_sync_wanted=wanted.append):
        with sync_in_progress(ACCOUNT) as skipped:
            assert not skipped
        locks.clear_sync_wanted(ACCOUNT)  # the holder's read begins
    assert wanted == []


def test_nothing_is_asked_for_when_no_sync_was_skipped(wanted):
    with locks.sync_in_progress(ACCOUNT, on_sync_wanted=wanted.append) as ran:
        assert ran
    assert wanted == []


def crash_holding(purpose: str) -> None:
    """A holder whose process died: its lock stays in Redis, renewed by nobody, until it expires."""
    assert redis_client().lock(f"watchlist:account:{ACCOUNT}:{purpose}", timeout=1).acquire(blocking=False)


def test_a_live_holder_keeps_its_lock_however_long_its_section_runs(settings):
    settings.WATCHLIST_LOCK_TIMEOUT = 1
    with account_lock(ACCOUNT):
        time.sleep(2.5)  # two and a half timeouts: renewed meanwhile
        assert not redis_client().lock(f"watchlist:account:{ACCOUNT}:write").acquire(blocking=False)
    with sync_in_progress(ACCOUNT) as holder:
        time.sleep(2.5)
        with sync_in_progress(ACCOUNT) as second:
            assert (holder, second) == (True, False)


def test_a_crashed_holder_blocks_the_account_only_until_the_lock_times_out(settings):
    settings.WATCHLIST_LOCK_TIMEOUT = 1
    crash_holding("write")
    with account_lock(ACCOUNT):  # waits for the expiry, then holds the lock
        assert redis_client().exists(f"watchlist:account:{ACCOUNT}:write")
    assert not redis_client().exists(f"watchlist:account:{ACCOUNT}:write")


def test_a_crashed_sync_lets_the_next_sync_run_after_the_timeout(settings):
    settings.WATCHLIST_LOCK_TIMEOUT = 1
    crash_holding("sync")
    deadline = time.monotonic() + 20
    while not next_sync_runs():
        assert time.monotonic() < deadline, "the crashed sync's lock never expired"
        time.sleep(0.1)


def next_sync_runs() -> bool:
    with sync_in_progress(ACCOUNT) as acquired:
        return acquired


def test_a_redis_outage_at_release_leaves_the_holders_work_standing_and_asks_for_a_sync(wanted, monkeypatch):
    """What a section did stands (a trade's change after its order left): a lost release is no error."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.lock import Lock

    def outage(*args, **kwargs):
        raise RedisConnectionError("Redis went away")

    with account_lock(ACCOUNT):
        monkeypatch.setattr(Lock, "release", outage)
    with locks.sync_in_progress(ACCOUNT, on_sync_wanted=wanted.append):
        monkeypatch.setattr(type(redis_client()), "getdel", outage)
    assert wanted == [ACCOUNT]
