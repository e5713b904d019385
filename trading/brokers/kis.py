"""KoreaInvestService: the real KIS Open API adapter (REST), as ../shared/docs/kis-api.md describes it.

Shared by every process through Redis:
- the access token of a (base URL, app key): cached, issued under a lock so that concurrent processes
  never both ask, renewed an hour before it expires and once when KIS refuses it, and never asked for
  sooner than settings.KIS_TOKEN_MIN_INTERVAL after the last one (KIS answers EGW00133 and notifies
  the user's phone on every issue);
- the rate limit of the app key (settings.KIS_RATE_LIMIT_REAL / _PAPER calls per second): every call
  waits for its turn in the app key's call budget (call_budget.py), orders first.
Reads are tried up to READ_ATTEMPTS times on rate limits and outages. An order is sent once, and its
failures say whether it may have reached KIS: NotSent (no connection, no token, no turn in the call
budget) or else possibly sent (BrokerTimeout, SentButUnconfirmed, a server error), its outcome unknown.
Logs name the account (masked) and the
tr_id, never a key, secret or token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pandas as pd
from django.conf import settings
from django.core.cache import cache

from ..redis import redis_client
from . import call_budget
from .base import (
    KST,
    MAX_STOCK_NAME_LENGTH,
    STOCK_CODE_RE,
    AuthenticationFailed,
    BadBrokerResponse,
    BalanceChangedWhileRead,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    BrokerUnreachable,
    InvalidOrder,
    NotSent,
    OrderRejected,
    Quote,
    RateLimited,
    RequestRefused,
    SentButUnconfirmed,
    Side,
    TokenExpired,
    TokenIssueLimited,
    UnknownStock,
    UnsendableCredentials,
    balance_frame,
    stock_code_error,
    validate_order,
)
from .metrics import RATE_LIMIT_WAIT, counts_broker_calls

if TYPE_CHECKING:
    from trading.models import BrokerAccount

logger = logging.getLogger(__name__)

KIS_BASE_URLS = {
    "real": "https://openapi.koreainvestment.com:9443",
    "paper": "https://openapivts.koreainvestment.com:29443",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

TOKEN_PATH = "/oauth2/tokenP"
BALANCE_PATH = "/uapi/domestic-stock/v1/trading/inquire-balance"
ORDER_PATH = "/uapi/domestic-stock/v1/trading/order-cash"
PRICE_PATH = "/uapi/domestic-stock/v1/quotations/inquire-price"

TR_IDS = {
    "balance": {"real": "TTTC8434R", "paper": "VTTC8434R"},
    "buy": {"real": "TTTC0012U", "paper": "VTTC0012U"},
    "sell": {"real": "TTTC0011U", "paper": "VTTC0011U"},
    "price": {"real": "FHKST01010100", "paper": "FHKST01010100"},
}
ERRORS_BY_MSG_CD: dict[str, type[BrokerError]] = {
    "EGW00201": RateLimited,
    "EGW00123": TokenExpired,
    "EGW00121": TokenExpired,
    "EGW00133": TokenIssueLimited,
    "EGW00103": AuthenticationFailed,
    "EGW00105": AuthenticationFailed,
}
# A read KIS refuses with these codes is wrong in itself: asking again cannot help.
READ_REFUSALS_BY_MSG_CD: dict[str, type[BrokerError]] = {
    "OPSQ2001": RequestRefused,
    "OPSQ2002": RequestRefused,
}
DATA_CHANGED = "SYDB0050"  # a continuation page of a balance that changed since the first page
# Balance output2 (the account summary) -> the totals the page shows (contract "totals").
TOTALS_FIELDS = {
    "total_eval": "tot_evlu_amt",  # 총평가금액: deposit plus securities at market
    "purchase": "pchs_amt_smtl_amt",  # 매입금액합계금액
    "eval_amount": "evlu_amt_smtl_amt",  # 평가금액합계금액: the securities at market
    "pnl": "evlu_pfls_smtl_amt",  # 평가손익합계금액
    "deposit": "dnca_tot_amt",  # 예수금총금액
}
MORE_PAGES = ("F", "M")  # the answer's tr_cont while pages follow; D or E on the last

READ_ATTEMPTS = 3
READ_BACKOFF = 0.2  # seconds before the second attempt, doubled before each next one
MAX_BALANCE_PAGES = 200
BALANCE_RESTARTS = 2  # reads from page 1 again after SYDB0050, before giving up until the next sync
TOKEN_RENEW_MARGIN = 3600
TOKEN_LOCK_TIMEOUT = 30
TOKEN_ISSUE_REFUSED_HOLD = 60  # KIS issues one token a minute per app key; after EGW00133, wait that long

_shared_client: tuple[int, httpx.Client] | None = None
_shared_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """The process's pooled client, shared by its threads (a forked worker makes its own).

    Not one per thread: Django runs each sync request under ASGI in a thread of its own, so a
    per-thread client would cost every order a new TLS context and a new connection to KIS
    (docs/PERFORMANCE.md, "Trade to screen")."""
    global _shared_client
    with _shared_client_lock:
        if _shared_client is None or _shared_client[0] != os.getpid():
            client = httpx.Client(limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))
            _shared_client = (os.getpid(), client)
        return _shared_client[1]


# --- where an account may point ---------------------------------------------------------------


def base_url_error(url: str, *, allow_loopback: bool) -> str | None:
    """Why `url` may not be an account's base URL, or None. The adapter sends the app key and secret
    there, so only KIS's own two hosts (over HTTPS), and a loopback address (the simulator) when
    allowed, qualify."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Not a URL."
    origin = f"{parts.scheme}://{parts.hostname}:{port}" if port else ""
    if origin in KIS_BASE_URLS.values() and parts.path in ("", "/") and not parts.query:
        return None
    if allow_loopback and parts.scheme == "http" and parts.hostname in LOOPBACK_NAMES:
        return None
    hosts = " or ".join(KIS_BASE_URLS.values())
    if allow_loopback:
        return f"The base URL is {hosts}, or an http:// loopback address (the simulator)."
    return f"The base URL is {hosts}."


# --- reading KIS answers ------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_NUMBER_TEXT = 40  # characters: far beyond any amount KIS sends, short of a pathological one


def text_field(record: dict, name: str, *, max_length: int = MAX_STOCK_NAME_LENGTH) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadBrokerResponse(f"KIS answer without {name}")
    value = value.strip()
    if len(value) > max_length:
        raise BadBrokerResponse(f"{name} is longer than {max_length} characters: {value[:20]!r}...")
    return value


def decimal_field(record: dict, name: str) -> Decimal:
    value = record.get(name)
    try:
        number = Decimal(value.strip().replace(",", "")) if len(value) <= MAX_NUMBER_TEXT else None
    except (AttributeError, TypeError, InvalidOperation):
        number = None
    if number is None or not number.is_finite():
        raise BadBrokerResponse(f"{name} is not a number: {str(value)[:MAX_NUMBER_TEXT]!r}")
    return number


def int_field(record: dict, name: str, *, minimum: int = INT64_MIN) -> int:
    """A whole number within 64 bits (the database's and the DataFrame's integers), at least `minimum`."""
    value = record.get(name)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_NUMBER_TEXT:
        # Most KIS numbers are plain digits: int() is several times cheaper than Decimal on the sync path.
        number = int(value)
        if not minimum <= number <= INT64_MAX:
            raise BadBrokerResponse(f"{name} is out of range: {number}")
        return number
    number = decimal_field(record, name)
    if not minimum <= number <= INT64_MAX:
        raise BadBrokerResponse(f"{name} is out of range: {number}")
    if number != number.to_integral_value():
        raise BadBrokerResponse(f"{name} is not a whole number: {number}")
    return int(number)


def float_field(record: dict, name: str, *, minimum: float = -math.inf) -> float:
    """A finite float (a "1e400" would become inf), at least `minimum`."""
    number = float(decimal_field(record, name))
    if not math.isfinite(number) or number < minimum:
        raise BadBrokerResponse(f"{name} is out of range: {number}")
    return number


def position_of(row: object) -> dict | None:
    """A balance row (output1) as BALANCE_COLUMNS; None for a position sold out today (quantity 0)."""
    if not isinstance(row, dict):
        raise BadBrokerResponse(f"a balance row is not an object: {str(row)[:60]!r}")
    quantity = int_field(row, "hldg_qty", minimum=0)
    if quantity == 0:
        return None
    code = text_field(row, "pdno")
    if not STOCK_CODE_RE.match(code):
        raise BadBrokerResponse(f"pdno is not a stock code: {code[:20]!r}")
    return {
        "stock_code": code,
        "name": text_field(row, "prdt_name"),
        "quantity": quantity,
        "orderable_quantity": int_field(row, "ord_psbl_qty", minimum=0),
        "avg_price": float_field(row, "pchs_avg_pric", minimum=0),
        "current_price": int_field(row, "prpr", minimum=0),
        "eval_amount": int_field(row, "evlu_amt", minimum=0),
        "pnl": int_field(row, "evlu_pfls_amt"),
        "pnl_rate": float_field(row, "evlu_pfls_rt"),
    }


def combined(held: dict, row: dict) -> dict:
    """Two rows of one stock (KIS lists a stock once per loan date) as one position: quantities and
    amounts added, the average price weighted by quantity, the rate recomputed from the sums."""
    quantity = held["quantity"] + row["quantity"]
    cost = held["avg_price"] * held["quantity"] + row["avg_price"] * row["quantity"]
    pnl = held["pnl"] + row["pnl"]
    return held | {
        "quantity": quantity,
        "orderable_quantity": held["orderable_quantity"] + row["orderable_quantity"],
        "avg_price": cost / quantity,
        "current_price": row["current_price"],
        "eval_amount": held["eval_amount"] + row["eval_amount"],
        "pnl": pnl,
        "pnl_rate": round(pnl / cost * 100, 2) if cost else 0.0,
    }


def one_row_per_stock(positions: list[dict]) -> list[dict]:
    by_code: dict[str, dict] = {}
    for position in positions:
        code = position["stock_code"]
        held = by_code.get(code)
        by_code[code] = position if held is None else combined(held, position)
    return positions if len(by_code) == len(positions) else list(by_code.values())


def connection_failure(error: httpx.HTTPError) -> str:
    """Why a connection failed, in the operating system's words ("connection refused")."""
    reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(error)).strip()
    return reason.lower() if reason else type(error).__name__


def totals_of(body: dict) -> dict[str, int] | None:
    """The account's totals from the last balance page's output2 (None when it has none readable):
    they are extra information, so a missing or malformed one never fails a sync."""
    summary = body.get("output2")
    summary = summary[0] if isinstance(summary, list) and summary else summary
    if not isinstance(summary, dict):
        return None
    try:
        return {name: int_field(summary, field) for name, field in TOTALS_FIELDS.items()}
    except BadBrokerResponse:
        return None


def error_for(msg_cd: str, message: str) -> BrokerError | None:
    error_class = ERRORS_BY_MSG_CD.get(msg_cd)
    return error_class(message, msg_cd=msg_cd) if error_class else None


def json_object(response: httpx.Response, what: str) -> dict:
    """The answer's JSON object; a server error without one means KIS is unavailable."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    if response.status_code >= 500:
        raise BrokerUnavailable(f"KIS answered HTTP {response.status_code} to {what}")
    raise BadBrokerResponse(f"KIS answered HTTP {response.status_code} to {what} without a JSON object")


def token_expiry(body: dict) -> float:
    """When the issued token expires (Unix time): access_token_token_expired (KST), else expires_in.

    The timestamp first, as KIS's own client (kis_auth.py) reads it: it names the moment itself, while
    expires_in only counts from whenever the answer was read."""
    try:
        expires = datetime.strptime(body["access_token_token_expired"], "%Y-%m-%d %H:%M:%S")
        return expires.replace(tzinfo=KST).timestamp()
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return time.time() + int(body["expires_in"])
    except (KeyError, TypeError, ValueError):
        raise BadBrokerResponse("token answer without access_token_token_expired or expires_in") from None


# Every token this process has used, by app key: a Redis restarted without persistence loses the
# shared copy, and KIS refuses a new token within a minute of the last one (EGW00133), so a process
# puts its own copy back instead of asking KIS again.
_process_tokens: dict[str, dict] = {}


def forget_process_tokens() -> None:
    """Start as a new process would (tests that begin from an empty Redis)."""
    _process_tokens.clear()


class SharedToken:
    """The one access token of a (base URL, app key), kept in the Django cache (Redis) and, in case
    Redis loses it, in the process."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.cache_key = f"kis:token:{key_id}"
        self.issued_key = f"kis:token-issued:{key_id}"
        self.lock_name = f"kis:token-lock:{key_id}"

    def cached(self) -> str | None:
        """The cached token, while it is not yet due for renewal."""
        record = self._record()
        if record and record["expires_at"] - TOKEN_RENEW_MARGIN > time.time():
            return record["access_token"]
        return None

    def _record(self) -> dict | None:
        """The shared record, or this process's copy put back when Redis has lost it."""
        record = cache.get(self.cache_key)
        if record is None and (record := _process_tokens.get(self.key_id)) is not None:
            if record["expires_at"] <= time.time():
                return None
            logger.info(
                "the shared KIS token of app key %s was gone from Redis: put back from the process",
                self.key_id,
            )
            self._store(record)
        return record

    def _store(self, record: dict) -> None:
        _process_tokens[self.key_id] = record
        cache.set(self.cache_key, record, timeout=max(1, int(record["expires_at"] - time.time())))

    def get(self, issue: Callable[[], dict]) -> str:
        return self.cached() or self.refresh(issue, stale=None)

    def refresh(self, issue: Callable[[], dict], *, stale: str | None) -> str:
        """A fresh token: the one another process just cached, or a new one from `issue`.

        `stale` is a token KIS refused: it is dropped for every process. A token merely due for
        renewal stays in use until it expires if a new one cannot be had yet."""
        lock = redis_client().lock(
            self.lock_name, timeout=TOKEN_LOCK_TIMEOUT, blocking_timeout=TOKEN_LOCK_TIMEOUT
        )
        if not lock.acquire():
            raise BrokerUnavailable("timed out waiting for another process to issue the KIS token")
        try:
            record = self._record()
            if record and record["access_token"] == stale:
                cache.delete(self.cache_key)
                _process_tokens.pop(self.key_id, None)
                record = None
            if record and record["expires_at"] - TOKEN_RENEW_MARGIN > time.time():
                return record["access_token"]
            try:
                return self._issue(issue)
            except BrokerError as error:
                if record and record["expires_at"] > time.time():
                    logger.warning(
                        "could not renew the KIS token of app key %s before it expires (%s); still using it",
                        self.key_id,
                        error.reason,
                    )
                    return record["access_token"]
                raise
        finally:
            lock.release()

    def _issue(self, issue: Callable[[], dict]) -> str:
        if cache.get(self.issued_key):
            raise TokenIssueLimited(
                f"a KIS token was issued less than {settings.KIS_TOKEN_MIN_INTERVAL:.0f}s ago",
                msg_cd="EGW00133",
            )
        try:
            record = issue()
        except TokenIssueLimited:
            # KIS's own rule, whatever our pacing setting says: asking again sooner is refused again.
            cache.set(
                self.issued_key, True, timeout=max(settings.KIS_TOKEN_MIN_INTERVAL, TOKEN_ISSUE_REFUSED_HOLD)
            )
            raise
        cache.set(self.issued_key, True, timeout=settings.KIS_TOKEN_MIN_INTERVAL)
        self._store(record)
        return record["access_token"]


class KoreaInvestService:
    """The Broker of one KIS account (BrokerAccount), over the KIS Open API REST interface."""

    def __init__(self, account: BrokerAccount, *, http: httpx.Client | None = None) -> None:
        self.account = account
        self.base_url = account.base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.environment = "paper" if account.is_paper else "real"
        # Names the app key in Redis keys and logs without revealing it.
        self.key_id = hashlib.sha256(f"{self.base_url}|{account.app_key}".encode()).hexdigest()[:16]
        self.token = SharedToken(self.key_id)
        self._http = http
        self.label = f"account {account.pk} ({account.account_number[:4]}****-{account.product_code})"

    @property
    def rate(self) -> float:
        return settings.KIS_RATE_LIMIT_PAPER if self.environment == "paper" else settings.KIS_RATE_LIMIT_REAL

    def read_turn(self, priority: Callable[[], call_budget.Priority]) -> AbstractContextManager[None]:
        return call_budget.first_call_turn(self.key_id, self.rate, priority)

    @property
    def http(self) -> httpx.Client:
        return self._http or http_client()

    # --- the Broker interface ----------------------------------------------------------------

    def get_acct_balance(self) -> pd.DataFrame:
        for attempt in range(1, BALANCE_RESTARTS + 2):
            try:
                pages = list(self._balance_pages())
                positions = [p for page in pages for p in map(position_of, page["output1"]) if p]
            except BrokerError as error:
                if error.msg_cd != DATA_CHANGED:
                    raise
                # The pages read so far describe another moment than the ones to come: all or nothing.
                logger.warning(
                    "the balance of %s changed while it was read (read %d of %d); reading again",
                    self.label,
                    attempt,
                    BALANCE_RESTARTS + 1,
                )
                continue
            try:
                frame = balance_frame(one_row_per_stock(positions))
            except OverflowError:
                raise BadBrokerResponse(
                    f"the balance of {self.label} adds up beyond 64-bit numbers"
                ) from None
            frame.attrs["totals"] = totals_of(pages[-1])
            return frame
        raise BalanceChangedWhileRead(
            f"the balance of {self.label} changed during each of {BALANCE_RESTARTS + 1} reads",
            msg_cd=DATA_CHANGED,
        )

    def count_first_balance_page(self) -> int:
        """Read the first balance page alone: the rows it holds. For checking an account."""
        return len(next(self._balance_pages())["output1"])

    def _balance_pages(self) -> Iterator[dict]:
        """Each page of one balance read, from the first page on: its rows in output1, the account's
        totals in output2."""
        tr_id = TR_IDS["balance"][self.environment]
        query = {
            "CANO": self.account.account_number,
            "ACNT_PRDT_CD": self.account.product_code,
            "AFHR_FLPR_YN": "N",
            "OFL_YN": "",
            # "01" (by loan date) as the official sample sends it; "02" (by stock) is refused since
            # 2026-02-10 (python-kis #81). One stock can then take several rows: one_row_per_stock.
            "INQR_DVSN": "01",
            "UNPR_DVSN": "01",
            "FUND_STTL_ICLD_YN": "N",
            "FNCG_AMT_AUTO_RDPT_YN": "N",
            "PRCS_DVSN": "00",
            "CTX_AREA_FK100": "",
            "CTX_AREA_NK100": "",
        }
        tr_cont = ""
        for page in range(1, MAX_BALANCE_PAGES + 1):
            body, headers = self._read("GET", BALANCE_PATH, tr_id, params=query, tr_cont=tr_cont)
            rows = body.get("output1")
            if not isinstance(rows, list):
                raise BadBrokerResponse("balance answer without an output1 list")
            yield body
            if headers.get("tr_cont", "").strip() not in MORE_PAGES:
                logger.debug("balance of %s read in %d pages", self.label, page)
                return
            next_key = body.get("ctx_area_nk100")
            if not isinstance(next_key, str) or not next_key.strip():
                raise BadBrokerResponse("balance answer says more pages follow but gives no ctx_area_nk100")
            query |= {"CTX_AREA_FK100": body.get("ctx_area_fk100") or "", "CTX_AREA_NK100": next_key}
            tr_cont = "N"
        raise BadBrokerResponse(f"the balance of {self.label} did not end within {MAX_BALANCE_PAGES} pages")

    def place_order(self, stock_code: str, side: Side, qty: int, price: int | None = None) -> str:
        validate_order(stock_code, side, qty, price)
        tr_id = TR_IDS[side][self.environment]
        body = {
            "CANO": self.account.account_number,
            "ACNT_PRDT_CD": self.account.product_code,
            "PDNO": stock_code,
            "ORD_DVSN": "01" if price is None else "00",
            "ORD_QTY": str(qty),
            "ORD_UNPR": "0" if price is None else str(price),
            # As the official sample (examples_llm/domestic_stock/order_cash/order_cash.py) sends them:
            # the exchange, a plain sale (01) for sells, and no stop price.
            "EXCG_ID_DVSN_CD": "KRX",
            "SLL_TYPE": "01" if side == "sell" else "",
            "CNDT_PRIC": "",
        }
        answer, _ = self._call("POST", ORDER_PATH, tr_id, body=body, is_order=True)
        output = answer.get("output")
        order_no = output.get("ODNO") if isinstance(output, dict) else None
        if not isinstance(order_no, str) or not order_no.strip():
            raise BadBrokerResponse("KIS accepted the order but its answer has no order number (ODNO)")
        logger.info(
            "order %s placed for %s: %s %s x%d at %s (tr_id %s)",
            order_no,
            self.label,
            side,
            stock_code,
            qty,
            price or "market",
            tr_id,
        )
        return order_no.strip()

    def get_price(self, stock_code: str) -> Quote:
        if error := stock_code_error(stock_code):
            raise InvalidOrder({"stock_code": error})
        query = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": stock_code}
        body, _ = self._read("GET", PRICE_PATH, TR_IDS["price"][self.environment], params=query)
        output = body.get("output")
        if not isinstance(output, dict):
            raise BadBrokerResponse("price answer without an output object")
        price = int_field(output, "stck_prpr", minimum=0)
        if price == 0:
            # KIS answers a code it does not list with a price of "0": never a price to trade at.
            raise UnknownStock(f"KIS knows no stock {stock_code} (its current price is 0)")
        return Quote(
            stock_code=stock_code,
            price=price,
            change=int_field(output, "prdy_vrss"),
            change_rate=float_field(output, "prdy_ctrt"),
            volume=int_field(output, "acml_vol", minimum=0),
        )

    # --- calls ---------------------------------------------------------------------------------

    def access_token(self) -> str:
        """The app key's access token: the shared one, or a new one from KIS."""
        return self.token.get(self._issue_token)

    def _read(self, method: str, path: str, tr_id: str, **request) -> tuple[dict, httpx.Headers]:
        """A read: tried again, after a short backoff, when rate limited or KIS is unavailable."""
        for attempt in range(1, READ_ATTEMPTS):
            try:
                return self._call(method, path, tr_id, **request)
            except (RateLimited, BrokerUnavailable) as error:
                delay = READ_BACKOFF * 2 ** (attempt - 1)
                logger.warning(
                    "%s on %s for %s (attempt %d of %d): %s; trying again in %.1fs",
                    error.reason,
                    tr_id,
                    self.label,
                    attempt,
                    READ_ATTEMPTS,
                    error.message,
                    delay,
                )
                time.sleep(delay)
        return self._call(method, path, tr_id, **request)

    def _call(self, method: str, path: str, tr_id: str, **request) -> tuple[dict, httpx.Headers]:
        """One call with a valid token. A refused token is renewed and the call sent once more: the
        gateway turned the first one away, so even an order cannot have been placed."""
        is_order = request.get("is_order", False)
        token = self._token(is_order)
        try:
            return self._send(method, path, tr_id, token, **request)
        except TokenExpired as error:
            logger.warning(
                "KIS refused the token (%s) on %s for %s; renewing it once", error.msg_cd, tr_id, self.label
            )
            token = self._token(is_order, stale=token)
            return self._send(method, path, tr_id, token, **request)

    def _token(self, is_order: bool, *, stale: str | None = None) -> str:
        """A token for the next call; `stale` is one KIS just refused. An order without one never left,
        whatever kept the token away (even a tokenP call that timed out), so it fails as NotSent."""
        try:
            if stale is None:
                return self.token.get(self._issue_token)
            return self.token.refresh(self._issue_token, stale=stale)
        except BrokerError as error:
            if not is_order or isinstance(error, NotSent):
                raise
            raise NotSent(
                f"no KIS access token for the order ({error.reason}): {error.message}", msg_cd=error.msg_cd
            ) from error

    @counts_broker_calls
    def _send(
        self,
        method: str,
        path: str,
        tr_id: str,
        token: str,
        *,
        params: dict | None = None,
        body: dict | None = None,
        tr_cont: str = "",
        is_order: bool = False,
    ) -> tuple[dict, httpx.Headers]:
        with RATE_LIMIT_WAIT.time():
            call_budget.call_turn(self.key_id, self.rate, is_order=is_order, continuation=tr_cont == "N")
        headers = {
            "content-type": "application/json; charset=utf-8",
            "authorization": f"Bearer {token}",
            "appkey": self.account.app_key,
            "appsecret": self.account.app_secret,
            "tr_id": tr_id,
            "custtype": "P",
            "tr_cont": tr_cont,
        }
        content = json.dumps(body) if body is not None else None
        unknown = "; the order's outcome is unknown" if is_order else ""
        try:
            response = self.http.request(
                method,
                self.base_url + path,
                params=params,
                content=content,
                headers=headers,
                timeout=settings.KIS_TIMEOUT,
            )
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.UnsupportedProtocol,
        ) as error:
            # No connection was made or none was free: not a byte of the request left.
            raise BrokerUnreachable(
                f"cannot connect to {self.host} for {tr_id} ({connection_failure(error)})"
            ) from None
        except httpx.TimeoutException:
            raise BrokerTimeout(
                f"KIS did not answer {tr_id} within {settings.KIS_TIMEOUT:g}s{unknown}"
            ) from None
        except httpx.HTTPError as error:
            # A read or write error, a dropped connection: the request may have reached KIS.
            raise SentButUnconfirmed(
                f"the call {tr_id} to KIS failed ({type(error).__name__}){unknown}"
            ) from None
        except UnicodeEncodeError:
            # A header value outside ASCII (a mistyped app key or secret).
            raise UnsendableCredentials(
                "the app key or secret holds characters that cannot be sent to KIS"
            ) from None
        answer = json_object(response, tr_id)
        msg_cd, message = str(answer.get("msg_cd") or ""), str(answer.get("msg1") or "").strip()
        if error := error_for(msg_cd, message):
            raise error
        if answer.get("rt_cd") == "0" and response.is_success:
            return answer, response.headers
        if response.status_code >= 500 and not msg_cd:
            raise BrokerUnavailable(f"KIS answered HTTP {response.status_code} to {tr_id}")
        if "rt_cd" not in answer:
            raise BadBrokerResponse(f"KIS answer to {tr_id} without rt_cd (HTTP {response.status_code})")
        logger.warning("KIS refused %s for %s: %s %s", tr_id, self.label, msg_cd, message)
        refusal = OrderRejected if is_order else READ_REFUSALS_BY_MSG_CD.get(msg_cd, BrokerError)
        raise refusal(message or f"KIS refused {tr_id}", msg_cd=msg_cd)

    def _issue_token(self) -> dict:
        """Ask KIS for an access token (tokenP): {"access_token", "expires_at"}. Only SharedToken calls it."""
        body = {
            "grant_type": "client_credentials",
            "appkey": self.account.app_key,
            "appsecret": self.account.app_secret,
        }
        try:
            response = self.http.post(
                self.base_url + TOKEN_PATH,
                content=json.dumps(body),
                headers={"content-type": "application/json; charset=utf-8"},
                timeout=settings.KIS_TIMEOUT,
            )
        except httpx.TimeoutException:
            raise BrokerTimeout(f"KIS did not answer tokenP within {settings.KIS_TIMEOUT:g}s") from None
        except httpx.HTTPError as error:
            raise BrokerUnavailable(
                f"cannot connect to {self.host} for tokenP ({connection_failure(error)})"
            ) from None
        answer = json_object(response, "tokenP")
        token = answer.get("access_token")
        if response.is_success and isinstance(token, str) and token:
            expires_at = token_expiry(answer)
            logger.info(
                "issued a KIS access token for app key %s (used by %s), valid until %s",
                self.key_id,
                self.label,
                datetime.fromtimestamp(expires_at, KST).isoformat(timespec="seconds"),
            )
            return {"access_token": token, "expires_at": expires_at}
        msg_cd = str(answer.get("error_code") or answer.get("msg_cd") or "")
        message = str(answer.get("error_description") or answer.get("msg1") or "").strip()
        if error := error_for(msg_cd, message):
            raise error
        if response.status_code >= 500:
            raise BrokerUnavailable(f"KIS answered HTTP {response.status_code} to tokenP")
        raise AuthenticationFailed(
            message or f"KIS refused to issue a token (HTTP {response.status_code})", msg_cd=msg_cd
        )
