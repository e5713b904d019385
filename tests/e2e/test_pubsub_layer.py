"""CHANNEL_LAYER=pubsub (RedisPubSubChannelLayer): a Daphne on it gives a socket its snapshot, then a change
committed and a price update sent by this process, which sends on the same layer."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

from config.settings import channel_layers_setting
from trading.brokers.memory import MemoryBroker
from watchlist import events
from watchlist.services import WatchlistService

from .test_live_updates import open_socket, token_for
from .test_multi_process import next_of_type

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pubsub_daphne(asgi_servers):
    return asgi_servers("daphne-pubsub", CHANNEL_LAYER="pubsub")


@pytest.fixture
def pubsub_layer(settings):
    """This process on the pub/sub layer too: Channels drops its cached layers when CHANNEL_LAYERS changes."""
    settings.CHANNEL_LAYERS = channel_layers_setting("pubsub", settings.REDIS_URL)


async def test_a_daphne_on_the_pubsub_layer_delivers_the_snapshot_a_change_and_a_price_update(
    pubsub_daphne, pubsub_layer, user, account
):
    assert isinstance(get_channel_layer(), RedisPubSubChannelLayer)
    token = await database_sync_to_async(token_for)(user)
    socket, snapshot = await open_socket(pubsub_daphne, token)
    assert (snapshot["account"]["id"], snapshot["version"]) == (account.id, 0)

    broker = MemoryBroker()
    broker.set_holdings({"005930": 10})
    await database_sync_to_async(WatchlistService(account, broker).sync_with_account)()
    change = await next_of_type(socket, "watchlist_changed")
    assert (change["version"], change["changes"]["added"]) == (1, ["005930"])

    tick = events.price_update_message("005930", 72_100, 600, 0.84, 42)
    await database_sync_to_async(events.send_price_update)(account.id, tick)
    assert await next_of_type(socket, "price_update") == tick
    await socket.close()
