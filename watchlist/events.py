"""The messages of the contract and sending them to an account's group after the commit. (The
process fan-out, watchlist/fanout.py, is the other user of the channel layer: it receives them.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


# Every process's fan-out (watchlist/fanout.py) is in it: price updates go there, in batches.
PRICES_GROUP = "prices"
# Every process's fan-out is in it too: "check the sockets of this user (or account) again".
REVOCATIONS_GROUP = "socket-revocations"


def watchlist_group(account_id: int) -> str:
    return f"account-{account_id}"


def _send(account_id: int, event_type: str, message: dict) -> None:
    layer = get_channel_layer()
    async_to_sync(layer.group_send)(
        watchlist_group(account_id), {"type": event_type, "account": account_id, "message": message}
    )


def watchlist_changed_message(
    changes: dict[str, list[str]], full_list: list[dict], version: int, totals: dict | None = None
) -> dict:
    """`totals`: the account's totals (selectors.totals_dict), None while unknown."""
    return {
        "type": "watchlist_changed",
        "changes": {key: list(changes.get(key, [])) for key in ("added", "removed", "updated")},
        "full_list": full_list,
        "totals": totals,
        "version": version,
        "timestamp": int(time.time()),
    }


def send_watchlist_changed(account_id: int, message: dict) -> None:
    """Send a watchlist_changed message (call it after the change committed)."""
    _send(account_id, "watchlist.changed", message)
    logger.info(
        "broadcast watchlist_changed account=%s version=%s changes=%s",
        account_id,
        message["version"],
        message["changes"],
    )


def send_sync_status(account_id: int, sync: dict) -> None:
    _send(account_id, "sync.status", {"type": "sync_status", "sync": sync, "timestamp": int(time.time())})


def price_update_message(
    stock_code: str, price: int, change: int, change_rate: float, volume: int, timestamp: int | None = None
) -> dict:
    """`timestamp`: when the price traded (default now)."""
    return {
        "type": "price_update",
        "stock_code": stock_code,
        "price": price,
        "change": change,
        "change_rate": change_rate,
        "volume": volume,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
    }


def send_price_update(account_id: int, message: dict) -> None:
    async_to_sync(broadcast_price_updates)([([account_id], message)])


async def broadcast_price_updates(updates: Iterable[tuple[Iterable[int], dict]]) -> None:
    """Send each price_update message to the accounts watching its code: one event for them all,
    to every process (the price feed runs in an event loop and flushes many codes together)."""
    batch = [{"accounts": list(account_ids), "message": message} for account_ids, message in updates]
    await get_channel_layer().group_send(PRICES_GROUP, {"type": "price.updates", "updates": batch})


def send_socket_revocation(
    *, user_id: int | None = None, account_id: int | None = None, session: str | None = None
) -> None:
    """Every process checks again the sockets of `user_id` (or of `account_id`) and closes those no
    longer allowed; `session` (a fingerprint, socket_auth.session_fingerprint) names a session that
    ended, whose sockets close without a check (the session may not be gone from the store yet)."""
    async_to_sync(get_channel_layer().group_send)(
        REVOCATIONS_GROUP,
        {"type": "sockets.revoke", "user": user_id, "account": account_id, "session": session},
    )
    logger.info("socket revocation user=%s account=%s session=%s", user_id, account_id, bool(session))
