"""Reads: the JSON shapes of the contract, built from the database."""

from __future__ import annotations

import time

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
    """The contract's snapshot: account, version, timestamp, full_list, sync."""
    watchlist, _ = Watchlist.objects.get_or_create(account=account)
    state = SyncState.objects.filter(account=account).first()
    return {
        "account": account_dict(account),
        "version": watchlist.version,
        "timestamp": int(time.time()),
        "full_list": full_list(watchlist),
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
