"""KoreaInvestService: the real KIS Open API adapter (REST), as ../shared/docs/kis-api.md describes it.

Shared by every process through Redis:
- the access token of a (base URL, app key): cached, issued under a lock so that concurrent processes
  never both ask, renewed an hour before it expires and once when KIS refuses it, and never asked for
  sooner than settings.KIS_TOKEN_MIN_INTERVAL after the last one (KIS answers EGW00133 and notifies
  the user's phone on every issue);
- the rate limit of the app key (settings.KIS_RATE_LIMIT_REAL / _PAPER calls per second): every call
  waits for its turn in the app key's call budget (call_budget.py), orders first.
Reads are tried up to READ_ATTEMPTS times on rate limits and outages. An order is sent once: a
timeout raises BrokerTimeout, as its outcome is unknown. Logs name the account (masked) and the
tr_id, never a key, secret or token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import httpx
import pandas as pd
from django.conf import settings
from django.core.cache import cache

from ..redis import redis_client
from . import call_budget
from .base import (
    KST,
    AuthenticationFailed,
    BadBrokerResponse,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    InvalidOrder,
    OrderRejected,
    Quote,
    RateLimited,
    Side,
    TokenExpired,
    TokenIssueLimited,
    balance_frame,
    stock_code_error,
    validate_order,
)

if TYPE_CHECKING:
    from trading.models import BrokerAccount

logger = logging.getLogger(__name__)

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
MORE_PAGES = ("F", "M")  # the answer's tr_cont while pages follow; D or E on the last

READ_ATTEMPTS = 3
READ_BACKOFF = 0.2  # seconds before the second attempt, doubled before each next one
MAX_BALANCE_PAGES = 200
TOKEN_RENEW_MARGIN = 3600
TOKEN_LOCK_TIMEOUT = 30
_shared_client: tuple[int, httpx.Client] | None = None
_shared_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """The process's pooled client, shared by its threads (a forked worker makes its own).

    Not one per thread: Django runs each sync request under ASGI in a thread of its own, so a
    per-thread client cost every order a new TLS context and a new connection to KIS (35 % of the
    POST's samples under py-spy during bench/trade_to_screen.py)."""
    global _shared_client
    with _shared_client_lock:
        if _shared_client is None or _shared_client[0] != os.getpid():
            client = httpx.Client(limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))
            _shared_client = (os.getpid(), client)
        return _shared_client[1]


# --- reading KIS answers ------------------------------------------------------------------


def text_field(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadBrokerResponse(f"KIS answer without {name}")
    return value.strip()


def decimal_field(record: dict, name: str) -> Decimal:
    value = record.get(name)
    try:
        number = Decimal(value.strip().replace(",", ""))
    except (AttributeError, InvalidOperation):
        number = None
    if number is None or not number.is_finite():
        raise BadBrokerResponse(f"{name} is not a number: {value!r}")
    return number


def int_field(record: dict, name: str) -> int:
    number = decimal_field(record, name)
    if number != number.to_integral_value():
        raise BadBrokerResponse(f"{name} is not a whole number: {number}")
    return int(number)


def float_field(record: dict, name: str) -> float:
    return float(decimal_field(record, name))


def position_of(row: object) -> dict | None:
    """A balance row (output1) as BALANCE_COLUMNS; None for a position sold out today (quantity 0)."""
    if not isinstance(row, dict):
        raise BadBrokerResponse(f"a balance row is not an object: {row!r}")
    quantity = int_field(row, "hldg_qty")
    if quantity == 0:
        return None
    return {
        "stock_code": text_field(row, "pdno"),
        "name": text_field(row, "prdt_name"),
        "quantity": quantity,
        "orderable_quantity": int_field(row, "ord_psbl_qty"),
        "avg_price": float_field(row, "pchs_avg_pric"),
        "current_price": int_field(row, "prpr"),
        "eval_amount": int_field(row, "evlu_amt"),
        "pnl": int_field(row, "evlu_pfls_amt"),
        "pnl_rate": float_field(row, "evlu_pfls_rt"),
    }


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
    """When the issued token expires (Unix time), from expires_in or else access_token_token_expired."""
    try:
        return time.time() + int(body["expires_in"])
    except (KeyError, TypeError, ValueError):
        pass
    try:
        expires = datetime.strptime(body["access_token_token_expired"], "%Y-%m-%d %H:%M:%S")
    except (KeyError, TypeError, ValueError):
        raise BadBrokerResponse("token answer without expires_in or access_token_token_expired") from None
    return expires.replace(tzinfo=KST).timestamp()


class SharedToken:
    """The one access token of a (base URL, app key), kept in the Django cache (Redis)."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.cache_key = f"kis:token:{key_id}"
        self.issued_key = f"kis:token-issued:{key_id}"
        self.lock_name = f"kis:token-lock:{key_id}"

    def cached(self) -> str | None:
        """The cached token, while it is not yet due for renewal."""
        record = cache.get(self.cache_key)
        if record and record["expires_at"] - TOKEN_RENEW_MARGIN > time.time():
            return record["access_token"]
        return None

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
            record = cache.get(self.cache_key)
            if record and record["access_token"] == stale:
                cache.delete(self.cache_key)
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
            cache.set(self.issued_key, True, timeout=settings.KIS_TOKEN_MIN_INTERVAL)
            raise
        cache.set(self.issued_key, True, timeout=settings.KIS_TOKEN_MIN_INTERVAL)
        cache.set(self.cache_key, record, timeout=max(1, int(record["expires_at"] - time.time())))
        return record["access_token"]


class KoreaInvestService:
    """The Broker of one KIS account (BrokerAccount), over the KIS Open API REST interface."""

    def __init__(self, account: BrokerAccount, *, http: httpx.Client | None = None) -> None:
        self.account = account
        self.base_url = account.base_url.rstrip("/")
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
        tr_id = TR_IDS["balance"][self.environment]
        positions: list[dict] = []
        query = {
            "CANO": self.account.account_number,
            "ACNT_PRDT_CD": self.account.product_code,
            "AFHR_FLPR_YN": "N",
            "OFL_YN": "",
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
            positions.extend(p for p in map(position_of, rows) if p)
            if headers.get("tr_cont", "").strip() not in MORE_PAGES:
                logger.debug("balance of %s: %d positions on %d pages", self.label, len(positions), page)
                return balance_frame(positions)
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
        return Quote(
            stock_code=stock_code,
            price=int_field(output, "stck_prpr"),
            change=int_field(output, "prdy_vrss"),
            change_rate=float_field(output, "prdy_ctrt"),
            volume=int_field(output, "acml_vol"),
        )

    # --- calls ---------------------------------------------------------------------------------

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
        token = self.token.get(self._issue_token)
        try:
            return self._send(method, path, tr_id, token, **request)
        except TokenExpired as error:
            logger.warning(
                "KIS refused the token (%s) on %s for %s; renewing it once", error.msg_cd, tr_id, self.label
            )
            token = self.token.refresh(self._issue_token, stale=token)
            return self._send(method, path, tr_id, token, **request)

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
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise BrokerUnavailable(f"KIS cannot be reached for {tr_id} ({type(error).__name__})") from None
        except httpx.TimeoutException:
            raise BrokerTimeout(
                f"KIS did not answer {tr_id} within {settings.KIS_TIMEOUT:g}s{unknown}"
            ) from None
        except httpx.HTTPError as error:
            raise BrokerUnavailable(
                f"the call {tr_id} to KIS failed ({type(error).__name__}){unknown}"
            ) from None
        except UnicodeEncodeError:
            # A header value outside ASCII (a mistyped app key or secret): nothing was sent.
            raise AuthenticationFailed(
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
        refusal = OrderRejected if is_order else BrokerError
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
            raise BrokerUnavailable(f"KIS cannot be reached for tokenP ({type(error).__name__})") from None
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
