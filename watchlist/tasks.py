"""Celery tasks: thin. They load ids and call the services. Services ask for a sync with
`jobs.request_sync` (by task name, after the caller's commit), never by importing this module.

Beat runs `dispatch_due_syncs` every few seconds; it claims the due accounts in one UPDATE and queues
one `sync_account` per account, so every account syncs every WATCHLIST_SYNC_INTERVAL, a failing
account only delays itself (its own backoff), and the work spreads over all worker processes.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress

from celery import shared_task
from django.conf import settings

from trading.brokers.base import BrokerError
from trading.models import BrokerAccount

from . import health
from .jobs import SYNC_ACCOUNT
from .metrics import SYNC_LATENESS
from .services import claim_due_syncs, sync_and_record

logger = logging.getLogger(__name__)


@shared_task(name=SYNC_ACCOUNT, ignore_result=True)
def sync_account(account_id: int, due_at: float | None = None) -> None:
    """`due_at`: when the dispatcher found the account due (unix time), for the lateness metric."""
    if due_at is not None:
        SYNC_LATENESS.observe(max(0.0, time.time() - due_at))
    account = BrokerAccount.objects.filter(pk=account_id).first()
    if account is None:
        logger.info("sync of account=%s dropped: the account no longer exists", account_id)
        return
    # A failure is recorded, logged and broadcast by the service; the backoff schedules the next attempt.
    with suppress(BrokerError):
        sync_and_record(account)


@shared_task(name="watchlist.tasks.dispatch_due_syncs", ignore_result=True)
def dispatch_due_syncs() -> int:
    due = claim_due_syncs()
    for account_id, due_at in due.items():
        # A task not started within the lease is dropped unrun: its account is queued again by then,
        # so a backlog never holds two live syncs of one account.
        sync_account.apply_async(
            (account_id,), {"due_at": due_at and due_at.timestamp()}, expires=settings.WATCHLIST_SYNC_INTERVAL
        )
    if due:
        logger.info("queued %d account syncs", len(due))
    health.record_heartbeat(health.BEAT)
    return len(due)
