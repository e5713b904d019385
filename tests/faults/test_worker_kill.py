"""A Celery worker killed (SIGKILL) while it holds an account's sync lock, blocked in a slow balance read:
the lock outlives its holder only until WATCHLIST_LOCK_TIMEOUT, no second sync of the account runs
meanwhile, and another worker syncs the account again by itself once the lock has expired."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from devtools.processes import wait_for
from watchlist.models import SyncState

from .conftest import SYNC_INTERVAL, WAIT, wait_in_step

pytestmark = pytest.mark.django_db(transaction=True)

LOCK_TIMEOUT = 8  # seconds; small, so that the test sees the dead worker's lock expire
CANO = "53000001"


@pytest.fixture
def system_env(system_env):
    # The balance read blocks far longer than the lock lives: only the kill ends it.
    return system_env | {"WATCHLIST_LOCK_TIMEOUT": str(LOCK_TIMEOUT), "KIS_TIMEOUT": "300"}


@pytest.fixture
def account(user, make_account, simulator):
    simulator.set_holdings(CANO, [{"stock_code": "005930", "quantity": 10, "avg_price": 71000}])
    return make_account(user, cano=CANO, base_url=simulator.url)


def test_a_killed_workers_lock_expires_and_the_account_syncs_again_without_overlap(
    account, simulator, private_redis, system
):
    victim = system.worker("victim")
    system.beat()
    wait_in_step([account], simulator, system)  # the token is cached: the next API call is a balance read
    redis = private_redis.client()
    sync_lock = f"watchlist:account:{account.id}:sync"

    reads_before = simulator.calls("inquire-balance")
    simulator.inject_fault("timeout", count=1, delay=300)
    wait_for(
        lambda: simulator.calls("inquire-balance") > reads_before and redis.exists(sync_lock),
        WAIT,
        "the victim to block in a balance read, holding the sync lock",
    )
    blocked_reads = simulator.calls("inquire-balance")
    victims_lock = redis.get(sync_lock)  # redis-py's lock value: a token unique to its holder
    system.worker("survivor")
    victim.kill()
    killed_at = timezone.now()

    # Until the dead worker's lock expires, the dispatcher keeps queueing the account and the survivor
    # skips it: not one more balance read. Sampled from Redis and the simulator, not timed.
    reads_while_locked = set()
    while redis.get(sync_lock) == victims_lock:
        reads_while_locked.add(simulator.calls("inquire-balance"))
        time.sleep(0.05)
    state_at_expiry = SyncState.objects.get(account=account)
    assert reads_while_locked <= {blocked_reads}, "a second sync read the balance while the lock was held"

    # Once expired, the account is due within one interval and syncs again.
    assert state_at_expiry.next_attempt_at <= timezone.now() + timedelta(seconds=SYNC_INTERVAL)
    wait_for(
        lambda: SyncState.objects.filter(account=account, last_success_at__gt=killed_at).exists(),
        WAIT,
        "the account to sync again after the kill",
    )
    simulator.set_holdings(CANO, [{"stock_code": "000660", "quantity": 3, "avg_price": 180000}])
    wait_in_step([account], simulator, system)
