"""Celery tasks of the trading app: thin, each calls one service."""

from __future__ import annotations

from celery import shared_task

from . import services

PURGE_IDEMPOTENCY_KEYS = "trading.tasks.purge_expired_idempotency_keys"


@shared_task(name=PURGE_IDEMPOTENCY_KEYS, ignore_result=True)
def purge_expired_idempotency_keys() -> None:
    services.purge_expired_idempotency_keys()
