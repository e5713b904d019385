"""A trade asked for by the trader: the order registered, placed once (trading.services), then its
effect on the watchlist at once, pending, and a read queued to reconcile with the account; and the
fill notices that confirm such a change without a read.

No lock is held while the order is with the broker, so a trade never waits for a sync's read: the
registration (`WatchlistService.register_order`) keeps any read that overlaps the order from settling
its code (docs/ARCHITECTURE.md, "Consistency").
"""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from dataclasses import asdict, dataclass

from django.db import DatabaseError
from django.utils.translation import gettext as _

from trading.brokers.base import Broker, InvalidOrder, Side, validate_order
from trading.models import BrokerAccount
from trading.redis import redis_client
from trading.services import (
    OrderResult,
    TradeOutcome,
    idempotency_key_error,
    place_order,
    run_once,
    user_account,
)

from . import jobs
from .models import PendingTrade, SyncState, WatchlistItem
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

    Raises InvalidOrder (bad input, nothing sent), AccountNotFound, and DatabaseError when the order
    could not be recorded before leaving (nothing sent); every other outcome, including the broker's
    refusals and failures, is a TradeResult. With an `idempotency_key`, the first valid request with that key
    is the only one that can send an order; later ones (concurrent ones wait for it) get its
    result. Must not run inside a transaction (see trading.services.run_once).
    """
    validate_order(stock_code, side, qty, price)
    if idempotency_key is not None and (key_error := idempotency_key_error(idempotency_key)):
        raise InvalidOrder({"idempotency_key": key_error})
    account = user_account(user=user, account_id=account_id)
    if idempotency_key is None:
        return _trade(account, stock_code, side, qty, price, broker)
    answer = run_once(
        user=user,
        key=idempotency_key,
        action=lambda: _trade(account, stock_code, side, qty, price, broker).to_json(),
    )
    if answer is None:
        return TradeResult(
            TradeOutcome.KEY_IN_FLIGHT,
            _(
                "A request with this Idempotency-Key is still in progress or ended without an answer; "
                "its order state is unknown. Check the watchlist before trading again."
            ),
            stock_code,
            qty,
        )
    return TradeResult.from_json(answer)


def _held_quantity(account: BrokerAccount, stock_code: str) -> int | None:
    """What the watchlist holds of `stock_code`, or None when it never synced (nothing to go by)."""
    if not SyncState.objects.filter(account=account, last_success_at__isnull=False).exists():
        return None
    item = (
        WatchlistItem.objects.filter(watchlist__account=account, stock_code=stock_code)
        .only("quantity")
        .first()
    )
    return item.quantity if item else 0


def _trade(
    account: BrokerAccount, stock_code: str, side: Side, qty: int, price: int | None, broker: Broker | None
) -> TradeResult:
    if side == "sell":
        held = _held_quantity(account, stock_code)
        if held is not None and qty > held:
            logger.info(
                "sell refused, exceeds holdings account=%s stock=%s qty=%s held=%s",
                account.id,
                stock_code,
                qty,
                held,
            )
            return TradeResult(
                TradeOutcome.EXCEEDS_HOLDINGS,
                _("Cannot sell %(qty)s of %(stock_code)s: the account holds %(held)s.")
                % {"qty": f"{qty:,}", "stock_code": stock_code, "held": f"{held:,}"},
                stock_code,
                qty,
            )

    service = WatchlistService(account, broker=broker)
    intent = service.register_order(stock_code, side, qty)
    try:
        order = place_order(
            account=account, stock_code=stock_code, side=side, qty=qty, price=price, broker=broker
        )
    except DatabaseError:
        # The order's own row could not be written, so it was not sent: nothing for a read to wait for.
        with suppress(DatabaseError):
            service.order_not_placed(intent)
        raise
    version = None
    if order.outcome is TradeOutcome.ACCEPTED and not order.needs_reconcile:
        version = _apply_accepted_order(service, order, stock_code, side, qty, price, intent)
    elif order.needs_reconcile:
        service.order_outcome_unknown(intent)
    else:
        service.order_not_placed(intent)
    return _trade_result(order, stock_code, qty, version)


def _trade_result(order: OrderResult, stock_code: str, qty: int, version: int | None) -> TradeResult:
    return TradeResult(
        order.outcome,
        order.message,
        stock_code,
        qty,
        order_id=order.order_no,
        watchlist_version=version,
        broker_code=order.broker_code,
    )


def _apply_accepted_order(
    service: WatchlistService,
    order: OrderResult,
    stock_code: str,
    side: Side,
    qty: int,
    price: int | None,
    intent: PendingTrade,
) -> int | None:
    """Update the watchlist for an accepted order, and with a fill notice that came first; the order
    stands whatever fails here."""
    account = service.account
    try:
        version = service.handle_trade_event(
            stock_code, side, qty, order_id=order.order_no, price=price, intent=intent
        )
        if version is not None and (
            early := redis_client().getdel(_early_fill_key(account.id, order.order_no))
        ):
            fill_qty, fill_price, name = json.loads(early)
            version = (
                service.confirm_fill(order.order_no, stock_code, side, fill_qty, fill_price, name) or version
            )
    except Exception:
        logger.exception(
            "accepted order_no=%s account=%s stock=%s not applied to the watchlist",
            order.order_no,
            account.id,
            stock_code,
        )
        jobs.request_sync(account.id)
        return None
    logger.info(
        "watchlist updated account=%s stock=%s order_no=%s version=%s",
        account.id,
        stock_code,
        order.order_no,
        version,
    )
    return version


# --- fill notices ---------------------------------------------------------------------------------

EARLY_FILL_TTL = 60  # seconds: longer than any order takes to be applied after its answer


def _early_fill_key(account_id: int, order_no: str) -> str:
    return f"watchlist:account:{account_id}:early-fill:{order_no}"


def apply_fill_notice(
    account_id: int, *, order_no: str, side: Side, stock_code: str, qty: int, price: int, name: str = ""
) -> None:
    """A fill notice from the real-time feed confirms its order's change by itself (and names the stock
    of a new buy's row). One that arrives before its trade applied the change waits for it; one of an
    order this app did not place (an HTS order) asks for a read."""
    account = BrokerAccount.objects.filter(pk=account_id).first()
    if account is None:
        return
    service = WatchlistService(account)
    if service.confirm_fill(order_no, stock_code, side, qty, price, name) is not None:
        return
    in_flight = PendingTrade.objects.filter(
        watchlist__account=account,
        stock_code=stock_code,
        side=side,
        status=PendingTrade.Status.SENDING,
        resolved_at__isnull=True,
    )
    if in_flight.exists():
        key = _early_fill_key(account.id, order_no)
        # The trade picks it up once applied.
        redis_client().set(key, json.dumps([qty, price, name]), ex=EARLY_FILL_TTL)
        applied = PendingTrade.objects.filter(watchlist__account=account, order_id=order_no).exists()
        # Applied and looked before the notice was left: confirm here (getdel: only one of the two does).
        if applied and redis_client().getdel(key):
            service.confirm_fill(order_no, stock_code, side, qty, price, name)
        return
    logger.info(
        "fill notice account=%s order=%s of no order of this app: reading the account", account.id, order_no
    )
    jobs.request_waited_sync(account.id)
