import pytest
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
