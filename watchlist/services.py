"""The writers of the watchlist's holdings and versions: the sync with the account, optimistic trade
events, sync state. (The price feed, watchlist/prices.py, refreshes the stored prices in between,
without a version or a change.)

Sync. The broker read runs under the account's sync lock only (locks.py), never under the write
lock. The write section (read the stored list, diff, write, broadcast) runs under `account_lock` in
one durable transaction: items with bulk operations, version + 1 with an UPDATE, one WatchlistChange
row. The broadcast is sent by `transaction.on_commit` while the lock is still held, so the messages
of one account leave in version order. An unchanged account costs the same few queries whatever its
size; a price-only move refreshes the stored values without a version and without a message.

Optimistic trades and the stale balance. `handle_trade_event` applies an accepted order at once
(pending) and records it as an open `PendingTrade` with the quantity the account should show once it
fills. Because the balance is read outside the write lock, a sync may apply a balance read *before*
a trade committed. So the sync notes the newest PendingTrade id before it reads (ids of one
watchlist are allocated under the write lock, so they follow commit order) and, per code with open
intents:
- an intent newer than that mark: the balance predates it; the stored (optimistic) item stays as is,
  whether the stale balance shows it or not (a sold-out item does not come back);
- the balance shows the expected quantity: confirmed, `pending` clears (an `updated` change);
- not shown yet, within WATCHLIST_PENDING_GRACE of the intent: the optimistic item stays;
- not shown after the grace period: the account wins (cause `sync`, the change's note says which
  orders were not confirmed).
"Now" comes from an injectable clock, so tests move time instead of sleeping.
The opposite race, a balance read that sees an order's fill before its trade event applied it (which
would count the order twice), is kept out by the trade API: it holds the sync lock from before the
order leaves until the event is committed (`locks.trade_in_flight`). Nothing in a balance could tell
that case apart from an order not filled yet.

Sync state. Every attempt of the periodic task and of a manual sync is recorded by
`record_sync_outcome`: success -> next attempt after WATCHLIST_SYNC_INTERVAL; the n-th failure in a
row -> after interval * 2^(n-1), capped at WATCHLIST_BACKOFF_MAX (30, 60, 120, 120 s). A failure
leaves the watchlist untouched. `claim_due_syncs` hands the dispatcher the due accounts, pushing each
one out by the queue lease in the same UPDATE so it is not queued twice while its task waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pandas as pd
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from trading.brokers.base import Broker, BrokerError, Side, validate_order
from trading.models import BrokerAccount

from . import events, jobs
from .diff import ITEM_FIELDS, ItemState, WatchlistDiff, diff_items, holdings_from_balance
from .locks import account_lock, sync_in_progress
from .metrics import SYNC_OUTCOMES
from .models import PendingTrade, SyncState, Watchlist, WatchlistChange, WatchlistItem
from .selectors import full_list, sync_status_dict, totals_dict

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

ITEM_VALUE_FIELDS = [name for name in ITEM_FIELDS if name != "stock_code"]


@dataclass(frozen=True)
class SyncResult:
    changes: WatchlistDiff
    version: int
    skipped: bool = False  # another sync of the account was running; this one did nothing


@dataclass
class Reconciliation:
    """The list the watchlist should become, and the open intents this sync resolves."""

    target: dict[str, ItemState]
    confirmed: list[PendingTrade] = field(default_factory=list)
    expired: list[PendingTrade] = field(default_factory=list)

    def note(self, grace: timedelta) -> str:
        if not self.expired:
            return ""
        orders = ", ".join(
            f"{intent.side} {intent.stock_code} x{intent.qty} (order {intent.order_id or '?'})"
            for intent in self.expired
        )
        return (f"Not confirmed by the account within {int(grace.total_seconds())} s, "
                f"the account's state wins: {orders}.")


def reconcile(
    stored: Mapping[str, ItemState],
    holdings: Mapping[str, ItemState],
    open_intents: Iterable[PendingTrade],
    *,
    read_mark: int,
    now: datetime,
    grace: timedelta,
) -> Reconciliation:
    """The account's holdings, except where an open optimistic change must stand (module docstring).

    `open_intents` come in id order; `read_mark` is the newest intent id when the balance read began."""
    intents_by_code: dict[str, list[PendingTrade]] = {}
    for intent in open_intents:
        intents_by_code.setdefault(intent.stock_code, []).append(intent)

    result = Reconciliation(target=dict(holdings))
    for code, intents in intents_by_code.items():
        latest = intents[-1]
        held = holdings.get(code)
        confirmed = (held.quantity if held else 0) == latest.expected_quantity
        if latest.id > read_mark or (not confirmed and now - latest.created_at < grace):
            _keep_optimistic(result.target, code, stored.get(code), held)
        elif confirmed:
            result.confirmed.extend(intents)
        else:
            result.expired.extend(intents)
    return result


def _keep_optimistic(target: dict[str, ItemState], code: str, optimistic: ItemState | None,
                     held: ItemState | None) -> None:
    if optimistic is None:
        target.pop(code, None)
    elif held is None:
        target[code] = optimistic
    else:
        target[code] = replace(optimistic.revalued(current_price=held.current_price), name=held.name)


def optimistic_item(held: ItemState | None, stock_code: str, trade_type: Side, qty: int,
                    price: int | None, name: str) -> ItemState | None:
    """The item as it will be once an accepted order fills (None: not held). A market order's price is
    not known yet: the held item's current price stands in, the reconciling sync brings the real one."""
    if trade_type == "sell":
        if held is None or qty >= held.quantity:
            return None
        return held.revalued(quantity=held.quantity - qty, pending=True)
    if held is None:
        fill_price = price or 0
        bought = ItemState(stock_code, name, qty, float(fill_price), fill_price, 0, 0, 0.0)
        return bought.revalued(pending=True)
    fill_price = price or held.current_price
    quantity = held.quantity + qty
    avg_price = (held.avg_price * held.quantity + fill_price * qty) / quantity
    return held.revalued(quantity=quantity, avg_price=avg_price, pending=True)


class WatchlistService:
    def __init__(self, account: BrokerAccount, broker: Broker | None = None, *,
                 clock: Clock = timezone.now) -> None:
        self.account = account
        self._broker = broker
        self.clock = clock

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            from trading.brokers import broker_for  # imported late: unit tests run without the adapter

            self._broker = broker_for(self.account)
        return self._broker

    # --- sync -----------------------------------------------------------------------------------

    def sync_with_account(self) -> SyncResult:
        """Make the watchlist the account's holdings. Raises BrokerError, leaving the watchlist untouched."""
        watchlist = self._watchlist()
        with sync_in_progress(self.account.id, on_sync_wanted=jobs.request_sync) as acquired:
            if not acquired:
                logger.info("sync skipped account=%s: a sync or trade of it is running and will queue "
                            "another sync when done", self.account.id)
                return SyncResult(WatchlistDiff(), watchlist.version, skipped=True)
            read_mark = self._newest_intent_id(watchlist)
            try:
                account_df = self.broker.get_acct_balance()
            except BrokerError as exc:
                logger.warning("sync failed account=%s reason=%s msg_cd=%s: %s",
                               self.account.id, exc.reason, exc.msg_cd or "-", exc.message)
                raise
            holding_stocks = holdings_from_balance(account_df)
            return self._update_watchlist_from_holdings(holding_stocks, account_df, read_mark=read_mark)

    def _update_watchlist_from_holdings(self, holding_stocks: dict[str, ItemState], account_df: pd.DataFrame,
                                        *, read_mark: int) -> SyncResult:
        now = self.clock()
        grace = timedelta(seconds=settings.WATCHLIST_PENDING_GRACE)
        with account_lock(self.account.id), transaction.atomic(durable=True):
            watchlist = Watchlist.objects.get(account=self.account)
            items = {item.stock_code: item for item in watchlist.items.all()}
            stored = {code: ItemState.of(item) for code, item in items.items()}
            open_intents = watchlist.pending_trades.filter(resolved_at__isnull=True).order_by("id")
            plan = reconcile(stored, holding_stocks, open_intents, read_mark=read_mark, now=now, grace=grace)
            changes = diff_items(stored, plan.target)
            self._save_totals(watchlist, account_df.attrs.get("totals"))
            version = self._save_changes(watchlist, items, plan.target, changes,
                                         cause=WatchlistChange.Cause.SYNC, note=plan.note(grace))
            _resolve(plan.confirmed, PendingTrade.Resolution.CONFIRMED, now)
            _resolve(plan.expired, PendingTrade.Resolution.EXPIRED, now)
        if plan.expired:
            logger.warning("account=%s version=%s: %s", self.account.id, version, plan.note(grace))
        logger.info("synced account=%s version=%s balance_rows=%d holdings=%d changes=%s repriced=%d",
                    self.account.id, version, len(account_df), len(holding_stocks), changes.as_dict(),
                    len(changes.repriced))
        return SyncResult(changes, version)

    # --- trades -----------------------------------------------------------------------------------

    def handle_trade_event(self, stock_code: str, trade_type: Side, qty: int, *, order_id: str = "",
                           price: int | None = None, name: str | None = None) -> int:
        """Apply an order the broker accepted, at once and pending; queue the reconciling sync.

        Returns the watchlist version after the change. Must not run inside an outer transaction: its
        own commits and broadcast happen under the account lock."""
        validate_order(stock_code, trade_type, qty, price)
        watchlist = self._watchlist()
        with account_lock(self.account.id), transaction.atomic(durable=True):
            watchlist.refresh_from_db(fields=["version"])
            item = watchlist.items.filter(stock_code=stock_code).first()
            stored = {stock_code: ItemState.of(item)} if item else {}
            expected = optimistic_item(stored.get(stock_code), stock_code, trade_type, qty, price,
                                       name or stock_code)
            target = {stock_code: expected} if expected else {}
            changes = diff_items(stored, target)
            version = self._save_changes(watchlist, {stock_code: item} if item else {}, target, changes,
                                         cause=WatchlistChange.Cause(trade_type))
            if changes:
                PendingTrade.objects.create(
                    watchlist=watchlist, stock_code=stock_code, side=trade_type, qty=qty,
                    expected_quantity=expected.quantity if expected else 0, order_id=order_id,
                    created_at=self.clock(),
                )
        logger.info("trade event account=%s %s %s x%s order=%s version=%s changes=%s",
                    self.account.id, trade_type, stock_code, qty, order_id or "-", version, changes.as_dict())
        jobs.request_sync(self.account.id)
        return version

    # --- writing ----------------------------------------------------------------------------------

    def _watchlist(self) -> Watchlist:
        return Watchlist.objects.get_or_create(account=self.account)[0]

    @staticmethod
    def _save_totals(watchlist: Watchlist, totals: dict | None) -> None:
        """Keep the broker's totals of the read (None: it gave none readable; the last ones stay). Sent
        with the next change, and shown by every snapshot."""
        if totals is not None and totals != watchlist.totals:
            Watchlist.objects.filter(pk=watchlist.pk).update(totals=totals)
            watchlist.totals = totals

    @staticmethod
    def _newest_intent_id(watchlist: Watchlist) -> int:
        return watchlist.pending_trades.order_by("-id").values_list("id", flat=True).first() or 0

    def _save_changes(self, watchlist: Watchlist, items: dict[str, WatchlistItem],
                      target: dict[str, ItemState], changes: WatchlistDiff, *, cause: str,
                      note: str = "") -> int:
        """Write `changes` (already diffed under the lock); returns the version after them."""
        now = timezone.now()
        rewritten = []
        for code in changes.updated + changes.repriced:
            item, state = items[code], target[code]
            for name in ITEM_VALUE_FIELDS:  # not asdict(): its deep copy is slow on the sync's hot path
                setattr(item, name, getattr(state, name))
            if code in changes.updated:
                item.updated_at = now
            rewritten.append(item)
        if rewritten:
            _update_items(rewritten)
        if changes.removed:
            watchlist.items.filter(stock_code__in=changes.removed).delete()
        if changes.added:
            WatchlistItem.objects.bulk_create(
                [WatchlistItem(watchlist=watchlist, **asdict(target[code])) for code in changes.added]
            )
        if not changes:
            return watchlist.version

        Watchlist.objects.filter(pk=watchlist.pk).update(version=F("version") + 1, updated_at=now)
        version = Watchlist.objects.values_list("version", flat=True).get(pk=watchlist.pk)
        WatchlistChange.objects.create(
            watchlist=watchlist, version=version, cause=cause, note=note,
            added=list(changes.added), removed=list(changes.removed), updated=list(changes.updated),
        )
        # A lambda, not functools.partial (here and in record_sync_outcome): Django logs a failed robust
        # hook by its __qualname__, which a partial lacks, so a failed broadcast (Redis restarting)
        # would raise out of the commit instead of being logged.
        transaction.on_commit(lambda: self._broadcast_watchlist_change(watchlist, changes, version),
                              robust=True)
        return version

    def _broadcast_watchlist_change(self, watchlist: Watchlist, changes: WatchlistDiff, version: int) -> None:
        """Runs on commit, still under the account lock: the list read here is exactly `version`."""
        message = events.watchlist_changed_message(changes.as_dict(), full_list(watchlist), version,
                                                   totals_dict(watchlist))
        events.send_watchlist_changed(self.account.id, message)


def _update_items(items: list[WatchlistItem]) -> None:
    """Write the value fields of `items`: one UPDATE statement, executed for every row in one round trip.

    Not `bulk_update`: its CASE per field and row costs more CPU, here and in PostgreSQL, than the
    rest of a sync whose prices moved, which is every sync in market hours (docs/PERFORMANCE.md, "Sync
    throughput"). The values go to the driver as they are (ints, floats, strs, bools); only the
    timestamp needs the backend's conversion."""
    quote = connection.ops.quote_name
    updated_at = WatchlistItem._meta.get_field("updated_at")
    columns = [WatchlistItem._meta.get_field(name).column for name in ITEM_VALUE_FIELDS] + [updated_at.column]
    assignments = ", ".join(f"{quote(column)} = %s" for column in columns)
    statement = f"UPDATE {quote(WatchlistItem._meta.db_table)} SET {assignments} WHERE {quote('id')} = %s"
    rows = [[*(getattr(item, name) for name in ITEM_VALUE_FIELDS),
             updated_at.get_db_prep_save(item.updated_at, connection), item.pk] for item in items]
    with connection.cursor() as cursor:
        cursor.executemany(statement, rows)


def _resolve(intents: list[PendingTrade], resolution: str, now: datetime) -> None:
    if intents:
        PendingTrade.objects.filter(id__in=[intent.id for intent in intents]).update(
            resolved_at=now, resolution=resolution
        )


# --- sync state, backoff, dispatch -------------------------------------------------------------------

def sync_retry_delay(consecutive_failures: int) -> int:
    """Seconds until the next attempt: the sync interval, doubled per failure in a row, capped."""
    base = settings.WATCHLIST_SYNC_INTERVAL
    if consecutive_failures == 0:
        return base
    return min(base * 2 ** min(consecutive_failures - 1, 16), settings.WATCHLIST_BACKOFF_MAX)


def record_sync_outcome(account_id: int, error: BrokerError | None = None, *,
                        now: datetime | None = None) -> SyncState:
    """Record one sync attempt (error None: it succeeded) and schedule the next.

    Sends `sync_status` after every failure and whenever the status changes."""
    now = now or timezone.now()
    with transaction.atomic():
        state, _ = SyncState.objects.select_for_update().get_or_create(account_id=account_id)
        previous_status = state.status
        state.last_attempt_at = now
        if error is None:
            state.consecutive_failures = 0
            state.last_success_at = now
            state.last_error = ""
        else:
            state.consecutive_failures += 1
            state.last_error = f"{error.reason}: {error.message}"[:500]
        state.next_attempt_at = now + timedelta(seconds=sync_retry_delay(state.consecutive_failures))
        state.save()
        if error is not None or state.status != previous_status:
            sync = sync_status_dict(state)
            transaction.on_commit(lambda: events.send_sync_status(account_id, sync), robust=True)
    if error is not None:
        logger.info("sync of account=%s failing (%d in a row), next attempt at %s",
                    account_id, state.consecutive_failures, state.next_attempt_at.isoformat())
    return state


def sync_and_record(account: BrokerAccount, broker: Broker | None = None) -> SyncResult:
    """Sync the account and record the outcome: the periodic task and a manual sync both use this.

    Raises the BrokerError after recording it."""
    try:
        result = WatchlistService(account, broker).sync_with_account()
    except BrokerError as exc:
        SYNC_OUTCOMES.labels("failed", exc.reason).inc()
        record_sync_outcome(account.id, exc)
        raise
    SYNC_OUTCOMES.labels("skipped" if result.skipped else "ok", "").inc()
    if not result.skipped:
        record_sync_outcome(account.id)
    return result


def claim_due_syncs(now: datetime | None = None) -> dict[int, datetime | None]:
    """The accounts whose sync is due (or never ran), each pushed out by the queue lease: account id ->
    when it was due (None: never scheduled).

    The lease is one sync interval: a queued task can be lost with its queue (Redis restarted
    without persistence) or its worker (SIGKILL: Redis redelivers it only after the visibility
    timeout), and its account must then be due again as soon as a healthy one would be. A task
    still waiting after a whole interval has expired by then and is dropped unrun (dispatch_due_syncs),
    so a backlog never syncs an account twice."""
    now = now or timezone.now()
    lease = timedelta(seconds=settings.WATCHLIST_SYNC_INTERVAL)
    never_synced = BrokerAccount.objects.filter(sync_state__isnull=True).values_list("id", flat=True)
    SyncState.objects.bulk_create([SyncState(account_id=account_id) for account_id in never_synced],
                                  ignore_conflicts=True)
    # One UPDATE claims and reports at once, so two dispatchers never queue the same account; the
    # locked sub-select hands back each row's due time from before the claim.
    table = SyncState._meta.db_table
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET next_attempt_at = %s FROM (SELECT id, next_attempt_at AS due_at FROM {table} "
            f"WHERE next_attempt_at IS NULL OR next_attempt_at <= %s{lock}) AS due "
            f"WHERE {table}.id = due.id RETURNING {table}.account_id, due.due_at",
            [connection.ops.adapt_datetimefield_value(now + lease),
             connection.ops.adapt_datetimefield_value(now)],
        )
        return {account_id: _datetime_from_db(value) for account_id, value in cursor.fetchall()}


def _datetime_from_db(value: datetime | str | None) -> datetime | None:
    """PostgreSQL's driver returns an aware datetime; SQLite (development) its UTC text."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)
