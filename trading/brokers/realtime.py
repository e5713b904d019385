"""The KIS real-time WebSocket feed: execution prices (H0STCNT0) and fill notices (H0STCNI0 / H0STCNI9).

Wire facts are in ../shared/docs/kis-api.md, "Real-time WebSocket". A `RealtimeSession` is one
WebSocket connection for one app key (KIS allows one per app key) holding at most 41 registrations.
The caller says which registrations it wants (`session.register(...)`) at any time; the session
sends the subscribe and unsubscribe messages, answers PINGPONG, and after a dropped connection
connects again (with a fresh approval key) and registers everything again. Prices and fill notices
come back through two callbacks.

Where the feed lives (`realtime_url`): KIS's REST hosts map to KIS's WebSocket hosts; any other REST
host (the local simulator) serves the feed itself on the same host and port. The path is
`/tryitout` everywhere, as in KIS's own client (`kis_auth.py`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
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

from .base import KST, AuthenticationFailed, BadBrokerResponse, BrokerError, BrokerUnavailable

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
class DataFrame:
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


def is_data_frame(text: str) -> bool:
    return text[:1] in ("0", "1")


def parse_data_frame(text: str) -> DataFrame:
    """`<0|1>|<tr_id>|<count>|<payload>`: the first field says whether the payload is encrypted."""
    parts = text.split("|", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        raise BadBrokerResponse(f"not a real-time data frame: {text[:40]!r}")
    return DataFrame(tr_id=parts[1], encrypted=parts[0] == "1", count=int(parts[2]), payload=parts[3])


def split_records(payload: str, count: int) -> list[list[str]]:
    """`count` records of equal length, their `^`-separated fields back to back."""
    fields = payload.split("^")
    if count < 1 or len(fields) % count:
        raise BadBrokerResponse(f"{len(fields)} fields do not make {count} records")
    size = len(fields) // count
    return [fields[i : i + size] for i in range(0, len(fields), size)]


def parse_ticks(payload: str, count: int) -> list[Tick]:
    """H0STCNT0 records: 0 code, 1 time, 2 price, 4 change, 5 change %, 7-9 open/high/low,
    12 trade volume, 13 accumulated volume."""
    try:
        return [
            Tick(
                stock_code=f[0],
                time=f[1],
                price=int(f[2]),
                change=int(f[4]),
                change_rate=float(f[5]),
                open=int(f[7]),
                high=int(f[8]),
                low=int(f[9]),
                trade_volume=int(f[12]),
                volume=int(f[13]),
            )
            for f in split_records(payload, count)
        ]
    except (IndexError, ValueError) as exc:
        raise BadBrokerResponse(f"bad {PRICE_TR} record: {exc}") from exc


def parse_fill_notices(payload: str, count: int) -> list[FillNotice]:
    """H0STCNI0 / H0STCNI9 records: 0 HTS id, 1 account, 2 order no, 4 side (01 sell, 02 buy),
    8 code, 9 filled qty, 10 fill price, 11 time, 13 "2" for a fill."""
    try:
        return [
            FillNotice(
                hts_id=f[0],
                account_no=f[1],
                order_no=f[2],
                side="sell" if f[4] == "01" else "buy",
                stock_code=f[8],
                qty=int(f[9] or 0),
                price=int(f[10] or 0),
                time=f[11],
                filled=f[13] == "2",
            )
            for f in split_records(payload, count)
        ]
    except (IndexError, ValueError) as exc:
        raise BadBrokerResponse(f"bad fill notice record: {exc}") from exc


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
        raise AuthenticationFailed(f"no approval key issued ({code or f'HTTP {response.status_code}'})",
                                   msg_cd=str(code))
    return body["approval_key"]


# --- The session ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a session authenticates with: the REST host that issues the approval key, and the app key."""

    base_url: str
    app_key: str = field(repr=False)
    app_secret: str = field(repr=False)


class SessionRefused(BrokerError):
    """The real-time server refused the session (e.g. the app key is already in use elsewhere)."""

    retryable = True
    reason = "session_refused"


TickHandler = Callable[[Tick], None]
FillHandler = Callable[[FillNotice], None]


class RealtimeSession:
    """One KIS real-time connection for one app key, kept open and registered as wanted.

    `run()` runs until cancelled. Outside the market hours given by `market_open` (None: always open)
    it stays disconnected instead of reconnecting in a loop; it checks again every `market_check`
    seconds. Reconnects back off from `retry_delay` up to `max_retry_delay` seconds.
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
        max_retry_delay: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.credentials = credentials
        self.name = name
        self.url = url or realtime_url(credentials.base_url)
        self.on_tick = on_tick
        self.on_fill = on_fill
        self.market_open = market_open
        self.market_check = market_check
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.timeout = timeout
        self.wanted: frozenset[Registration] = frozenset()
        self.active: set[Registration] = set()  # acknowledged on the current connection
        self.connections = 0  # connections opened so far (each one registers everything again)
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
            self._wanted_changed.set()

    async def run(self) -> None:
        delay = self.retry_delay
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            while True:
                if self.market_open is not None and not self.market_open():
                    await asyncio.sleep(self.market_check)
                    continue
                try:
                    approval_key = await issue_approval_key(
                        http, self.credentials.base_url, self.credentials.app_key, self.credentials.app_secret
                    )
                    async with websockets.connect(
                        self.url, open_timeout=self.timeout, logger=wire_logger
                    ) as ws:
                        self.connections += 1
                        logger.info("real-time session %s connected to %s", self.name, self.url)
                        delay = self.retry_delay
                        await self._serve(ws, approval_key)
                except (
                    OSError,
                    websockets.ConnectionClosed,
                    websockets.InvalidHandshake,
                    BrokerError,
                ) as exc:
                    logger.warning(
                        "real-time session %s to %s failed: %s; connecting again in %.1fs",
                        self.name,
                        self.url,
                        exc.__class__.__name__ + (f" {exc}" if str(exc) else ""),
                        delay,
                    )
                finally:
                    self.active.clear()
                    self._sent.clear()
                    self._keys.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)

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
            # Unregister first: the room matters under the 41-registration limit.
            for registration in sorted(self._sent - self.wanted):
                await ws.send(registration_message(approval_key, registration, subscribe=False))
                self._sent.discard(registration)
            for registration in sorted(self.wanted - self._sent):
                await ws.send(registration_message(approval_key, registration, subscribe=True))
                self._sent.add(registration)
            await self._wanted_changed.wait()

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                message = message.decode()
            try:
                await self.handle_message(ws, message)
            except BadBrokerResponse as exc:
                logger.warning("real-time session %s skipped a message: %s", self.name, exc.message)
        raise BrokerUnavailable("the server closed the connection")

    async def handle_message(self, ws: ClientConnection, message: str) -> None:
        """One message from the server: data frames to the callbacks, PINGPONG echoed, acks applied."""
        if is_data_frame(message):
            self._handle_data(parse_data_frame(message))
            return
        ack = parse_control(message)
        if ack is None:
            await ws.send(message)  # PINGPONG: echo it back, or the server drops the session
            return
        self._handle_ack(ack)

    def _handle_data(self, frame: DataFrame) -> None:
        if frame.tr_id == PRICE_TR:
            for tick in parse_ticks(frame.payload, frame.count):
                self.on_tick(tick)
        elif frame.tr_id in FILL_TRS:
            payload = frame.payload
            if frame.encrypted:
                if frame.tr_id not in self._keys:
                    raise BadBrokerResponse(f"{frame.tr_id} frame before its key arrived")
                payload = decrypt_payload(*self._keys[frame.tr_id], payload)
            for notice in parse_fill_notices(payload, frame.count):
                self.on_fill(notice)
        else:
            raise BadBrokerResponse(f"unexpected real-time TR {frame.tr_id}")

    def _handle_ack(self, ack: Ack) -> None:
        registration = Registration(ack.tr_id, ack.tr_key)
        if ack.msg_cd in (ACK_SUBSCRIBED, ACK_ALREADY_SUBSCRIBED):
            self.active.add(registration)
            if ack.key and ack.iv:
                self._keys[ack.tr_id] = (ack.key, ack.iv)
        elif ack.msg_cd in (ACK_UNSUBSCRIBED, ACK_NOT_SUBSCRIBED):
            self.active.discard(registration)
        elif ack.msg_cd == ACK_APP_KEY_IN_USE:
            raise SessionRefused(f"{ack.msg_cd} {ack.msg1}")
        elif not ack.ok:
            logger.error(
                "real-time session %s: %s %s refused: %s %s",
                self.name,
                ack.tr_id,
                ack.tr_key,
                ack.msg_cd,
                ack.msg1,
            )
