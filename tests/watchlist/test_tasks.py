"""The Celery path for real: a worker process, Redis as broker, the simulator as the account."""

import pytest

from tests.fixtures.simulator import DEMO_CANO
from trading.brokers import broker_for
from watchlist.models import SyncState, WatchlistItem
from watchlist.services import WatchlistService
from watchlist.tasks import dispatch_due_syncs

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db(transaction=True)


def items(account) -> dict[str, tuple[int, bool]]:
    return {
        i.stock_code: (i.quantity, i.pending)
        for i in WatchlistItem.objects.filter(watchlist__account=account)
    }


def test_the_dispatcher_task_syncs_a_due_account_on_a_real_worker(
    simulator, sim_account, celery_worker_process
):
    simulator.set_holdings(DEMO_CANO, [{"stock_code": "005930", "quantity": 7, "avg_price": 70_000}])
    with GroupListener(sim_account.id) as listener:
        dispatch_due_syncs.delay()
        message = listener.wait_for("watchlist.changed")
        status = listener.wait_for("sync.status")  # recorded after the change, never -> ok
    assert message["version"] == 1
    assert message["changes"] == {"added": ["005930"], "removed": [], "updated": []}
    assert items(sim_account) == {"005930": (7, False)}
    assert status["sync"]["status"] == "ok"
    state = SyncState.objects.get(account=sim_account)
    assert state.status == "ok" and (state.next_attempt_at - state.last_attempt_at).total_seconds() == 30


def test_a_trade_event_queues_the_reconciling_sync_that_confirms_it(
    simulator, sim_account, celery_worker_process
):
    simulator.set_holdings(DEMO_CANO, [])
    broker = broker_for(sim_account)
    with GroupListener(sim_account.id) as listener:
        order_id = broker.place_order("000660", "buy", 2)
        version = WatchlistService(sim_account, broker).handle_trade_event(
            "000660", "buy", 2, order_id=order_id
        )
        assert listener.wait_for("watchlist.changed")["changes"]["added"] == ["000660"]
        confirmed = listener.wait_for("watchlist.changed")  # sent by the worker's sync
    assert confirmed["version"] == version + 1
    assert confirmed["changes"] == {"added": [], "removed": [], "updated": ["000660"]}
    assert confirmed["full_list"][0]["pending"] is False
    assert items(sim_account) == {"000660": (2, False)}
