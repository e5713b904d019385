"""WatchlistService.sync_with_account with the in-memory broker (fast); broadcasts on the real channel
layer."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from trading.brokers.memory import MemoryBroker
from watchlist.models import Watchlist, WatchlistChange, WatchlistItem
from watchlist.selectors import watchlist_snapshot
from watchlist.services import WatchlistService

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks and groups of this Redis db start empty."""


@pytest.fixture
def broker():
    return MemoryBroker()


def sync(account, broker, capture):
    with capture(execute=True):
        return WatchlistService(account, broker).sync_with_account()


def stored(account) -> dict[str, tuple[int, float, bool]]:
    return {
        i.stock_code: (i.quantity, i.avg_price, i.pending)
        for i in WatchlistItem.objects.filter(watchlist__account=account)
    }


def test_first_sync_adds_every_holding_and_broadcasts_one_change(
    account, broker, django_capture_on_commit_callbacks
):
    broker.set_holdings({"005930": (10, 70_000.0), "000660": (3, 180_000.0)}, prices={"005930": 72_100})
    with GroupListener(account.id) as listener:
        result = sync(account, broker, django_capture_on_commit_callbacks)
        [message] = listener.changes()

    assert result.version == 1
    assert result.changes.as_dict() == {"added": ["000660", "005930"], "removed": [], "updated": []}
    assert stored(account) == {"005930": (10, 70_000.0, False), "000660": (3, 180_000.0, False)}
    assert message["type"] == "watchlist_changed" and message["version"] == 1
    assert message["changes"] == {"added": ["000660", "005930"], "removed": [], "updated": []}
    assert message["full_list"] == watchlist_snapshot(account)["full_list"]
    assert [row["stock_code"] for row in message["full_list"]] == ["000660", "005930"]
    samsung = message["full_list"][1]
    assert (samsung["current_price"], samsung["eval_amount"], samsung["pnl"]) == (72_100, 721_000, 21_000)
    change = WatchlistChange.objects.get(watchlist__account=account)
    assert (change.version, change.cause, change.added) == (1, "sync", ["000660", "005930"])


def test_a_holding_sold_out_is_removed(account, broker, django_capture_on_commit_callbacks):
    broker.set_holdings({"005930": 10, "000660": 3})
    sync(account, broker, django_capture_on_commit_callbacks)
    broker.set_holdings({"005930": 10})
    with GroupListener(account.id) as listener:
        result = sync(account, broker, django_capture_on_commit_callbacks)
        [message] = listener.changes()
    assert result.changes.as_dict() == {"added": [], "removed": ["000660"], "updated": []}
    assert (result.version, message["version"]) == (2, 2)
    assert [row["stock_code"] for row in message["full_list"]] == ["005930"]
    assert list(stored(account)) == ["005930"]


def test_a_partial_sale_updates_the_quantity(account, broker, django_capture_on_commit_callbacks):
    broker.set_holdings({"005930": 10})
    sync(account, broker, django_capture_on_commit_callbacks)
    broker.set_holdings({"005930": 4})
    with GroupListener(account.id) as listener:
        result = sync(account, broker, django_capture_on_commit_callbacks)
        [message] = listener.changes()
    assert result.changes.as_dict() == {"added": [], "removed": [], "updated": ["005930"]}
    assert message["full_list"][0]["quantity"] == 4
    assert stored(account)["005930"][0] == 4


def test_an_unchanged_account_sends_nothing_and_keeps_its_version(
    account, broker, django_capture_on_commit_callbacks
):
    broker.set_holdings({"005930": 10, "000660": 3})
    sync(account, broker, django_capture_on_commit_callbacks)
    with GroupListener(account.id) as listener:
        result = sync(account, broker, django_capture_on_commit_callbacks)
        assert listener.messages() == []
    assert not result.changes and result.version == 1
    assert Watchlist.objects.get(account=account).version == 1
    assert WatchlistChange.objects.filter(watchlist__account=account).count() == 1


def test_a_price_move_refreshes_stored_values_without_a_version_or_a_message(
    account, broker, django_capture_on_commit_callbacks
):
    broker.set_holdings({"005930": (10, 70_000.0)}, prices={"005930": 70_000})
    sync(account, broker, django_capture_on_commit_callbacks)
    broker.positions["005930"].current_price = 77_000
    with GroupListener(account.id) as listener:
        result = sync(account, broker, django_capture_on_commit_callbacks)
        assert listener.messages() == []
    assert not result.changes and result.changes.repriced == ("005930",) and result.version == 1
    item = WatchlistItem.objects.get(watchlist__account=account)
    assert (item.current_price, item.eval_amount, item.pnl, item.pnl_rate) == (77_000, 770_000, 70_000, 10.0)


def test_sold_out_rows_with_quantity_zero_are_not_holdings(
    account, broker, django_capture_on_commit_callbacks
):
    broker.set_holdings({"005930": 10, "000660": 0})
    result = sync(account, broker, django_capture_on_commit_callbacks)
    assert result.changes.added == ("005930",)


@pytest.mark.parametrize("size", [5, 400])
def test_an_unchanged_account_costs_a_constant_number_of_queries(
    size, account, broker, django_capture_on_commit_callbacks
):
    codes = [f"{n:06d}" for n in range(size)]
    broker.set_holdings({code: 10 for code in codes})
    sync(account, broker, django_capture_on_commit_callbacks)
    for code in codes:  # every price moves: still no per-item query
        broker.positions[code].current_price += 100
    service = WatchlistService(account, broker)
    with CaptureQueriesContext(connection) as queries:
        service.sync_with_account()
    statements = [
        q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))
    ]
    # watchlist, read mark, read claimed (with the version), items, open intents, one bulk price update
    assert len(statements) == 6, statements
