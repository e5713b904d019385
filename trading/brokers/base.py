"""What the outside world (a brokerage) offers the application: the interface, its types, its errors.

Every adapter (the real KIS one, the in-memory fake) implements `Broker`. Callers catch the
`BrokerError` tree, never a transport exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

import pandas as pd

Side = Literal["buy", "sell"]

KST = ZoneInfo("Asia/Seoul")  # KRX trading hours and every KIS timestamp are Korean time

STOCK_CODE_RE = re.compile(r"^[0-9A-Z]{6}\Z")  # \Z: "$" would let a trailing newline through
MAX_ORDER_QTY = 1_000_000
MAX_ORDER_PRICE = 100_000_000  # KRW: far above any KRX share price; keeps typos and overflows out

# One row per position; numbers are numbers. Order matters for display and tests.
BALANCE_COLUMNS: dict[str, str] = {
    "stock_code": "string",
    "name": "string",
    "quantity": "int64",
    "orderable_quantity": "int64",
    "avg_price": "float64",
    "current_price": "int64",
    "eval_amount": "int64",
    "pnl": "int64",
    "pnl_rate": "float64",
}


def balance_frame(rows: list[dict]) -> pd.DataFrame:
    """Build a typed balance DataFrame from dicts holding (at least) BALANCE_COLUMNS keys."""
    # Column by column, each typed as it is built: a third of the CPU of DataFrame(rows).astype(...),
    # and every sync builds one (bench/sync_throughput.py).
    return pd.DataFrame({name: pd.array([row[name] for row in rows], dtype=dtype)
                         for name, dtype in BALANCE_COLUMNS.items()})


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


class BrokerTimeout(BrokerUnavailable):
    """The broker did not answer in time."""

    reason = "timeout"


class RateLimited(BrokerError):
    """The broker refused the call: too many calls per second (EGW00201)."""

    retryable = True
    reason = "rate_limited"


class TokenExpired(BrokerError):
    """The access token expired or is invalid (EGW00123 / EGW00121)."""

    reason = "token_expired"


class TokenIssueLimited(BrokerError):
    """A new token was asked for too soon after the last one (EGW00133)."""

    retryable = True
    reason = "token_issue_limited"


class AuthenticationFailed(BrokerError):
    """The broker refused the app key or secret."""

    reason = "auth_failed"


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
        return "A stock code is exactly 6 characters, digits or upper-case letters (e.g. 005930)."
    return None


def qty_error(qty: object) -> str | None:
    if isinstance(qty, bool) or not isinstance(qty, int):
        return "Quantity must be a whole number."
    if not 1 <= qty <= MAX_ORDER_QTY:
        return f"Quantity must be between 1 and {MAX_ORDER_QTY:,}."
    return None


def price_error(price: object) -> str | None:
    if price is None:
        return None
    if isinstance(price, bool) or not isinstance(price, int):
        return "Price must be a whole number of KRW."
    if price <= 0:
        return "Price must be greater than 0 KRW."
    if price > MAX_ORDER_PRICE:
        return f"Price must be at most {MAX_ORDER_PRICE:,} KRW."
    return None


def validate_order(stock_code: object, side: object, qty: object, price: object = None) -> None:
    errors = {
        field: message
        for field, message in (
            ("stock_code", stock_code_error(stock_code)),
            ("side", None if side in ("buy", "sell") else "Side is 'buy' or 'sell'."),
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
