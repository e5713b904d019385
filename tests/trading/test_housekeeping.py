"""Housekeeping on a schedule: expired idempotency keys are purged by a beat task."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from trading import tasks
from trading.models import IdempotencyKey
from trading.services import IDEMPOTENCY_TTL

pytestmark = pytest.mark.django_db


def test_the_beat_task_purges_only_expired_idempotency_keys(user, other_user):
    now = timezone.now()
    for owner, key, age in [
        (user, "old", IDEMPOTENCY_TTL + timedelta(seconds=1)),
        (other_user, "old-too", IDEMPOTENCY_TTL * 3),
        (user, "fresh", IDEMPOTENCY_TTL - timedelta(minutes=1)),
        (other_user, "in-flight", timedelta(0)),
    ]:
        claim = IdempotencyKey.objects.create(
            user=owner, key=key, result=None if key == "in-flight" else {"a": 1}
        )
        IdempotencyKey.objects.filter(pk=claim.pk).update(created_at=now - age)

    tasks.purge_expired_idempotency_keys()

    assert set(IdempotencyKey.objects.values_list("key", flat=True)) == {"fresh", "in-flight"}


def test_beat_runs_the_purge_by_its_registered_name():
    entry = settings.CELERY_BEAT_SCHEDULE["purge-expired-idempotency-keys"]
    assert entry["task"] == tasks.purge_expired_idempotency_keys.name == tasks.PURGE_IDEMPOTENCY_KEYS
    assert 0 < entry["schedule"] <= IDEMPOTENCY_TTL.total_seconds()
