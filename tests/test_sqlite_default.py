"""The embedded default (SQLite, what `scripts/run` uses without DATABASE_URL) migrates, dispatches due
syncs and orders its reads: the suite runs on PostgreSQL, so a PostgreSQL-only statement would otherwise
go unnoticed until the demo."""

import subprocess
import sys

from django.conf import settings

SCRIPT = """
import django
django.setup()
from django.contrib.auth import get_user_model
from django.core.management import call_command
call_command("migrate", verbosity=0)
from trading.models import BrokerAccount
from watchlist.services import claim_due_syncs, next_mark
user = get_user_model().objects.create_user("sqlite-user", password="x-y-z-1234567")
account = BrokerAccount.objects.create(owner=user, account_number="50123456", product_code="01",
                                       environment="paper", app_key="k", app_secret="s")
first, again = claim_due_syncs(), claim_due_syncs()
assert list(first) == [account.id] and again == {}, (first, again)
assert next_mark() < next_mark()
print("ok")
"""


def test_the_embedded_default_migrates_and_dispatches(tmp_path):
    database = tmp_path / "embedded.sqlite3"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=settings.BASE_DIR,
        env={
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"sqlite:///{database}",
            "PATH": "/usr/bin:/bin",
            "REDIS_URL": settings.REDIS_URL,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
