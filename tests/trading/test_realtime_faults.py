"""The real-time session against small WebSocket servers written here, each misbehaving as KIS's public
sources say the live feed does: a drop without a close frame right after a fill-notice registration
(the official README, "No close frame received": a wrong HTS id), OPSP8996 (the app key holds a session
elsewhere), a server gone silent, and PINGPONG. Approval keys come from the simulator (which counts
them); the WebSocket is the test's own server."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from tests.trading.test_realtime import SAMSUNG, simulator_session, wait_until
from trading.brokers.realtime import FILL_TR_PAPER, PRICE_TR, Registration

PINGPONG = '{"header":{"tr_id":"PINGPONG","datetime":"20261125093400"}}'
FILLS = Registration(FILL_TR_PAPER, "wrong-hts-id")
SAMSUNG_PRICE = Registration(PRICE_TR, "005930")


class BrokerConnection(ServerConnection):
    """A server connection that also keeps the pong frames it receives (websockets drops unsolicited ones)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pongs: list[bytes] = []

    def process_event(self, event) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PONG:
            self.pongs.append(bytes(event.data))
        super().process_event(event)


class FakeBroker:
    """What the test's server saw: connections, and every registration sent, in order."""

    def __init__(self) -> None:
        self.connections: list[BrokerConnection] = []
        self.registrations: list[Registration] = []

    def count(self, registration: Registration) -> int:
        return self.registrations.count(registration)


def registration_of(message: str) -> Registration:
    body = json.loads(message)["body"]["input"]
    return Registration(body["tr_id"], body["tr_key"])


def ack(registration: Registration, msg_cd: str = "OPSP0000", msg1: str = "SUBSCRIBE SUCCESS") -> str:
    return json.dumps(
        {
            "header": {"tr_id": registration.tr_id, "tr_key": registration.tr_key, "encrypt": "N"},
            "body": {"rt_cd": "0" if msg_cd == "OPSP0000" else "1", "msg_cd": msg_cd, "msg1": msg1},
        }
    )


@asynccontextmanager
async def fake_broker(on_message: Callable[[BrokerConnection, Registration], Awaitable[None]]):
    """A WebSocket server calling `on_message` for every registration; yields (its URL, what it saw)."""
    broker = FakeBroker()

    async def handler(ws: BrokerConnection) -> None:
        broker.connections.append(ws)
        async for message in ws:
            if message.startswith("{") and "PINGPONG" not in message:
                registration = registration_of(message)
                broker.registrations.append(registration)
                await on_message(ws, registration)

    async with serve(handler, "127.0.0.1", 0, create_connection=BrokerConnection) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/tryitout", broker


async def drop_after_fill_registration(ws: BrokerConnection, registration: Registration) -> None:
    if registration.tr_id == FILL_TR_PAPER:
        ws.transport.abort()  # no close frame, as KIS does for a wrong HTS id
        return
    await ws.send(ack(registration))
    await ws.send(f"0|{PRICE_TR}|001|{SAMSUNG}")


async def test_a_fill_registration_always_followed_by_a_drop_is_suspended_and_prices_go_on(
    simulator, running, caplog
):
    async with fake_broker(drop_after_fill_registration) as (url, broker):
        session, ticks, _ = simulator_session(
            simulator, url=url, retry_delay=0.01, max_retry_delay=0.05, drops_before_suspending=3
        )
        session.register({FILLS, SAMSUNG_PRICE})
        running(session)

        await wait_until(lambda: session.active == {SAMSUNG_PRICE} and ticks)

        assert session.suspended == {FILLS} and broker.count(FILLS) == 3
        connections = len(broker.connections)
        session.register({FILLS, SAMSUNG_PRICE, Registration(PRICE_TR, "000660")})  # the feed's next round
        await wait_until(lambda: Registration(PRICE_TR, "000660") in session.active)
        assert broker.count(FILLS) == 3 and len(broker.connections) == connections
    assert "after the H0STCNI9 registration of HTS id 'wrong-hts-id'" in caplog.text
    assert "realtime-test-key" not in caplog.text


async def test_a_new_hts_id_is_tried_again(simulator, running):
    async with fake_broker(drop_after_fill_registration) as (url, broker):
        session, _, _ = simulator_session(
            simulator, url=url, retry_delay=0.01, max_retry_delay=0.05, drops_before_suspending=2
        )
        session.register({FILLS})
        running(session)
        await wait_until(lambda: session.suspended)

        fixed = Registration(FILL_TR_PAPER, "right-hts-id")
        session.register({fixed})
        await wait_until(lambda: broker.count(fixed) >= 1)
        assert session.suspended <= {fixed}


async def test_reconnects_keep_backing_off_while_every_connection_is_dropped_at_once(simulator, running):
    async def drop_at_once(ws: BrokerConnection, registration: Registration) -> None:
        ws.transport.abort()

    async with fake_broker(drop_at_once) as (url, broker):
        session, _, _ = simulator_session(simulator, url=url, retry_delay=0.01, max_retry_delay=0.08)
        session.register({SAMSUNG_PRICE})
        running(session)
        # Reset on every connect, as before, the wait would stay at 0.01 s for good.
        await wait_until(lambda: session.retry_in == 0.08)
        assert len(broker.connections) >= 4 and not session.suspended  # prices are never suspended


async def test_opsp8996_waits_long_and_shows_the_refusal(simulator, running):
    async def app_key_in_use(ws: BrokerConnection, registration: Registration) -> None:
        await ws.send(ack(registration, "OPSP8996", "ALREADY IN USE appkey"))

    async with fake_broker(app_key_in_use) as (url, broker):
        session, _, _ = simulator_session(
            simulator, url=url, retry_delay=0.01, max_retry_delay=0.05, refused_retry_delay=600
        )
        session.register({SAMSUNG_PRICE})
        running(session)
        await wait_until(lambda: session.retry_in == 600)

        assert session.refusal == "OPSP8996 ALREADY IN USE appkey"
        assert len(broker.connections) == 1 and simulator.calls("Approval") == 1


async def test_a_silent_session_is_connected_again(simulator, running, caplog):
    async def ack_then_say_nothing(ws: BrokerConnection, registration: Registration) -> None:
        await ws.send(ack(registration))

    async with fake_broker(ack_then_say_nothing) as (url, _):
        session, _, _ = simulator_session(simulator, url=url, retry_delay=0.01, silence_timeout=0.3)
        session.register({SAMSUNG_PRICE})
        running(session)
        await wait_until(lambda: session.connections >= 2)
    assert "SessionSilent nothing received for" in caplog.text


async def test_pingpong_is_echoed_as_text_and_answered_with_a_pong_frame(simulator, running):
    echoes = []

    async def pingpong_first(ws: BrokerConnection, registration: Registration) -> None:
        await ws.send(ack(registration))
        await ws.send(PINGPONG)
        echoes.append(await ws.recv())

    async with fake_broker(pingpong_first) as (url, broker):
        session, _, _ = simulator_session(simulator, url=url)
        session.register({SAMSUNG_PRICE})
        running(session)
        await wait_until(lambda: echoes and broker.connections[0].pongs)

        assert echoes == [PINGPONG]
        assert broker.connections[0].pongs == [PINGPONG.encode()]
