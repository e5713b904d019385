"""The simulator's real-time feed on a real WebSocket, spoken by hand as KIS clients speak it."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
import websockets
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.fixtures.simulator import DEMO_CANO

from .test_rest import Wire

FILL_TR = "H0STCNI9"
HTS_ID = f"sim{DEMO_CANO}"


def approval_key(simulator, appkey: str) -> str:
    body = {"grant_type": "client_credentials", "appkey": appkey, "secretkey": "secret"}
    return httpx.post(simulator.url + "/oauth2/Approval", json=body).json()["approval_key"]


def registration(key: str, tr_id: str, tr_key: str) -> str:
    header = {"approval_key": key, "custtype": "P", "tr_type": "1", "content-type": "utf-8"}
    return json.dumps({"header": header, "body": {"input": {"tr_id": tr_id, "tr_key": tr_key}}})


def decrypt(key: str, iv: str, text: str) -> str:
    decryptor = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).decryptor()
    padded = decryptor.update(base64.b64decode(text)) + decryptor.finalize()
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    return (unpadder.update(padded) + unpadder.finalize()).decode()


async def control(simulator, method: str, path: str, body: object = None) -> dict:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        response = await http.request(method, path, json=body)
    response.raise_for_status()
    return response.json()


async def next_text(ws, prefix: str) -> str:
    while not (message := await asyncio.wait_for(ws.recv(), 5)).startswith(prefix):
        pass
    return message


async def test_an_order_is_announced_at_placement_and_its_fill_later(simulator):
    simulator.set_prices_moving(False)
    simulator.set_price("005930", 70_000)
    async with websockets.connect(simulator.ws_url + "/tryitout") as ws:
        await ws.send(registration(approval_key(simulator, "notice-key"), FILL_TR, HTS_ID))
        ack = json.loads(await ws.recv())
        assert ack["header"] == {"tr_id": FILL_TR, "tr_key": HTS_ID, "encrypt": "Y"}
        secret = ack["body"]["output"]

        wire = Wire(simulator.url)
        order_no = wire.order(DEMO_CANO, "005930", 3, price=69_000)["output"]["ODNO"]
        encrypted, tr_id, count, payload = (await next_text(ws, "1|")).split("|")
        accepted = decrypt(secret["key"], secret["iv"], payload).split("^")
        assert (encrypted, tr_id, count, len(accepted)) == ("1", FILL_TR, "001", 26)
        # CUST_ID, ACNT_NO, ODER_NO, ODER_QTY, SELN_BYOV_CLS, .., ODER_KIND, .., code, CNTG_QTY, CNTG_UNPR
        assert accepted[:4] == [HTS_ID, f"{DEMO_CANO}01", order_no, "3"]
        assert (accepted[4], accepted[6], accepted[8]) == ("02", "00", "005930")
        assert (accepted[9], accepted[10], accepted[13], accepted[25]) == ("3", "69000", "1", "69000")

        simulator.set_price("005930", 68_900)
        filled = decrypt(secret["key"], secret["iv"], (await next_text(ws, "1|")).split("|")[3]).split("^")
        assert (filled[2], filled[9], filled[10], filled[13], filled[25]) == (
            order_no,
            "3",
            "69000",
            "2",
            "69000",
        )


async def test_a_market_order_is_announced_then_filled(simulator):
    async with websockets.connect(simulator.ws_url + "/tryitout") as ws:
        await ws.send(registration(approval_key(simulator, "notice-key"), FILL_TR, HTS_ID))
        secret = json.loads(await ws.recv())["body"]["output"]
        Wire(simulator.url).order(DEMO_CANO, "000660", 2)
        notices = [
            decrypt(secret["key"], secret["iv"], (await next_text(ws, "1|")).split("|")[3]).split("^")
            for _ in range(2)
        ]
    assert [(n[13], n[6], n[3], n[25]) for n in notices] == [("1", "01", "2", "0"), ("2", "01", "2", "0")]


async def test_a_second_session_of_an_app_key_is_answered_opsp8996_in_kis_shape(simulator):
    key = approval_key(simulator, "busy-key")
    async with websockets.connect(simulator.ws_url + "/tryitout") as first:
        await first.send(registration(key, "H0STCNT0", "005930"))
        assert json.loads(await first.recv())["body"]["msg_cd"] == "OPSP0000"
        async with websockets.connect(simulator.ws_url + "/tryitout") as second:
            await second.send(registration(approval_key(simulator, "busy-key"), "H0STCNT0", "000660"))
            assert json.loads(await second.recv()) == {
                "header": {"tr_id": "(null)", "tr_key": "", "encrypt": "N"},
                "body": {"rt_cd": "9", "msg_cd": "OPSP8996", "msg1": "ALREADY IN USE appkey"},
            }


async def test_registration_refusals_use_kis_codes(simulator):
    key = approval_key(simulator, "refusal-key")
    async with websockets.connect(simulator.ws_url + "/tryitout") as ws:
        for message, msg_cd in (
            (registration("not-an-approval-key", "H0STCNT0", "005930"), "OPSP0011"),
            (registration(key, "H0STXXX0", "005930"), "OPSP8991"),
            (registration(key, "H0STCNT0", "12345"), "OPSP8992"),
            ("not json", "OPSP9999"),
        ):
            await ws.send(message)
            body = json.loads(await ws.recv())["body"]
            assert (body["rt_cd"], body["msg_cd"]) == ("1", msg_cd)


async def test_the_drop_fault_cuts_the_session_after_a_registration_without_a_close_frame(simulator):
    await control(
        simulator,
        "POST",
        "/_fake/realtime/faults",
        {"mode": "drop_after_registration", "count": 1, "tr_id": FILL_TR},
    )
    key = approval_key(simulator, "dropped-key")
    async with websockets.connect(simulator.ws_url + "/tryitout") as ws:
        await ws.send(registration(key, "H0STCNT0", "005930"))  # another TR: not dropped
        assert json.loads(await ws.recv())["body"]["msg_cd"] == "OPSP0000"
        await ws.send(registration(key, FILL_TR, "wrong-hts-id"))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is None  # no close frame came
    async with websockets.connect(simulator.ws_url + "/tryitout") as ws:  # the fault was used up
        await ws.send(registration(approval_key(simulator, "dropped-key"), FILL_TR, HTS_ID))
        assert json.loads(await ws.recv())["body"]["msg_cd"] == "OPSP0000"


async def test_pingpong_is_sent_as_kis_does_and_both_answers_are_counted(simulator):
    default = (await control(simulator, "GET", "/_fake/realtime"))["ping_interval"]
    await control(simulator, "POST", "/_fake/realtime", {"ping_interval": 0.1})
    try:
        session = await pingpong_answers(simulator)
    finally:
        await control(simulator, "POST", "/_fake/realtime", {"ping_interval": default})
    assert session["echoes"] >= 1 and session["pongs"] >= 1


async def pingpong_answers(simulator) -> dict:
    async with websockets.connect(simulator.ws_url + "/tryitout") as ws:
        pingpong = json.loads(await next_text(ws, "{"))
        assert pingpong["header"]["tr_id"] == "PINGPONG" and len(pingpong["header"]["datetime"]) == 14
        await ws.send(json.dumps(pingpong))  # python-kis echoes the text
        await ws.pong(b"PINGPONG")  # the official sample answers with a pong frame
        await ws.ping()
        for _ in range(50):
            [session] = (await control(simulator, "GET", "/_fake/realtime"))["sessions"]
            if session["echoes"] and session["pongs"]:
                break
            await asyncio.sleep(0.05)
    return session
