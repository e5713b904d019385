"""Reads: the JSON shapes of the contract, built from the database."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Min, Q

from trading.models import BrokerAccount
from trading.services import AccountNotFound, user_account

from .diff import ITEM_FIELDS
from .models import SyncState, Watchlist, WatchlistItem


def unix(dt) -> int | None:
    return int(dt.timestamp()) if dt else None


def item_to_dict(item: WatchlistItem) -> dict:
    """The contract's Item: the item's values (watchlist.diff.ITEM_FIELDS) and when it last changed."""
    return {**{name: getattr(item, name) for name in ITEM_FIELDS}, "updated_at": unix(item.updated_at)}


def full_list(watchlist: Watchlist) -> list[dict]:
    return [item_to_dict(item) for item in watchlist.items.order_by("stock_code")]


def totals_dict(watchlist: Watchlist) -> dict | None:
    """The account's totals as the broker last reported them (KIS balance output2), with the P&L rate
    on the purchase amount (KIS gives the sum of P&L, not its rate); None until a read had them."""
    totals = watchlist.totals
    if not totals:
        return None
    purchase = totals["purchase"]
    return {**totals, "pnl_rate": round(totals["pnl"] * 100 / purchase, 2) if purchase else 0.0}


def sync_status_dict(state: SyncState | None) -> dict:
    if state is None:
        state = SyncState()
    return {
        "status": state.status,
        "last_success_at": unix(state.last_success_at),
        "consecutive_failures": state.consecutive_failures,
        "next_attempt_at": unix(state.next_attempt_at),
        "last_error": state.last_error,
        "realtime_error": state.realtime_error,
    }


def account_dict(account: BrokerAccount) -> dict:
    return {"id": account.id, "name": account.display_name, "number": account.number}


def watchlist_snapshot(account: BrokerAccount) -> dict:
    """The contract's snapshot: account, version, timestamp, full_list, totals, sync."""
    watchlist, _ = Watchlist.objects.get_or_create(account=account)
    state = SyncState.objects.filter(account=account).first()
    return {
        "account": account_dict(account),
        "version": watchlist.version,
        "timestamp": int(time.time()),
        "full_list": full_list(watchlist),
        "totals": totals_dict(watchlist),
        "sync": sync_status_dict(state),
    }


def snapshot_of_account(account_id: int) -> dict | None:
    """`watchlist_snapshot` for an account id (a socket keeps only the id); None once the account is
    gone. The app key and secret are not read: a snapshot never needs them."""
    account = BrokerAccount.objects.defer("app_key", "app_secret").filter(pk=account_id).first()
    return None if account is None else watchlist_snapshot(account)


def account_from_param(user, account_param: str | None) -> BrokerAccount | None:
    """The account an `?account=<id>` parameter picks (the user's first without one); None when it
    names no account of theirs. The page and the socket pick the same way."""
    account_id = int(account_param) if account_param and account_param.isdecimal() else account_param
    try:
        return user_account(user=user, account_id=account_id)
    except AccountNotFound:
        return None


@dataclass(frozen=True)
class SyncHealth:
    accounts_by_state: dict[str, int]  # "ok", "failing", "never" -> number of accounts
    oldest_success: datetime | None
    failing: list[SyncState]  # with their account, most failures first


def sync_health(failing_limit: int = 50) -> SyncHealth:
    """Every account's sync state at a glance: the admin's overview and the metrics."""
    counts = SyncState.objects.aggregate(
        failing=Count("id", filter=Q(consecutive_failures__gt=0)),
        ok=Count("id", filter=Q(consecutive_failures=0, last_success_at__isnull=False)),
        never_synced=Count("id", filter=Q(consecutive_failures=0, last_success_at__isnull=True)),
        oldest_success=Min("last_success_at"),
    )
    without_state = BrokerAccount.objects.filter(sync_state__isnull=True).count()
    failing = list(
        SyncState.objects.filter(consecutive_failures__gt=0)
        .select_related("account")
        .defer("account__app_key", "account__app_secret")
        .order_by("-consecutive_failures", "last_success_at")[:failing_limit]
    )
    return SyncHealth(
        accounts_by_state={
            "ok": counts["ok"],
            "failing": counts["failing"],
            "never": counts["never_synced"] + without_state,
        },
        oldest_success=counts["oldest_success"],
        failing=failing,
    )
