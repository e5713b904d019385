import json
import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import connection

from tests.fixtures.accounts import APP_KEY, APP_SECRET


def test_broker_secrets_are_encrypted_at_rest(account):
    with connection.cursor() as cursor:
        cursor.execute("SELECT app_key, app_secret FROM trading_brokeraccount WHERE id = %s", [account.id])
        raw_key, raw_secret = cursor.fetchone()
    assert APP_KEY not in raw_key and APP_SECRET not in raw_secret
    assert raw_key.startswith("gAAAA")  # a Fernet token
    account.refresh_from_db()
    assert (account.app_key, account.app_secret) == (APP_KEY, APP_SECRET)


def test_defaults_serve_one_machine(settings):
    assert settings.TIME_ZONE == "Asia/Seoul"
    assert settings.LANGUAGE_CODE == "ko"
    assert settings.WATCHLIST_SYNC_INTERVAL == 30


def test_account_numbers_are_ascii_digits_without_trailing_newline(account):
    for bad in ("5012345\n", "5012345６", "1234567", "123456789"):
        account.account_number = bad
        with pytest.raises(ValidationError):
            account.full_clean()


def channel_layers_under(**env: str) -> subprocess.CompletedProcess:
    """CHANNEL_LAYERS as the settings read it in a fresh process with `env` (settings are read once)."""
    command = "import json, config.settings as s; print(json.dumps(s.CHANNEL_LAYERS))"
    return subprocess.run(
        [sys.executable, "-c", command],
        cwd=django_settings.BASE_DIR,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_pubsub_channel_layer_takes_the_redis_layers_connection_options():
    redis_layer, pubsub_layer = (
        json.loads(channel_layers_under(CHANNEL_LAYER=layer, REDIS_URL="redis://127.0.0.1:6379/12").stdout)
        for layer in ("redis", "pubsub")
    )
    assert redis_layer["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert pubsub_layer["default"] == {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Pub/sub channels ignore the database number: the prefix keeps db 12's groups apart.
        "CONFIG": {"hosts": redis_layer["default"]["CONFIG"]["hosts"], "prefix": "lw-asgi-db12"},
    }


def test_an_unknown_channel_layer_is_refused_by_name():
    done = channel_layers_under(CHANNEL_LAYER="rabbitmq")
    assert done.returncode != 0
    assert 'ImproperlyConfigured: CHANNEL_LAYER must be "redis" or "pubsub", not \'rabbitmq\'' in done.stderr
