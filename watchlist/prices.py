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
(paper) there. A user's watched codes are registered on that user's own sessions only: an app key and
its registration slots belong to the user whose account holds them, and nobody else's watchlist may
spend them. When the setting KIS_MARKET_DATA_ACCOUNT_ID names an operator's account, its session
streams the codes of its feed first, and the users' own sessions take only what does not fit there.
A code stays on its session while watched; a new one goes to the allowed session with most room.
Codes that fit on no session are not streamed, and the log says which. A price, whichever session
brought it, goes to every account watching the code. Two feeds (KIS and the simulator) never share
prices.

Prices. Ticks are coalesced: per (feed, code) only the latest waits, and every `flush_interval`
(0.3 s) the waiting ones go out as price_update to every account group watching the code, so a
client gets at most about 3 messages per code per second whatever the trade rate, the last carrying
the last price. A watched code that did not trade is sent again every `resend_interval` (4 s) while
its market is open, so a client hears of it at least every 5 s. The message's timestamp is the trade's
time. Every `store_interval` (1 s) the latest prices go into the items (price, evaluation, P&L) with
one UPDATE per feed, without a version bump or a message, so a snapshot after a reconnect shows them.

Fills. A fill notice (CNTG_YN "2") confirms its order's pending change by itself, with the notice's
quantity and price (watchlist.trades.apply_fill_notice); one of an order this app did not place
queues a read of its account. The notice's CUST_ID is compared with the accounts' HTS ids trimmed and
case-folded; a notice that matches no account of its session is logged with that session, never
dropped in silence.

Problems. What a session cannot do for an account (the broker refuses the session, or drops it after
the account's fill-notice registration, which is then suspended) goes into the account's
`SyncState.realtime_error`, which the admin and the page's sync status show, and is cleared when it
is over.

App keys, secrets and approval keys never reach a log: sessions are named by their account ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, partial
from typing import TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
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
    hts_id_key,
    krx_is_open_now,
    kst_unix,
    realtime_url,
)
from trading.models import BrokerAccount

from . import events, health, metrics, trades
from .models import SyncState, WatchlistItem
from .selectors import sync_status_dict

logger = logging.getLogger(__name__)

FeedCode = tuple[str, str]  # (feed URL, stock code)
SessionKey = TypeVar("SessionKey")


@dataclass(frozen=True)
class FeedAccount:
    id: int
    owner_id: int
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
        hts_id = account.hts_id.strip()
        fills = Registration(fill_tr(account.is_paper), hts_id) if hts_id else None
        accounts[account.id] = FeedAccount(
            id=account.id,
            owner_id=account.owner_id,
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


Demand = tuple[str, Sequence[Collection[SessionKey]]]  # a code, and the tiers of sessions that may hold it


def assign_codes(
    room: Mapping[SessionKey, int], demands: Iterable[Demand], current: Mapping[SessionKey, set[str]]
) -> tuple[dict[SessionKey, set[str]], set[str]]:
    """Place codes on sessions with `room` free registrations each.

    A demand (code, tiers) is met by any session of its tiers holding the code. A code stays on the
    session that has it while a demand allows it there; an unmet demand goes to the session with the
    most room left in its first tier that has room. Returns the assignment and the codes of the
    demands met nowhere."""
    demands = list(demands)
    assigned: dict[SessionKey, set[str]] = {key: set() for key in room}

    def met(code: str, tiers: Sequence[Collection[SessionKey]]) -> bool:
        return any(code in assigned[key] for tier in tiers for key in tier if key in assigned)

    for code, tiers in demands:
        if met(code, tiers):
            continue
        for key in (key for tier in tiers for key in tier if key in assigned):
            if code in current.get(key, ()) and len(assigned[key]) < room[key]:
                assigned[key].add(code)
                break
    unplaced = set()
    for code, tiers in demands:
        if met(code, tiers):
            continue
        for tier in tiers:
            free = [key for key in tier if key in assigned and len(assigned[key]) < room[key]]
            if free:
                assigned[max(free, key=lambda k: room[k] - len(assigned[k]))].add(code)
                break
        else:
            unplaced.add(code)
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


def record_realtime_errors(errors: Mapping[int, str], recorded: Mapping[int, str] | None) -> None:
    """Write each account's real-time problem (`errors`, accounts without one left out) into its
    SyncState where it differs from what was `recorded` last (None: nothing is known, as after a
    restart, so every stale one is cleared too), and push the changed sync status to its pages."""
    if recorded is None:
        recorded = {
            account_id: error
            for account_id, error in SyncState.objects.exclude(realtime_error="").values_list(
                "account_id", "realtime_error"
            )
        }
    for account_id in set(errors) | set(recorded):
        error = errors.get(account_id, "")
        if error == recorded.get(account_id, ""):
            continue
        with transaction.atomic():
            state, _ = SyncState.objects.select_for_update().get_or_create(account_id=account_id)
            state.realtime_error = error
            state.save(update_fields=["realtime_error"])
            sync = sync_status_dict(state)
            transaction.on_commit(partial(events.send_sync_status, account_id, sync), robust=True)
        if error:
            logger.warning("price feed: account=%s real-time problem: %s", account_id, error)
        else:
            logger.info("price feed: account=%s real-time problem over", account_id)


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
        market_data_account_id: int | None = None,
    ) -> None:
        self.market_data_account_id = market_data_account_id or settings.KIS_MARKET_DATA_ACCOUNT_ID
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
        self.realtime_errors: dict[int, str] | None = None  # as last recorded; None: not read yet

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
        metrics.PRICE_SUBSCRIPTIONS.set(len(self.state.watchers) - len(self.unstreamed))
        metrics.PRICE_UNSTREAMED.set(len(self.unstreamed))
        await asyncio.to_thread(health.record_heartbeat, health.PRICE_FEED)
        errors = self.realtime_problems()
        if errors != self.realtime_errors:
            await database_sync_to_async(record_realtime_errors)(errors, self.realtime_errors)
            self.realtime_errors = errors

    def realtime_problems(self) -> dict[int, str]:
        """What each account's session cannot do now, by account id (accounts without trouble left out)."""
        problems = {}
        for account in self.state.accounts.values():
            session = self.sessions.get(account.credentials)
            if session is None:
                continue
            texts = []
            if session.refusal:
                texts.append(
                    f"realtime_refused: the broker refuses the real-time session ({session.refusal}); "
                    "live prices and fill notices wait until it accepts it"
                )
            if account.fill_registration in session.suspended:
                texts.append(
                    f"fill_notices_off: the broker drops the real-time session after the fill-notice "
                    f"registration of HTS id {account.fill_registration.tr_key!r} (is the HTS id right?); "
                    "fills wait for the periodic sync"
                )
            if texts:
                problems[account.id] = "; ".join(texts)
        return problems

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
        """Register the fill notices of the feed's accounts, and each watched code on a session of a user
        watching it (or on the market-data account's session first, when the setting names one)."""
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
        sessions_of_owner: dict[int, set[Credentials]] = defaultdict(set)
        for account in state.accounts.values():
            if account.url == url:
                sessions_of_owner[account.owner_id].add(account.credentials)
        market_data = state.accounts.get(self.market_data_account_id)
        first_tier = [{market_data.credentials}] if market_data and market_data.url == url else []
        demands = [
            (code, [*first_tier, sessions_of_owner[owner_id]])
            for code, owner_id in sorted(
                {
                    (code, state.accounts[account_id].owner_id)
                    for (feed, code), account_ids in state.watchers.items()
                    if feed == url
                    for account_id in account_ids
                }
            )
        ]
        assigned, unplaced = assign_codes(room, demands, current)
        for credentials, registrations in fills.items():
            self.sessions[credentials].register(
                registrations | {Registration(PRICE_TR, c) for c in assigned[credentials]}
            )
        streamed = set().union(*assigned.values())
        unstreamed = {(url, code) for code in unplaced - streamed}
        before = {key for key in self.unstreamed if key[0] == url}
        if unstreamed != before:
            if unstreamed:
                logger.warning(
                    "price feed: %d watched codes are not streamed from %s, the sessions of the users "
                    "watching them are full (%d registrations each): %s",
                    len(unstreamed),
                    url,
                    MAX_REGISTRATIONS,
                    " ".join(sorted(code for _, code in unstreamed)),
                )
            else:
                logger.info("price feed: every watched code is streamed from %s again", url)
            self.unstreamed = {key for key in self.unstreamed if key[0] != url} | unstreamed

    # --- prices ---------------------------------------------------------------------------------

    def on_tick(self, url: str, tick: Tick) -> None:
        key = (url, tick.stock_code)
        if key not in self.state.watchers:
            return  # a trade that crossed our unregistration
        metrics.PRICE_TICKS.inc()
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
        accounts = [
            account
            for account in self.state.accounts_of(credentials)
            if account.fill_registration
            and hts_id_key(account.fill_registration.tr_key) == hts_id_key(notice.hts_id)
        ]
        if not accounts:
            session = self.sessions.get(credentials)
            logger.warning(
                "fill notice of session %s (%s) matches no account of it: HTS id %r, account %s, order %s",
                session.name if session else "(closed)",
                credentials.key_id,
                notice.hts_id,
                notice.account_no,
                notice.order_no,
            )
            return
        if not notice.filled:
            return  # an acceptance notice: nothing changed in the account yet
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
            task = asyncio.create_task(
                database_sync_to_async(trades.apply_fill_notice)(
                    account.id,
                    order_no=notice.order_no,
                    side=notice.side,
                    stock_code=notice.stock_code,
                    qty=notice.qty,
                    price=notice.price,
                    name=notice.name,
                )
            )
            self._fill_syncs.add(task)
            task.add_done_callback(self._fill_syncs.discard)
