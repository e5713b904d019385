"""The KIS real-time adapter: the wire format by hand, then sessions against the simulator's feed over a
real WebSocket (prices, PINGPONG, fill notices, dropped connections, the registration limit), then against
small in-test servers that misbehave as KIS's sources say it does (tests/trading/test_realtime_faults.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

import httpx
import pytest
import websockets

from kis_simulator.realtime import encrypt_payload
from tests.fixtures.simulator import DEMO_CANO
from trading.brokers.base import BadBrokerResponse
from trading.brokers.realtime import (
    FILL_TR_PAPER,
    KST,
    MAX_REGISTRATIONS,
    PRICE_TR,
    Credentials,
    RealtimeSession,
    ReconnectBackoff,
    Registration,
    decrypt_payload,
    follows_krx_hours,
    krx_is_open,
    kst_unix,
    parse_fill_notice,
    parse_tick,
    parse_wire_frame,
    realtime_url,
    registration_message,
    split_records,
)

# Records in KIS's own format (46 and 26 fields), as the official samples print them.
SAMSUNG = (
    "005930^093354^71900^5^-100^-0.14^72023.83^72100^72400^71700^71900^71800^1^3052507^219853241700^5105^"
    "6937^1832^84.90^1366314^1159996^1^0.39^20.28^090020^5^-200^090820^5^-500^092619^2^200^20230612^20^N^"
    "65945^216924^1118750^2199206^0.05^2424142^125.92^0^^72100"
)
HYNIX = (
    "000660^093355^182500^2^500^0.27^182310.50^182000^183000^181500^182600^182500^7^1200345^218833241700^"
    "3105^4937^1832^104.90^366314^359996^5^0.41^21.28^090010^2^500^091020^5^-500^090219^2^1000^20230612^20^N^"
    "15945^16924^118750^199206^0.04^424142^95.92^0^^182000"
)
FILL = "sim50123456^5012345601^0000004101^10^02^0^01^0^005930^10^71900^093401^0^2^2^00950^^^^^N^^^^삼성전자^0"
ACCEPTED = "sim50123456^5012345601^0000004101^10^02^0^01^0^005930^0^0^093400^0^1^1^00950^^^^^N^^^^삼성전자^0"
AES_KEY, AES_IV = "a" * 16 + "B" * 16, "0123456789abcdef"


class RecordingSocket:
    """What the session sends back, without a network."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.pongs: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)

    async def pong(self, data: str) -> None:
        self.pongs.append(data)


def collecting_session(
    url: str = "ws://127.0.0.1:9/tryitout", **options
) -> tuple[RealtimeSession, list, list]:
    ticks, fills = [], []
    session = RealtimeSession(
        Credentials("http://127.0.0.1:9", "app-key", "app-secret"),
        name="test",
        url=url,
        on_tick=ticks.append,
        on_fill=fills.append,
        **options,
    )
    return session, ticks, fills


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05):
    async with asyncio.timeout(timeout):
        while not (result := predicate()):
            await asyncio.sleep(interval)
    return result


# --- the wire format ------------------------------------------------------------------------------


def test_a_price_frame_with_one_record():
    frame = parse_wire_frame(f"0|H0STCNT0|001|{SAMSUNG}")
    assert (frame.tr_id, frame.encrypted, frame.count) == (PRICE_TR, False, 1)
    [record] = split_records(frame.payload, frame.count)
    tick = parse_tick(record)
    assert tick.stock_code == "005930" and tick.time == "093354"
    assert (tick.price, tick.change, tick.change_rate) == (71900, -100, -0.14)
    assert (tick.open, tick.high, tick.low) == (72100, 72400, 71700)
    assert (tick.trade_volume, tick.volume) == (1, 3052507)


def test_several_records_in_one_frame():
    frame = parse_wire_frame(f"0|H0STCNT0|003|{SAMSUNG}^{HYNIX}^{SAMSUNG}")
    ticks = [parse_tick(record) for record in split_records(frame.payload, frame.count)]
    assert [(t.stock_code, t.price) for t in ticks] == [
        ("005930", 71900),
        ("000660", 182500),
        ("005930", 71900),
    ]
    assert ticks[1].change == 500 and ticks[1].volume == 1200345


@pytest.mark.parametrize(
    "text",
    [
        f"0|H0STCNT0|002|{SAMSUNG}^extra",  # fields do not split into two records
        "0|H0STCNT0|abc|005930",
        "0|H0STCNT0",
    ],
)
def test_frames_that_do_not_split_into_records_are_refused_whole(text):
    with pytest.raises(BadBrokerResponse):
        frame = parse_wire_frame(text)
        split_records(frame.payload, frame.count)


def with_field(record: str, index: int, value: str) -> str:
    fields = record.split("^")
    fields[index] = value
    return "^".join(fields)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (2, "71,900"),  # a price that is not a number
        (2, "abc"),
        (2, "0"),  # a price is positive
        (2, "99999999999999999999"),  # beyond 64 bits: PostgreSQL and msgpack refuse it
        (4, "1e400"),
        (5, "1e400"),  # a change % of inf
        (5, "nan"),
        (13, "-5"),  # a negative volume
        (1, "256199"),  # not a time of day
        (0, "5930"),  # not a stock code
    ],
)
def test_a_record_with_a_bad_number_or_field_is_refused(index, value):
    with pytest.raises(BadBrokerResponse):
        parse_tick(with_field(SAMSUNG, index, value).split("^"))


def test_a_record_too_short_is_refused():
    with pytest.raises(BadBrokerResponse):
        parse_tick(["005930", "093354", "71900"])


def test_fill_notices_tell_a_fill_from_an_acceptance():
    accepted, filled = (parse_fill_notice(record) for record in split_records(f"{ACCEPTED}^{FILL}", 2))
    assert not accepted.filled and filled.filled
    assert (filled.hts_id, filled.account_no, filled.order_no) == ("sim50123456", "5012345601", "0000004101")
    assert (filled.side, filled.stock_code, filled.qty, filled.price) == ("buy", "005930", 10, 71900)


def test_fill_notices_of_23_26_and_more_fields_parse_alike_by_name():
    """The record grew from 23 to 26 fields in 2025, three inserted after ACNT_NAME (python-kis #68, #80;
    ccnl_notice.py names 26). The fields read all come before the insertion."""
    fields = FILL.split("^")
    assert len(fields) == 26
    older = fields[:18] + fields[21:]  # without ORD_COND_PRC, ORD_EXG_GB, POPUP_YN
    longer = [*fields, "X", "Y"]  # a field KIS may add at the end one day
    notices = [parse_fill_notice(record) for record in (fields, older, longer)]
    assert notices[0] == notices[1] == notices[2]
    assert notices[0].name == "삼성전자"  # CNTG_ISNM40, where each layout has it
    [a, b] = split_records("^".join(older + older), 2)  # two 23-field records in one frame
    assert parse_fill_notice(a) == parse_fill_notice(b) == notices[0]


def test_fill_notice_payload_decrypts_what_the_simulator_encrypts():
    ciphertext = encrypt_payload(AES_KEY, AES_IV, FILL)
    assert FILL not in ciphertext
    assert decrypt_payload(AES_KEY, AES_IV, ciphertext) == FILL
    with pytest.raises(BadBrokerResponse):
        decrypt_payload("x" * 32, AES_IV, ciphertext)


def test_registration_messages():
    registration = Registration(PRICE_TR, "005930")
    subscribe = json.loads(registration_message("approval-1", registration, subscribe=True))
    assert subscribe == {
        "header": {"approval_key": "approval-1", "custtype": "P", "tr_type": "1", "content-type": "utf-8"},
        "body": {"input": {"tr_id": "H0STCNT0", "tr_key": "005930"}},
    }
    unsubscribe = json.loads(registration_message("approval-1", registration, subscribe=False))
    assert unsubscribe["header"]["tr_type"] == "2"


def test_where_the_feed_lives():
    assert (
        realtime_url("https://openapi.koreainvestment.com:9443")
        == "ws://ops.koreainvestment.com:21000/tryitout"
    )
    assert (
        realtime_url("https://openapivts.koreainvestment.com:29443")
        == "ws://ops.koreainvestment.com:31000/tryitout"
    )
    assert realtime_url("http://127.0.0.1:8765") == "ws://127.0.0.1:8765/tryitout"
    assert follows_krx_hours(realtime_url("https://openapi.koreainvestment.com:9443"))
    assert not follows_krx_hours(realtime_url("http://127.0.0.1:8765"))


def test_krx_hours_and_trade_times():
    assert krx_is_open(datetime(2026, 11, 25, 9, 0, tzinfo=KST))  # a Wednesday
    assert not krx_is_open(datetime(2026, 11, 25, 15, 30, tzinfo=KST))
    assert not krx_is_open(datetime(2026, 11, 28, 10, 0, tzinfo=KST))  # a Saturday
    now = datetime(2026, 11, 25, 10, 0, 5, tzinfo=KST)
    assert kst_unix("100000", now) == int(now.timestamp()) - 5
    assert kst_unix("235959", datetime(2026, 11, 25, 0, 0, 1, tzinfo=KST)) == int(
        datetime(2026, 11, 24, 23, 59, 59, tzinfo=KST).timestamp()
    )


def test_a_session_holds_at_most_41_registrations():
    session, _, _ = collecting_session()
    session.register(Registration(PRICE_TR, f"{i:06d}") for i in range(MAX_REGISTRATIONS))
    with pytest.raises(ValueError):
        session.register(Registration(PRICE_TR, f"{i:06d}") for i in range(MAX_REGISTRATIONS + 1))


async def test_messages_go_to_the_callbacks_and_pingpong_is_echoed_and_ponged():
    session, ticks, fills = collecting_session()
    socket = RecordingSocket()
    pingpong = '{"header":{"tr_id":"PINGPONG","datetime":"20261125093400"}}'
    ack = {
        "header": {"tr_id": FILL_TR_PAPER, "tr_key": "sim50123456", "encrypt": "N"},
        "body": {
            "rt_cd": "0",
            "msg_cd": "OPSP0000",
            "msg1": "SUBSCRIBE SUCCESS",
            "output": {"iv": AES_IV, "key": AES_KEY},
        },
    }

    await session.handle_message(socket, f"0|H0STCNT0|002|{SAMSUNG}^{HYNIX}")
    await session.handle_message(socket, pingpong)
    await session.handle_message(socket, json.dumps(ack))
    await session.handle_message(socket, f"1|H0STCNI9|001|{encrypt_payload(AES_KEY, AES_IV, FILL)}")

    assert [t.stock_code for t in ticks] == ["005930", "000660"]
    # Echoed as text (python-kis) and answered with a pong frame carrying it (official kis_auth.py).
    assert socket.sent == [pingpong] and socket.pongs == [pingpong]
    assert session.active == {Registration(FILL_TR_PAPER, "sim50123456")}
    assert [(f.order_no, f.filled) for f in fills] == [("0000004101", True)]


async def test_a_bad_record_is_dropped_alone_and_logged(caplog):
    session, ticks, _ = collecting_session()
    overflowing = with_field(HYNIX, 2, "99999999999999999999")
    not_a_number = with_field(SAMSUNG, 2, "7l900")
    frame = f"0|H0STCNT0|004|{not_a_number}^{HYNIX}^{overflowing}^{SAMSUNG}"

    await session.handle_message(RecordingSocket(), frame)

    assert [(t.stock_code, t.price) for t in ticks] == [("000660", 182500), ("005930", 71900)]
    dropped = [r.getMessage() for r in caplog.records if "dropped a H0STCNT0 record" in r.getMessage()]
    assert len(dropped) == 2 and "'7l900'" in dropped[0] and "out of range" in dropped[1]


def test_reconnects_back_off_until_a_connection_stays_up_for_the_healthy_period():
    backoff = ReconnectBackoff(shortest=0.5, longest=60, refused=300, healthy_after=60)
    # Connected, then dropped at once, again and again (a wrong HTS id): never back to 0.5 s.
    assert [backoff.after(connected_for=0.2) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.after(connected_for=0.0) == 60  # the connection did not even open
    assert backoff.after(connected_for=61) == 0.5  # a healthy connection: the next drop is retried fast
    assert backoff.after(connected_for=1) == 1
    assert backoff.after(connected_for=1, refused=True) == 300  # OPSP8996: another client holds the key
    assert backoff.after(connected_for=1) == 4


async def test_an_encrypted_frame_before_its_key_is_skipped_not_fatal():
    session, _, fills = collecting_session()
    with pytest.raises(BadBrokerResponse):
        await session.handle_message(
            RecordingSocket(), f"1|H0STCNI9|001|{encrypt_payload(AES_KEY, AES_IV, FILL)}"
        )
    assert fills == []


# --- against the simulator's feed -----------------------------------------------------------------


def feed_view(simulator) -> dict:
    return httpx.get(f"{simulator.url}/_fake/realtime", timeout=10).json()


def feed_control(simulator, path: str = "", **body) -> dict:
    response = httpx.post(f"{simulator.url}/_fake/realtime{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def registrations_of(simulator, tr_id: str, tr_key: str) -> int:
    """How many live simulator sessions hold this registration."""
    return sum([tr_id, tr_key] in session["registrations"] for session in feed_view(simulator)["sessions"])


def simulator_session(simulator, app_key: str = "realtime-test-key", **options):
    ticks, fills = [], []
    session = RealtimeSession(
        Credentials(simulator.url, app_key, "secret"),
        name="test",
        on_tick=ticks.append,
        on_fill=fills.append,
        **options,
    )
    return session, ticks, fills


async def test_prices_of_registered_codes_stream_and_pingpong_is_answered(simulator, running):
    feed_control(simulator, ping_interval=0.2)
    try:
        session, ticks, _ = simulator_session(simulator)
        session.register({Registration(PRICE_TR, "005930"), Registration(PRICE_TR, "000660")})
        running(session)

        await wait_until(lambda: {t.stock_code for t in ticks} == {"005930", "000660"})
        await wait_until(lambda: any(s["echoes"] >= 2 for s in feed_view(simulator)["sessions"]))
        assert session.active == {Registration(PRICE_TR, "005930"), Registration(PRICE_TR, "000660")}

        session.register({Registration(PRICE_TR, "000660")})
        await wait_until(lambda: registrations_of(simulator, PRICE_TR, "005930") == 0)
        await wait_until(lambda: Registration(PRICE_TR, "005930") not in session.active)
        assert registrations_of(simulator, PRICE_TR, "000660") == 1
    finally:
        feed_control(simulator, ping_interval=10)


async def test_registers_everything_again_after_the_simulator_drops_the_connection(simulator, running):
    session, ticks, _ = simulator_session(simulator)
    session.register({Registration(PRICE_TR, "035420")})
    running(session)
    await wait_until(lambda: session.active and ticks)

    assert feed_control(simulator, "/drop")["dropped"] >= 1
    await wait_until(lambda: session.connections == 2 and session.active)
    received = len(ticks)
    await wait_until(lambda: len(ticks) > received)
    assert registrations_of(simulator, PRICE_TR, "035420") == 1


async def test_no_key_or_secret_reaches_the_log_even_at_debug_level(simulator, running, caplog):
    caplog.set_level(logging.DEBUG)
    session, ticks, _ = simulator_session(simulator, app_key="never-logged-app-key")
    session.register({Registration(PRICE_TR, "005930")})
    running(session)
    await wait_until(lambda: session.active and ticks)
    feed_control(simulator, "/drop")
    await wait_until(lambda: session.connections == 2 and session.active)

    assert caplog.records  # the wire was logged, at DEBUG too
    for secret in ("approval_key", "never-logged-app-key", '"secret"', "secretkey"):
        assert secret not in caplog.text


async def test_fill_notices_arrive_decrypted(simulator, running):
    session, _, fills = simulator_session(simulator)
    session.register({Registration(FILL_TR_PAPER, f"sim{DEMO_CANO}")})
    running(session)
    await wait_until(lambda: session.active)

    order = await asyncio.to_thread(buy_on_the_simulator, simulator, "005930", 3)

    accepted, filled = await wait_until(lambda: len(fills) >= 2 and fills)
    assert not accepted.filled and filled.filled
    assert (filled.order_no, filled.stock_code, filled.side, filled.qty) == (order, "005930", "buy", 3)
    assert filled.hts_id == f"sim{DEMO_CANO}" and filled.account_no.startswith(DEMO_CANO)


def buy_on_the_simulator(simulator, code: str, qty: int) -> str:
    """A market buy through the KIS REST wire; the order number."""
    with httpx.Client(base_url=simulator.url, timeout=10) as http:
        token = http.post(
            "/oauth2/tokenP",
            json={"grant_type": "client_credentials", "appkey": "realtime-test-key", "appsecret": "secret"},
        ).json()["access_token"]
        answer = http.post(
            "/uapi/domestic-stock/v1/trading/order-cash",
            json={
                "CANO": DEMO_CANO,
                "ACNT_PRDT_CD": "01",
                "PDNO": code,
                "ORD_DVSN": "01",
                "ORD_QTY": str(qty),
                "ORD_UNPR": "0",
                "EXCG_ID_DVSN_CD": "KRX",
            },
            headers={
                "authorization": f"Bearer {token}",
                "appkey": "realtime-test-key",
                "appsecret": "secret",
                "tr_id": "VTTC0012U",
                "custtype": "P",
            },
        ).json()
    assert answer["rt_cd"] == "0", answer
    return answer["output"]["ODNO"]


async def test_the_feed_stays_closed_outside_market_hours(simulator, running):
    market = {"open": False}
    session, ticks, _ = simulator_session(simulator, market_open=lambda: market["open"], market_check=0.05)
    session.register({Registration(PRICE_TR, "005930")})
    running(session)

    await asyncio.sleep(0.5)  # many market checks: none may connect
    assert session.connections == 0 and simulator.calls("Approval") == 0

    market["open"] = True
    await wait_until(lambda: ticks)
    assert session.connections == 1


async def test_simulator_refuses_a_42nd_registration_and_a_second_session_of_one_app_key(simulator):
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        approval = (
            await http.post(
                "/oauth2/Approval",
                json={"grant_type": "client_credentials", "appkey": "limit-test", "secretkey": "s"},
            )
        ).json()
    url = realtime_url(simulator.url)

    async def register(ws, code: str) -> dict:
        await ws.send(
            registration_message(approval["approval_key"], Registration(PRICE_TR, code), subscribe=True)
        )
        while not (answer := await ws.recv()).startswith("{"):
            pass  # a price frame of a code registered before
        return json.loads(answer)

    async with websockets.connect(url) as first, websockets.connect(url) as second:
        answers = [await register(first, f"9{i:05d}") for i in range(MAX_REGISTRATIONS + 1)]
        assert {a["body"]["msg_cd"] for a in answers[:-1]} == {"OPSP0000"}
        assert answers[-1]["body"]["msg_cd"] == "OPSP0008" and answers[-1]["body"]["rt_cd"] != "0"
        assert set(answers[0]["body"]["output"]) == {"iv", "key"}
        assert (await register(first, "900000"))["body"]["msg_cd"] == "OPSP0002"
        assert (await register(first, "12345"))["body"]["msg_cd"] == "OPSP8992"
        assert (await register(second, "005930"))["body"]["msg_cd"] == "OPSP8996"
