"""Sync outcomes: backoff, sync_status messages, an untouched watchlist through failures; the dispatcher."""

import contextlib
from datetime import timedelta

import pytest
from django.utils import timezone

from trading.brokers.base import BrokerTimeout, BrokerUnavailable, RateLimited
from trading.brokers.memory import MemoryBroker
from watchlist.models import SyncState, Watchlist, WatchlistItem
from watchlist.selectors import watchlist_snapshot
from watchlist.services import claim_due_syncs, record_sync_outcome, sync_and_record, sync_retry_delay

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks, groups and the Celery queue of this Redis db start empty."""


def attempt(account, broker, capture):
    """One sync attempt as the periodic task makes it; returns the seconds until the next one."""
    with capture(execute=True), contextlib.suppress(BrokerUnavailable):
        sync_and_record(account, broker)
    state = SyncState.objects.get(account=account)
    return (state.next_attempt_at - state.last_attempt_at).total_seconds()


def test_the_retry_delay_doubles_per_failure_up_to_the_cap(settings):
    assert [sync_retry_delay(n) for n in range(6)] == [30, 30, 60, 120, 120, 120]
    settings.WATCHLIST_SYNC_INTERVAL, settings.WATCHLIST_BACKOFF_MAX = 5, 300
    assert [sync_retry_delay(n) for n in range(6)] == [5, 5, 10, 20, 40, 80]
    assert sync_retry_delay(10_000) == 300


def test_failures_back_off_30_60_120_120_and_a_success_returns_to_30(
    account, django_capture_on_commit_callbacks
):
    broker = MemoryBroker()
    broker.set_holdings({"005930": 10})
    assert attempt(account, broker, django_capture_on_commit_callbacks) == 30
    before = watchlist_snapshot(account)

    broker.set_holdings({"005930": 4, "000660": 1})  # the account moved, but the broker fails
    broker.fail_with = BrokerTimeout()
    with GroupListener(account.id) as listener:
        intervals = [attempt(account, broker, django_capture_on_commit_callbacks) for _ in range(4)]
        statuses = listener.messages("sync.status")
        assert listener.changes() == []
    assert intervals == [30, 60, 120, 120]
    after = watchlist_snapshot(account)
    assert (after["version"], after["full_list"]) == (before["version"], before["full_list"])

    assert [s["sync"]["consecutive_failures"] for s in statuses] == [1, 2, 3, 4]
    assert {s["sync"]["status"] for s in statuses} == {"failing"}
    assert statuses[0]["type"] == "sync_status" and "timeout" in statuses[0]["sync"]["last_error"]
    assert after["sync"]["status"] == "failing" and after["sync"]["consecutive_failures"] == 4

    broker.fail_with = None
    with GroupListener(account.id) as listener:
        assert attempt(account, broker, django_capture_on_commit_callbacks) == 30
        [recovered] = listener.messages("sync.status")
        [changed] = listener.changes()
    assert recovered["sync"]["status"] == "ok" and recovered["sync"]["consecutive_failures"] == 0
    assert recovered["sync"]["last_error"] == ""
    assert changed["changes"] == {"added": ["000660"], "removed": [], "updated": ["005930"]}


def test_status_goes_from_never_to_ok_once_and_stays_quiet_while_ok(
    account, django_capture_on_commit_callbacks
):
    broker = MemoryBroker()
    with GroupListener(account.id) as listener:
        attempt(account, broker, django_capture_on_commit_callbacks)
        attempt(account, broker, django_capture_on_commit_callbacks)
        statuses = listener.messages("sync.status")
    assert [s["sync"]["status"] for s in statuses] == ["ok"]


def test_the_status_is_failing_from_the_first_failure_and_never_shows_a_secret(account):
    state = record_sync_outcome(account.id, RateLimited("초당 거래건수를 초과하였습니다.", msg_cd="EGW00201"))
    assert state.status == "failing"
    assert state.last_error == "rate_limited: 초당 거래건수를 초과하였습니다."
    assert account.app_key not in state.last_error and account.app_secret not in state.last_error


def test_the_dispatcher_claims_due_and_new_accounts_once(user, make_account):
    now = timezone.now()
    new = make_account(user, cano="50000001")
    due = make_account(user, cano="50000002")
    later = make_account(user, cano="50000003")
    SyncState.objects.create(account=due, next_attempt_at=now - timedelta(seconds=1))
    SyncState.objects.create(account=later, next_attempt_at=now + timedelta(seconds=10))

    assert claim_due_syncs(now) == {new.id: None, due.id: now - timedelta(seconds=1)}
    assert claim_due_syncs(now) == {}  # queued ones are not queued again while they wait
    assert list(claim_due_syncs(now + timedelta(seconds=10))) == [later.id]
    lease = SyncState.objects.get(account=due).next_attempt_at - now
    assert lease == timedelta(seconds=30)  # one interval: a task lost with Redis or its worker delays no more


def test_a_recorded_attempt_replaces_the_dispatch_lease(account, django_capture_on_commit_callbacks):
    now = timezone.now()
    assert list(claim_due_syncs(now)) == [account.id]
    attempt(account, MemoryBroker(), django_capture_on_commit_callbacks)
    state = SyncState.objects.get(account=account)
    assert state.next_attempt_at - state.last_attempt_at == timedelta(seconds=30)
    assert list(claim_due_syncs(state.next_attempt_at)) == [account.id]


def test_one_failing_account_does_not_delay_another(user, make_account, django_capture_on_commit_callbacks):
    failing, healthy = make_account(user, cano="50000001"), make_account(user, cano="50000002")
    broken = MemoryBroker(fail_with=BrokerUnavailable())
    for _ in range(3):
        attempt(failing, broken, django_capture_on_commit_callbacks)
    attempt(healthy, MemoryBroker(), django_capture_on_commit_callbacks)
    assert SyncState.objects.get(account=healthy).status == "ok"
    assert (
        SyncState.objects.get(account=healthy).next_attempt_at
        < SyncState.objects.get(account=failing).next_attempt_at
    )
    assert not WatchlistItem.objects.filter(watchlist__account=failing).exists()
    assert Watchlist.objects.get(account=failing).version == 0
