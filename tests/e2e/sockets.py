"""What the end-to-end socket tests share: waiting for a message of a type, and the path every server
setup must carry (a committed change, then a price update, to a socket already holding its snapshot)."""

from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async

from trading.brokers.memory import MemoryBroker
from watchlist import events
from watchlist.services import WatchlistService

from .test_live_updates import TIMEOUT


async def next_of_type(socket, kind: str) -> dict:
    async with asyncio.timeout(TIMEOUT):
        while (message := json.loads(await socket.recv()))["type"] != kind:
            pass
    return message


async def assert_a_change_then_a_price_update_arrive(socket, account) -> None:
    broker = MemoryBroker()
    broker.set_holdings({"005930": 10})
    await database_sync_to_async(WatchlistService(account, broker).sync_with_account)()
    change = await next_of_type(socket, "watchlist_changed")
    assert (change["version"], change["changes"]["added"]) == (1, ["005930"])

    tick = events.price_update_message("005930", 72_100, 600, 0.84, 42)
    await database_sync_to_async(events.send_price_update)(account.id, tick)
    assert await next_of_type(socket, "price_update") == tick
