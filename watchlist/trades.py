"""A trade asked for by the trader: the order placed once (trading.services), then its effect on the
watchlist at once, pending, and a sync queued to reconcile with the account.

Trades of one account take turns, and no sync of it runs meanwhile (`locks.trade_in_flight`), from
before the order leaves until the watchlist holds its optimistic change: a balance read in between
could see the fill before the optimistic change exists and count it twice.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from django.utils.translation import gettext as _

from trading.brokers.base import Broker, InvalidOrder, Side, validate_order
from trading.models import BrokerAccount
from trading.services import (
    OrderResult,
    TradeOutcome,
    idempotency_key_error,
    place_order,
    run_once,
    user_account,
)

from . import jobs
from .locks import trade_in_flight
from .models import SyncState, WatchlistItem
from .services import WatchlistService

logger = logging.getLogger(__name__)


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
    result. Must not run inside a transaction (see trading.services.run_once).
    """
    validate_order(stock_code, side, qty, price)
    if idempotency_key is not None and (key_error := idempotency_key_error(idempotency_key)):
        raise InvalidOrder({"idempotency_key": key_error})
    account = user_account(user=user, account_id=account_id)
    with trade_in_flight(account.id, on_sync_wanted=jobs.request_sync):
        if idempotency_key is None:
            return _trade(account, stock_code, side, qty, price, broker)
        answer = run_once(user=user, key=idempotency_key,
                          action=lambda: _trade(account, stock_code, side, qty, price, broker).to_json())
    if answer is None:
        return TradeResult(
            TradeOutcome.KEY_IN_FLIGHT,
            _("A request with this Idempotency-Key is still in progress or ended without an answer; "
              "its order state is unknown. Check the watchlist before trading again."),
            stock_code,
            qty,
        )
    return TradeResult.from_json(answer)


def _held_quantity(account: BrokerAccount, stock_code: str) -> int | None:
    """What the watchlist holds of `stock_code`, or None when it never synced (nothing to go by)."""
    if not SyncState.objects.filter(account=account, last_success_at__isnull=False).exists():
        return None
    item = WatchlistItem.objects.filter(watchlist__account=account, stock_code=stock_code).only("quantity").first()
    return item.quantity if item else 0


def _trade(
    account: BrokerAccount, stock_code: str, side: Side, qty: int, price: int | None, broker: Broker | None
) -> TradeResult:
    if side == "sell":
        held = _held_quantity(account, stock_code)
        if held is not None and qty > held:
            logger.info("sell refused, exceeds holdings account=%s stock=%s qty=%s held=%s",
                        account.id, stock_code, qty, held)
            return TradeResult(
                TradeOutcome.EXCEEDS_HOLDINGS,
                _("Cannot sell %(qty)s of %(stock_code)s: the account holds %(held)s.")
                % {"qty": f"{qty:,}", "stock_code": stock_code, "held": f"{held:,}"},
                stock_code,
                qty,
            )

    order = place_order(account=account, stock_code=stock_code, side=side, qty=qty, price=price, broker=broker)
    version = None
    if order.outcome is TradeOutcome.ACCEPTED and not order.needs_reconcile:
        version = _apply_accepted_order(account, order, stock_code, side, qty, price, broker)
    elif order.needs_reconcile:
        jobs.request_sync(account.id)
    return _trade_result(order, stock_code, qty, version)


def _trade_result(order: OrderResult, stock_code: str, qty: int, version: int | None) -> TradeResult:
    return TradeResult(order.outcome, order.message, stock_code, qty, order_id=order.order_no,
                       watchlist_version=version, broker_code=order.broker_code)


def _apply_accepted_order(account: BrokerAccount, order: OrderResult, stock_code: str, side: Side, qty: int,
                          price: int | None, broker: Broker | None) -> int | None:
    """Update the watchlist for an accepted order; the order stands whatever fails here."""
    try:
        version = WatchlistService(account, broker=broker).handle_trade_event(
            stock_code, side, qty, order_id=order.order_no, price=price
        )
    except Exception:
        logger.exception("accepted order_no=%s account=%s stock=%s not applied to the watchlist",
                         order.order_no, account.id, stock_code)
        jobs.request_sync(account.id)
        return None
    logger.info("watchlist updated account=%s stock=%s order_no=%s version=%s",
                account.id, stock_code, order.order_no, version)
    return version
