"""Asking for a sync by task name: the message reaches the queue after the commit, for a task that exists."""

import json

import pytest

from config.celery import app
from watchlist import jobs

pytestmark = pytest.mark.django_db


def queued_syncs(redis_client) -> list[str]:
    messages = [json.loads(raw)["headers"] for raw in redis_client.lrange("celery", 0, -1)]
    return [m["argsrepr"] for m in messages if m["task"] == jobs.SYNC_ACCOUNT]


def test_a_requested_sync_is_queued_after_the_commit(redis_client, django_capture_on_commit_callbacks):
    redis_client.delete("celery")
    with django_capture_on_commit_callbacks(execute=True):
        jobs.request_sync(7)
        assert queued_syncs(redis_client) == []
    assert queued_syncs(redis_client) == ["(7,)"]


def test_the_task_named_by_the_jobs_is_registered():
    app.loader.import_default_modules()
    assert jobs.SYNC_ACCOUNT in app.tasks
