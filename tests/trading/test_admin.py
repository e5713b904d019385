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


def test_a_new_account_needs_both_secrets(admin_client, user, settings):
    settings.KIS_ALLOW_LOOPBACK_BASE_URL = True
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


# --- where the secrets go ------------------------------------------------------------------------

REAL_HOST = "https://openapi.koreainvestment.com:9443"
PAPER_HOST = "https://openapivts.koreainvestment.com:29443"


@pytest.fixture
def kis_account(make_account, user):
    return make_account(user, base_url=PAPER_HOST)


@pytest.mark.parametrize("allow_loopback", [False, True])
@pytest.mark.parametrize(
    "base_url",
    [
        "https://attacker.example:9443",
        "http://openapi.koreainvestment.com:9443",  # the right host without TLS
        "https://openapi.koreainvestment.com.attacker.example:9443",
        "https://openapi.koreainvestment.com:9443/elsewhere",
        "http://10.0.0.5:8765",  # private, not loopback
        "ftp://127.0.0.1:21",
    ],
)
def test_the_base_url_is_one_of_the_two_kis_hosts(
    admin_client, kis_account, settings, base_url, allow_loopback
):
    settings.KIS_ALLOW_LOOPBACK_BASE_URL = allow_loopback
    response = admin_client.post(
        change_url(kis_account), form_data(kis_account, base_url=base_url, app_secret="typed-again")
    )
    assert response.status_code == 200 and "The base URL is https://openapi" in response.content.decode()
    kis_account.refresh_from_db()
    assert kis_account.base_url == PAPER_HOST


@pytest.mark.parametrize("base_url", [REAL_HOST, PAPER_HOST, PAPER_HOST + "/"])
def test_both_kis_hosts_are_accepted(admin_client, kis_account, settings, base_url):
    settings.KIS_ALLOW_LOOPBACK_BASE_URL = False
    data = form_data(kis_account, base_url=base_url, environment="real", app_secret="typed-again")
    assert admin_client.post(change_url(kis_account), data).status_code == 302


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765"])
def test_a_loopback_address_only_where_the_setting_allows_it(admin_client, kis_account, settings, base_url):
    data = form_data(kis_account, base_url=base_url, app_secret="typed-again")
    settings.KIS_ALLOW_LOOPBACK_BASE_URL = False
    assert admin_client.post(change_url(kis_account), data).status_code == 200
    settings.KIS_ALLOW_LOOPBACK_BASE_URL = True
    assert admin_client.post(change_url(kis_account), data).status_code == 302
    kis_account.refresh_from_db()
    assert kis_account.base_url == base_url


@pytest.mark.parametrize("change", [{"base_url": REAL_HOST}, {"environment": "real"}])
def test_moving_an_account_needs_the_app_secret_typed_again(admin_client, kis_account, change):
    response = admin_client.post(change_url(kis_account), form_data(kis_account, **change))
    assert response.status_code == 200 and "Type the app secret again" in response.content.decode()
    kis_account.refresh_from_db()
    assert (kis_account.base_url, kis_account.environment) == (PAPER_HOST, "paper")

    response = admin_client.post(
        change_url(kis_account), form_data(kis_account, **change, app_secret="s-new-1")
    )
    assert response.status_code == 302
    kis_account.refresh_from_db()
    assert kis_account.app_secret == "s-new-1" and kis_account.app_key == APP_KEY


def test_other_changes_keep_the_secret_without_typing_it(admin_client, kis_account):
    response = admin_client.post(
        change_url(kis_account), form_data(kis_account, hts_id="newhts", display_name="x")
    )
    assert response.status_code == 302
    kis_account.refresh_from_db()
    assert (kis_account.hts_id, kis_account.app_secret) == ("newhts", APP_SECRET)
