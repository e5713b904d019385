import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("live_watchlist")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def close_old_connections(**kwargs) -> None:
    """Around every task, database connections are kept or dropped as Django does around a request:
    reused for DATABASE_CONN_MAX_AGE seconds, closed at once when broken (after a database outage).
    Celery's own Django fixup would close every connection instead (settings.CELERY_DB_REUSE_MAX)."""
    from django.db import close_old_connections as close_django_connections

    close_django_connections()


@worker_init.connect
def serve_worker_metrics(**kwargs) -> None:
    """The worker's metrics on METRICS_PORT (docs/OPERATIONS.md: one port per worker process)."""
    from watchlist.metrics import serve_metrics

    serve_metrics("Celery worker")
