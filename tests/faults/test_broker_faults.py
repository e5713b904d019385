"""The broker misbehaving, through the whole sync path (the Celery task's body, the service, the real
KIS adapter over HTTP): every fault mode of the simulator in turn, and balance answers with an unknown
extra field, a missing field or a non-numeric number. The last watchlist stays, the error is logged
with the account and its cause, the sync status turns `failing`, and nothing raises."""

from __future__ import annotations

import copy
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.fixtures.trade import token_client
from trading.brokers.kis import BALANCE_PATH, KoreaInvestService
from watchlist.models import SyncState, Watchlist, WatchlistItem
from watchlist.tasks import sync_account

pytestmark = pytest.mark.django_db

# Every retry and token renewal of one sync, and of the API's sync after it, meets the fault.
FAULT_COUNT = 50
FAULT_REASONS = {
    "http_500": "unreachable",
    "timeout": "timeout",
    "rate_limit": "rate_limited",
    "token_expired": "token_expired",
}


@pytest.fixture(autouse=True)
def quick_timeouts(settings, redis_client):
    """A 'timeout' fault outlasts the adapter's timeout quickly; tokens and rate slots start fresh."""
    settings.KIS_TIMEOUT = 0.5


def watchlist_state(account) -> tuple[int, list[tuple]]:
    items = WatchlistItem.objects.filter(watchlist__account=account).order_by("stock_code")
    version = Watchlist.objects.get(account=account).version
    return version, list(items.values_list("stock_code", "quantity", "avg_price"))


def sync_failures(caplog, account) -> list[str]:
    prefix = f"sync failed account={account.id} "
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and record.getMessage().startswith(prefix)
    ]


def test_every_fault_mode_in_turn_keeps_the_last_watchlist_and_reports_failing(
    sim_account, simulator, caplog
):
    sync_account(sim_account.id)
    last_good = watchlist_state(sim_account)
    assert last_good[1], "the seeded account holds stocks"
    api = token_client(sim_account.owner)

    for failures, (mode, reason) in enumerate(FAULT_REASONS.items(), start=1):
        caplog.clear()
        simulator.inject_fault(mode, count=FAULT_COUNT, delay=2)
        sync_account(sim_account.id)  # the periodic task: records and logs, never raises
        answer = api.post("/api/watchlist/sync/")
        simulator.reset()  # the faults left over, gone

        state = SyncState.objects.get(account=sim_account)
        assert (state.status, state.consecutive_failures) == ("failing", 2 * failures), mode
        assert state.last_error.startswith(f"{reason}: ")
        assert watchlist_state(sim_account) == last_good, mode
        logged = sync_failures(caplog, sim_account)
        assert len(logged) == 2 and all(f"reason={reason} " in message for message in logged), logged
        assert answer.status_code == 502 and answer.json()["success"] is False, answer.text

    sync_account(sim_account.id)
    assert SyncState.objects.get(account=sim_account).status == "ok"
    assert watchlist_state(sim_account) == last_good


# --- odd balance answers ----------------------------------------------------------------------------


class RecordedKis(ThreadingHTTPServer):
    """A KIS stand-in on a free loopback port: any token, and `balance` (a recorded answer) as the one
    balance page. Tests change `balance` to serve a malformed copy."""

    def __init__(self, balance: dict) -> None:
        super().__init__(("127.0.0.1", 0), RecordedKisHandler)
        self.balance = balance
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class RecordedKisHandler(BaseHTTPRequestHandler):
    server: RecordedKis

    def do_POST(self) -> None:
        self._answer({"access_token": "recorded-token", "token_type": "Bearer", "expires_in": 86400})

    def do_GET(self) -> None:
        self._answer(self.server.balance, tr_cont="D")

    def _answer(self, body: dict, tr_cont: str = "") -> None:
        payload = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("tr_cont", tr_cont)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def recorded_balance(account) -> dict:
    """The simulator's balance answer to the real adapter's request, as the adapter received it."""
    answers = []
    http = httpx.Client(
        event_hooks={
            "response": [
                lambda response: answers.append(response) if response.url.path == BALANCE_PATH else None
            ]
        }
    )
    KoreaInvestService(account, http=http).get_acct_balance()
    answers[0].read()
    return answers[0].json()


@pytest.fixture
def recorded_kis(sim_account):
    server = RecordedKis(recorded_balance(sim_account))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def account(user, make_account, recorded_kis):
    return make_account(user, cano="54000001", base_url=recorded_kis.url)


def with_extra_field(balance: dict) -> None:
    balance["output1"][0]["new_field_2027"] = "42"
    balance["output2"][0]["another_new_total"] = "0"
    balance["surprise"] = {"nested": ["x"]}


def without_quantity(balance: dict) -> None:
    del balance["output1"][0]["hldg_qty"]


def with_non_numeric_evaluation(balance: dict) -> None:
    balance["output1"][0]["evlu_amt"] = "N/A"


def with_non_numeric_average_price(balance: dict) -> None:
    balance["output1"][1]["pchs_avg_pric"] = "7l250.5"


def test_an_unknown_extra_field_is_ignored(account, recorded_kis):
    sync_account(account.id)
    good = watchlist_state(account)
    with_extra_field(recorded_kis.balance)
    sync_account(account.id)
    assert SyncState.objects.get(account=account).status == "ok"
    assert watchlist_state(account) == good


@pytest.mark.parametrize(
    "spoil, cause",
    [
        (without_quantity, "hldg_qty"),
        (with_non_numeric_evaluation, "evlu_amt"),
        (with_non_numeric_average_price, "pchs_avg_pric"),
    ],
)
def test_a_malformed_balance_keeps_the_last_watchlist_and_reports_failing(
    account, recorded_kis, caplog, spoil, cause
):
    sync_account(account.id)
    last_good = watchlist_state(account)
    good_balance = copy.deepcopy(recorded_kis.balance)
    spoil(recorded_kis.balance)

    sync_account(account.id)
    state = SyncState.objects.get(account=account)
    assert state.status == "failing" and cause in state.last_error
    assert watchlist_state(account) == last_good
    [message] = sync_failures(caplog, account)
    assert "reason=bad_response" in message and cause in message

    recorded_kis.balance = good_balance
    sync_account(account.id)
    assert SyncState.objects.get(account=account).status == "ok"
