"""The soak command (`python -m bench.soak`) in a short bounded profile: use, faults, a Redis restart and a worker
kill for 40 s on processes of its own, then its end-to-end checks, which must all pass."""

import re
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests.fixtures import servers

PROFILE_SECONDS = 40


@pytest.fixture
def soak_database(db):
    """A database name of this run's own on the test's PostgreSQL server, dropped afterwards."""
    if connection.vendor != "postgresql":
        pytest.skip("the soak runs on PostgreSQL")
    name = f"lw_soak_{uuid.uuid4().hex[:12]}"
    admin_url = servers.test_database_url().rsplit("/", 1)[0] + "/postgres"
    yield name, admin_url
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.timeout(600)
def test_a_short_soak_passes_every_check(soak_database):
    name, admin_url = soak_database
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--duration",
            str(PROFILE_SECONDS),
            "--database",
            name,
            "--database-admin-url",
            admin_url,
        ],
        cwd=settings.BASE_DIR,
        check=False,
        capture_output=True,
        text=True,
        timeout=540,
    )
    output = done.stdout + done.stderr
    last_line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert re.fullmatch(r"\d+ passed, 0 failed", last_line), output[-8000:]
    assert done.returncode == 0, output[-8000:]
