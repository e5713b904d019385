"""What the outside world (a brokerage) offers the application: the interface, its types, its errors.

Every adapter (the real KIS one, the in-memory fake) implements `Broker`. Callers catch the
`BrokerError` tree, never a transport exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

import pandas as pd
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

Side = Literal["buy", "sell"]

KST = ZoneInfo("Asia/Seoul")  # KRX trading hours and every KIS timestamp are Korean time

STOCK_CODE_PATTERN = "[0-9A-Z]{6}"  # KRX short code: 005930, 0000J0 (the OpenAPI schema states it too)
STOCK_CODE_RE = re.compile(rf"^{STOCK_CODE_PATTERN}\Z")  # \Z: "$" would let a trailing newline through
MAX_STOCK_NAME_LENGTH = 100  # the watchlist item's name column
MAX_ORDER_QTY = 1_000_000
MAX_ORDER_PRICE = 100_000_000  # KRW: far above any KRX share price; keeps typos and overflows out


@dataclass(frozen=True, slots=True)
class Holding:
    """One position of the account: the fields of a holding, declared here once. The watchlist's item
    (watchlist.diff.ItemState, the WatchlistItem model, the API and the socket) is a holding plus
    whether it is pending."""

    stock_code: str
    name: str
    quantity: int
    avg_price: float
    current_price: int
    eval_amount: int
    pnl: int
    pnl_rate: float


HOLDING_FIELDS = tuple(field.name for field in fields(Holding))
_DTYPES = {"str": "string", "int": "int64", "float": "float64"}
# A balance DataFrame: one row per position, a holding's fields plus what may be sold of it now.
BALANCE_COLUMNS: dict[str, str] = {
    **{field.name: _DTYPES[field.type] for field in fields(Holding)},
    "orderable_quantity": "int64",
}


def balance_frame(rows: list[dict]) -> pd.DataFrame:
    """Build a typed balance DataFrame from dicts holding (at least) BALANCE_COLUMNS keys."""
    # Column by column, each typed as it is built: every sync builds one, and this is the cheapest
    # way measured (docs/PERFORMANCE.md, "Sync throughput").
    return pd.DataFrame(
        {name: pd.array([row[name] for row in rows], dtype=dtype) for name, dtype in BALANCE_COLUMNS.items()}
    )


@dataclass(frozen=True)
class Quote:
    stock_code: str
    price: int
    change: int
    change_rate: float
    volume: int


# --- Errors -------------------------------------------------------------------------------


class BrokerError(Exception):
    """Base of every broker failure. `retryable` says whether a read may be tried again."""

    retryable = False
    reason = "broker_error"

    def __init__(self, message: str = "", *, msg_cd: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.reason)
        self.message = message or (self.__class__.__doc__ or self.reason).strip()
        self.msg_cd = msg_cd


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or answered with a server error."""

    retryable = True
    reason = "unreachable"


class NotSent(BrokerError):
    """Nothing of the request left the process: the broker cannot have acted on it.

    Raised (as this class or one that also derives from it) for a connection never made and for a
    call refused on this side (the client-side rate limit, an access token that cannot be had); an
    order failing so was certainly not placed."""

    reason = "not_sent"


class BrokerUnreachable(NotSent, BrokerUnavailable):
    """The broker could not be reached (connection refused, name not resolved, no connection free)."""

    reason = "unreachable"


class SentButUnconfirmed(BrokerUnavailable):
    """The request may have reached the broker, but the connection failed before its answer came back:
    an order's state is unknown."""

    reason = "no_answer"


class BrokerTimeout(SentButUnconfirmed):
    """The broker did not answer in time."""

    reason = "timeout"


class RateLimited(BrokerError):
    """The broker refused the call: too many calls per second (EGW00201)."""

    retryable = True
    reason = "rate_limited"


class ClientRateLimited(NotSent, RateLimited):
    """This side's rate limit for the app key refused the call before it left (too many already queued)."""


class TokenExpired(BrokerError):
    """The access token expired or is invalid (EGW00123 / EGW00121)."""

    reason = "token_expired"


class TokenIssueLimited(BrokerError):
    """A new token was asked for too soon after the last one (EGW00133)."""

    retryable = True
    reason = "token_issue_limited"


class BalanceChangedWhileRead(BrokerError):
    """The balance kept changing while it was read page by page (SYDB0050)."""

    retryable = True
    reason = "data_changed"


class RequestRefused(BrokerError):
    """KIS refused a field of the request (OPSQ2001 / OPSQ2002): the adapter must change, not wait."""

    reason = "request_refused"


class UnknownStock(BrokerError):
    """The broker knows no stock by that code."""

    reason = "unknown_stock"


class AuthenticationFailed(BrokerError):
    """The broker refused the app key or secret."""

    reason = "auth_failed"


class UnsendableCredentials(NotSent, AuthenticationFailed):
    """The app key or secret holds characters that cannot go in a header: nothing was sent."""


class OrderRejected(BrokerError):
    """The broker refused the order; `msg_cd` and `message` carry its reason."""

    reason = "rejected"


class BadBrokerResponse(BrokerError):
    """The broker's answer did not have the expected shape or types."""

    reason = "bad_response"


# --- Input validation (before any call leaves the process) --------------------------------


class InvalidOrder(ValueError):
    """Bad order input; `errors` maps each bad field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in errors.items()))
        self.errors = errors


def stock_code_error(code: object) -> str | None:
    if not isinstance(code, str) or not STOCK_CODE_RE.match(code):
        return _("A stock code is exactly 6 characters, digits or upper-case letters (e.g. 005930).")
    return None


def qty_error(qty: object) -> str | None:
    if isinstance(qty, bool) or not isinstance(qty, int):
        return _("Quantity must be a whole number.")
    if not 1 <= qty <= MAX_ORDER_QTY:
        return format_lazy(_("Quantity must be between 1 and {max_qty}."), max_qty=f"{MAX_ORDER_QTY:,}")
    return None


def price_error(price: object) -> str | None:
    if price is None:
        return None
    if isinstance(price, bool) or not isinstance(price, int):
        return _("Price must be a whole number of KRW.")
    if price <= 0:
        return _("Price must be greater than 0 KRW.")
    if price > MAX_ORDER_PRICE:
        return format_lazy(_("Price must be at most {max_price} KRW."), max_price=f"{MAX_ORDER_PRICE:,}")
    return None


def validate_order(stock_code: object, side: object, qty: object, price: object = None) -> None:
    errors = {
        field: message
        for field, message in (
            ("stock_code", stock_code_error(stock_code)),
            ("side", None if side in ("buy", "sell") else _("Side is 'buy' or 'sell'.")),
            ("qty", qty_error(qty)),
            ("price", price_error(price)),
        )
        if message
    }
    if errors:
        raise InvalidOrder(errors)


# --- The interface --------------------------------------------------------------------------


class Broker(Protocol):
    def get_acct_balance(self) -> pd.DataFrame:
        """Every position of the account (all pages), typed as BALANCE_COLUMNS."""

    def place_order(self, stock_code: str, side: Side, qty: int, price: int | None = None) -> str:
        """Place a cash order (market when price is None) and return the broker's order number.

        Implementations validate with `validate_order` first and never retry an order."""

    def get_price(self, stock_code: str) -> Quote:
        """The current price of one stock."""

    def read_turn(self, priority: Callable[[], int]) -> AbstractContextManager[None]:
        """Wait for the turn of a balance read's first call in the broker's call budget (`priority`, a
        call_budget.Priority, asked again while waiting); the read made inside the block spends it."""
