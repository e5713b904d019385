"""Check a KIS account step by step, as the application will use it, and say what failed in plain words.

The steps: an access token, the first balance page, the real-time approval key, a subscribe and
unsubscribe of one stock's prices on the real-time WebSocket, and the fill-notice registration when
the account has an HTS id. Nothing is ordered. After a failed step the later ones are not tried: each
needs the ones before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from .base import BrokerError
from .kis import KoreaInvestService
from .realtime import (
    ACK_SUBSCRIBED,
    ACK_UNSUBSCRIBED,
    PRICE_TR,
    Registration,
    fill_tr,
    is_wire_frame,
    issue_approval_key,
    parse_control,
    realtime_url,
    registration_message,
    wire_logger,
)

PROBE_STOCK = "005930"  # listed on every KIS environment, so its registration says nothing about the code
ACK_TIMEOUT = 10.0

PLAIN_WORDS = {
    "EGW00103": "the app key was refused",
    "EGW00105": "the app secret was refused",
    "EGW00133": "a token was issued for this app key less than a minute ago; try again in a minute",
    "EGW00201": "too many calls per second for this app key",
    "EGW02006": "the environment (real or paper) is not the account's",
    "OPSP8996": "the app key's real-time session is in use elsewhere (KIS allows one per app key: "
    "is the price feed or another program running with it?)",
}
# How KIS says the account number (CANO) or its product code is not one of the app key's accounts.
ACCOUNT_NUMBER_MARKS = ("INVALID_CHECK_ACNO", "CANO", "ACNT_PRDT_CD")


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str = ""


def plain_reason(error: BrokerError) -> str:
    """The broker's answer in an operator's words, with KIS's own code to look it up."""
    answer = " ".join(part for part in (error.msg_cd, error.message) if part)
    if error.msg_cd == "OPSQ2000" or any(mark in error.message for mark in ACCOUNT_NUMBER_MARKS):
        return f"the account number is wrong ({answer})"
    if words := PLAIN_WORDS.get(error.msg_cd):
        return f"{words} ({error.msg_cd})"
    return answer or error.reason


def check_account(account, *, timeout: float = ACK_TIMEOUT) -> Iterator[Step]:
    """Each step's outcome as soon as it is known; stops after the first failure."""
    broker = KoreaInvestService(account)
    try:
        broker.access_token()
    except BrokerError as error:
        yield Step("access token", False, plain_reason(error))
        return
    yield Step("access token", True)
    try:
        rows = broker.count_first_balance_page()
    except BrokerError as error:
        yield Step("balance (first page)", False, plain_reason(error))
        return
    yield Step("balance (first page)", True, f"{rows} rows")
    yield from asyncio.run(_check_realtime(account, timeout))


async def _check_realtime(account, timeout: float) -> list[Step]:
    steps: list[Step] = []
    async with httpx.AsyncClient(timeout=timeout) as http:
        try:
            approval_key = await issue_approval_key(
                http, account.base_url, account.app_key, account.app_secret
            )
        except BrokerError as error:
            return [Step("real-time approval key", False, plain_reason(error))]
    steps.append(Step("real-time approval key", True))
    url = realtime_url(account.base_url)
    try:
        async with websockets.connect(url, open_timeout=timeout, logger=wire_logger) as ws:
            wanted = [("real-time prices of " + PROBE_STOCK, Registration(PRICE_TR, PROBE_STOCK))]
            if account.hts_id:
                wanted.append(
                    ("fill-notice registration", Registration(fill_tr(account.is_paper), account.hts_id))
                )
            for name, registration in wanted:
                try:
                    failure = await _register_and_leave(ws, approval_key, registration, timeout)
                except websockets.ConnectionClosed:
                    failure = (
                        "the server dropped the session after the fill-notice registration: the HTS id is "
                        "probably wrong"
                        if registration.tr_id != PRICE_TR
                        else "the server dropped the session"
                    )
                steps.append(Step(name, failure is None, failure or ""))
                if failure:
                    break
    except (OSError, websockets.InvalidHandshake, TimeoutError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        steps.append(Step("real-time connection", False, f"cannot connect to {url} ({reason.lower()})"))
    return steps


async def _register_and_leave(
    ws: ClientConnection, approval_key: str, registration: Registration, timeout: float
) -> str | None:
    """Subscribe and unsubscribe one registration: None when both were acknowledged, else why not."""
    for subscribe, expected in ((True, ACK_SUBSCRIBED), (False, ACK_UNSUBSCRIBED)):
        await ws.send(registration_message(approval_key, registration, subscribe=subscribe))
        try:
            ack = await asyncio.wait_for(_ack_of(ws, registration), timeout)
        except TimeoutError:
            return f"no answer to the {'' if subscribe else 'un'}subscription within {timeout:g}s"
        if ack.msg_cd != expected:
            words = PLAIN_WORDS.get(ack.msg_cd)
            return f"{words} ({ack.msg_cd})" if words else f"{ack.msg_cd} {ack.msg1}".strip()
    return None


async def _ack_of(ws: ClientConnection, registration: Registration):
    """The next acknowledgement of `registration`; data frames pass, PINGPONG is echoed."""
    async for message in ws:
        text = message.decode() if isinstance(message, bytes) else message
        if is_wire_frame(text):
            continue
        ack = parse_control(text)
        if ack is None:
            await ws.send(text)
        elif (ack.tr_id, ack.tr_key) == registration:
            return ack
    raise websockets.ConnectionClosed(None, None)
