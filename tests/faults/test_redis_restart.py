"""Redis restarted mid-run. It keeps nothing (no persistence): locks, the KIS token cache and the
queued sync tasks are gone. Syncs resume within one interval, and no trade is lost or doubled."""

import asyncio
import json
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from websockets.exceptions import ConnectionClosed

from config.settings import channel_layers_setting
from devtools.processes import wait_for
from tests.e2e.test_live_updates import TIMEOUT, open_socket, token_for
from tests.e2e.test_multi_process import next_of_type
from trading.brokers.memory import MemoryBroker
from watchlist.fanout import CLOSE_LAYER_FAILED
from watchlist.models import SyncState
from watchlist.services import WatchlistService

from .conftest import SYNC_INTERVAL, WAIT, api_token, pause, resume, wait_in_step

pytestmark = pytest.mark.django_db(transaction=True)

HOLDINGS = {
    "51000001": [{"stock_code": "005930", "quantity": 10, "avg_price": 71000}],
    "51000002": [
        {"stock_code": "000660", "quantity": 4, "avg_price": 180000},
        {"stock_code": "035720", "quantity": 7, "avg_price": 42000},
    ],
    "51000003": [],
}


@pytest.fixture
def accounts(user, make_account, simulator):
    for cano, holdings in HOLDINGS.items():
        simulator.set_holdings(cano, holdings)
    return [make_account(user, cano=cano, base_url=simulator.url) for cano in HOLDINGS]


def buy(server, token: str, account, code: str, qty: int) -> httpx.Response:
    return httpx.post(
        f"{server.url}/execute-buy/{code}",
        json={"qty": qty, "account": account.id},
        headers={"Authorization": f"Token {token}"},
        timeout=60,
    )


def every_account_due(accounts) -> bool:
    due = SyncState.objects.filter(account__in=accounts, next_attempt_at__lte=timezone.now())
    return due.count() == len(accounts)


def dispatch_once(system) -> int:
    """One tick of the real dispatcher in a process of its own (as if the beat's task ran on a worker)."""
    command = "from watchlist.tasks import dispatch_due_syncs; print('queued', dispatch_due_syncs())"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", command],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    return int(done.stdout.split("queued", 1)[1])


def test_syncs_resume_and_no_trade_is_lost_or_doubled_after_a_redis_restart(
    accounts, simulator, private_redis, system
):
    server = system.daphne()
    worker = system.worker()
    beat = system.beat()
    wait_in_step(accounts, simulator, system)
    token = api_token(server, "trader", "trader-pass-123")
    answers = [buy(server, token, accounts[0], "005930", 2)]

    # Lose queued sync tasks with Redis: while the worker is paused, every account comes due and the
    # dispatcher queues it (beat, which needs a worker to run its dispatch task, is stopped meanwhile).
    beat.stop()
    pause(worker)
    wait_for(lambda: every_account_due(accounts), WAIT, "every account to come due")
    assert dispatch_once(system) == len(accounts)
    private_redis.stop()
    while_down = buy(server, token, accounts[1], "000660", 1)
    private_redis.start()
    restarted_at = timezone.now()
    resume(worker)
    system.beat()

    # Behaviour, not timing: nothing lost with the queue waits longer than one interval to be queued again.
    for state in SyncState.objects.filter(account__in=accounts):
        assert state.next_attempt_at <= restarted_at + timedelta(seconds=SYNC_INTERVAL), (
            f"account {state.account_id} not due until {state.next_attempt_at}, Redis back at {restarted_at}"
        )
    wait_for(
        lambda: (
            SyncState.objects.filter(account__in=accounts, last_success_at__gt=restarted_at).count()
            == len(accounts)
        ),
        WAIT,
        "every account to sync after the restart",
    )

    # A fresh token cache, new locks:
    answers += [buy(server, token, account, "035420", 1) for account in accounts]
    wait_in_step(accounts, simulator, system)

    assert while_down.status_code in (502, 503) and while_down.json()["success"] is False, while_down.text
    assert [answer.status_code for answer in answers] == [200] * len(answers), [a.text for a in answers]
    # A broadcast failing on a connection that died with Redis is logged; the change itself stands.
    assert all(answer.json()["watchlist_version"] for answer in answers), [a.text for a in answers]
    placed = [order["order_no"] for account in accounts for order in simulator.orders(account.account_number)]
    accepted = [answer.json()["order_id"] for answer in answers]
    assert sorted(placed) == sorted(accepted)  # each accepted order once, and no order without an answer


async def test_on_the_pubsub_layer_a_socket_follows_the_account_again_after_a_redis_restart(
    private_redis, system, user, account, settings
):
    """RedisPubSubChannelLayer subscribes again by itself once Redis is back, but what was published
    meanwhile is lost. Seen here every time: the Fanout's first probe after the restart fails on the
    connection that died with Redis, so the socket is closed (4503) and its client reconnects to a
    snapshot. Either that, or a socket kept open that gets the change, is correct; a socket kept open
    that misses it is not."""
    settings.CHANNEL_LAYERS = channel_layers_setting("pubsub", private_redis.url())  # this process sends
    server = await asyncio.to_thread(system.daphne, CHANNEL_LAYER="pubsub")
    token = await database_sync_to_async(token_for)(user)
    socket, _ = await open_socket(server, token)
    broker = MemoryBroker()

    await asyncio.to_thread(private_redis.restart)
    broker.set_holdings({"005930": 1})
    await database_sync_to_async(WatchlistService(account, broker).sync_with_account)()
    try:
        message = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        assert (message["type"], message["version"]) == ("watchlist_changed", 1)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == CLOSE_LAYER_FAILED, server.log_tail()
        socket, snapshot = await open_socket(server, token)
        assert snapshot["version"] == 1

    broker.set_holdings({"005930": 2})
    await database_sync_to_async(WatchlistService(account, broker).sync_with_account)()
    assert (await next_of_type(socket, "watchlist_changed"))["version"] == 2
    await socket.close()
