"""The simulator's side of the KIS real-time feed: the WebSocket at /tryitout, in KIS's exact format.

What a client sees (../shared/docs/kis-api.md, "Real-time WebSocket"):
- It registers with `{"header": {"approval_key", "custtype", "tr_type": "1" | "2", "content-type"},
  "body": {"input": {"tr_id", "tr_key"}}}`. The approval key must be one that POST /oauth2/Approval
  issued. Acks: OPSP0000 registered (with the session's AES-256 `key` and `iv`), OPSP0001 unregistered,
  OPSP0002 already registered, OPSP0003 not registered, OPSP0008 beyond 41 registrations, OPSP0011 an
  unknown approval key, OPSP8991 an unknown TR, OPSP8992 a malformed stock code, OPSP9999 a message
  that is not JSON (the codes and texts of KIS's error table). OPSP8996, the app key already has a live
  session, comes as KIS sends it: header tr_id "(null)", rt_cd "9". Any well-formed code can be
  registered: one the market has not seen is listed with a generated name and price.
- H0STCNT0 frames carry the price walk's trades of registered codes, `0|H0STCNT0|<count>|...`; trades
  that happen together travel as several records in one frame.
- H0STCNI0 / H0STCNI9 registered with an account's HTS id carry its order events, AES-256-CBC encrypted
  and base64 encoded (`1|H0STCNI9|001|...`), 26 fields in ccnl_notice.py's order: an acceptance notice
  (CNTG_YN "1") when the order is placed, with its quantity and price, and the fill ("2") when it fills.
- PINGPONG every `ping_interval` seconds (10 unless set); a client echoes it (python-kis) or answers
  with a pong frame (the official sample): the session view counts both ("echoes", "pongs").

Control API (JSON), for tests and the demo:
    GET  /_fake/realtime         ping_interval and the live sessions: id, registrations, echoes, frames
    POST /_fake/realtime         {"ping_interval": seconds}
    POST /_fake/realtime/drop    close every session, as a network failure would: {"dropped": n}
    POST /_fake/realtime/faults  {"mode": "drop_after_registration", "count": N, "tr_id"?}: the next N
                                 registrations (of that TR only, if given) get no ack: the TCP connection
                                 ends at once, with no close frame, as KIS does for a wrong HTS id
                                 (the official README). /_fake/reset forgets them.
    POST /_fake/realtime/burst   {"stock_code", "trades", "seconds"}: that many trades of one code,
                                 spread over that many seconds; answers the last price and the
                                 accumulated volume after it
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import secrets
import string
from typing import NamedTuple

from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .control import BadInput, answer, is_number, is_whole, json_of
from .seed import tick_size
from .state import STOCK_CODE_RE, SimulatorState, now_kst

# The real-time vocabulary, written from KIS's samples (examples_llm/domestic_stock/ccnl_krx,
# ccnl_notice and kis_auth.py in koreainvestment/open-trading-api), not taken from the adapter.
REALTIME_PATH = "/tryitout"
PRICE_TR = "H0STCNT0"  # 국내주식 실시간체결가 (KRX)
FILL_TRS = frozenset({"H0STCNI0", "H0STCNI9"})  # 실시간체결통보: real, paper
PINGPONG = "PINGPONG"
MAX_REGISTRATIONS = 41  # registrations per session


class Registration(NamedTuple):
    tr_id: str
    tr_key: str


logger = logging.getLogger(__name__)

PING_TASK = web.AppKey("realtime_ping_task", asyncio.Task)
DEFAULT_PING_INTERVAL = 10.0
OUTBOX_LIMIT = 10_000  # a client this far behind is dropped, as KIS drops slow consumers
MAX_RECORDS_PER_FRAME = 50
PRICE_FIELDS = 46
FILL_FIELDS = 26


def encrypt_payload(key: str, iv: str, text: str) -> str:
    """AES-256-CBC, PKCS#7 padding, base64: how KIS encrypts fill notices."""
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(text.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def random_text(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def price_record(tick: dict) -> list[str]:
    """The 46 fields of one H0STCNT0 record for a tick event of the simulator's state."""
    price, change = tick["price"], tick["change"]
    unit = tick_size(price)
    fields = ["0"] * PRICE_FIELDS
    fields[0] = tick["stock_code"]
    fields[1] = tick["time"]
    fields[2] = str(price)
    fields[3] = "2" if change > 0 else "5" if change < 0 else "3"
    fields[4] = str(change)
    fields[5] = f"{tick['change_rate']:.2f}"
    fields[6] = f"{price:.2f}"
    fields[7], fields[8], fields[9] = str(tick["open"]), str(tick["high"]), str(tick["low"])
    fields[10], fields[11] = str(price + unit), str(price)  # best ask and bid
    fields[12] = str(tick["trade_volume"])
    fields[13] = str(tick["volume"])
    fields[14] = str(tick["volume"] * price)
    fields[21] = "1"  # bought at the ask
    fields[33] = now_kst().strftime("%Y%m%d")
    fields[34] = "20"
    fields[35] = "N"
    return fields


def notice_record(event: dict, *, filled: bool) -> list[str]:
    """The 26 fields of one H0STCNI0 / H0STCNI9 record, in the order of ccnl_notice.py: an acceptance
    notice (CNTG_YN "1", from an "order" event) or a fill (CNTG_YN "2", from a "fill" event).

    The acceptance notice carries the order's quantity and price, in ODER_QTY / ODER_PRC and, as KIS's
    API page describes CNTG_QTY / CNTG_UNPR for a notice that is not a fill, in those two as well."""
    order_price = event["price"] if not filled else event["order_price"]
    fields = [""] * FILL_FIELDS
    fields[0] = event["hts_id"]  # CUST_ID
    fields[1] = event["cano"] + "01"  # ACNT_NO
    fields[2] = event["order_no"]  # ODER_NO
    fields[3] = str(event["qty"])  # ODER_QTY
    fields[4] = "02" if event["side"] == "buy" else "01"  # SELN_BYOV_CLS: 01 sell, 02 buy
    fields[5] = "0"  # RCTF_CLS: a new order (not a correction or cancellation)
    fields[6] = "01" if event["order_type"] == "market" else "00"  # ODER_KIND
    fields[7] = "0"  # ODER_COND
    fields[8] = event["stock_code"]  # STCK_SHRN_ISCD
    fields[9] = str(event["qty"])  # CNTG_QTY
    fields[10] = str(event["price"])  # CNTG_UNPR: the fill's price, or the order's on acceptance
    fields[11] = event["time"]  # STCK_CNTG_HOUR
    fields[12] = "0"  # RFUS_YN: not refused
    fields[13] = "2" if filled else "1"  # CNTG_YN
    fields[14] = "2" if filled else "1"  # ACPT_YN
    fields[15] = "00950"  # BRNC_NO
    fields[16] = event["cano"]  # ACNT_NO2
    fields[17] = "모의투자"  # ACNT_NAME
    fields[18] = "0"  # ORD_COND_PRC
    fields[19] = "1"  # ORD_EXG_GB: KRX
    fields[20] = "Y"  # POPUP_YN
    fields[22] = "10"  # CRDT_CLS: cash
    fields[24] = event.get("name", "")  # CNTG_ISNM40
    fields[25] = str(order_price)  # ODER_PRC: 0 for a market order
    return fields


def data_frame(tr_id: str, records: list[list[str]], *, key: str = "", iv: str = "") -> str:
    payload = "^".join(itertools.chain.from_iterable(records))
    if key:
        return f"1|{tr_id}|{len(records):03d}|{encrypt_payload(key, iv, payload)}"
    return f"0|{tr_id}|{len(records):03d}|{payload}"


def ack(
    tr_id: str, tr_key: str, msg_cd: str, msg1: str, *, ok: bool = True, output: dict | None = None
) -> str:
    body = {"rt_cd": "0" if ok else "1", "msg_cd": msg_cd, "msg1": msg1}
    if output:
        body["output"] = output
    header = {"tr_id": tr_id, "tr_key": tr_key, "encrypt": "Y" if tr_id in FILL_TRS else "N"}
    return json.dumps({"header": header, "body": body})


# The app key already has a live session: KIS answers before it looks at the registration, so the
# header names no TR ("(null)") and rt_cd is "9" (as clients of the live service record it).
APP_KEY_IN_USE = json.dumps(
    {
        "header": {"tr_id": "(null)", "tr_key": "", "encrypt": "N"},
        "body": {"rt_cd": "9", "msg_cd": "OPSP8996", "msg1": "ALREADY IN USE appkey"},
    }
)


class FeedSession:
    """One client connection: its registrations, its AES key and iv, and one outbox drained in order."""

    def __init__(self, session_id: int, ws: web.WebSocketResponse) -> None:
        self.id = session_id
        self.ws = ws
        self.app_key: str | None = None
        self.registrations: set[Registration] = set()
        self.key, self.iv = random_text(32), random_text(16)
        self.echoes = 0  # PINGPONG texts sent back
        self.pongs = 0  # WebSocket pong frames received
        self.frames = 0  # data frames sent
        self.outbox: asyncio.Queue[tuple[str, object]] = asyncio.Queue(OUTBOX_LIMIT)
        self.dropped = False
        self.closing: asyncio.Future | None = None

    def view(self) -> dict:
        return {
            "id": self.id,
            "registrations": sorted([list(r) for r in self.registrations]),
            "echoes": self.echoes,
            "pongs": self.pongs,
            "frames": self.frames,
        }

    def post(self, kind: str, item: object) -> None:
        """Queue a "tick" (a tick event), a "frame" (a data frame) or a "control" message (text)."""
        if self.dropped:
            return
        try:
            self.outbox.put_nowait((kind, item))
        except asyncio.QueueFull:
            logger.warning("real-time session %s is too slow; dropping it", self.id)
            self.dropped = True
            self.closing = asyncio.ensure_future(self.ws.close())  # kept: a task nobody holds may vanish

    async def send_all(self) -> None:
        """Send the outbox in order; ticks waiting together go out as one multi-record frame."""
        while True:
            batch = [await self.outbox.get()]
            while not self.outbox.empty() and len(batch) < MAX_RECORDS_PER_FRAME:
                batch.append(self.outbox.get_nowait())
            for kind, group in itertools.groupby(batch, key=lambda item: item[0]):
                items = [item for _, item in group]
                if kind == "tick":
                    await self.ws.send_str(data_frame(PRICE_TR, [price_record(tick) for tick in items]))
                    self.frames += 1
                    continue
                for text in items:
                    await self.ws.send_str(text)
                self.frames += len(items) if kind == "frame" else 0


class RealtimeFeed:
    """Every live session of the simulator, fed from the state's tick and fill events."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.sessions: dict[int, FeedSession] = {}
        self.ping_interval = DEFAULT_PING_INTERVAL
        # [tr_id or None (any), remaining]: registrations after which the session drops unannounced.
        self.drops: list[list] = []
        self._session_ids = itertools.count(1)
        state.add_listener(self.on_event)

    def on_event(self, event: dict) -> None:
        if event["kind"] == "reset":
            self.drops.clear()
        elif event["kind"] == "tick":
            registration = Registration(PRICE_TR, event["stock_code"])
            for session in self.sessions.values():
                if registration in session.registrations:
                    session.post("tick", event)
        elif event["kind"] in ("order", "fill"):
            record = notice_record(event, filled=event["kind"] == "fill")
            for session in self.sessions.values():
                for tr_id in FILL_TRS:
                    if Registration(tr_id, event["hts_id"]) in session.registrations:
                        session.post("frame", data_frame(tr_id, [record], key=session.key, iv=session.iv))

    def app_key_in_use(self, app_key: str, session: FeedSession) -> bool:
        return any(other.app_key == app_key for other in self.sessions.values() if other is not session)

    def handle_registration(self, session: FeedSession, message: dict) -> str:
        header, body = message.get("header") or {}, message.get("body") or {}
        request = body.get("input") or {}
        tr_id, tr_key = str(request.get("tr_id", "")), str(request.get("tr_key", ""))
        app_key = self.state.appkey_of_approval_key(str(header.get("approval_key", "")))
        if app_key is None:
            return ack(tr_id, tr_key, "OPSP0011", "invalid approval(appkey) : NOT FOUND", ok=False)
        if self.app_key_in_use(app_key, session):
            return APP_KEY_IN_USE
        session.app_key = app_key
        if tr_id != PRICE_TR and tr_id not in FILL_TRS:
            return ack(tr_id, tr_key, "OPSP8991", "SUBSCRIBE ERROR : invalid tr_id", ok=False)
        if tr_id == PRICE_TR:
            if not STOCK_CODE_RE.match(tr_key):
                return ack(tr_id, tr_key, "OPSP8992", "SUBSCRIBE ERROR : invalid tr_key", ok=False)
            self.state.stock(tr_key)  # a code the market has not seen yet is listed, and trades from now on
        registration = Registration(tr_id, tr_key)
        keys = {"iv": session.iv, "key": session.key}
        if header.get("tr_type") == "2":
            if registration not in session.registrations:
                return ack(tr_id, tr_key, "OPSP0003", "UNSUBSCRIBE ERROR(not found!)", ok=False)
            session.registrations.discard(registration)
            return ack(tr_id, tr_key, "OPSP0001", "UNSUBSCRIBE SUCCESS", output=keys)
        if registration in session.registrations:
            return ack(tr_id, tr_key, "OPSP0002", "ALREADY IN SUBSCRIBE", ok=False)
        if len(session.registrations) >= MAX_REGISTRATIONS:
            return ack(tr_id, tr_key, "OPSP0008", "MAX SUBSCRIBE OVER", ok=False)
        session.registrations.add(registration)
        return ack(tr_id, tr_key, "OPSP0000", "SUBSCRIBE SUCCESS", output=keys)

    def take_drop(self, message: dict) -> bool:
        """Whether this registration is one after which the session drops (the "drop" fault)."""
        if not self.drops or (message.get("header") or {}).get("tr_type") == "2":
            return False
        tr_id = str(((message.get("body") or {}).get("input") or {}).get("tr_id", ""))
        for drop in self.drops:
            if drop[0] in (None, tr_id):
                drop[1] -= 1
                if drop[1] == 0:
                    self.drops.remove(drop)
                return True
        return False

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # Pings and pongs are handled here, not by aiohttp, so that the pongs a client sends (the
        # official sample answers PINGPONG with one) are seen and counted.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        session = FeedSession(next(self._session_ids), ws)
        self.sessions[session.id] = session
        sender = asyncio.create_task(session.send_all())
        try:
            async for message in ws:
                if message.type == WSMsgType.PING:
                    await ws.pong(message.data)
                    continue
                if message.type == WSMsgType.PONG:
                    session.pongs += 1
                    continue
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    parsed = json.loads(message.data)
                    header = parsed["header"]
                    is_pingpong = header.get("tr_id") == PINGPONG
                except (ValueError, KeyError, TypeError, AttributeError):
                    session.post(
                        "control",
                        ack("", "", "OPSP9999", "JSON PARSING ERROR : invalid json format", ok=False),
                    )
                    continue
                if is_pingpong:
                    session.echoes += 1
                elif self.take_drop(parsed):
                    # KIS's README: a session cut right after a registration, with no close frame,
                    # means the HTS id is wrong. The TCP connection just ends.
                    request.transport.abort()
                    break
                else:
                    session.post("control", self.handle_registration(session, parsed))
        finally:
            del self.sessions[session.id]
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return ws

    async def ping_all(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            message = json.dumps(
                {"header": {"tr_id": PINGPONG, "datetime": now_kst().strftime("%Y%m%d%H%M%S")}}
            )
            for session in list(self.sessions.values()):
                session.post("control", message)

    # --- control API ------------------------------------------------------------------------

    async def get_control(self, request: web.Request) -> web.Response:
        return answer(
            {"ping_interval": self.ping_interval, "sessions": [s.view() for s in self.sessions.values()]}
        )

    async def post_control(self, request: web.Request) -> web.Response:
        body = await json_of(request)
        interval = body.get("ping_interval") if isinstance(body, dict) else None
        if not is_number(interval) or interval <= 0:
            raise BadInput('the body is {"ping_interval": <seconds > 0>}')
        self.ping_interval = float(interval)
        # The new interval takes effect now, not after the current (possibly long) wait.
        request.app[PING_TASK].cancel()
        request.app[PING_TASK] = asyncio.create_task(self.ping_all())
        return await self.get_control(request)

    async def post_faults(self, request: web.Request) -> web.Response:
        body = await json_of(request)
        if not isinstance(body, dict) or body.get("mode") != "drop_after_registration":
            raise BadInput('the body is {"mode": "drop_after_registration", "count": N, "tr_id"?}')
        count, tr_id = body.get("count", 1), body.get("tr_id")
        if not is_whole(count) or count < 0 or not (tr_id is None or isinstance(tr_id, str)):
            raise BadInput("count is a whole number >= 0; tr_id a TR id (absent: any registration)")
        if count:
            self.drops.append([tr_id, count])
        return answer({"drops": [{"tr_id": t, "remaining": n} for t, n in self.drops]})

    async def drop(self, request: web.Request) -> web.Response:
        sessions = list(self.sessions.values())
        for session in sessions:
            await session.ws.close(code=1011, message=b"dropped by /_fake/realtime/drop")
        return answer({"dropped": len(sessions)})

    async def burst(self, request: web.Request) -> web.Response:
        body = await json_of(request)
        if not isinstance(body, dict):
            raise BadInput('the body is {"stock_code", "trades", "seconds"}')
        code, trades, seconds = body.get("stock_code"), body.get("trades"), body.get("seconds", 1.0)
        if not STOCK_CODE_RE.match(str(code)):
            raise BadInput("a stock code is 6 digits or upper-case letters")
        if not is_whole(trades) or not 1 <= trades <= 100_000 or not is_number(seconds) or seconds < 0:
            raise BadInput("trades is a whole number 1..100000, seconds a number >= 0")
        stock = self.state.stock(code)
        rounds = max(1, int(seconds * 50))  # the trades go out in about 50 slices a second
        per_round, extra = divmod(trades, rounds)
        for round_no in range(rounds):
            for _ in range(per_round + (round_no < extra)):
                step = self.state.rng.choice((-1, 1)) * tick_size(stock.price)
                self.state.set_price(
                    stock.code, min(stock.upper_limit, max(stock.lower_limit, stock.price + step))
                )
            await asyncio.sleep(seconds / rounds)
        return answer(
            {"stock_code": stock.code, "trades": trades, "last_price": stock.price, "volume": stock.volume}
        )


def setup_realtime(app: web.Application, state: SimulatorState) -> None:
    feed = RealtimeFeed(state)

    async def pinging(app: web.Application):
        app[PING_TASK] = asyncio.create_task(feed.ping_all())
        yield
        app[PING_TASK].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[PING_TASK]
        for session in list(feed.sessions.values()):
            await session.ws.close()

    app.cleanup_ctx.append(pinging)
    app.router.add_get(REALTIME_PATH, feed.websocket)
    app.router.add_get("/_fake/realtime", feed.get_control)
    app.router.add_post("/_fake/realtime", feed.post_control)
    app.router.add_post("/_fake/realtime/drop", feed.drop)
    app.router.add_post("/_fake/realtime/faults", feed.post_faults)
    app.router.add_post("/_fake/realtime/burst", feed.burst)
