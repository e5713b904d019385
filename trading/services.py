"""Order placement: validate, place once with the broker, update the watchlist optimistically, record.

Money is involved, so two rules shape this module. Nothing invalid reaches the broker (the rules
are `trading.brokers.base`'s). An order leaves the process at most once per request and per
Idempotency-Key: a failed or timed-out order is never retried; the account is re-read instead.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from watchlist import jobs as watchlist_jobs
from watchlist.locks import trade_in_flight
from watchlist.models import SyncState, WatchlistItem
from watchlist.services import WatchlistService

from .brokers.base import (
    BadBrokerResponse,
    Broker,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    InvalidOrder,
    OrderRejected,
    Side,
    validate_order,
)
from .models import BrokerAccount, IdempotencyKey, Order

logger = logging.getLogger(__name__)

IDEMPOTENCY_TTL = timedelta(hours=24)
IDEMPOTENCY_KEY_MAX_LENGTH = 255
# A request whose key is held by another in-flight request waits this long for its result: more
# than an order call (KIS_TIMEOUT) plus the watchlist update (WATCHLIST_LOCK_TIMEOUT) take.
IDEMPOTENCY_WAIT = timedelta(seconds=60)
IDEMPOTENCY_POLL_SECONDS = 0.05

MAX_ACCOUNT_ID = 2**63 - 1  # the primary key is a bigint: larger ids cannot exist

# KIS answers a sell above the orderable quantity with one of these codes (they vary by
# environment and version) and a message naming 주문가능수량.
EXCEEDS_ORDERABLE_CODES = frozenset({"APBK0400", "APBK0401", "APBK0918"})


class AccountNotFound(Exception):
    """The account is not one of this user's (or the user has none)."""


class TradeOutcome(str, enum.Enum):
    ACCEPTED = "accepted"
    EXCEEDS_HOLDINGS = "exceeds_holdings"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    STATE_UNKNOWN = "state_unknown"
    KEY_IN_FLIGHT = "key_in_flight"


@dataclass(frozen=True)
class TradeResult:
    outcome: TradeOutcome
    message: str
    stock_code: str
    qty: int
    order_id: str | None = None
    watchlist_version: int | None = None
    broker_code: str | None = None

    @property
    def success(self) -> bool:
        return self.outcome is TradeOutcome.ACCEPTED

    def to_json(self) -> dict:
        return {**asdict(self), "outcome": self.outcome.value}

    @classmethod
    def from_json(cls, data: dict) -> TradeResult:
        return cls(**{**data, "outcome": TradeOutcome(data["outcome"])})


def user_account(*, user, account_id: int | None = None) -> BrokerAccount:
    """The user's account `account_id`, or the user's first account when it is None."""
    accounts = BrokerAccount.objects.filter(owner=user).order_by("id")
    if account_id is None:
        account = accounts.first()
    elif isinstance(account_id, int) and not isinstance(account_id, bool) and 1 <= account_id <= MAX_ACCOUNT_ID:
        account = accounts.filter(pk=account_id).first()
    else:
        account = None
    if account is None:
        raise AccountNotFound(
            "You have no brokerage account." if account_id is None else f"Account {account_id} is not one of yours."
        )
    return account


def idempotency_key_error(key: object) -> str | None:
    if not isinstance(key, str) or not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH or not key.isprintable():
        return f"An Idempotency-Key is 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable characters."
    return None


def place_trade(
    *,
    user,
    account_id: int | None,
    stock_code: str,
    side: Side,
    qty: int,
    price: int | None = None,
    idempotency_key: str | None = None,
    broker: Broker | None = None,
) -> TradeResult:
    """Place one cash order for the user and apply it to the watchlist at once.

    Raises InvalidOrder (bad input, nothing sent), AccountNotFound, and AccountLockTimeout (the
    account stayed busy, nothing sent); every other outcome, including the broker's refusals and
    failures, is a TradeResult. With an `idempotency_key`, the first valid request with that key
    is the only one that can send an order; later ones (concurrent ones wait for it) get its
    result. Must not run inside a transaction: the key has to be visible to other processes
    before the order leaves.

    Trades of one account take turns, and no sync of it runs meanwhile (`trade_in_flight`), from
    before the order leaves until the watchlist holds its optimistic change.
    """
    validate_order(stock_code, side, qty, price)
    if idempotency_key is not None and (key_error := idempotency_key_error(idempotency_key)):
        raise InvalidOrder({"idempotency_key": key_error})
    account = user_account(user=user, account_id=account_id)
    with trade_in_flight(account.id, on_sync_wanted=watchlist_jobs.request_sync):
        if idempotency_key is None:
            return _trade(account, stock_code, side, qty, price, broker)
        return _idempotent_trade(user, idempotency_key, account, stock_code, side, qty, price, broker)


def _idempotent_trade(user, key: str, account: BrokerAccount, stock_code: str, side: Side, qty: int,
                      price: int | None, broker: Broker | None) -> TradeResult:
    claim, earlier_result = _claim_idempotency_key(user, key, stock_code, qty)
    if earlier_result is not None:
        logger.info("idempotent replay account=%s stock=%s key_id=%s outcome=%s",
                    account.id, stock_code, claim.id, earlier_result.outcome.value)
        return earlier_result
    result = _trade(account, stock_code, side, qty, price, broker)
    try:
        IdempotencyKey.objects.filter(pk=claim.pk).update(result=result.to_json())
    except DatabaseError:
        # The order's outcome matters more to the caller than the stored copy; a repeat of this
        # key then finds the claim without a result and is told the state is unknown.
        logger.exception("could not store the result of key_id=%s account=%s order_id=%s",
                         claim.id, account.id, result.order_id)
    return result


def _claim_idempotency_key(user, key: str, stock_code: str, qty: int) -> tuple[IdempotencyKey, TradeResult | None]:
    """Insert the (user, key) row, or find the existing one and wait for its result.

    Returns the claim and, when another request owns the key, that request's result."""
    IdempotencyKey.objects.filter(user=user, key=key, created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
    try:
        with transaction.atomic():
            return IdempotencyKey.objects.create(user=user, key=key), None
    except IntegrityError:
        pass
    claim = IdempotencyKey.objects.get(user=user, key=key)
    while claim.result is None and timezone.now() < claim.created_at + IDEMPOTENCY_WAIT:
        time.sleep(IDEMPOTENCY_POLL_SECONDS)
        claim.refresh_from_db(fields=["result"])
    if claim.result is not None:
        return claim, TradeResult.from_json(claim.result)
    return claim, TradeResult(
        TradeOutcome.KEY_IN_FLIGHT,
        "A request with this Idempotency-Key is still in progress or ended without an answer; "
        "its order state is unknown. Check the watchlist before trading again.",
        stock_code,
        qty,
    )


def _held_quantity(account: BrokerAccount, stock_code: str) -> int | None:
    """What the watchlist holds of `stock_code`, or None when it never synced (nothing to go by)."""
    if not SyncState.objects.filter(account=account, last_success_at__isnull=False).exists():
        return None
    item = WatchlistItem.objects.filter(watchlist__account=account, stock_code=stock_code).only("quantity").first()
    return item.quantity if item else 0


def _exceeds_orderable(exc: OrderRejected) -> bool:
    return exc.msg_cd in EXCEEDS_ORDERABLE_CODES or "주문가능수량" in exc.message.replace(" ", "")


def _trade(
    account: BrokerAccount, stock_code: str, side: Side, qty: int, price: int | None, broker: Broker | None
) -> TradeResult:
    context = f"account={account.id} stock={stock_code} side={side} qty={qty} price={price}"
    if side == "sell":
        held = _held_quantity(account, stock_code)
        if held is not None and qty > held:
            logger.info("sell refused, exceeds holdings %s held=%s", context, held)
            return TradeResult(
                TradeOutcome.EXCEEDS_HOLDINGS,
                f"Cannot sell {qty:,} of {stock_code}: the account holds {held:,}.",
                stock_code,
                qty,
            )

    if broker is None:
        from .brokers import broker_for

        broker = broker_for(account)
    order = Order(account=account, side=side, stock_code=stock_code, qty=qty, price=price)
    try:
        order.order_no = broker.place_order(stock_code, side, qty, price)
    except OrderRejected as exc:
        logger.info("order rejected %s msg_cd=%s message=%s", context, exc.msg_cd, exc.message)
        _save_order(order, Order.Status.REJECTED, exc)
        outcome = TradeOutcome.EXCEEDS_HOLDINGS if _exceeds_orderable(exc) else TradeOutcome.REJECTED
        return TradeResult(outcome, f"The broker rejected the order: {exc.message}", stock_code, qty,
                           broker_code=exc.msg_cd or None)
    except (BrokerTimeout, BadBrokerResponse) as exc:
        logger.warning("order state unknown (%s) %s", exc.reason, context)
        _save_order(order, Order.Status.UNKNOWN, exc)
        watchlist_jobs.request_sync(account.id)
        return TradeResult(
            TradeOutcome.STATE_UNKNOWN,
            "The broker did not confirm the order: its state is unknown. It was not retried; "
            "the watchlist will follow the account at the next sync.",
            stock_code, qty, broker_code=exc.msg_cd or None,
        )
    except BrokerError as exc:
        logger.warning("order failed (%s) %s msg_cd=%s", exc.reason, context, exc.msg_cd)
        _save_order(order, Order.Status.FAILED, exc)
        if isinstance(exc, BrokerUnavailable):
            # A server error can come after the broker took the order: let the account tell.
            watchlist_jobs.request_sync(account.id)
        return TradeResult(TradeOutcome.UNREACHABLE, f"The order could not be placed with the broker: {exc.message}",
                           stock_code, qty, broker_code=exc.msg_cd or None)
    except Exception as exc:
        # An adapter bug after the request left: the order may exist, so never answer as if it did not.
        logger.exception("order state unknown (unexpected error) %s", context)
        _save_order(order, Order.Status.UNKNOWN, BrokerError(f"unexpected {type(exc).__name__} in the adapter"))
        watchlist_jobs.request_sync(account.id)
        return TradeResult(TradeOutcome.STATE_UNKNOWN,
                           "The order's state is unknown after an internal error. It was not retried; the "
                           "watchlist will follow the account at the next sync.", stock_code, qty)

    logger.info("order accepted %s order_no=%s", context, order.order_no)
    version = _apply_accepted_order(order, broker)
    kind = f"at {price:,} KRW" if price is not None else "at market"
    return TradeResult(TradeOutcome.ACCEPTED,
                       f"The {side} order for {qty:,} of {stock_code} {kind} was accepted (order {order.order_no}).",
                       stock_code, qty, order_id=order.order_no, watchlist_version=version)


def _save_order(order: Order, status: Order.Status, error: BrokerError | None = None) -> None:
    order.status = status
    if error is not None:
        order.broker_code, order.message = error.msg_cd, error.message
    order.save()


def _apply_accepted_order(order: Order, broker: Broker) -> int | None:
    """Record the accepted order and update the watchlist; the order stands whatever fails here."""
    try:
        _save_order(order, Order.Status.ACCEPTED)
        version = WatchlistService(order.account, broker=broker).handle_trade_event(
            order.stock_code, order.side, order.qty, order_id=order.order_no, price=order.price
        )
    except Exception:
        logger.exception("accepted order_no=%s account=%s stock=%s not applied to the watchlist",
                         order.order_no, order.account_id, order.stock_code)
        watchlist_jobs.request_sync(order.account_id)
        return None
    logger.info("watchlist updated account=%s stock=%s order_no=%s version=%s",
                order.account_id, order.stock_code, order.order_no, version)
    return version
