"""The per-account Redis locks (real Redis)."""

import json
import time

import pytest

from watchlist.locks import account_lock, redis_client, sync_in_progress, trade_in_flight

pytestmark = pytest.mark.django_db  # a sync queued again is queued after the commit

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


def queued_syncs(redis_client) -> list[str]:
    messages = [json.loads(raw)["headers"] for raw in redis_client.lrange("celery", 0, -1)]
    return [m["argsrepr"] for m in messages if m["task"] == "watchlist.tasks.sync_account"]


def test_a_sync_skipped_while_another_runs_is_queued_again_when_that_one_ends(
    redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), sync_in_progress(ACCOUNT):
        with sync_in_progress(ACCOUNT) as skipped:
            assert not skipped
        assert queued_syncs(redis_client) == []
    assert queued_syncs(redis_client) == [f"({ACCOUNT},)"]


def test_a_sync_skipped_during_a_trade_is_queued_again_when_the_trade_ends(
    redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), trade_in_flight(ACCOUNT):
        with sync_in_progress(ACCOUNT) as skipped:
            assert not skipped
    assert queued_syncs(redis_client) == [f"({ACCOUNT},)"]


def test_nothing_is_queued_when_no_sync_was_skipped(redis_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with trade_in_flight(ACCOUNT):
            pass
        with sync_in_progress(ACCOUNT) as ran:
            assert ran
    assert callbacks == []
    assert queued_syncs(redis_client) == []


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
