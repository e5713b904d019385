"""The watchlist admin renders every page (without secrets or per-row queries) and queues "sync now"."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.fixtures.accounts import APP_KEY, APP_SECRET
from trading.brokers.memory import MemoryBroker
from watchlist.models import PendingTrade, SyncState, Watchlist, WatchlistChange, WatchlistItem
from watchlist.services import WatchlistService, record_sync_outcome

pytestmark = pytest.mark.django_db

MODELS = [Watchlist, WatchlistItem, WatchlistChange, SyncState, PendingTrade]


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks and the Celery queue of this Redis db start empty."""


@pytest.fixture
def admin_client(client):
    admin = get_user_model().objects.create_superuser("boss", password="boss-pass-123")
    client.force_login(admin)
    return client


def populate(account) -> None:
    """A watchlist with items, history, sync state and an open pending trade."""
    broker = MemoryBroker(fill_orders=False)
    broker.set_holdings({"005930": 10, "000660": 3})
    WatchlistService(account, broker).sync_with_account()
    record_sync_outcome(account.id)
    order_id = broker.place_order("035420", "buy", 2, 200_000)
    WatchlistService(account, broker).handle_trade_event("035420", "buy", 2, order_id=order_id, price=200_000)


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_pages_render_without_secrets(model, admin_client, account):
    populate(account)
    pages = [admin_url(model, "changelist"), admin_url(model, "change", model.objects.first().pk)]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        content = response.content.decode()
        assert APP_KEY not in content and APP_SECRET not in content


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelists_cost_the_same_queries_for_more_accounts(model, admin_client, user, make_account):
    def changelist_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(admin_url(model, "changelist")).status_code == 200
        return len(queries)

    populate(make_account(user, cano="50000001"))
    few = changelist_queries()
    for cano in ("50000002", "50000003", "50000004"):
        populate(make_account(user, cano=cano))
    # The account filter lists every account in one query: still no query per row.
    assert changelist_queries() == few


def test_watchlists_are_searched_by_code_and_name_and_filtered_by_pending(admin_client, user, make_account):
    holder, other = make_account(user, cano="50000001"), make_account(user, cano="50000002")
    populate(holder)
    WatchlistService(other, MemoryBroker()).sync_with_account()

    def found(model, **query) -> list:
        response = admin_client.get(admin_url(model, "changelist"), query)
        assert response.status_code == 200
        return list(response.context["cl"].result_list)

    holder_list = Watchlist.objects.get(account=holder)
    assert found(Watchlist, q="035420") == [holder_list]
    assert found(Watchlist, q="종목005930") == [holder_list]
    assert found(Watchlist, items__pending__exact="1") == [holder_list]
    assert len(found(Watchlist)) == 2
    assert [item.stock_code for item in found(WatchlistItem, pending__exact="1")] == ["035420"]
    assert [item.stock_code for item in found(WatchlistItem, q="000660")] == ["000660"]


def test_the_change_history_is_read_only(admin_client, account):
    populate(account)
    change = WatchlistChange.objects.first()
    assert admin_client.get(admin_url(WatchlistChange, "add")).status_code == 403
    assert (
        admin_client.post(admin_url(WatchlistChange, "change", change.pk), {"cause": "buy"}).status_code
        == 403
    )
    assert (
        admin_client.post(admin_url(WatchlistChange, "delete", change.pk), {"post": "yes"}).status_code == 403
    )
    filtered = admin_client.get(admin_url(WatchlistChange, "changelist"), {"cause__exact": "buy"})
    assert filtered.status_code == 200 and filtered.context["cl"].result_count == 1


@pytest.mark.parametrize("model", [Watchlist, SyncState], ids=lambda m: m.__name__)
def test_sync_now_queues_a_sync_of_each_selected_account(
    model, admin_client, account, redis_client, django_capture_on_commit_callbacks
):
    populate(account)
    redis_client.delete("celery")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            admin_url(model, "changelist"),
            {"action": "sync_now", "_selected_action": [model.objects.get(account=account).pk]},
            follow=True,
        )
    assert response.status_code == 200
    assert "Queued a sync of 1 account(s)." in response.content.decode()
    queued = [json.loads(raw)["headers"] for raw in redis_client.lrange("celery", 0, -1)]
    assert [(h["task"], h["argsrepr"]) for h in queued] == [
        ("watchlist.tasks.sync_account", f"({account.id},)")
    ]


def test_the_admin_is_for_staff_only(client, user, account):
    client.force_login(user)
    response = client.get(admin_url(Watchlist, "changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
