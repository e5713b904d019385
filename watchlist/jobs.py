"""Asking for background work by task name, so that the services that ask never import the tasks that
call them (watchlist.tasks imports the services; Celery's `send_task` is its way to keep producers
apart from task modules)."""

from __future__ import annotations

from celery import current_app
from django.db import transaction

from . import reads

SYNC_ACCOUNT = "watchlist.tasks.sync_account"


def request_sync(account_id: int) -> None:
    """Queue a sync of the account once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: current_app.send_task(SYNC_ACCOUNT, (account_id,)), robust=True)


def request_waited_sync(account_id: int) -> None:
    """A sync somebody waits for (a trade to confirm): its read goes before the periodic ones."""
    reads.want_read(account_id)
    request_sync(account_id)
