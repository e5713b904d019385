"""Production settings (DJANGO_DEBUG=0 with the secrets and hosts set, as docs/OPERATIONS.md shows them):
`manage.py check --deploy` is clean, and the settings refuse to start without their secrets. Each
check runs `manage.py` in a fresh process, since settings are read once at start."""

import json
import os
import secrets
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    "ALLOWED_HOSTS": "watchlist.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://watchlist.example.com",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name not in PRODUCTION} | env
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_under_production_settings():
    done = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout


HTTPS_ONLY = {
    "DEBUG": False,
    "SESSION_COOKIE_SECURE": True,
    "CSRF_COOKIE_SECURE": True,
    "SECURE_SSL_REDIRECT": True,
    "SECURE_HSTS_SECONDS": 31536000,
    "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    "SECURE_CONTENT_TYPE_NOSNIFF": True,
    "X_FRAME_OPTIONS": "DENY",
}


def test_production_settings_are_https_only():
    command = (
        "from django.conf import settings; import json; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {list(HTTPS_ONLY)}}}))"
    )
    done = manage("shell", "-c", command, **PRODUCTION)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == HTTPS_ONLY


@pytest.mark.parametrize("missing", ["SECRET_KEY", "FIELD_ENCRYPTION_KEY"])
def test_production_settings_refuse_to_start_without_a_secret(missing):
    env = {name: value for name, value in PRODUCTION.items() if name != missing}
    done = manage("check", **env)
    assert done.returncode != 0 and f"{missing} must be set" in done.stderr
