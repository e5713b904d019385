"""The writers of the watchlist's holdings and versions: the sync with the account, optimistic trade
events, sync state. (The price feed, watchlist/prices.py, refreshes the stored prices in between,
without a version or a change.)

Sync. The broker read runs under the account's sync lock only (locks.py), never under the write
lock. The write section (read the stored list, diff, write, broadcast) runs under `account_lock` in
one durable transaction: items with bulk operations, version + 1 with an UPDATE, one WatchlistChange
row. The broadcast is sent by `transaction.on_commit` while the lock is still held, so the messages
of one account leave in version order. An unchanged account costs the same few queries whatever its
size; a price-only move refreshes the stored values without a version and without a message.

Orders, reads and marks (docs/ARCHITECTURE.md, "Consistency"). No lock is held across a broker
call. Every order is registered as a `sending` PendingTrade before it leaves (`register_order`), its
effect is applied once the broker accepts it (`handle_trade_event`), and a fill notice confirms it
(`confirm_fill`). Each local change of a code stamps its intent with a mark from the watchlist_mark
sequence; a balance read takes a mark just before it begins. A read settles a code only when every
open intent of the code was stamped before the read began; otherwise the stored item stands, so a
read that overlapped an order can neither count its fill twice nor undo a newer optimistic change.
A settled intent is confirmed when the balance shows its expected quantity, kept within
WATCHLIST_PENDING_GRACE, and expired (the account wins) after it. A `sending` intent older than
WATCHLIST_ORDER_DEADLINE is given up by the read (its trade died, or will be refused: a late writer
finds its intent no longer `sending` and only asks for a sync). Of two reads, the one that began
later wins: a read whose mark is below the last written one is dropped. "Now" comes from an
injectable clock, so tests move time instead of sleeping.

Sync state. Every attempt of the periodic task and of a manual sync is recorded by
`record_sync_outcome`: success -> next attempt after WATCHLIST_SYNC_INTERVAL; the n-th failure in a
row -> after interval * 2^(n-1), capped at WATCHLIST_BACKOFF_MAX (30, 60, 120, 120 s). A failure
leaves the watchlist untouched. `claim_due_syncs` hands the dispatcher the due accounts, pushing each
one out by the queue lease in the same UPDATE so it is not queued twice while its task waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

import pandas as pd
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from trading.brokers.base import Broker, BrokerError, Side, validate_order
from trading.brokers.call_budget import NoCallSlot
from trading.models import BrokerAccount

from . import events, jobs, reads
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
    read_number: int = 0  # reads.read_begins of the read written (0: skipped, or dropped as stale)


@dataclass
class Reconciliation:
    """The list the watchlist should become, and the open intents this sync resolves."""

    target: dict[str, ItemState]
    confirmed: list[PendingTrade] = field(default_factory=list)
    expired: list[PendingTrade] = field(default_factory=list)
    settled: list[PendingTrade] = field(default_factory=list)  # unknown outcomes the read now tells

    def note(self, grace: timedelta) -> str:
        if not self.expired:
            return ""
        orders = ", ".join(
            f"{intent.side} {intent.stock_code} x{intent.qty} (order {intent.order_id or '?'})"
            for intent in self.expired
        )
        return (
            f"Not confirmed by the account within {int(grace.total_seconds())} s, "
            f"the account's state wins: {orders}."
        )


def reconcile(
    stored: Mapping[str, ItemState],
    holdings: Mapping[str, ItemState],
    open_intents: Iterable[PendingTrade],
    *,
    read_mark: int,
    now: datetime,
    grace: timedelta,
    order_deadline: timedelta,
) -> Reconciliation:
    """The account's holdings, except where an open intent must stand (module docstring).

    `open_intents` come in id order; `read_mark` is the mark taken as the balance read began."""
    intents_by_code: dict[str, list[PendingTrade]] = {}
    for intent in open_intents:
        intents_by_code.setdefault(intent.stock_code, []).append(intent)

    result = Reconciliation(target=dict(holdings))
    for code, intents in intents_by_code.items():
        given_up = [
            i
            for i in intents
            if i.status == PendingTrade.Status.SENDING and now - i.created_at > order_deadline
        ]
        live = [i for i in intents if i not in given_up]
        if any(i.settled_mark is None or i.settled_mark > read_mark for i in live):
            _keep_optimistic(result.target, code, stored.get(code), holdings.get(code))
            continue
        result.expired.extend(given_up)
        applied = [i for i in live if i.status in (PendingTrade.Status.APPLIED, PendingTrade.Status.FILLED)]
        if not applied:
            result.settled.extend(live)
            continue
        latest = max(applied, key=lambda i: i.settled_mark)  # applied last: its expected quantity counts all
        held = holdings.get(code)
        if (held.quantity if held else 0) == latest.expected_quantity:
            result.confirmed.extend(live)
        elif now - latest.created_at < grace:
            _keep_optimistic(result.target, code, stored.get(code), held)
        else:
            result.expired.extend(live)
    return result


def _keep_optimistic(
    target: dict[str, ItemState], code: str, optimistic: ItemState | None, held: ItemState | None
) -> None:
    if optimistic is None:
        target.pop(code, None)
    elif held is None:
        target[code] = optimistic
    else:
        target[code] = replace(optimistic.revalued(current_price=held.current_price), name=held.name)


def optimistic_item(
    held: ItemState | None, stock_code: str, trade_type: Side, qty: int, price: int | None, name: str
) -> ItemState | None:
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


def filled_item(item: ItemState, intent: PendingTrade, qty: int, price: int) -> ItemState:
    """The item once `qty` of the intent's order filled at `price`: a buy's assumed price gives way to
    the real one; pending clears when the whole order filled."""
    done = intent.filled_qty >= intent.qty
    if intent.side != "buy" or intent.assumed_price is None:
        return replace(item, pending=not done)
    avg_price = item.avg_price + (price - intent.assumed_price) * qty / item.quantity
    current_price = price if item.current_price in (0, intent.assumed_price) else item.current_price
    return item.revalued(avg_price=avg_price, current_price=current_price, pending=not done)


class WatchlistService:
    def __init__(
        self, account: BrokerAccount, broker: Broker | None = None, *, clock: Clock = timezone.now
    ) -> None:
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
        """Make the watchlist the account's holdings. Raises BrokerError, leaving the watchlist untouched.

        The read waits for its turn in the app key's call budget at the priority its waiters asked for
        (reads.want_read); requests made until it begins are served by it."""
        watchlist = self._watchlist()
        account_id = self.account.id
        with sync_in_progress(account_id, on_sync_wanted=jobs.request_sync) as acquired:
            if not acquired:
                logger.info(
                    "sync skipped account=%s: a sync of it is running and will queue another sync when done",
                    account_id,
                )
                return SyncResult(WatchlistDiff(), watchlist.version, skipped=True)
            try:
                with self.broker.read_turn(lambda: reads.read_priority(account_id)):
                    read_number = reads.read_begins(account_id)
                    read_mark = next_mark()
                    account_df = self.broker.get_acct_balance()
            except BrokerError as exc:
                logger.warning(
                    "sync failed account=%s reason=%s msg_cd=%s: %s",
                    account_id,
                    exc.reason,
                    exc.msg_cd or "-",
                    exc.message,
                )
                raise
            holding_stocks = holdings_from_balance(account_df)
            result = self._update_watchlist_from_holdings(
                watchlist, holding_stocks, account_df, read_mark=read_mark
            )
            if not result.skipped:
                reads.read_written(account_id, read_number)
                result = replace(result, read_number=read_number)
            return result

    def _update_watchlist_from_holdings(
        self,
        watchlist: Watchlist,
        holding_stocks: dict[str, ItemState],
        account_df: pd.DataFrame,
        *,
        read_mark: int,
    ) -> SyncResult:
        now = self.clock()
        grace = timedelta(seconds=settings.WATCHLIST_PENDING_GRACE)
        deadline = timedelta(seconds=settings.WATCHLIST_ORDER_DEADLINE)
        with account_lock(self.account.id), transaction.atomic(durable=True):
            if _claim_read(watchlist, read_mark) is None:
                logger.info(
                    "sync of account=%s dropped: a read that began later is written already", self.account.id
                )
                return SyncResult(WatchlistDiff(), watchlist.version, skipped=True)
            items = {item.stock_code: item for item in watchlist.items.all()}
            stored = {code: ItemState.of(item) for code, item in items.items()}
            open_intents = watchlist.pending_trades.filter(resolved_at__isnull=True).order_by("id")
            plan = reconcile(
                stored,
                holding_stocks,
                open_intents,
                read_mark=read_mark,
                now=now,
                grace=grace,
                order_deadline=deadline,
            )
            changes = diff_items(stored, plan.target)
            self._save_totals(watchlist, account_df.attrs.get("totals"))
            version = self._save_changes(
                watchlist,
                items,
                plan.target,
                changes,
                cause=WatchlistChange.Cause.SYNC,
                note=plan.note(grace),
            )
            _resolve(plan.confirmed, PendingTrade.Resolution.CONFIRMED, now)
            _resolve(plan.expired, PendingTrade.Resolution.EXPIRED, now)
            _resolve(plan.settled, PendingTrade.Resolution.READ, now)
        if plan.expired:
            logger.warning("account=%s version=%s: %s", self.account.id, version, plan.note(grace))
        logger.info(
            "synced account=%s version=%s balance_rows=%d holdings=%d changes=%s repriced=%d",
            self.account.id,
            version,
            len(account_df),
            len(holding_stocks),
            changes.as_dict(),
            len(changes.repriced),
        )
        return SyncResult(changes, version)

    # --- trades -----------------------------------------------------------------------------------

    def register_order(self, stock_code: str, trade_type: Side, qty: int) -> PendingTrade:
        """Record an order about to leave (`sending`), committed before it leaves: until it is applied,
        no read can settle its code."""
        return PendingTrade.objects.create(
            watchlist=self._watchlist(),
            stock_code=stock_code,
            side=trade_type,
            qty=qty,
            expected_quantity=0,
            status=PendingTrade.Status.SENDING,
            created_at=self.clock(),
        )

    def order_not_placed(self, intent: PendingTrade) -> None:
        PendingTrade.objects.filter(pk=intent.pk, status=PendingTrade.Status.SENDING).delete()

    def order_outcome_unknown(self, intent: PendingTrade) -> None:
        """The order may exist: its code waits for a read that begins after now."""
        with account_lock(self.account.id), transaction.atomic(durable=True):
            PendingTrade.objects.filter(pk=intent.pk, status=PendingTrade.Status.SENDING).update(
                status=PendingTrade.Status.UNKNOWN, settled_mark=next_mark()
            )
        jobs.request_waited_sync(self.account.id)

    def handle_trade_event(
        self,
        stock_code: str,
        trade_type: Side,
        qty: int,
        *,
        order_id: str = "",
        price: int | None = None,
        name: str | None = None,
        intent: PendingTrade | None = None,
    ) -> int | None:
        """Apply an order the broker accepted, at once and pending; queue the reconciling read.

        `intent`: the order's registration (register_order); a read that gave it up meanwhile refuses
        the change (the read may have counted the fill), and only a sync is asked for (None returned).
        Returns the watchlist version after the change. Must not run inside an outer transaction: its
        own commits and broadcast happen under the account lock."""
        validate_order(stock_code, trade_type, qty, price)
        watchlist = self._watchlist()
        with account_lock(self.account.id), transaction.atomic(durable=True):
            if (
                intent is not None
                and not PendingTrade.objects.filter(
                    pk=intent.pk, status=PendingTrade.Status.SENDING, resolved_at__isnull=True
                ).exists()
            ):
                refused = True
            else:
                refused = False
                version, changes = self._apply_order(
                    watchlist, stock_code, trade_type, qty, order_id, price, name, intent
                )
        if refused:
            logger.warning(
                "trade event account=%s %s %s x%s order=%s refused: a read gave its order up",
                self.account.id,
                trade_type,
                stock_code,
                qty,
                order_id or "-",
            )
            jobs.request_waited_sync(self.account.id)
            return None
        logger.info(
            "trade event account=%s %s %s x%s order=%s version=%s changes=%s",
            self.account.id,
            trade_type,
            stock_code,
            qty,
            order_id or "-",
            version,
            changes.as_dict(),
        )
        jobs.request_waited_sync(self.account.id)
        return version

    def _apply_order(
        self,
        watchlist: Watchlist,
        stock_code: str,
        trade_type: Side,
        qty: int,
        order_id: str,
        price: int | None,
        name: str | None,
        intent: PendingTrade | None,
    ) -> tuple[int, WatchlistDiff]:
        watchlist.refresh_from_db(fields=["version"])
        item = watchlist.items.filter(stock_code=stock_code).first()
        stored = {stock_code: ItemState.of(item)} if item else {}
        known = None if item else known_stock(stock_code)
        expected = optimistic_item(
            stored.get(stock_code),
            stock_code,
            trade_type,
            qty,
            price or (known.price if known else None),
            name or (known.name if known else stock_code),
        )
        target = {stock_code: expected} if expected else {}
        changes = diff_items(stored, target)
        version = self._save_changes(
            watchlist,
            {stock_code: item} if item else {},
            target,
            changes,
            cause=WatchlistChange.Cause(trade_type),
        )
        fields = {
            "expected_quantity": expected.quantity if expected else 0,
            "order_id": order_id,
            "status": PendingTrade.Status.APPLIED,
            "settled_mark": next_mark(),
            "assumed_price": int(expected.current_price) if expected and trade_type == "buy" else None,
        }
        if intent is not None:
            PendingTrade.objects.filter(pk=intent.pk).update(**fields)
        elif changes:
            PendingTrade.objects.create(
                watchlist=watchlist,
                stock_code=stock_code,
                side=trade_type,
                qty=qty,
                created_at=self.clock(),
                **fields,
            )
        return version, changes

    def confirm_fill(
        self, order_id: str, stock_code: str, trade_type: Side, qty: int, price: int, name: str = ""
    ) -> int | None:
        """A fill notice of an applied order: its quantity and price settle the item without a read,
        and its stock name names a new buy's row that had only its code. Returns the watchlist version
        after it.

        None when no applied intent has that order number (the trade has not applied it yet, or the
        order is not one of this app's)."""
        watchlist = self._watchlist()
        with account_lock(self.account.id), transaction.atomic(durable=True):
            intent = (
                watchlist.pending_trades.select_for_update()
                .filter(
                    order_id=order_id,
                    stock_code=stock_code,
                    resolved_at__isnull=True,
                    status__in=[PendingTrade.Status.APPLIED, PendingTrade.Status.FILLED],
                )
                .first()
            )
            if intent is None:
                return None
            watchlist.refresh_from_db(fields=["version"])
            intent.filled_qty += qty
            item = watchlist.items.filter(stock_code=stock_code).first()
            stored = {stock_code: ItemState.of(item)} if item else {}
            target = dict(stored)
            if item is not None:
                target[stock_code] = filled_item(stored[stock_code], intent, qty, price)
                if name and item.name == stock_code:
                    target[stock_code] = replace(target[stock_code], name=name)
            changes = diff_items(stored, target)
            version = self._save_changes(
                watchlist,
                {stock_code: item} if item else {},
                target,
                changes,
                cause=WatchlistChange.Cause(trade_type),
            )
            intent.status = PendingTrade.Status.FILLED
            intent.save(update_fields=["filled_qty", "status"])
        logger.info(
            "fill notice account=%s order=%s %s %s x%s at %s version=%s changes=%s",
            self.account.id,
            order_id,
            trade_type,
            stock_code,
            qty,
            price,
            version,
            changes.as_dict(),
        )
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

    def _save_changes(
        self,
        watchlist: Watchlist,
        items: dict[str, WatchlistItem],
        target: dict[str, ItemState],
        changes: WatchlistDiff,
        *,
        cause: str,
        note: str = "",
    ) -> int:
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
            watchlist=watchlist,
            version=version,
            cause=cause,
            note=note,
            added=list(changes.added),
            removed=list(changes.removed),
            updated=list(changes.updated),
        )
        # A lambda, not functools.partial (here and in record_sync_outcome): Django logs a failed robust
        # hook by its __qualname__, which a partial lacks, so a failed broadcast (Redis restarting)
        # would raise out of the commit instead of being logged.
        transaction.on_commit(
            lambda: self._broadcast_watchlist_change(watchlist, changes, version), robust=True
        )
        return version

    def _broadcast_watchlist_change(self, watchlist: Watchlist, changes: WatchlistDiff, version: int) -> None:
        """Runs on commit, still under the account lock: the list read here is exactly `version`."""
        message = events.watchlist_changed_message(
            changes.as_dict(), full_list(watchlist), version, totals_dict(watchlist)
        )
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
    rows = [
        [
            *(getattr(item, name) for name in ITEM_VALUE_FIELDS),
            updated_at.get_db_prep_save(item.updated_at, connection),
            item.pk,
        ]
        for item in items
    ]
    with connection.cursor() as cursor:
        cursor.executemany(statement, rows)


def _claim_read(watchlist: Watchlist, read_mark: int) -> Watchlist | None:
    """Record `read_mark` as the newest read written and refresh `watchlist`'s version, in one statement;
    None when a read that began later was written already."""
    table = Watchlist._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET read_mark = %s WHERE id = %s AND read_mark <= %s RETURNING version",
            [read_mark, watchlist.pk, read_mark],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    watchlist.version, watchlist.read_mark = row[0], read_mark
    return watchlist


def next_mark() -> int:
    """The next value of the watchlist_mark sequence: it orders read starts and local changes (on
    SQLite, whose writers take turns, a counter stands in for the sequence: migration 0005)."""
    if connection.vendor == "postgresql":
        statement = "SELECT nextval('watchlist_mark')"
    else:
        statement = "UPDATE watchlist_mark SET value = value + 1 RETURNING value"
    with connection.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchone()[0]


@dataclass(frozen=True)
class KnownStock:
    name: str
    price: int


def known_stock(stock_code: str) -> KnownStock | None:
    """The name and last price of a code some watchlist holds (the price feed keeps its price)."""
    row = (
        WatchlistItem.objects.filter(stock_code=stock_code)
        .exclude(name=stock_code)
        .order_by("-updated_at")
        .values_list("name", "current_price")
        .first()
    )
    return KnownStock(*row) if row else None


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


def record_sync_outcome(
    account_id: int, error: BrokerError | None = None, *, now: datetime | None = None
) -> SyncState:
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
        logger.info(
            "sync of account=%s failing (%d in a row), next attempt at %s",
            account_id,
            state.consecutive_failures,
            state.next_attempt_at.isoformat(),
        )
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


class SyncNotServed(Exception):
    """No balance read that began after the request was written in time (the call budget is busy)."""

    retry_after = 2  # seconds


MANUAL_SYNC_POLL = 0.02  # seconds between looks at a running sync of the account


def sync_now(account: BrokerAccount, broker: Broker | None = None) -> SyncResult:
    """A manual sync: its answer reflects a balance read that began after this call, ours or one that
    was waiting for its turn, within WATCHLIST_MANUAL_SYNC_WAIT. Raises SyncNotServed beyond it and the
    BrokerError of a failed read of ours."""
    asked_after = reads.begun(account.id)
    reads.want_read(account.id)
    deadline = time.monotonic() + settings.WATCHLIST_MANUAL_SYNC_WAIT
    while True:
        try:
            result = sync_and_record(account, broker)
        except NoCallSlot as exc:
            raise SyncNotServed(exc.message) from exc
        if not result.skipped:
            return result
        if reads.written(account.id) > asked_after:
            return replace(result, skipped=False)
        if time.monotonic() >= deadline:
            raise SyncNotServed(
                f"no read of account {account.id} within {settings.WATCHLIST_MANUAL_SYNC_WAIT:g}s"
            )
        time.sleep(MANUAL_SYNC_POLL)


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
    SyncState.objects.bulk_create(
        [SyncState(account_id=account_id) for account_id in never_synced], ignore_conflicts=True
    )
    # The due rows are locked while they are claimed, so two dispatchers never queue the same account:
    # PostgreSQL makes the second wait and then finds them no longer due; SQLite's writers take turns.
    with transaction.atomic():
        due = dict(
            SyncState.objects.select_for_update()
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .values_list("account_id", "next_attempt_at")
        )
        SyncState.objects.filter(account_id__in=due).update(next_attempt_at=now + lease)
    return due
