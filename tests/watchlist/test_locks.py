"""The per-account Redis locks (real Redis)."""

import time

import pytest

from watchlist.locks import account_lock, redis_client, sync_in_progress

ACCOUNT, OTHER = 101, 102


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks of this Redis db start empty."""


def test_a_second_sync_of_an_account_is_refused_at_once_while_one_runs():
    with sync_in_progress(ACCOUNT) as first:
        with sync_in_progress(ACCOUNT) as second, sync_in_progress(OTHER) as other_account:
            assert (first, second, other_account) == (True, False, True)
    with sync_in_progress(ACCOUNT) as again:
        assert again


def test_a_crashed_holder_blocks_the_account_only_until_the_lock_times_out(settings):
    settings.WATCHLIST_LOCK_TIMEOUT = 1
    crashed = account_lock(ACCOUNT)
    crashed.__enter__()  # and never leaves: its process died
    with account_lock(ACCOUNT):  # waits for the expiry, then holds the lock
        crashed.__exit__(None, None, None)  # a late release must not free the new holder's lock
        assert redis_client().exists(f"watchlist:account:{ACCOUNT}:write")
    assert not redis_client().exists(f"watchlist:account:{ACCOUNT}:write")


def test_a_crashed_sync_lets_the_next_sync_run_after_the_timeout(settings):
    settings.WATCHLIST_LOCK_TIMEOUT = 1
    crashed = sync_in_progress(ACCOUNT)
    assert crashed.__enter__()  # and never leaves
    deadline = time.monotonic() + 20
    while not next_sync_runs():
        assert time.monotonic() < deadline, "the crashed sync's lock never expired"
        time.sleep(0.1)
    crashed.__exit__(None, None, None)


def next_sync_runs() -> bool:
    with sync_in_progress(ACCOUNT) as acquired:
        return acquired
