"""handle_trade_event: optimistic changes, then the reconciling sync confirms, keeps or reverts them."""

import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from trading.brokers.base import InvalidOrder
from trading.brokers.memory import MemoryBroker
from watchlist.models import PendingTrade, Watchlist, WatchlistChange, WatchlistItem
from watchlist.services import WatchlistService

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db

GRACE = timedelta(seconds=60)


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """Locks, groups and the Celery queue of this Redis db start empty."""


@pytest.fixture
def broker():
    return MemoryBroker()


def trade(run, account, broker, code, side, qty, price=None):
    """What the trade API does: the broker accepts the order, then the watchlist follows at once."""
    order_id = broker.place_order(code, side, qty, price)
    return run(
        WatchlistService(account, broker).handle_trade_event, code, side, qty, order_id=order_id, price=price
    )


def sync(run, account, broker, *, after=timedelta(0)):
    clock = lambda: timezone.now() + after
    return run(WatchlistService(account, broker, clock=clock).sync_with_account)


def items(account) -> dict[str, tuple[int, bool]]:
    return {
        i.stock_code: (i.quantity, i.pending)
        for i in WatchlistItem.objects.filter(watchlist__account=account)
    }


def last_change(account) -> WatchlistChange:
    return WatchlistChange.objects.filter(watchlist__account=account).order_by("-version").first()


def queued_syncs(redis_client) -> list[str]:
    messages = [json.loads(raw) for raw in redis_client.lrange("celery", 0, -1)]
    return [
        m["headers"]["argsrepr"] for m in messages if m["headers"]["task"] == "watchlist.tasks.sync_account"
    ]


def test_a_buy_of_a_new_code_adds_it_pending_broadcasts_and_queues_a_sync(account, broker, run, redis_client):
    with GroupListener(account.id) as listener:
        version = trade(run, account, broker, "005930", "buy", 10, price=70_000)
        [message] = listener.changes()
    assert version == 1 and message["version"] == 1
    assert message["changes"] == {"added": ["005930"], "removed": [], "updated": []}
    row = message["full_list"][0]
    assert (row["quantity"], row["pending"], row["avg_price"], row["eval_amount"]) == (
        10,
        True,
        70_000.0,
        700_000,
    )
    assert last_change(account).cause == "buy"
    intent = PendingTrade.objects.get()
    assert (intent.side, intent.qty, intent.expected_quantity, intent.order_id) == (
        "buy",
        10,
        10,
        "0000000001",
    )
    assert intent.resolved_at is None
    assert queued_syncs(redis_client) == [f"({account.id},)"]


def test_a_buy_of_a_held_code_raises_its_quantity(account, broker, run):
    broker.set_holdings({"005930": (10, 70_000.0)})
    sync(run, account, broker)
    version = trade(run, account, broker, "005930", "buy", 10, price=80_000)
    item = WatchlistItem.objects.get()
    assert (version, item.quantity, item.avg_price, item.pending) == (2, 20, 75_000.0, True)
    assert last_change(account).updated == ["005930"]


def test_a_sell_of_the_whole_holding_removes_it_at_once(account, broker, run):
    broker.set_holdings({"005930": 10, "000660": 3})
    sync(run, account, broker)
    with GroupListener(account.id) as listener:
        version = trade(run, account, broker, "000660", "sell", 3)
        [message] = listener.changes()
    assert message["changes"] == {"added": [], "removed": ["000660"], "updated": []}
    assert version == 2 and items(account) == {"005930": (10, False)}
    assert last_change(account).cause == "sell"
    assert PendingTrade.objects.get().expected_quantity == 0


def test_a_partial_sell_lowers_the_quantity_pending(account, broker, run):
    broker.set_holdings({"005930": 10})
    sync(run, account, broker)
    trade(run, account, broker, "005930", "sell", 4)
    assert items(account) == {"005930": (6, True)}
    assert last_change(account).updated == ["005930"]


def test_a_sell_of_a_code_not_on_the_watchlist_changes_nothing(account, broker, run):
    broker.set_holdings({"005930": 10})  # held, but the watchlist has not synced it yet
    with GroupListener(account.id) as listener:
        version = trade(run, account, broker, "005930", "sell", 4)
        assert listener.changes() == []
    assert version == 0 and not PendingTrade.objects.exists()


def test_the_sync_confirms_a_filled_buy_and_pending_clears(account, broker, run):
    trade(run, account, broker, "005930", "buy", 10, price=70_000)
    with GroupListener(account.id) as listener:
        result = sync(run, account, broker)
        [message] = listener.changes()
    assert result.changes.as_dict() == {"added": [], "removed": [], "updated": ["005930"]}
    assert message["full_list"][0]["pending"] is False and message["version"] == 2
    assert items(account) == {"005930": (10, False)}
    assert PendingTrade.objects.get().resolution == PendingTrade.Resolution.CONFIRMED


def test_a_confirmed_full_sell_resolves_without_a_change(account, broker, run):
    broker.set_holdings({"005930": 10})
    sync(run, account, broker)
    trade(run, account, broker, "005930", "sell", 10)
    result = sync(run, account, broker)
    assert not result.changes and result.version == 2
    assert PendingTrade.objects.get().resolution == PendingTrade.Resolution.CONFIRMED


def test_an_unfilled_buy_stays_pending_through_the_grace_period_then_the_account_wins(account, broker, run):
    broker.fill_orders = False
    trade(run, account, broker, "005930", "buy", 10, price=60_000)

    within = sync(run, account, broker, after=GRACE - timedelta(seconds=1))
    assert not within.changes and items(account) == {"005930": (10, True)}
    assert PendingTrade.objects.get().resolved_at is None

    with GroupListener(account.id) as listener:
        after = sync(run, account, broker, after=GRACE)
        [message] = listener.changes()
    assert after.changes.as_dict() == {"added": [], "removed": ["005930"], "updated": []}
    assert message["changes"]["removed"] == ["005930"] and message["full_list"] == []
    change = last_change(account)
    assert (
        change.cause == "sync" and "not confirmed" in change.note.lower() and "buy 005930 x10" in change.note
    )
    assert PendingTrade.objects.get().resolution == PendingTrade.Resolution.EXPIRED


def test_an_unfilled_partial_sell_is_reverted_to_the_held_quantity_after_the_grace_period(
    account, broker, run
):
    broker.set_holdings({"005930": 10})
    sync(run, account, broker)
    broker.fill_orders = False
    trade(run, account, broker, "005930", "sell", 4)
    assert items(account) == {"005930": (6, True)}
    sync(run, account, broker, after=GRACE)
    assert items(account) == {"005930": (10, False)}
    assert last_change(account).updated == ["005930"]


def test_a_price_move_of_a_pending_item_keeps_its_optimistic_quantity(account, broker, run):
    broker.set_holdings({"005930": (10, 70_000.0)})
    sync(run, account, broker)
    broker.fill_orders = False
    trade(run, account, broker, "005930", "sell", 4)
    broker.positions["005930"].current_price = 75_000
    result = sync(run, account, broker)
    assert not result.changes and result.changes.repriced == ("005930",)
    item = WatchlistItem.objects.get()
    assert (item.quantity, item.pending, item.current_price, item.eval_amount) == (6, True, 75_000, 450_000)


def test_trade_versions_and_syncs_interleave_without_gaps(account, broker, run):
    broker.set_holdings({"005930": 10})
    sync(run, account, broker)
    trade(run, account, broker, "005930", "buy", 5)
    trade(run, account, broker, "000660", "buy", 2)
    sync(run, account, broker)
    trade(run, account, broker, "005930", "sell", 15)
    sync(run, account, broker)
    versions = list(
        WatchlistChange.objects.filter(watchlist__account=account)
        .order_by("version")
        .values_list("version", flat=True)
    )
    assert versions == list(range(1, Watchlist.objects.get(account=account).version + 1))
    assert items(account) == {"000660": (2, False)}
    assert not PendingTrade.objects.filter(resolved_at__isnull=True).exists()


def test_a_trade_event_refuses_to_run_inside_an_outer_transaction(account, broker):
    # Its commit and broadcast must happen under the account lock, not at some outer commit later.
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        WatchlistService(account, broker).handle_trade_event("005930", "buy", 1)
    assert not WatchlistItem.objects.exists()


def test_a_trade_event_validates_its_input(account, broker):
    with pytest.raises(InvalidOrder) as invalid:
        WatchlistService(account, broker).handle_trade_event("5930", "hold", 0)
    assert set(invalid.value.errors) == {"stock_code", "side", "qty"}


# --- fill notices and new rows --------------------------------------------------------------------


def test_a_fill_notice_confirms_a_buy_with_its_price_and_no_balance_read(account, broker, run, redis_client):
    from watchlist.trades import apply_fill_notice

    broker.set_holdings({"000660": 3})
    sync(run, account, broker)
    reads_before = broker.balance_calls
    order_id = broker.place_order("005930", "buy", 4, 70_000)
    run(
        WatchlistService(account, broker).handle_trade_event,
        "005930",
        "buy",
        4,
        order_id=order_id,
        price=70_000,
    )
    run(
        apply_fill_notice, account.id, order_no=order_id, side="buy", stock_code="005930", qty=4, price=69_500
    )

    item = WatchlistItem.objects.get(watchlist__account=account, stock_code="005930")
    assert (item.quantity, item.pending, item.avg_price, item.current_price) == (4, False, 69_500, 69_500)
    assert broker.balance_calls == reads_before
    assert PendingTrade.objects.get(order_id=order_id).status == PendingTrade.Status.FILLED

    sync(run, account, broker)  # the read that follows settles it: nothing to change but the P&L
    assert PendingTrade.objects.get(order_id=order_id).resolution == PendingTrade.Resolution.CONFIRMED


def test_a_fill_notice_of_an_order_not_placed_here_asks_for_a_read(account, broker, run, redis_client):
    from watchlist.trades import apply_fill_notice

    sync(run, account, broker)
    run(apply_fill_notice, account.id, order_no="999", side="buy", stock_code="005930", qty=1, price=1_000)
    assert queued_syncs(redis_client) == [f"({account.id},)"]
    assert not items(account)


def test_a_new_buys_row_has_the_name_and_last_price_the_app_knows(account, broker, run, user, make_account):
    other = make_account(user, cano="50999999")
    other_broker = MemoryBroker()
    other_broker.set_holdings({"005930": 1}, prices={"005930": 71_000})
    sync(run, other, other_broker)  # another watchlist holds it; the price feed keeps its price

    trade(run, account, broker, "005930", "buy", 2)  # a market buy: no price of its own
    item = WatchlistItem.objects.get(watchlist__account=account, stock_code="005930")
    assert (item.name, item.current_price, item.eval_amount) == ("종목005930", 71_000, 142_000)


def test_a_new_buy_of_a_stock_the_app_never_saw_is_named_and_priced_by_its_fill_notice(
    account, broker, run, redis_client
):
    from watchlist.trades import apply_fill_notice

    sync(run, account, broker)
    trade(run, account, broker, "123450", "buy", 3)
    order_id = broker.orders[-1]["order_no"]
    item = WatchlistItem.objects.get(watchlist__account=account, stock_code="123450")
    assert (item.name, item.current_price, item.pending) == ("123450", 0, True)  # all the app knows yet

    run(
        apply_fill_notice,
        account.id,
        order_no=order_id,
        side="buy",
        stock_code="123450",
        qty=3,
        price=8_150,
        name="새종목",
    )

    item.refresh_from_db()
    assert (item.name, item.current_price, item.avg_price, item.pending) == ("새종목", 8_150, 8_150, False)


def test_a_fill_notice_that_comes_before_its_trade_is_applied_confirms_it_once_applied(
    account, broker, run, redis_client
):
    from trading.services import OrderResult, TradeOutcome
    from watchlist import trades

    sync(run, account, broker)
    service = WatchlistService(account, broker)
    intent = service.register_order("005930", "buy", 2)  # as the trade does before the order leaves
    order_id = broker.place_order("005930", "buy", 2)
    run(
        trades.apply_fill_notice,
        account.id,
        order_no=order_id,
        side="buy",
        stock_code="005930",
        qty=2,
        price=70_100,
    )
    assert not items(account)

    accepted = OrderResult(TradeOutcome.ACCEPTED, "accepted", order_no=order_id)
    run(trades._apply_accepted_order, service, accepted, "005930", "buy", 2, None, intent)
    item = WatchlistItem.objects.get(watchlist__account=account, stock_code="005930")
    assert (item.quantity, item.pending, item.current_price) == (2, False, 70_100)
