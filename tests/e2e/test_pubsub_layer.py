"""CHANNEL_LAYER=pubsub (RedisPubSubChannelLayer): a Daphne on it gives a socket its snapshot, then a change
committed and a price update sent by this process, which sends on the same layer."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

from config.settings import channel_layers_setting

from .sockets import assert_a_change_then_a_price_update_arrive
from .test_live_updates import open_socket, token_for

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

    await assert_a_change_then_a_price_update_arrive(socket, account)
    await socket.close()
