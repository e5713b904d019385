"""The KIS real-time WebSocket feed: execution prices (H0STCNT0) and fill notices (H0STCNI0 / H0STCNI9).

Wire facts are in ../shared/docs/kis-api.md, "Real-time WebSocket". A `RealtimeSession` is one
WebSocket connection for one app key (KIS allows one per app key) holding at most 41 registrations.
The caller says which registrations it wants (`session.register(...)`) at any time; the session
sends the subscribe and unsubscribe messages, answers PINGPONG, and after a dropped connection
connects again (with a fresh approval key) and registers everything again. Prices and fill notices
come back through two callbacks.

Misbehaving brokers. Every new connection costs an `/oauth2/Approval`, so reconnects back off and the
backoff starts again from the shortest delay only after a connection stayed up for a healthy period
(`healthy_after`, 60 s): a broker that drops the session at once is not asked again twice a second.
`OPSP8996` (the app key holds a session elsewhere) waits `refused_retry_delay` (5 min) and sets
`refusal`. A session dropped without a close frame while a fill-notice registration waits for its ack
means a wrong HTS id (the official README, "No close frame received"); after
`drops_before_suspending` such drops in a row that registration is suspended (`suspended`), the price
registrations go on. A session that hears nothing, not even PINGPONG, for `silence_timeout` (60 s) is
dropped and connected again. One bad record of a data frame is logged and skipped alone.

Where the feed lives (`realtime_url`): KIS's REST hosts map to KIS's WebSocket hosts; any other REST
host (the local simulator) serves the feed itself on the same host and port. The path is
`/tryitout` everywhere, as in KIS's own client (`kis_auth.py`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import websockets
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from websockets.asyncio.client import ClientConnection

from .base import (
    KST,
    MAX_STOCK_NAME_LENGTH,
    STOCK_CODE_RE,
    AuthenticationFailed,
    BadBrokerResponse,
    BrokerError,
    BrokerUnavailable,
)

logger = logging.getLogger(__name__)
# websockets logs every frame at DEBUG, and registration frames carry the approval key: its logger
# for our connections never goes below INFO, whatever the log level of the process.
wire_logger = logging.getLogger(f"{__name__}.wire")
wire_logger.setLevel(logging.INFO)

PRICE_TR = "H0STCNT0"
FILL_TR_REAL = "H0STCNI0"
FILL_TR_PAPER = "H0STCNI9"
FILL_TRS = frozenset({FILL_TR_REAL, FILL_TR_PAPER})
PINGPONG = "PINGPONG"
MAX_REGISTRATIONS = 41

SUBSCRIBE = "1"
UNSUBSCRIBE = "2"
# Acks (body.msg_cd): registered, unregistered, already registered, was not registered, app key in use.
ACK_SUBSCRIBED = "OPSP0000"
ACK_UNSUBSCRIBED = "OPSP0001"
ACK_ALREADY_SUBSCRIBED = "OPSP0002"
ACK_NOT_SUBSCRIBED = "OPSP0003"
ACK_APP_KEY_IN_USE = "OPSP8996"

REALTIME_PATH = "/tryitout"
KIS_REALTIME_HOSTS = {
    "openapi.koreainvestment.com": "ws://ops.koreainvestment.com:21000",
    "openapivts.koreainvestment.com": "ws://ops.koreainvestment.com:31000",
}

KRX_OPEN, KRX_CLOSE = time(9, 0), time(15, 30)


def fill_tr(is_paper: bool) -> str:
    return FILL_TR_PAPER if is_paper else FILL_TR_REAL


def realtime_url(base_url: str) -> str:
    """The WebSocket URL of the real-time feed that belongs to the REST host `base_url`."""
    parts = urlsplit(base_url)
    kis_host = KIS_REALTIME_HOSTS.get(parts.hostname or "")
    if kis_host:
        return kis_host + REALTIME_PATH
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{REALTIME_PATH}"


def follows_krx_hours(url: str) -> bool:
    """Whether the feed at `url` is KIS's own, which is silent outside KRX hours (the simulator never is)."""
    return url.startswith(tuple(KIS_REALTIME_HOSTS.values()))


def krx_is_open(now: datetime) -> bool:
    """The KRX regular session, 09:00-15:30 KST on weekdays (exchange holidays are not known here)."""
    local = now.astimezone(KST)
    return local.weekday() < 5 and KRX_OPEN <= local.time() < KRX_CLOSE


def krx_is_open_now() -> bool:
    return krx_is_open(datetime.now(KST))


def kst_unix(hhmmss: str, now: datetime) -> int:
    """Unix seconds of a KST wall-clock time of today (a time later than now is yesterday's)."""
    local = now.astimezone(KST)
    moment = local.replace(
        hour=int(hhmmss[0:2]), minute=int(hhmmss[2:4]), second=int(hhmmss[4:6]), microsecond=0
    )
    if moment > local + timedelta(minutes=1):
        moment -= timedelta(days=1)
    return int(moment.timestamp())


# --- Messages ---------------------------------------------------------------------------------


class Registration(NamedTuple):
    """One real-time registration: a TR and its key (a stock code, or an HTS id for fill notices)."""

    tr_id: str
    tr_key: str


@dataclass(frozen=True)
class Tick:
    """One execution of H0STCNT0. `time` is HHMMSS, KST."""

    stock_code: str
    time: str
    price: int
    change: int
    change_rate: float
    open: int
    high: int
    low: int
    trade_volume: int
    volume: int


@dataclass(frozen=True)
class FillNotice:
    """One H0STCNI0 / H0STCNI9 record: an order event of the account; `filled` when it is an execution."""

    hts_id: str
    account_no: str
    order_no: str
    side: str
    stock_code: str
    qty: int
    price: int
    time: str
    filled: bool
    name: str = ""  # CNTG_ISNM40, KIS's name of the stock (absent from the 23-field records of before 2025)


@dataclass(frozen=True)
class Ack:
    tr_id: str
    tr_key: str
    ok: bool
    msg_cd: str
    msg1: str
    key: str = field(default="", repr=False)
    iv: str = field(default="", repr=False)


@dataclass(frozen=True)
class WireFrame:
    """One data message of the feed as KIS frames it, `0|TR|count|payload` (1| when encrypted): text on
    the WebSocket, not a pandas DataFrame."""

    tr_id: str
    encrypted: bool
    count: int
    payload: str = field(repr=False)


def registration_message(approval_key: str, registration: Registration, *, subscribe: bool) -> str:
    return json.dumps(
        {
            "header": {
                "approval_key": approval_key,
                "custtype": "P",
                "tr_type": SUBSCRIBE if subscribe else UNSUBSCRIBE,
                "content-type": "utf-8",
            },
            "body": {"input": {"tr_id": registration.tr_id, "tr_key": registration.tr_key}},
        }
    )


def is_wire_frame(text: str) -> bool:
    return text[:1] in ("0", "1")


def parse_wire_frame(text: str) -> WireFrame:
    """`<0|1>|<tr_id>|<count>|<payload>`: the first field says whether the payload is encrypted."""
    parts = text.split("|", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        raise BadBrokerResponse(f"not a real-time data frame: {text[:40]!r}")
    return WireFrame(tr_id=parts[1], encrypted=parts[0] == "1", count=int(parts[2]), payload=parts[3])


def split_records(payload: str, count: int) -> list[list[str]]:
    """`count` records of equal length, their `^`-separated fields back to back. A frame that does not
    split evenly is refused whole: where one record ends is then unknown."""
    fields = payload.split("^")
    if count < 1 or len(fields) % count:
        raise BadBrokerResponse(f"{len(fields)} fields do not make {count} records")
    size = len(fields) // count
    return [fields[i : i + size] for i in range(0, len(fields), size)]


MAX_INT64 = 2**63 - 1  # what PostgreSQL's bigint and the channel layer's msgpack hold
WHOLE_NUMBER_RE = re.compile(r"^[+-]?[0-9]{1,40}\Z")  # longer ones are not read at all
HHMMSS_RE = re.compile(r"^([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]\Z")


def whole_number(text: str, name: str, *, minimum: int = -MAX_INT64) -> int:
    if not WHOLE_NUMBER_RE.match(text):
        raise BadBrokerResponse(f"{name} is not a whole number: {text[:24]!r}")
    value = int(text)
    if not minimum <= value <= MAX_INT64:
        raise BadBrokerResponse(f"{name} is out of range: {text[:24]!r}")
    return value


def finite_number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadBrokerResponse(f"{name} is not a number: {text[:24]!r}") from None
    if not math.isfinite(value):
        raise BadBrokerResponse(f"{name} is not finite: {text[:24]!r}")
    return value


def stock_code(text: str) -> str:
    if not STOCK_CODE_RE.match(text):
        raise BadBrokerResponse(f"not a stock code: {text[:24]!r}")
    return text


def hhmmss(text: str) -> str:
    if not HHMMSS_RE.match(text):
        raise BadBrokerResponse(f"not a time of day (HHMMSS): {text[:24]!r}")
    return text


# H0STCNT0 fields read here, by position (the TR has 46).
PRICE_FIELDS = {
    "MKSC_SHRN_ISCD": 0,  # code
    "STCK_CNTG_HOUR": 1,  # time of the trade, HHMMSS
    "STCK_PRPR": 2,  # price
    "PRDY_VRSS": 4,  # change from the previous close
    "PRDY_CTRT": 5,  # change %
    "STCK_OPRC": 7,
    "STCK_HGPR": 8,
    "STCK_LWPR": 9,
    "CNTG_VOL": 12,  # this trade's volume
    "ACML_VOL": 13,  # the day's volume so far
}
PRICE_RECORD_MIN_FIELDS = max(PRICE_FIELDS.values()) + 1


def parse_tick(record: list[str]) -> Tick:
    """One H0STCNT0 record, every number bounded: a price is positive, volumes are not negative, all
    fit 64 bits, the change % is finite. Anything else is a BadBrokerResponse for this record alone."""
    if len(record) < PRICE_RECORD_MIN_FIELDS:
        raise BadBrokerResponse(f"a {PRICE_TR} record of {len(record)} fields")
    f = {name: record[index] for name, index in PRICE_FIELDS.items()}
    return Tick(
        stock_code=stock_code(f["MKSC_SHRN_ISCD"]),
        time=hhmmss(f["STCK_CNTG_HOUR"]),
        price=whole_number(f["STCK_PRPR"], "price", minimum=1),
        change=whole_number(f["PRDY_VRSS"], "change"),
        change_rate=finite_number(f["PRDY_CTRT"], "change rate"),
        open=whole_number(f["STCK_OPRC"], "open", minimum=0),
        high=whole_number(f["STCK_HGPR"], "high", minimum=0),
        low=whole_number(f["STCK_LWPR"], "low", minimum=0),
        trade_volume=whole_number(f["CNTG_VOL"], "trade volume", minimum=0),
        volume=whole_number(f["ACML_VOL"], "volume", minimum=0),
    )


# H0STCNI0 / H0STCNI9 fields, as the official sample names them (ccnl_notice.py). The record grew from 23
# to 26 fields in 2025 (python-kis #68, #80): ORD_COND_PRC, ORD_EXG_GB and POPUP_YN came in after
# ACNT_NAME. Only fields before those are read, so both lengths, and a longer record, parse alike.
FILL_NOTICE_FIELDS = (
    "CUST_ID", "ACNT_NO", "ODER_NO", "ODER_QTY", "SELN_BYOV_CLS", "RCTF_CLS",
    "ODER_KIND", "ODER_COND", "STCK_SHRN_ISCD", "CNTG_QTY", "CNTG_UNPR",
    "STCK_CNTG_HOUR", "RFUS_YN", "CNTG_YN", "ACPT_YN", "BRNC_NO", "ACNT_NO2",
    "ACNT_NAME", "ORD_COND_PRC", "ORD_EXG_GB", "POPUP_YN", "FILLER", "CRDT_CLS",
    "CRDT_LOAN_DATE", "CNTG_ISNM40", "ODER_PRC",
)  # fmt: skip
# python-kis #80: three fields were inserted after ACNT_NAME in 2025; records of 23 fields lack them.
FILL_NOTICE_FIELDS_BEFORE_2025 = tuple(
    name for name in FILL_NOTICE_FIELDS if name not in ("ORD_COND_PRC", "ORD_EXG_GB", "POPUP_YN")
)
FILL_NOTICE_READ = (
    "CUST_ID",
    "ACNT_NO",
    "ODER_NO",
    "SELN_BYOV_CLS",
    "STCK_SHRN_ISCD",
    "CNTG_QTY",
    "CNTG_UNPR",
    "STCK_CNTG_HOUR",
    "CNTG_YN",
)
FILL_NOTICE_MIN_FIELDS = max(FILL_NOTICE_FIELDS.index(name) for name in FILL_NOTICE_READ) + 1
SIDE_SELL, SIDE_BUY = "01", "02"  # SELN_BYOV_CLS
CNTG_YN_FILLED = "2"  # "1": an order, amendment, cancellation or refusal was accepted


def parse_fill_notice(record: list[str]) -> FillNotice:
    """One fill-notice record, by field name; a BadBrokerResponse for this record alone."""
    if len(record) < FILL_NOTICE_MIN_FIELDS:
        raise BadBrokerResponse(f"a fill notice record of {len(record)} fields")
    names = FILL_NOTICE_FIELDS if len(record) >= len(FILL_NOTICE_FIELDS) else FILL_NOTICE_FIELDS_BEFORE_2025
    f = dict(zip(names, record, strict=False))
    if f["SELN_BYOV_CLS"] not in (SIDE_SELL, SIDE_BUY):
        raise BadBrokerResponse(f"a fill notice of side {f['SELN_BYOV_CLS'][:8]!r}")
    filled = f["CNTG_YN"] == CNTG_YN_FILLED
    return FillNotice(
        hts_id=f["CUST_ID"],
        account_no=f["ACNT_NO"],
        order_no=f["ODER_NO"],
        side="sell" if f["SELN_BYOV_CLS"] == SIDE_SELL else "buy",
        stock_code=stock_code(f["STCK_SHRN_ISCD"]),
        qty=whole_number(f["CNTG_QTY"] or "0", "filled quantity", minimum=0),
        price=whole_number(f["CNTG_UNPR"] or "0", "fill price", minimum=0),
        time=f["STCK_CNTG_HOUR"],
        filled=filled,
        name=f.get("CNTG_ISNM40", "").strip()[:MAX_STOCK_NAME_LENGTH],
    )


def hts_id_key(hts_id: str) -> str:
    """An HTS id as compared: KIS's CUST_ID may come padded or in another case than the one entered."""
    return hts_id.strip().casefold()


def decrypt_payload(key: str, iv: str, ciphertext: str) -> str:
    """AES-256-CBC with PKCS#7 padding, base64: how KIS encrypts fill notices (key and iv from the ack)."""
    try:
        decryptor = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).decryptor()
        padded = decryptor.update(base64.b64decode(ciphertext)) + decryptor.finalize()
        unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
        return (unpadder.update(padded) + unpadder.finalize()).decode()
    except (ValueError, binascii.Error) as exc:
        raise BadBrokerResponse(f"cannot decrypt the payload: {exc}") from exc


def parse_control(text: str) -> Ack | None:
    """A JSON message: None for PINGPONG, else the ack of a (un)registration."""
    try:
        message = json.loads(text)
        header = message["header"]
        if header.get("tr_id") == PINGPONG:
            return None
        body = message.get("body") or {}
        output = body.get("output") or {}
        return Ack(
            tr_id=header.get("tr_id", ""),
            tr_key=header.get("tr_key", ""),
            ok=body.get("rt_cd") == "0",
            msg_cd=body.get("msg_cd", ""),
            msg1=body.get("msg1", ""),
            key=output.get("key", ""),
            iv=output.get("iv", ""),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadBrokerResponse(f"not a real-time control message: {text[:60]!r}") from exc


async def issue_approval_key(http: httpx.AsyncClient, base_url: str, app_key: str, app_secret: str) -> str:
    """POST /oauth2/Approval: the key that authorises one WebSocket session. It is a secret."""
    try:
        response = await http.post(
            base_url.rstrip("/") + "/oauth2/Approval",
            json={"grant_type": "client_credentials", "appkey": app_key, "secretkey": app_secret},
        )
    except httpx.HTTPError as exc:
        raise BrokerUnavailable(f"approval key request failed: {exc.__class__.__name__}") from exc
    if response.status_code >= 500:
        raise BrokerUnavailable(f"approval key request answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if not body.get("approval_key"):
        code = body.get("msg_cd") or body.get("error_code") or ""
        raise AuthenticationFailed(
            f"no approval key issued ({code or f'HTTP {response.status_code}'})", msg_cd=str(code)
        )
    return body["approval_key"]


# --- The session ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a session authenticates with: the REST host that issues the approval key, and the app key."""

    base_url: str
    app_key: str = field(repr=False)
    app_secret: str = field(repr=False)

    @property
    def key_id(self) -> str:
        """A name for the app key that logs can carry: a short digest, from which the key cannot be had."""
        return "key-" + hashlib.sha256(self.app_key.encode()).hexdigest()[:8]


class SessionRefused(BrokerError):
    """The real-time server refused the session (e.g. the app key is already in use elsewhere)."""

    retryable = True
    reason = "session_refused"


class SessionSilent(BrokerUnavailable):
    """Nothing came from the server, not even PINGPONG, for longer than the session waits."""


class ReconnectBackoff:
    """How long to wait before the next connection attempt.

    The delay doubles from `shortest` to `longest` with every attempt, and starts again from
    `shortest` only after a connection that lasted `healthy_after` seconds: a broker that accepts the
    connection and drops it at once must not be asked for a new approval key twice a second. A
    refused session (OPSP8996: the app key holds a session elsewhere) waits `refused`, whatever the
    count: another client has the key, and it will not let go within seconds."""

    def __init__(self, *, shortest: float, longest: float, refused: float, healthy_after: float) -> None:
        self.shortest = shortest
        self.longest = longest
        self.refused = refused
        self.healthy_after = healthy_after
        self._next = shortest

    def after(self, *, connected_for: float, refused: bool = False) -> float:
        """The wait after a connection that lasted `connected_for` seconds (0: it never opened)."""
        if connected_for >= self.healthy_after:
            self._next = self.shortest
        delay = max(self.refused, self._next) if refused else self._next
        self._next = min(self._next * 2, self.longest)
        return delay


TickHandler = Callable[[Tick], None]
FillHandler = Callable[[FillNotice], None]


class RealtimeSession:
    """One KIS real-time connection for one app key, kept open and registered as wanted.

    `run()` runs until cancelled. Outside the market hours given by `market_open` (None: always open)
    it stays disconnected instead of reconnecting in a loop; it checks again every `market_check`
    seconds. Reconnects follow `ReconnectBackoff`; the module's doc says how misbehaving brokers are met.
    What went wrong is readable while it lasts: `refusal` (the broker's refusal of the whole session)
    and `suspended` (fill-notice registrations no longer sent).
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        name: str,
        on_tick: TickHandler,
        on_fill: FillHandler,
        url: str | None = None,
        market_open: Callable[[], bool] | None = None,
        market_check: float = 30.0,
        retry_delay: float = 0.5,
        max_retry_delay: float = 60.0,
        refused_retry_delay: float = 300.0,
        healthy_after: float = 60.0,
        silence_timeout: float = 60.0,
        drops_before_suspending: int = 3,
        timeout: float = 10.0,
    ) -> None:
        self.credentials = credentials
        self.name = name
        self.url = url or realtime_url(credentials.base_url)
        self.on_tick = on_tick
        self.on_fill = on_fill
        self.market_open = market_open
        self.market_check = market_check
        self.backoff = ReconnectBackoff(
            shortest=retry_delay,
            longest=max_retry_delay,
            refused=refused_retry_delay,
            healthy_after=healthy_after,
        )
        self.silence_timeout = silence_timeout
        self.drops_before_suspending = drops_before_suspending
        self.timeout = timeout
        self.wanted: frozenset[Registration] = frozenset()
        self.active: set[Registration] = set()  # acknowledged on the current connection
        self.suspended: set[Registration] = set()  # fill-notice registrations the broker drops us for
        self.refusal = ""  # the broker's answer while it refuses the session (OPSP8996), else ""
        self.connections = 0  # connections opened so far (each one registers everything again)
        self.retry_in = 0.0  # the wait before the next connection attempt, once one failed
        self._drops_after: Counter[Registration] = Counter()  # drops in a row, each with it unanswered
        self._sent: set[Registration] = set()
        self._wanted_changed = asyncio.Event()
        self._keys: dict[str, tuple[str, str]] = {}  # tr_id -> (AES key, iv) from its ack

    def __repr__(self) -> str:
        return f"<RealtimeSession {self.name} {self.url}>"

    def register(self, registrations: Iterable[Registration]) -> None:
        """Want exactly these registrations from now on (sent at once when connected)."""
        wanted = frozenset(registrations)
        if len(wanted) > MAX_REGISTRATIONS:
            raise ValueError(f"{len(wanted)} registrations: a KIS session holds at most {MAX_REGISTRATIONS}")
        if wanted != self.wanted:
            self.wanted = wanted
            self.suspended &= wanted  # a changed HTS id is a new registration, tried afresh
            self._wanted_changed.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            while True:
                if self.market_open is not None and not self.market_open():
                    await asyncio.sleep(self.market_check)
                    continue
                opened_at = None
                refused = False
                failure = "the connection ended"
                try:
                    approval_key = await issue_approval_key(
                        http, self.credentials.base_url, self.credentials.app_key, self.credentials.app_secret
                    )
                    async with websockets.connect(
                        self.url, open_timeout=self.timeout, logger=wire_logger
                    ) as ws:
                        opened_at = loop.time()
                        self.connections += 1
                        logger.info("real-time session %s connected to %s", self.name, self.url)
                        await self._serve(ws, approval_key)
                except (
                    OSError,
                    websockets.ConnectionClosed,
                    websockets.InvalidHandshake,
                    BrokerError,
                ) as exc:
                    refused = isinstance(exc, SessionRefused)
                    if refused:
                        self.refusal = exc.message
                    if isinstance(exc, websockets.ConnectionClosedError) and exc.rcvd is None:
                        self._count_drop_without_close_frame()
                    failure = exc.__class__.__name__ + (f" {exc}" if str(exc) else "")
                finally:
                    self.active.clear()
                    self._sent.clear()
                    self._keys.clear()
                connected_for = 0.0 if opened_at is None else loop.time() - opened_at
                # A session that lived this long was not refused, even one that had nothing to ack.
                if connected_for >= self.backoff.healthy_after and not refused:
                    self.refusal = ""
                self.retry_in = self.backoff.after(connected_for=connected_for, refused=refused)
                logger.warning(
                    "real-time session %s (%s) to %s failed after %.1fs connected: %s; connecting again in %.1fs",
                    self.name,
                    self.credentials.key_id,
                    self.url,
                    connected_for,
                    failure,
                    self.retry_in,
                )
                await asyncio.sleep(self.retry_in)

    def _count_drop_without_close_frame(self) -> None:
        """The connection died with no close frame: count it against each fill-notice registration
        still waiting for its ack, and suspend one that was dropped for too many times in a row."""
        for registration in self._sent - self.active:
            if registration.tr_id not in FILL_TRS:
                continue
            self._drops_after[registration] += 1
            if self._drops_after[registration] >= self.drops_before_suspending:
                self.suspended.add(registration)
                del self._drops_after[registration]
                logger.error(
                    "real-time session %s (%s): the broker dropped the session %d times in a row right "
                    "after the %s registration of HTS id %r, without a close frame (a wrong HTS id?); "
                    "it is no longer sent, prices go on",
                    self.name,
                    self.credentials.key_id,
                    self.drops_before_suspending,
                    registration.tr_id,
                    registration.tr_key,
                )

    async def _serve(self, ws: ClientConnection, approval_key: str) -> None:
        reader = asyncio.create_task(self._read(ws))
        writer = asyncio.create_task(self._keep_registered(ws, approval_key))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    async def _keep_registered(self, ws: ClientConnection, approval_key: str) -> None:
        while True:
            self._wanted_changed.clear()
            wanted = self.wanted - self.suspended
            # Unregister first: the room matters under the 41-registration limit.
            for registration in sorted(self._sent - wanted):
                await ws.send(registration_message(approval_key, registration, subscribe=False))
                self._sent.discard(registration)
            for registration in sorted(wanted - self._sent):
                await ws.send(registration_message(approval_key, registration, subscribe=True))
                self._sent.add(registration)
            await self._wanted_changed.wait()

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            try:
                async with asyncio.timeout(self.silence_timeout):
                    message = await ws.recv()
            except TimeoutError:
                raise SessionSilent(f"nothing received for {self.silence_timeout:g}s") from None
            except websockets.ConnectionClosedOK:
                raise BrokerUnavailable("the server closed the connection") from None
            if isinstance(message, bytes):
                message = message.decode(errors="replace")
            try:
                await self.handle_message(ws, message)
            except BadBrokerResponse as exc:
                logger.warning("real-time session %s skipped a message: %s", self.name, exc.message)

    async def handle_message(self, ws: ClientConnection, message: str) -> None:
        """One message from the server: data frames to the callbacks, PINGPONG answered, acks applied."""
        if is_wire_frame(message):
            self._handle_data(parse_wire_frame(message))
            return
        ack = parse_control(message)
        if ack is None:
            # The sources disagree on the answer: python-kis echoes the text (client/websocket.py), the
            # official kis_auth.py sends a pong frame carrying it. Either alone may be what KIS drops
            # a silent client for, so both go.
            await ws.send(message)
            await ws.pong(message)
            return
        self._handle_ack(ack)

    def _handle_data(self, frame: WireFrame) -> None:
        if frame.tr_id == PRICE_TR:
            for record in split_records(frame.payload, frame.count):
                try:
                    tick = parse_tick(record)
                except BadBrokerResponse as exc:
                    logger.warning(
                        "real-time session %s dropped a %s record: %s", self.name, PRICE_TR, exc.message
                    )
                    continue
                self.on_tick(tick)
        elif frame.tr_id in FILL_TRS:
            payload = frame.payload
            if frame.encrypted:
                if frame.tr_id not in self._keys:
                    raise BadBrokerResponse(f"{frame.tr_id} frame before its key arrived")
                payload = decrypt_payload(*self._keys[frame.tr_id], payload)
            for record in split_records(payload, frame.count):
                try:
                    notice = parse_fill_notice(record)
                except BadBrokerResponse as exc:
                    logger.warning(
                        "real-time session %s dropped a %s record: %s", self.name, frame.tr_id, exc.message
                    )
                    continue
                self.on_fill(notice)
        else:
            raise BadBrokerResponse(f"unexpected real-time TR {frame.tr_id}")

    def _handle_ack(self, ack: Ack) -> None:
        registration = Registration(ack.tr_id, ack.tr_key)
        if ack.msg_cd in (ACK_SUBSCRIBED, ACK_ALREADY_SUBSCRIBED):
            self.active.add(registration)
            self._drops_after.pop(registration, None)
            self.refusal = ""
            if ack.key and ack.iv:
                self._keys[ack.tr_id] = (ack.key, ack.iv)
        elif ack.msg_cd in (ACK_UNSUBSCRIBED, ACK_NOT_SUBSCRIBED):
            self.active.discard(registration)
        elif ack.msg_cd == ACK_APP_KEY_IN_USE:
            raise SessionRefused(f"{ack.msg_cd} {ack.msg1}", msg_cd=ack.msg_cd)
        elif not ack.ok:
            logger.error(
                "real-time session %s: %s %s refused: %s %s",
                self.name,
                ack.tr_id,
                ack.tr_key,
                ack.msg_cd,
                ack.msg1,
            )
