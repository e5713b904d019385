"""Live prices for what is watched: one process (`manage.py run_price_feed`) holds the KIS real-time
feed for every account.

Which codes. Every `refresh_interval` (0.5 s) the feed reads who watches what: the (account, code)
pairs of every watchlist and the accounts, two cheap queries. It registers each watched code once and
unregisters a code nobody watches any more. Reading the database, rather than listening for
watchlist_changed, follows every writer (syncs, trades, the admin, a restart of this process) with
nothing to miss and nothing to replay, within a second.

Sessions. KIS allows one real-time session per app key and 41 registrations per session, and here
each account has its own app key. So the feed opens one session per distinct app key, at that key's
feed (`realtime_url`: KIS real or paper, or the simulator that issued it). A fill notice comes from
its account's own session: every account with an HTS id registers H0STCNI0 (real) or H0STCNI9
(paper) there. Prices are market data, the same whichever key asks, so the codes watched on one feed
are spread over all of that feed's sessions: each code is registered once, stays on its session while
watched, and a new one goes where there is most room. Codes beyond the room of every session are not
streamed, and the log says which. Two feeds (KIS and the simulator) never share prices.

Prices. Ticks are coalesced: per (feed, code) only the latest waits, and every `flush_interval`
(0.3 s) the waiting ones go out as price_update to every account group watching the code, so a
client gets at most about 3 messages per code per second whatever the trade rate, the last carrying
the last price. A watched code that did not trade is sent again every `resend_interval` (4 s) while
its market is open, so a client hears of it at least every 5 s. The message's timestamp is the trade's
time. Every `store_interval` (1 s) the latest prices go into the items (price, evaluation, P&L) with
one UPDATE per feed, without a version bump or a message, so a snapshot after a reconnect shows them.

Fills. A fill notice (field 13 "2") confirms its order's pending change by itself, with the notice's
quantity and price (watchlist.trades.apply_fill_notice); one of an order this app did not place
queues a read of its account.

App keys, secrets and approval keys never reach a log: sessions are named by their account ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, partial
from typing import TypeVar

from channels.db import database_sync_to_async
from django.db.models import BigIntegerField, Case, ExpressionWrapper, F, FloatField, Value, When
from django.db.models.functions import Round

from trading.brokers.base import KST
from trading.brokers.realtime import (
    MAX_REGISTRATIONS,
    PRICE_TR,
    Credentials,
    FillNotice,
    RealtimeSession,
    Registration,
    Tick,
    fill_tr,
    follows_krx_hours,
    krx_is_open_now,
    kst_unix,
    realtime_url,
)
from trading.models import BrokerAccount

from . import events, trades
from .models import WatchlistItem

logger = logging.getLogger(__name__)

FeedCode = tuple[str, str]  # (feed URL, stock code)
SessionKey = TypeVar("SessionKey")


@dataclass(frozen=True)
class FeedAccount:
    id: int
    account_number: str
    credentials: Credentials
    url: str
    fill_registration: Registration | None


@dataclass(frozen=True)
class WatchState:
    """Who watches what, as the database says now."""

    accounts: dict[int, FeedAccount]
    watchers: dict[FeedCode, frozenset[int]]

    @cached_property
    def _by_credentials(self) -> dict[Credentials, list[FeedAccount]]:
        grouped = defaultdict(list)
        for account in self.accounts.values():
            grouped[account.credentials].append(account)
        return grouped

    def accounts_of(self, credentials: Credentials) -> list[FeedAccount]:
        return self._by_credentials.get(credentials, [])


def load_watch_state() -> WatchState:
    accounts = {}
    for account in BrokerAccount.objects.all():
        if not (account.app_key and account.app_secret):
            continue  # nothing could authenticate its session
        fills = Registration(fill_tr(account.is_paper), account.hts_id) if account.hts_id else None
        accounts[account.id] = FeedAccount(
            id=account.id,
            account_number=account.account_number,
            credentials=Credentials(account.base_url, account.app_key, account.app_secret),
            url=realtime_url(account.base_url),
            fill_registration=fills,
        )
    watchers: dict[FeedCode, set[int]] = defaultdict(set)
    for account_id, code in WatchlistItem.objects.values_list("watchlist__account_id", "stock_code"):
        if account_id in accounts:
            watchers[(accounts[account_id].url, code)].add(account_id)
    return WatchState(accounts, {key: frozenset(ids) for key, ids in watchers.items()})


def assign_codes(
    room: Mapping[SessionKey, int], codes: Iterable[str], current: Mapping[SessionKey, set[str]]
) -> tuple[dict[SessionKey, set[str]], set[str]]:
    """Spread codes over sessions with `room` free registrations each: a code stays on the session
    that has it, a new one goes to the session with the most room left. Returns the assignment and
    the codes that fit nowhere."""
    wanted = set(codes)
    assigned: dict[SessionKey, set[str]] = {key: set() for key in room}
    placed: set[str] = set()
    for key in room:
        for code in sorted((current.get(key, set()) & wanted) - placed)[: room[key]]:
            assigned[key].add(code)
            placed.add(code)
    unplaced = set()
    for code in sorted(wanted - placed):
        roomiest = max(room, key=lambda k: room[k] - len(assigned[k]), default=None)
        if roomiest is None or room[roomiest] <= len(assigned[roomiest]):
            unplaced.add(code)
        else:
            assigned[roomiest].add(code)
    return assigned, unplaced


def store_prices(account_ids: Iterable[int], prices: Mapping[str, int]) -> int:
    """Write live prices into these accounts' items of those codes: price, evaluation, P&L.

    One UPDATE computed from each row's own quantity and average price, so it stays right while a
    sync changes them; no version bump and no message (a price is not a watchlist change)."""
    if not prices:
        return 0
    price = Case(
        *(When(stock_code=code, then=Value(p)) for code, p in prices.items()), output_field=BigIntegerField()
    )
    value = ExpressionWrapper(F("quantity") * price, output_field=BigIntegerField())
    cost = Round(ExpressionWrapper(F("quantity") * F("avg_price"), output_field=FloatField()))
    pnl = ExpressionWrapper(value - cost, output_field=BigIntegerField())
    pnl_rate = ExpressionWrapper((value - cost) * 100.0 / cost, output_field=FloatField())
    return WatchlistItem.objects.filter(
        watchlist__account_id__in=list(account_ids), stock_code__in=prices
    ).update(
        current_price=price,
        eval_amount=value,
        pnl=pnl,
        pnl_rate=Case(
            When(quantity__gt=0, avg_price__gt=0, then=Round(pnl_rate, 2)),
            default=Value(0.0),
            output_field=FloatField(),
        ),
    )


def price_message(tick: Tick, now: datetime) -> dict:
    return events.price_update_message(
        tick.stock_code,
        tick.price,
        tick.change,
        tick.change_rate,
        tick.volume,
        timestamp=kst_unix(tick.time, now),
    )


class PriceFeed:
    """The live price feed of every account; `run()` until cancelled. The design is the module's doc."""

    def __init__(
        self,
        *,
        refresh_interval: float = 0.5,
        flush_interval: float = 0.3,
        resend_interval: float = 4.0,
        store_interval: float = 1.0,
    ) -> None:
        self.refresh_interval = refresh_interval
        self.flush_interval = flush_interval
        self.resend_interval = resend_interval
        self.store_interval = store_interval
        self.state = WatchState({}, {})
        self.sessions: dict[Credentials, RealtimeSession] = {}
        self.unstreamed: set[FeedCode] = set()
        self._session_tasks: dict[Credentials, asyncio.Task] = {}
        self._latest: dict[FeedCode, Tick] = {}
        self._waiting: set[FeedCode] = set()  # a newer price than the last one sent
        self._sent_at: dict[FeedCode, float] = {}
        self._unstored: dict[str, dict[str, int]] = defaultdict(dict)  # feed URL -> code -> price
        self._fill_syncs: set[asyncio.Task] = set()
        self._accounts_without_hts_id: set[int] = set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._every(self.refresh_interval, self.refresh))
                group.create_task(self._every(self.flush_interval, self.flush))
                group.create_task(self._every(self.store_interval, self.store))
        finally:
            for task in [*self._session_tasks.values(), *self._fill_syncs]:
                task.cancel()
            await asyncio.gather(*self._session_tasks.values(), *self._fill_syncs, return_exceptions=True)

    @staticmethod
    async def _every(interval: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` every `interval` seconds for good. A failed round (the database restarting, say)
        is logged when the failures start and end, not twice a second, and the next round tries again."""
        failing = False
        while True:
            try:
                await step()
            except Exception:
                if not failing:
                    logger.exception("price feed: %s failed; retrying every %.1fs", step.__name__, interval)
                failing = True
            else:
                if failing:
                    logger.info("price feed: %s works again", step.__name__)
                failing = False
            await asyncio.sleep(interval)

    # --- following the watchlists ---------------------------------------------------------------

    async def refresh(self) -> None:
        self.apply(await database_sync_to_async(load_watch_state)())

    def apply(self, state: WatchState) -> None:
        """Make sessions and registrations follow `state`."""
        self._follow_sessions(state)
        for url in {account.url for account in state.accounts.values()}:
            self._register_feed(state, url)
        for key, account_ids in state.watchers.items():
            if key in self._latest and not account_ids <= self.state.watchers.get(key, frozenset()):
                self._waiting.add(key)  # a new watcher gets the last price at the next flush
        for key in set(self._latest) - set(state.watchers):
            del self._latest[key]
            self._sent_at.pop(key, None)
            self._waiting.discard(key)
        self.state = state

    def _follow_sessions(self, state: WatchState) -> None:
        needed = {account.credentials for account in state.accounts.values()}
        for credentials in set(self.sessions) - needed:
            logger.info("price feed: closing real-time session %s", self.sessions[credentials].name)
            self._session_tasks.pop(credentials).cancel()
            del self.sessions[credentials]
        for credentials in needed:
            accounts = state.accounts_of(credentials)
            name = "accounts " + ",".join(str(account.id) for account in accounts)
            for account in accounts:
                if account.fill_registration is None and account.id not in self._accounts_without_hts_id:
                    self._accounts_without_hts_id.add(account.id)
                    logger.warning(
                        "price feed: account=%s has no HTS id; its fills wait for the periodic sync",
                        account.id,
                    )
            if credentials in self.sessions:
                self.sessions[credentials].name = name
                continue
            url = accounts[0].url
            session = RealtimeSession(
                credentials,
                name=name,
                url=url,
                on_tick=partial(self.on_tick, url),
                on_fill=partial(self.on_fill, credentials),
                market_open=krx_is_open_now if follows_krx_hours(url) else None,
            )
            logger.info("price feed: opening real-time session %s to %s", name, url)
            self.sessions[credentials] = session
            self._session_tasks[credentials] = asyncio.create_task(session.run(), name=f"realtime {name}")

    def _register_feed(self, state: WatchState, url: str) -> None:
        """Register the fill notices of the feed's accounts and spread its watched codes over its sessions."""
        fills = {
            credentials: {a.fill_registration for a in state.accounts_of(credentials) if a.fill_registration}
            for credentials, session in self.sessions.items()
            if session.url == url
        }
        room = {
            credentials: MAX_REGISTRATIONS - len(registrations)
            for credentials, registrations in fills.items()
        }
        current = {
            credentials: {r.tr_key for r in self.sessions[credentials].wanted if r.tr_id == PRICE_TR}
            for credentials in fills
        }
        codes = {code for feed, code in state.watchers if feed == url}
        assigned, unplaced = assign_codes(room, codes, current)
        for credentials, registrations in fills.items():
            self.sessions[credentials].register(
                registrations | {Registration(PRICE_TR, c) for c in assigned[credentials]}
            )
        unstreamed = {(url, code) for code in unplaced}
        before = {key for key in self.unstreamed if key[0] == url}
        if unstreamed != before:
            if unstreamed:
                logger.warning(
                    "price feed: %d watched codes are not streamed from %s, all %d sessions are full "
                    "(%d registrations each): %s",
                    len(unstreamed),
                    url,
                    len(fills),
                    MAX_REGISTRATIONS,
                    " ".join(sorted(unplaced)),
                )
            else:
                logger.info("price feed: every watched code is streamed from %s again", url)
            self.unstreamed = {key for key in self.unstreamed if key[0] != url} | unstreamed

    # --- prices ---------------------------------------------------------------------------------

    def on_tick(self, url: str, tick: Tick) -> None:
        key = (url, tick.stock_code)
        if key not in self.state.watchers:
            return  # a trade that crossed our unregistration
        self._latest[key] = tick
        self._waiting.add(key)
        self._unstored[url][tick.stock_code] = tick.price

    async def flush(self) -> None:
        """Send the latest price of every code that traded since the last flush, and again those
        whose last message is `resend_interval` old while their market is open."""
        now = time.monotonic()
        due = self._waiting | {
            key
            for key, sent_at in self._sent_at.items()
            if now - sent_at >= self.resend_interval and (not follows_krx_hours(key[0]) or krx_is_open_now())
        }
        self._waiting = set()
        wall_clock = datetime.now(KST)
        updates = []
        for key in due:
            tick, account_ids = self._latest.get(key), self.state.watchers.get(key)
            if tick and account_ids:
                updates.append((account_ids, price_message(tick, wall_clock)))
                self._sent_at[key] = now
        if updates:
            await events.broadcast_price_updates(updates)

    async def store(self) -> None:
        unstored, self._unstored = self._unstored, defaultdict(dict)
        for url, prices in unstored.items():
            account_ids = [account.id for account in self.state.accounts.values() if account.url == url]
            try:
                await database_sync_to_async(store_prices)(account_ids, prices)
            except Exception:
                self._unstored[url] = prices | self._unstored[url]  # newer prices win; tried again next round
                raise

    # --- fills ----------------------------------------------------------------------------------

    def on_fill(self, credentials: Credentials, notice: FillNotice) -> None:
        if not notice.filled:
            return  # an acceptance notice: nothing changed in the account yet
        accounts = [
            account
            for account in self.state.accounts_of(credentials)
            if account.fill_registration and account.fill_registration.tr_key == notice.hts_id
        ]
        # Several accounts of one HTS id: the notice's account number says which one.
        matching = [a for a in accounts if notice.account_no.startswith(a.account_number)] or accounts
        for account in matching:
            logger.info(
                "fill notice account=%s order=%s %s %s x%d at %d",
                account.id,
                notice.order_no,
                notice.side,
                notice.stock_code,
                notice.qty,
                notice.price,
            )
            task = asyncio.create_task(database_sync_to_async(trades.apply_fill_notice)(
                account.id, order_no=notice.order_no, side=notice.side, stock_code=notice.stock_code,
                qty=notice.qty, price=notice.price))
            self._fill_syncs.add(task)
            task.add_done_callback(self._fill_syncs.discard)
