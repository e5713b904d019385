"""The users' HTTP traffic: market buys, partial and full sells, each with its own Idempotency-Key and
some sent twice as a client retry does, and watchlist reads, every answer recorded."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import httpx

from bench.soak.record import Answer, Record, Trade
from bench.soak.system import CODES, Account
from devtools.asgi_server import AsgiServer
from devtools.simulator import SimulatorHandle


class Api:
    def __init__(self, daphnes: list[AsgiServer], record: Record) -> None:
        # English answers: checks.py reads the message of an order whose state is unknown.
        self.clients = [
            httpx.AsyncClient(base_url=daphne.url, timeout=60, headers={"Accept-Language": "en"})
            for daphne in daphnes
        ]
        self.record = record

    async def call(
        self, token: str, method: str, path: str, body: dict | None = None, headers: dict | None = None
    ) -> Answer:
        client = random.choice(self.clients)
        try:
            response = await client.request(
                method, path, json=body, headers={"Authorization": f"Token {token}", **(headers or {})}
            )
        except httpx.TransportError as error:  # a server process gone is a 5xx to the user, too
            answer = Answer(method, path, 599, {"transport_error": type(error).__name__}, time.time())
        else:
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
            answer = Answer(method, path, response.status_code, parsed, time.time())
        self.record.answers.append(answer)
        return answer

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


async def trade_randomly(
    api: Api, simulator: SimulatorHandle, accounts: list[Account], record: Record, until: float
) -> None:
    """Market buys, partial and full sells, each with its own Idempotency-Key; a tenth sent twice."""
    while time.time() < until:
        account = random.choice(accounts)
        held = await asyncio.to_thread(orderable_quantities, simulator, account.cano)
        choice = random.random()
        if choice < 0.5 or not held:
            side, code, qty = "buy", random.choice(CODES), random.randint(1, 20)
        else:
            code = random.choice(sorted(held))
            full = choice > 0.8 or held[code] <= 1
            side, qty = "sell", held[code] if full else random.randint(1, held[code] - 1)
        if qty < 1:
            continue
        trade = Trade(account.id, account.cano, side, code, qty, key=uuid.uuid4().hex)
        await place(api, record, trade, account)
        await asyncio.sleep(random.uniform(0.05, 0.4))


def orderable_quantities(simulator: SimulatorHandle, cano: str) -> dict[str, int]:
    return {h["stock_code"]: h["orderable_quantity"] for h in simulator.account(cano)["holdings"]}


async def place(api: Api, record: Record, trade: Trade, account: Account) -> None:
    record.trades.append(trade)
    sends = 2 if random.random() < 0.1 else 1  # a client retrying after a lost answer
    for _ in range(sends):
        body = {"qty": trade.qty, "account": trade.account_id}
        answer = await api.call(
            account.token, "POST", f"/execute-{trade.side}/{trade.code}", body, {"Idempotency-Key": trade.key}
        )
        trade.answers.append(answer)


async def read_watchlists(api: Api, accounts: list[Account], until: float) -> None:
    while time.time() < until:
        account = random.choice(accounts)
        await api.call(account.token, "GET", f"/api/watchlist/?account={account.id}")
        await asyncio.sleep(random.uniform(0.2, 1.0))
