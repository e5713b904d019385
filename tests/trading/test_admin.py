"""The BrokerAccount admin: secrets can be set and replaced, never read back."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from tests.fixtures.accounts import APP_KEY, APP_SECRET
from trading.models import BrokerAccount

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:trading_brokeraccount_changelist")
ADD = reverse("admin:trading_brokeraccount_add")


def change_url(account) -> str:
    return reverse("admin:trading_brokeraccount_change", args=[account.pk])


@pytest.fixture
def admin_client(client):
    client.force_login(get_user_model().objects.create_superuser("boss", password="boss-pass-123"))
    return client


def form_data(account, **changes) -> dict:
    data = {
        "owner": account.owner_id,
        "display_name": account.display_name,
        "account_number": account.account_number,
        "product_code": account.product_code,
        "environment": account.environment,
        "base_url": account.base_url,
        "hts_id": account.hts_id,
        "app_key": "",
        "app_secret": "",
    }
    return data | changes


def assert_no_secret(response, *secrets: str) -> None:
    content = response.content.decode()
    for secret in (APP_KEY, APP_SECRET, *secrets):
        assert secret not in content


def test_list_and_change_pages_never_render_the_secrets(admin_client, account):
    for url in (CHANGELIST, change_url(account), ADD):
        response = admin_client.get(url)
        assert response.status_code == 200
        assert_no_secret(response)
    assert 'type="password"' in admin_client.get(change_url(account)).content.decode()


def test_saving_with_empty_secret_fields_keeps_the_current_ones(admin_client, account):
    response = admin_client.post(change_url(account), form_data(account, display_name="renamed"))
    assert response.status_code == 302
    account.refresh_from_db()
    assert (account.display_name, account.app_key, account.app_secret) == ("renamed", APP_KEY, APP_SECRET)


def test_a_typed_secret_replaces_the_stored_one_and_is_not_echoed(admin_client, account):
    response = admin_client.post(change_url(account), form_data(account, app_secret="brand-new-secret-value"))
    assert response.status_code == 302
    account.refresh_from_db()
    assert (account.app_key, account.app_secret) == (APP_KEY, "brand-new-secret-value")
    assert_no_secret(admin_client.get(change_url(account)), "brand-new-secret-value")


def test_an_invalid_form_does_not_echo_a_typed_secret(admin_client, account):
    response = admin_client.post(
        change_url(account), form_data(account, account_number="12", app_key="typed-key-x1")
    )
    assert response.status_code == 200 and "CANO is exactly 8 digits." in response.content.decode()
    assert_no_secret(response, "typed-key-x1")


def test_a_new_account_needs_both_secrets(admin_client, user):
    data = {
        "owner": user.pk,
        "display_name": "new",
        "account_number": "50999999",
        "product_code": "01",
        "environment": "paper",
        "base_url": "http://127.0.0.1:9",
        "hts_id": "",
        "app_key": "",
        "app_secret": "",
    }
    assert admin_client.post(ADD, data).status_code == 200
    assert not BrokerAccount.objects.filter(account_number="50999999").exists()
    assert admin_client.post(ADD, data | {"app_key": "k-123", "app_secret": "s-456"}).status_code == 302
    created = BrokerAccount.objects.get(account_number="50999999")
    assert (created.app_key, created.app_secret) == ("k-123", "s-456")


def test_a_view_only_staff_user_does_not_get_the_secret_fields(client, account):
    viewer = get_user_model().objects.create_user("viewer", password="viewer-pass-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_brokeraccount"))
    client.force_login(viewer)
    response = client.get(change_url(account))
    assert response.status_code == 200 and account.display_name in response.content.decode()
    assert_no_secret(response)
