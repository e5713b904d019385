"""The live price feed: the real simulator feed over WebSocket, the real PostgreSQL, the real
channels-redis layer (a test listens on an account's group as a consumer does) and, for fills, a real
Celery worker. The feed runs on its own event loop in a thread, as `run_price_feed` runs it."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import httpx
import pytest
from django.conf import settings
from websockets.sync.client import connect

from tests.fixtures.servers import server_env
from tests.fixtures.simulator import DEMO_CANO
from tests.trading.test_realtime import (
    FILL,
    HYNIX,
    SAMSUNG,
    RecordingSocket,
    feed_control,
    feed_view,
    registrations_of,
    with_field,
)
from trading.brokers.realtime import (
    FILL_TR_PAPER,
    PRICE_TR,
    Credentials,
    RealtimeSession,
    Registration,
    parse_fill_notice,
    realtime_url,
    registration_message,
    split_records,
)
from watchlist import jobs, trades
from watchlist.models import SyncState, Watchlist, WatchlistItem
from watchlist.prices import (
    FeedAccount,
    PriceFeed,
    WatchState,
    assign_codes,
    load_watch_state,
    record_realtime_errors,
    store_prices,
)
from watchlist.templatetags import watchlist_format
from watchlist.trades import place_trade

from .broadcasts import GroupListener

pytestmark = pytest.mark.django_db(transaction=True)

CONTRACT_KEYS = {"type", "stock_code", "price", "change", "change_rate", "volume", "timestamp"}


class FeedThread:
    """Runs a PriceFeed on its own event loop in a thread, and stops it cleanly."""

    def __init__(self, feed: PriceFeed) -> None:
        self.feed = feed
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> PriceFeed:
        self.thread.start()
        self.stopped = asyncio.run_coroutine_threadsafe(self._run(), self.loop)
        return self.feed

    def __exit__(self, *exc_info) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.stopped.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _run(self) -> None:
        self.stop = asyncio.Event()
        task = asyncio.create_task(self.feed.run())
        await self.stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def price_feed(redis_client):
    with FeedThread(PriceFeed()) as feed:
        yield feed


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        time.sleep(interval)
    return result


def next_price(listener: GroupListener, code: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while (message := listener.wait_for("price.update", max(0.1, deadline - time.monotonic())))[
        "stock_code"
    ] != code:
        pass
    return message


def prices_of(listener: GroupListener, code: str) -> list[dict]:
    return [m for m in listener.messages("price.update") if m["stock_code"] == code]


def watch(account, code: str, quantity: int = 10, avg_price: float = 70_000.0) -> WatchlistItem:
    watchlist, _ = Watchlist.objects.get_or_create(account=account)
    return WatchlistItem.objects.create(
        watchlist=watchlist,
        stock_code=code,
        name=code,
        quantity=quantity,
        avg_price=avg_price,
        current_price=int(avg_price),
        eval_amount=int(quantity * avg_price),
        pnl=0,
        pnl_rate=0.0,
    )


def unwatch(account, code: str) -> None:
    WatchlistItem.objects.filter(watchlist__account=account, stock_code=code).delete()


@pytest.fixture
def sim_user_account(user, make_account, simulator):
    return make_account(
        user, cano=DEMO_CANO, base_url=simulator.url, app_key="feed-key-a", hts_id=f"sim{DEMO_CANO}"
    )


# --- pure parts -----------------------------------------------------------------------------------


def test_codes_stay_on_their_session_and_new_ones_go_where_there_is_most_room():
    anywhere = [("a", "b")]
    assigned, unplaced = assign_codes(
        {"a": 3, "b": 2},
        [(code, anywhere) for code in ["000001", "000002", "000003"]],
        {"b": {"000003", "000009"}},
    )
    assert assigned == {"a": {"000001", "000002"}, "b": {"000003"}} and unplaced == set()

    codes = [(f"{i:06d}", anywhere) for i in range(7)]
    assigned, unplaced = assign_codes({"a": 3, "b": 2}, codes, {})
    assert sorted(len(c) for c in assigned.values()) == [2, 3] and unplaced == {"000005", "000006"}
    assert assign_codes({}, [("000001", anywhere)], {}) == ({}, {"000001"})


def test_each_users_codes_go_on_that_users_own_sessions_only():
    mine, theirs = [{"mine"}], [{"theirs"}]
    demands = [("000001", mine), ("000002", mine), ("000002", theirs), ("000003", theirs)]
    assigned, unplaced = assign_codes({"mine": 1, "theirs": 5}, demands, {"theirs": {"000001"}})
    # 000002 twice, once per user; 000001 leaves their session (they do not watch it) and fits nowhere of mine.
    assert assigned == {"mine": {"000001"}, "theirs": {"000002", "000003"}}
    assert unplaced == {"000002"}  # not on my session: it streams to me through theirs all the same


def test_an_operators_market_data_session_takes_codes_first_and_users_sessions_the_rest():
    demands = [(f"{i:06d}", [{"market"}, {"user-a"}]) for i in range(4)] + [
        ("000009", [{"market"}, {"user-b"}])
    ]
    assigned, unplaced = assign_codes({"market": 3, "user-a": 41, "user-b": 41}, demands, {})
    assert assigned == {"market": {"000000", "000001", "000002"}, "user-a": {"000003"}, "user-b": {"000009"}}
    assert unplaced == set()


def test_stored_prices_revalue_items_from_their_own_quantity_and_average(user, other_user, make_account):
    mine = make_account(user, cano="50000001")
    theirs = make_account(other_user, cano="50000002")
    item = watch(mine, "005930", quantity=10, avg_price=71_250.5)
    other = watch(theirs, "005930", quantity=10, avg_price=71_250.5)
    empty = watch(mine, "000660", quantity=0, avg_price=0.0)

    assert store_prices([mine.id], {"005930": 72_100, "000660": 180_000}) == 2

    item.refresh_from_db()
    # The contract's own example item.
    assert (item.current_price, item.eval_amount, item.pnl, item.pnl_rate) == (72_100, 721_000, 8_495, 1.19)
    empty.refresh_from_db()
    assert (empty.current_price, empty.eval_amount, empty.pnl_rate) == (180_000, 0, 0.0)
    other.refresh_from_db()
    assert other.current_price == 71_250
    assert Watchlist.objects.get(account=mine).version == 0


# --- the feed against the simulator ---------------------------------------------------------------


def test_adding_a_code_streams_it_to_the_account_and_removing_it_stops_it(
    simulator, sim_user_account, price_feed
):
    account = sim_user_account
    with GroupListener(account.id) as listener:
        watch(account, "005930")
        watch(account, "000660")
        message = next_price(listener, "005930")
        assert set(message) == CONTRACT_KEYS and message["type"] == "price_update"
        assert isinstance(message["price"], int) and message["price"] > 0
        assert isinstance(message["volume"], int) and isinstance(message["timestamp"], int)

        unwatch(account, "005930")
        wait_until(lambda: registrations_of(simulator, PRICE_TR, "005930") == 0)
        listener.messages()  # everything sent so far
        seen = len(listener.received)
        for _ in range(2):  # the other code keeps streaming meanwhile
            next_price(listener, "000660")
        assert not [e for e in listener.received[seen:] if e["message"].get("stock_code") == "005930"]


def price_registrations_by_hts_id(simulator) -> dict[str, set[str]]:
    """The simulator's live sessions: the codes each holds, by the HTS id of its fill registration."""
    return {
        next(key for tr, key in session["registrations"] if tr == FILL_TR_PAPER): {
            key for tr, key in session["registrations"] if tr == PRICE_TR
        }
        for session in feed_view(simulator)["sessions"]
        if any(tr == FILL_TR_PAPER for tr, _ in session["registrations"])
    }


def test_a_code_watched_by_two_users_reaches_both_each_on_their_own_session(
    simulator, sim_user_account, other_user, make_account, price_feed
):
    mine = sim_user_account
    theirs = make_account(
        other_user, cano="50123457", base_url=simulator.url, app_key="feed-key-b", hts_id="sim50123457"
    )
    with GroupListener(mine.id) as my_listener, GroupListener(theirs.id) as their_listener:
        watch(mine, "000660")
        watch(theirs, "000660")
        watch(theirs, "035720")
        assert (
            next_price(my_listener, "000660")["stock_code"]
            == next_price(their_listener, "000660")["stock_code"]
        )
        next_price(their_listener, "035720")

        # Nobody's app key or slots serve another user's watchlist.
        wait_until(
            lambda: (
                price_registrations_by_hts_id(simulator)
                == {"sim50123456": {"000660"}, "sim50123457": {"000660", "035720"}}
            )
        )
        assert not prices_of(my_listener, "035720")
    # One session per app key, each with its own account's fill notices.
    fill_sessions = [
        [tuple(r) for r in session["registrations"] if r[0] == FILL_TR_PAPER]
        for session in feed_view(simulator)["sessions"]
    ]
    assert sorted(s for s in fill_sessions if s) == [
        [(FILL_TR_PAPER, "sim50123456")],
        [(FILL_TR_PAPER, "sim50123457")],
    ]


def test_1000_trades_in_a_second_reach_a_client_as_a_few_messages_ending_with_the_last_price(
    simulator, sim_user_account, price_feed
):
    simulator.set_prices_moving(False)
    watch(sim_user_account, "035420")
    wait_until(lambda: registrations_of(simulator, PRICE_TR, "035420") == 1)

    with GroupListener(sim_user_account.id) as listener:
        started = time.monotonic()
        burst = feed_control(simulator, "/burst", stock_code="035420", trades=1000, seconds=1.0)
        # The accumulated volume grows with every trade: only the last trade's message carries this one.
        while next_price(listener, "035420")["volume"] != burst["volume"]:
            pass
        elapsed = time.monotonic() - started
        messages = prices_of(listener, "035420")

    assert messages[-1]["price"] == burst["last_price"]
    # At most one message per flush while the burst lasted, whatever the machine's speed.
    assert 1 <= len(messages) <= math.ceil(elapsed / price_feed.flush_interval) + 2
    assert len(messages) < 1000 / 20


def test_prices_refresh_the_stored_items_without_a_version_and_are_sent_again_when_still(
    simulator, sim_user_account, price_feed
):
    simulator.set_prices_moving(False)
    item = watch(sim_user_account, "005380", quantity=10, avg_price=240_000.0)
    wait_until(lambda: registrations_of(simulator, PRICE_TR, "005380") == 1)

    with GroupListener(sim_user_account.id) as listener:
        simulator.set_price("005380", 250_000)
        first = next_price(listener, "005380")
        again = next_price(listener, "005380", timeout=price_feed.resend_interval + 10)  # no trade since
        changes = listener.changes()

    assert first["price"] == again["price"] == 250_000
    assert again["timestamp"] == first["timestamp"]  # the time of the trade, not of the message
    item.refresh_from_db()
    assert (item.current_price, item.eval_amount, item.pnl, item.pnl_rate) == (
        250_000,
        2_500_000,
        100_000,
        4.17,
    )
    assert Watchlist.objects.get(account=sim_user_account).version == 0 and changes == []


def test_codes_beyond_a_users_sessions_are_logged_and_only_that_users_other_app_key_makes_room(
    simulator, sim_user_account, user, other_user, make_account, price_feed, caplog
):
    codes = [f"9{i:05d}" for i in range(45)]
    for code in codes:
        watch(sim_user_account, code)
    wait_until(lambda: len(price_feed.unstreamed) == 5)
    assert any(len(s["registrations"]) == 41 for s in feed_view(simulator)["sessions"])
    assert "5 watched codes are not streamed" in caplog.text

    # Another user's app key is not ours to spend.
    make_account(other_user, cano="50123457", base_url=simulator.url, app_key="feed-key-b")  # no HTS id
    wait_until(lambda: len(feed_view(simulator)["sessions"]) == 2)
    assert len(price_feed.unstreamed) == 5
    assert sorted(len(s["registrations"]) for s in feed_view(simulator)["sessions"]) == [0, 41]

    make_account(user, cano="50123458", base_url=simulator.url, app_key="feed-key-c")  # no HTS id
    wait_until(lambda: not price_feed.unstreamed)
    wait_until(lambda: all(registrations_of(simulator, PRICE_TR, code) == 1 for code in codes))
    assert sorted(len(s["registrations"]) for s in feed_view(simulator)["sessions"]) == [0, 5, 41]
    assert "has no HTS id" in caplog.text
    for secret in ("feed-key-a", "feed-key-b", "feed-key-c", "secret"):
        assert secret not in caplog.text


def test_an_operators_market_data_account_streams_every_users_codes(
    simulator, sim_user_account, other_user, make_account, redis_client, settings
):
    operator = make_account(other_user, cano="50123459", base_url=simulator.url, app_key="market-data-key")
    settings.KIS_MARKET_DATA_ACCOUNT_ID = operator.id
    theirs = make_account(
        other_user, cano="50123457", base_url=simulator.url, app_key="feed-key-b", hts_id="sim50123457"
    )
    with (
        FeedThread(PriceFeed()),
        GroupListener(sim_user_account.id) as mine,
        GroupListener(theirs.id) as their,
    ):
        watch(sim_user_account, "005930")
        watch(theirs, "005930")
        watch(theirs, "000660")
        next_price(mine, "005930")
        next_price(their, "000660")
        sessions = feed_view(simulator)["sessions"]
        # The users' sessions hold their fill notices only; the operator's holds each code once.
        assert sorted(sorted(map(tuple, s["registrations"])) for s in sessions) == [
            [(FILL_TR_PAPER, "sim50123456")],
            [(FILL_TR_PAPER, "sim50123457")],
            [(PRICE_TR, "000660"), (PRICE_TR, "005930")],
        ]


# --- fills ---------------------------------------------------------------------------------------


def pending(account, code: str) -> bool | None:
    item = WatchlistItem.objects.filter(watchlist__account=account, stock_code=code).first()
    return item.pending if item else None


def test_a_market_buy_fill_notice_is_decrypted_and_confirms_the_pending_item(
    simulator, sim_user_account, price_feed, celery_worker_process, caplog
):
    caplog.set_level(logging.INFO, logger="watchlist.prices")
    simulator.set_holdings(DEMO_CANO, [])
    wait_until(lambda: registrations_of(simulator, FILL_TR_PAPER, f"sim{DEMO_CANO}") == 1)

    result = place_trade(
        user=sim_user_account.owner, account_id=sim_user_account.id, stock_code="000660", side="buy", qty=2
    )
    assert result.success

    wait_until(
        lambda: (
            f"fill notice account={sim_user_account.id} order={result.order_id} buy 000660 x2" in caplog.text
        )
    )
    wait_until(lambda: pending(sim_user_account, "000660") is False)  # the periodic sync is 30 s away
    item = WatchlistItem.objects.get(watchlist__account=sim_user_account, stock_code="000660")
    assert item.name == "SK하이닉스"  # from the notice (CNTG_ISNM40): the app held no 000660 before


def test_a_limit_buy_that_fills_later_is_confirmed_by_its_fill_notice(
    simulator, sim_user_account, price_feed, celery_worker_process
):
    simulator.set_prices_moving(False)
    simulator.set_holdings(DEMO_CANO, [])
    price = simulator.price("035720")["price"]
    limit = price - 500
    wait_until(lambda: registrations_of(simulator, FILL_TR_PAPER, f"sim{DEMO_CANO}") == 1)

    result = place_trade(
        user=sim_user_account.owner,
        account_id=sim_user_account.id,
        stock_code="035720",
        side="buy",
        qty=3,
        price=limit,
    )
    assert result.success and pending(sim_user_account, "035720") is True
    # The trade's own reconciling sync runs and finds nothing filled yet.
    wait_until(
        lambda: SyncState.objects.filter(account=sim_user_account, last_success_at__isnull=False).exists()
    )
    assert pending(sim_user_account, "035720") is True

    simulator.set_price("035720", limit)  # the market comes down to the order: it fills now
    wait_until(lambda: pending(sim_user_account, "035720") is False)
    assert WatchlistItem.objects.get(watchlist__account=sim_user_account, stock_code="035720").quantity == 3


# --- the command ---------------------------------------------------------------------------------


def test_run_price_feed_streams_watched_prices_and_stops_on_sigterm(
    simulator, sim_user_account, redis_client, tmp_path
):
    watch(sim_user_account, "005930")
    log_path = tmp_path / "price-feed.log"
    with GroupListener(sim_user_account.id) as listener, log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_price_feed"],
            cwd=settings.BASE_DIR,
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert next_price(listener, "005930", timeout=60)["price"] > 0
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(30)
    assert returncode == 0, log_path.read_text()
    assert "feed-key-a" not in log_path.read_text()


# --- a bad tick, fill notices that match no account, what the account shows ---------------------


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (2, "99999999999999999999"),  # a price beyond 64 bits: it broke the batch's msgpack and the UPDATE
        (2, "7l900"),
        (5, "1e400"),  # a change % of inf
    ],
)
def test_a_bad_tick_is_dropped_alone_and_the_rest_of_its_flush_goes_out(
    user, make_account, redis_client, caplog, index, value
):
    account = make_account(user, app_key="unit-key")
    watch(account, "005930")
    watch(account, "000660")
    feed = PriceFeed()
    feed.state = load_watch_state()
    url = feed.state.accounts[account.id].url
    credentials = feed.state.accounts[account.id].credentials
    session = RealtimeSession(
        credentials,
        name="test",
        url=url,
        on_tick=partial(feed.on_tick, url),
        on_fill=partial(feed.on_fill, credentials),
    )

    with GroupListener(account.id) as listener:
        frame = f"0|H0STCNT0|002|{HYNIX}^{with_field(SAMSUNG, index, value)}"
        asyncio.run(session.handle_message(RecordingSocket(), frame))
        asyncio.run(feed.flush())
        asyncio.run(feed.store())
        prices = {m["stock_code"]: m["price"] for m in listener.messages("price.update")}

    assert prices == {"000660": 182500}
    stored = WatchlistItem.objects.filter(watchlist__account=account).values_list(
        "stock_code", "current_price"
    )
    assert dict(stored) == {"000660": 182500, "005930": 70000}  # the bad one left the last good price
    assert caplog.text.count("dropped a H0STCNT0 record") == 1


def feed_of(*accounts: FeedAccount) -> PriceFeed:
    """A PriceFeed that knows these accounts, without starting any session."""
    feed = PriceFeed()
    feed.state = WatchState({account.id: account for account in accounts}, {})
    return feed


def feed_account(
    account_id: int, credentials: Credentials, hts_id: str, cano: str = DEMO_CANO
) -> FeedAccount:
    return FeedAccount(
        id=account_id,
        owner_id=1,
        account_number=cano,
        credentials=credentials,
        url="ws://127.0.0.1:9/tryitout",
        fill_registration=Registration(FILL_TR_PAPER, hts_id),
    )


async def test_a_fill_notice_matches_its_hts_id_trimmed_and_case_folded(monkeypatch):
    applied = []
    monkeypatch.setattr(trades, "apply_fill_notice", lambda account_id, **notice: applied.append(account_id))
    credentials = Credentials("http://127.0.0.1:9", "unit-key", "secret")
    feed = feed_of(feed_account(7, credentials, "TraderKim"))
    [notice] = (parse_fill_notice(r) for r in split_records(with_field(FILL, 0, "  traderkim "), 1))

    feed.on_fill(credentials, notice)
    await asyncio.gather(*feed._fill_syncs)

    assert applied == [7]


async def test_a_fill_notice_that_matches_no_account_is_logged_with_its_session(monkeypatch, caplog):
    synced = []
    monkeypatch.setattr(jobs, "request_sync", synced.append)
    credentials = Credentials("http://127.0.0.1:9", "never-logged-app-key", "secret")
    feed = feed_of(feed_account(7, credentials, "traderkim"))
    feed.sessions[credentials] = RealtimeSession(
        credentials, name="accounts 7", on_tick=print, on_fill=print, url="ws://127.0.0.1:9/tryitout"
    )
    [notice] = (parse_fill_notice(r) for r in split_records(FILL, 1))  # CUST_ID sim50123456

    feed.on_fill(credentials, notice)

    assert synced == []
    assert "fill notice of session accounts 7 (key-" in caplog.text
    assert "matches no account of it: HTS id 'sim50123456'" in caplog.text
    assert "never-logged-app-key" not in caplog.text


def test_a_suspended_fill_registration_shows_on_the_account_until_it_is_over(
    user, make_account, redis_client
):
    account = make_account(user, app_key="unit-key", hts_id="wrong-id")
    stale = make_account(user, cano="50123499", app_key="other-key")
    SyncState.objects.create(account=stale, realtime_error="fill_notices_off: from the last run")
    feed = PriceFeed()
    feed.state = load_watch_state()
    mine = feed.state.accounts[account.id]
    session = RealtimeSession(mine.credentials, name="test", on_tick=print, on_fill=print, url=mine.url)
    feed.sessions[mine.credentials] = session
    session.register({mine.fill_registration})
    session.suspended.add(mine.fill_registration)

    with GroupListener(account.id) as listener:
        problems = feed.realtime_problems()
        record_realtime_errors(problems, None)
        shown = listener.wait_for("sync.status", timeout=20)["sync"]
        assert SyncState.objects.get(account=stale).realtime_error == ""  # a restart forgets old news

        session.suspended.clear()
        record_realtime_errors(feed.realtime_problems(), problems)
        cleared = listener.wait_for("sync.status", timeout=20)["sync"]

    assert (
        shown["realtime_error"].startswith("fill_notices_off: ") and "'wrong-id'" in shown["realtime_error"]
    )
    assert watchlist_format.sync_status_text(shown).endswith("체결 알림이 꺼졌습니다 (HTS ID를 확인하세요)")
    assert cleared["realtime_error"] == "" and SyncState.objects.get(account=account).realtime_error == ""


def test_an_app_key_in_use_elsewhere_shows_on_the_account(simulator, user, make_account, price_feed):
    with httpx.Client(base_url=simulator.url, timeout=10) as http:
        approval = http.post(
            "/oauth2/Approval",
            json={"grant_type": "client_credentials", "appkey": "hogged-key", "secretkey": "secret"},
        ).json()["approval_key"]
    with connect(realtime_url(simulator.url)) as elsewhere:  # another program holds the key's session
        elsewhere.send(registration_message(approval, Registration(PRICE_TR, "005930"), subscribe=True))
        assert json.loads(elsewhere.recv())["body"]["msg_cd"] == "OPSP0000"

        account = make_account(user, cano="50123457", base_url=simulator.url, app_key="hogged-key")
        with GroupListener(account.id) as listener:
            watch(account, "000660")
            shown = listener.wait_for("sync.status", timeout=30)["sync"]

    assert shown["realtime_error"].startswith("realtime_refused: ") and "OPSP8996" in shown["realtime_error"]
    assert SyncState.objects.get(account=account).realtime_error == shown["realtime_error"]


def test_the_admin_lists_an_accounts_real_time_problem(admin_client, user, make_account):
    account = make_account(user)
    SyncState.objects.create(account=account, realtime_error="fill_notices_off: the broker drops the session")
    page = admin_client.get("/admin/watchlist/syncstate/").content.decode()
    assert "fill_notices_off: the broker drops the session" in page
