"""Placing an order with the broker, once: validate, send, record. Nothing here knows of watchlists.

Money is involved, so three rules shape this module. Nothing invalid reaches the broker (the rules
are `trading.brokers.base`'s). An order leaves the process at most once per request and per
Idempotency-Key: a failed or timed-out order is never retried; the caller has the account re-read
instead (`OrderResult.needs_reconcile`). And an order is never misreported: its `Order` row exists
before the request leaves, and it is answered "not placed" only when it certainly was not (it never
left, or the broker refused it); any other failure leaves its state unknown.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from .brokers.base import (
    AuthenticationFailed,
    Broker,
    BrokerError,
    NotSent,
    OrderRejected,
    RateLimited,
    Side,
    TokenExpired,
    TokenIssueLimited,
)
from .metrics import counts_order_outcomes
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

# KIS's gateway answers these, with its msg_cd, instead of passing the call on to the order system.
GATEWAY_REFUSALS = (RateLimited, TokenExpired, TokenIssueLimited, AuthenticationFailed)


class AccountNotFound(Exception):
    """The account is not one of this user's (or the user has none)."""


class TradeOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    EXCEEDS_HOLDINGS = "exceeds_holdings"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    STATE_UNKNOWN = "state_unknown"
    KEY_IN_FLIGHT = "key_in_flight"


@dataclass(frozen=True)
class OrderResult:
    """What became of one order. `needs_reconcile`: the order may exist although it was not
    confirmed, so only a read of the account can tell."""

    outcome: TradeOutcome
    message: str
    order_no: str | None = None
    broker_code: str | None = None
    needs_reconcile: bool = False


def user_account(*, user, account_id: int | None = None) -> BrokerAccount:
    """The user's account `account_id`, or the user's first account when it is None."""
    accounts = BrokerAccount.objects.filter(owner=user).order_by("id")
    if account_id is None:
        account = accounts.first()
    elif (
        isinstance(account_id, int) and not isinstance(account_id, bool) and 1 <= account_id <= MAX_ACCOUNT_ID
    ):
        account = accounts.filter(pk=account_id).first()
    else:
        account = None
    if account is None:
        raise AccountNotFound(
            _("You have no brokerage account.")
            if account_id is None
            else _("Account %(account_id)s is not one of yours.") % {"account_id": account_id}
        )
    return account


# --- Idempotency --------------------------------------------------------------------------------


def idempotency_key_error(key: object) -> str | None:
    if not isinstance(key, str) or not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH or not key.isprintable():
        return _("An Idempotency-Key is 1 to %(max_length)s printable characters.") % {
            "max_length": IDEMPOTENCY_KEY_MAX_LENGTH
        }
    return None


def run_once(*, user, key: str, action: Callable[[], dict]) -> dict | None:
    """Run `action` for the first request of `user` with `key` and store its JSON-able answer.

    A later request with the key gets the stored answer; one that arrives while the first is in
    flight waits for it (IDEMPOTENCY_WAIT). None: the first request is still running or ended without
    an answer, so what it did is unknown. Must not run inside a transaction: the key has to be
    visible to other processes before `action` runs."""
    claim, earlier = _claim(user, key)
    if claim is None:
        return earlier
    answer = action()
    try:
        IdempotencyKey.objects.filter(pk=claim.pk).update(result=answer)
    except DatabaseError:
        # The answer matters more to the caller than its stored copy; a repeat of this key then
        # finds the claim without a result and is told the state is unknown.
        logger.exception("could not store the answer of idempotency key_id=%s", claim.id)
    return answer


def purge_expired_idempotency_keys() -> int:
    """Delete the keys older than IDEMPOTENCY_TTL (beat runs this); returns how many went."""
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
    logger.info("purged %d expired idempotency keys", deleted)
    return deleted


def _claim(user, key: str) -> tuple[IdempotencyKey | None, dict | None]:
    """Insert the (user, key) row, or find the existing one and wait for its answer.

    Returns (the new claim, None), or (None, the earlier request's answer or None)."""
    IdempotencyKey.objects.filter(
        user=user, key=key, created_at__lt=timezone.now() - IDEMPOTENCY_TTL
    ).delete()
    try:
        with transaction.atomic():
            return IdempotencyKey.objects.create(user=user, key=key), None
    except IntegrityError:
        pass
    claim = IdempotencyKey.objects.get(user=user, key=key)
    while claim.result is None and timezone.now() < claim.created_at + IDEMPOTENCY_WAIT:
        time.sleep(IDEMPOTENCY_POLL_SECONDS)
        claim.refresh_from_db(fields=["result"])
    logger.info("idempotent replay key_id=%s answered=%s", claim.id, claim.result is not None)
    return None, claim.result


# --- Orders -------------------------------------------------------------------------------------


def _exceeds_orderable(exc: OrderRejected) -> bool:
    return exc.msg_cd in EXCEEDS_ORDERABLE_CODES or "주문가능수량" in exc.message.replace(" ", "")


def certainly_not_placed(exc: BrokerError) -> bool:
    """Whether a failed order cannot exist: it never left, or the broker's gateway turned it away with
    its code. Anything else (a timeout, a dropped connection, a server error, an answer that cannot be
    read) may have come after the broker took it."""
    return isinstance(exc, NotSent | OrderRejected) or (
        isinstance(exc, GATEWAY_REFUSALS) and bool(exc.msg_cd)
    )


@counts_order_outcomes
def place_order(
    *,
    account: BrokerAccount,
    stock_code: str,
    side: Side,
    qty: int,
    price: int | None,
    broker: Broker | None = None,
) -> OrderResult:
    """Send one validated cash order (market when `price` is None), recorded as an `Order` first.

    Never raises for what the broker does: every refusal and failure is an OrderResult. Raises
    DatabaseError when the order cannot be recorded, and then sends nothing."""
    context = f"account={account.id} stock={stock_code} side={side} qty={qty} price={price}"
    if broker is None:
        from .brokers import broker_for  # resolved per call: tests put their broker in its place

        broker = broker_for(account)
    # Written before the request leaves: a crash while it is out leaves a trace of an order that may exist.
    order = Order.objects.create(
        account=account, side=side, stock_code=stock_code, qty=qty, price=price, status=Order.Status.SENDING
    )
    try:
        order.order_no = broker.place_order(stock_code, side, qty, price)
    except OrderRejected as exc:
        logger.info("order rejected %s msg_cd=%s message=%s", context, exc.msg_cd, exc.message)
        _record(order, Order.Status.REJECTED, exc)
        outcome = TradeOutcome.EXCEEDS_HOLDINGS if _exceeds_orderable(exc) else TradeOutcome.REJECTED
        return OrderResult(
            outcome,
            _("The broker rejected the order: %(reason)s") % {"reason": exc.message},
            broker_code=exc.msg_cd or None,
        )
    except BrokerError as exc:
        if certainly_not_placed(exc):
            logger.warning("order not placed (%s) %s msg_cd=%s", exc.reason, context, exc.msg_cd)
            _record(order, Order.Status.FAILED, exc)
            return OrderResult(
                TradeOutcome.UNREACHABLE,
                _("The order was not placed: %(reason)s") % {"reason": exc.message},
                broker_code=exc.msg_cd or None,
            )
        logger.warning("order state unknown (%s) %s msg_cd=%s", exc.reason, context, exc.msg_cd)
        _record(order, Order.Status.UNKNOWN, exc)
        return OrderResult(
            TradeOutcome.STATE_UNKNOWN,
            _(
                "The broker did not confirm the order: its state is unknown and is being checked with the "
                "account. It was not retried; the watchlist will follow the account at the next sync."
            ),
            broker_code=exc.msg_cd or None,
            needs_reconcile=True,
        )
    except Exception as exc:
        # An adapter bug after the request left: the order may exist, so never answer as if it did not.
        logger.exception("order state unknown (unexpected error) %s", context)
        _record(order, Order.Status.UNKNOWN, BrokerError(f"unexpected {type(exc).__name__} in the adapter"))
        return OrderResult(
            TradeOutcome.STATE_UNKNOWN,
            _(
                "The order's state is unknown after an internal error and is being checked with "
                "the account. It was not retried; the watchlist will follow the account at the "
                "next sync."
            ),
            needs_reconcile=True,
        )

    logger.info("order accepted %s order_no=%s", context, order.order_no)
    accepted = OrderResult(
        TradeOutcome.ACCEPTED,
        _accepted_message(side, stock_code, qty, price, order.order_no),
        order_no=order.order_no,
    )
    if not _record(order, Order.Status.ACCEPTED):
        return replace(accepted, needs_reconcile=True)
    return accepted


def _accepted_message(side: Side, stock_code: str, qty: int, price: int | None, order_no: str) -> str:
    values = {"qty": f"{qty:,}", "stock_code": stock_code, "order_no": order_no}
    # One sentence per side and kind of price: a translation words each as a whole.
    if price is None:
        if side == "buy":
            return (
                _("The buy order for %(qty)s of %(stock_code)s at market was accepted (order %(order_no)s).")
                % values
            )
        return (
            _("The sell order for %(qty)s of %(stock_code)s at market was accepted (order %(order_no)s).")
            % values
        )
    values["price"] = f"{price:,}"
    if side == "buy":
        return (
            _(
                "The buy order for %(qty)s of %(stock_code)s at %(price)s KRW was accepted "
                "(order %(order_no)s)."
            )
            % values
        )
    return (
        _("The sell order for %(qty)s of %(stock_code)s at %(price)s KRW was accepted (order %(order_no)s).")
        % values
    )


def _record(order: Order, status: Order.Status, error: BrokerError | None = None) -> bool:
    """Store what became of the order; False when the database failed (the row keeps saying `sending`,
    which is true as far as it knows, and the answer matters more than its copy)."""
    order.status = status
    if error is not None:
        order.broker_code, order.message = error.msg_cd[:16], error.message
    try:
        order.save(update_fields=["status", "order_no", "broker_code", "message"])
    except DatabaseError:
        logger.exception(
            "order_id=%s not recorded as %s (order_no=%s)", order.id, status, order.order_no or "-"
        )
        return False
    return True
