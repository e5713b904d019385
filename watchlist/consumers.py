"""`/ws/watchlist/`: one socket follows one account's watchlist (contract.md, "WebSocket").

The consumer is thin: it authorises the socket, joins its process's fan-out for its account
(watchlist/fanout.py: one channel-layer member per process, which hands each event of the account's
group, JSON already encoded, to its sockets), sends a snapshot, and forwards each event from its own
handler. It never reorders: the service broadcasts one account's changes in version order, events
that arrive while a snapshot is read follow it, and a client that sees a gap asks for a resync.

Its database work is two self-contained reads (who and which account, then the snapshot), each run with
`thread_sensitive=False`: in parallel on the default executor rather than one by one on the single
sync thread, so a reconnect storm's handshakes do not queue behind each other (1,000 sockets at once
are all served: bench/reconnect_storm.py).
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from urllib.parse import parse_qs, urlparse

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import validate_host
from django.template.loader import render_to_string

from .fanout import process_fanout
from .metrics import OPEN_SOCKETS
from .selectors import snapshot_of_account
from .socket_auth import header, socket_owner

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def origin_allowed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the handshake's Origin names an allowed host (any port), as a same-site page would."""
    host = urlparse(header(headers, b"origin") or "").hostname
    return bool(host) and validate_host(host, settings.ALLOWED_HOSTS)


@lru_cache(maxsize=4096)
def _render_row(item_fields: tuple) -> str:
    return render_to_string("watchlist/_row.html", {"item": dict(item_fields)})


def render_row(item: dict) -> str:
    """The page's row template for one item. Cached by content: every socket of a process that
    forwards the same message (or snapshot) reuses one rendering."""
    return _render_row(tuple(item.items()))


@lru_cache(maxsize=256)
def _render_totals(totals_fields: tuple | None) -> str:
    totals = dict(totals_fields) if totals_fields is not None else None
    return render_to_string("watchlist/_totals.html", {"totals": totals})


def totals_html(totals: dict | None) -> str:
    """The page's totals block, cached by content like the rows."""
    return _render_totals(tuple(totals.items()) if totals is not None else None)


def rows_html(full_list: list[dict], codes: list[str] | None = None) -> dict[str, str]:
    """stock code -> row HTML, for `codes` (every item when None)."""
    wanted = None if codes is None else set(codes)
    return {
        item["stock_code"]: render_row(item)
        for item in full_list
        if wanted is None or item["stock_code"] in wanted
    }


class WatchlistConsumer(AsyncWebsocketConsumer):
    # No channel of its own: the process's Fanout hands it the events of its account (fanout.py).
    channel_layer_alias = None
    # The id only: an open socket holds no model instance (bench/memory.py).
    account_id: int | None = None
    joined = False
    # Events that arrive while a snapshot is being read wait here and follow the snapshot.
    held: list[dict] | None = None

    async def connect(self) -> None:
        OPEN_SOCKETS.inc()  # from the handshake to the disconnect, which every handshake ends with
        # Accepted at once, before any read: Daphne drops a handshake not accepted within 5 s, and in
        # a reconnect storm the reads below queue up, so every dropped handshake's work was wasted and
        # its retry added more (1,000 sockets at once: most never served). Refusals are close codes
        # the client sees after the accept (a refused handshake shows none).
        await self.accept()
        headers = self.scope["headers"]
        params = parse_qs(self.scope["query_string"].decode("latin-1"), keep_blank_values=True)
        self.render_html = params.get("render") == ["html"]
        requested = params.get("account", [None])[0]
        owner = await database_sync_to_async(socket_owner, thread_sensitive=False)(headers, requested)
        if not owner.user.is_authenticated:
            return await self.refuse(CLOSE_UNAUTHENTICATED, "not authenticated")
        if not owner.by_token and not origin_allowed(headers):
            return await self.refuse(CLOSE_FORBIDDEN, f"session socket of user={owner.user.pk} from a foreign Origin")
        if owner.account_id is None:
            return await self.refuse(CLOSE_FORBIDDEN, f"user={owner.user.pk} asked for account={requested!r}")
        self.account_id = owner.account_id

        # Join before reading the snapshot, so no change committed after the read is missed
        # (one committed before it arrives with a version the client already has, and is ignored).
        self.held = []
        await process_fanout().join(self.account_id, self)
        self.joined = True
        await self.send_snapshot()
        logger.debug("socket open user=%s account=%s", owner.user.pk, self.account_id)

    async def refuse(self, code: int, why: str) -> None:
        logger.info("socket refused (%s): %s", code, why)
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        OPEN_SOCKETS.dec()
        if self.joined:
            await process_fanout().leave(self.account_id, self)

    # --- client -> server

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.joined:  # a refused socket, between its close frame and the disconnect
            return
        try:
            request = json.loads(text_data) if text_data is not None else None
        except ValueError:
            return await self.send_error("Invalid JSON.")
        kind = request.get("type") if isinstance(request, dict) else None
        if kind == "ping":
            await self.send_json({"type": "pong", "timestamp": int(time.time())})
        elif kind == "resync":
            await self.send_snapshot()
        elif kind is None:
            await self.send_error('Expected a JSON object with a "type".')
        else:
            await self.send_error(f"Unknown message type: {str(kind)[:40]!r}.")

    # --- group events (watchlist/events.py, through fanout.py) -> client, one handler per type

    async def deliver(self, event: dict) -> None:
        if self.held is not None:
            self.held.append(event)
        else:
            await self.handle(event)

    async def handle(self, event: dict) -> None:
        await getattr(self, get_handler_name(event))(event)

    async def watchlist_changed(self, event: dict) -> None:
        message = event["message"]
        if self.render_html:
            changes = message["changes"]
            message = {
                **message,
                "rows_html": rows_html(message["full_list"], changes["added"] + changes["updated"]),
                "totals_html": totals_html(message.get("totals")),
            }
            await self.send_json(message)
        else:
            await self.send(text_data=event["text"])

    async def sync_status(self, event: dict) -> None:
        await self.send(text_data=event["text"])

    async def price_update(self, event: dict) -> None:
        await self.send(text_data=event["text"])

    # --- closing: nothing is sent after it

    # The fan-out closes every socket of the process when the channel layer fails (fanout.py), also
    # one still in connect(), between its join and its snapshot; an ASGI server refuses any message
    # after a close (uvicorn raises), so what a snapshot would still send is dropped.
    closed = False

    async def close(self, code=None, reason=None) -> None:
        if not self.closed:
            self.closed = True
            await super().close(code=code, reason=reason)

    async def send(self, text_data=None, bytes_data=None, close=False) -> None:
        if not self.closed:
            await super().send(text_data, bytes_data, close)

    # --- helpers

    async def send_snapshot(self) -> None:
        if self.held is None:
            self.held = []
        snapshot = await database_sync_to_async(snapshot_of_account, thread_sensitive=False)(self.account_id)
        if snapshot is None:
            logger.info("socket closed: account=%s no longer exists", self.account_id)
            return await self.close(code=CLOSE_FORBIDDEN)
        message = {"type": "watchlist_snapshot", **snapshot}
        if self.render_html:
            message["rows_html"] = rows_html(snapshot["full_list"])
            message["totals_html"] = totals_html(snapshot["totals"])
        await self.send_json(message)
        # What arrived meanwhile follows, in order; a change the snapshot already has carries a version
        # the client has, and is ignored.
        while self.held:
            await self.handle(self.held.pop(0))
        self.held = None

    async def send_error(self, text: str) -> None:
        await self.send_json({"type": "error", "message": text})

    async def send_json(self, message: dict) -> None:
        await self.send(text_data=json.dumps(message, ensure_ascii=False))
