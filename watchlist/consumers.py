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

What a socket may cost is bounded (watchlist/socket_limits.py: frame size, inbound rate, unsent bytes,
sockets per user), a resync is read off the socket's receive loop and further resyncs fold into the one
in flight, and a socket is checked again (socket_auth.refusal) on every resync and whenever its user
or account changes (watchlist/socket_revocation.py). No handler's failure escapes: a bad frame is
answered `error`, any other failure closes the socket (4500), and the socket leaves the fan-out
whatever ends it (Channels runs no disconnect() after a handler raised).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import lru_cache, partial
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.functional import Promise
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation.trans_real import parse_accept_lang_header

from .fanout import process_fanout
from .metrics import OPEN_SOCKETS
from .selectors import snapshot_of_account
from .socket_auth import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHENTICATED,
    Credential,
    origin_allowed,
    refusal,
    socket_owner,
)
from .socket_limits import (
    BURST,
    CLOSE_FALLING_BEHIND,
    CLOSE_TOO_MANY,
    MAX_FRAME_BYTES,
    MAX_SOCKETS_PER_USER,
    MAX_UNSENT_BYTES,
    FrameRate,
    frame_too_large,
    inbound_backlog,
    read_in_small_pieces,
    resume_reading,
    stop_reading,
    unsent_bytes,
)

logger = logging.getLogger(__name__)

# Like HTTP 500: the server failed this socket; the client reconnects (Daphne refuses 1011 from an
# application).
CLOSE_SERVER_ERROR = 4500


@lru_cache(maxsize=4096)
def _render_row(item_fields: tuple, language: str) -> str:
    return render_to_string("watchlist/_row.html", {"item": dict(item_fields)})


def render_row(item: dict) -> str:
    """The page's row template for one item, in the active language. Cached by content: every socket
    of a process that forwards the same message (or snapshot) reuses one rendering."""
    return _render_row(tuple(item.items()), translation.get_language())


def socket_language(headers: list[tuple[bytes, bytes]]) -> str:
    """The language the handshake's Accept-Language prefers among settings.LANGUAGES, as
    LocaleMiddleware picks one for a request (else settings.LANGUAGE_CODE)."""
    accepted = b",".join(value for name, value in headers if name.lower() == b"accept-language")
    for code, _quality in parse_accept_lang_header(accepted.decode("latin-1")):
        if code == "*":
            break
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


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


def parsed_request(text: str | None) -> dict | Promise:
    """The client's message, or what is wrong with it (translated when sent)."""
    if text is None:
        return _('Expected a JSON object with a "type".')
    try:
        request = json.loads(text)
    except ValueError:
        return _("Invalid JSON.")
    except RecursionError:  # json's C scanner recurses once per nesting level
        return _("Nested too deeply.")
    if not isinstance(request, dict) or "type" not in request:
        return _('Expected a JSON object with a "type".')
    return request


def checked_snapshot(credential: Credential, account_id: int) -> tuple[int | None, dict | None]:
    """(close code, None) when the socket may no longer follow the account, else (None, its snapshot;
    None when the account is gone). One self-contained read, for a resync."""
    code = refusal(credential, account_id)
    return (code, None) if code is not None else (None, snapshot_of_account(account_id))


class WatchlistConsumer(AsyncWebsocketConsumer):
    # No channel of its own: the process's Fanout hands it the events of its account (fanout.py).
    channel_layer_alias = None
    # Ids only: an open socket holds no model instance (bench/memory.py).
    account_id: int | None = None
    user_id: int | None = None
    credential: Credential | None = None
    joined = False
    # Events that arrive while a snapshot is being read wait here and follow the snapshot.
    held: list[dict] | None = None
    frames: FrameRate | None = None
    # A resync's snapshot being read (further resyncs fold into it), and a check after a revocation.
    snapshot_task: asyncio.Task | None = None
    check_task: asyncio.Task | None = None
    check_wanted = False
    language = settings.LANGUAGE_CODE  # of the socket's texts: its handshake's Accept-Language

    async def __call__(self, scope, receive, send) -> None:
        self.backlog = partial(inbound_backlog, receive)
        OPEN_SOCKETS.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            OPEN_SOCKETS.dec()
            await self.leave()

    async def dispatch(self, message: dict) -> None:
        # Not Channels' own, which runs close_old_connections on the sync thread before every frame
        # (this consumer's reads are database_sync_to_async calls, which do that in their thread) and
        # lets a handler's exception end the consumer: Daphne logs it and drops the socket with 1011.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            logger.warning("socket account=%s: no handler for %s", self.account_id, message["type"])
            return
        try:
            await handler(message)
        except StopConsumer:
            raise
        except Exception:
            logger.exception(
                "socket user=%s account=%s: handling %s failed",
                self.user_id,
                self.account_id,
                message["type"],
            )
            await self.fail()

    async def connect(self) -> None:
        # Accepted at once, before any read: Daphne drops a handshake not accepted within 5 s, and in
        # a reconnect storm the reads below queue up, so every dropped handshake's work was wasted and
        # its retry added more (1,000 sockets at once: most never served). Refusals are close codes
        # the client sees after the accept (a refused handshake shows none).
        await self.accept()
        # Nothing a client sends before its snapshot is worth reading meanwhile.
        stop_reading(self.base_send)
        read_in_small_pieces(self.base_send)
        headers = self.scope["headers"]
        params = parse_qs(self.scope["query_string"].decode("latin-1"), keep_blank_values=True)
        self.render_html = params.get("render") == ["html"]
        requested = params.get("account", [None])[0]
        self.language = socket_language(headers)
        owner = await database_sync_to_async(socket_owner, thread_sensitive=False)(headers, requested)
        if owner.credential is None:
            return await self.refuse(CLOSE_UNAUTHENTICATED, "not authenticated")
        if not owner.by_token and not origin_allowed(self.scope):
            return await self.refuse(
                CLOSE_FORBIDDEN, f"session socket of user={owner.user.pk} from a foreign Origin"
            )
        if owner.account_id is None:
            return await self.refuse(CLOSE_FORBIDDEN, f"user={owner.user.pk} asked for account={requested!r}")
        fanout = process_fanout()
        # No await between this count and the join below, which counts the socket at once.
        if fanout.sockets_of_user(owner.user.pk) >= MAX_SOCKETS_PER_USER:
            return await self.refuse(
                CLOSE_TOO_MANY, f"user={owner.user.pk} holds {MAX_SOCKETS_PER_USER} sockets here"
            )
        self.user_id, self.credential, self.account_id = owner.user.pk, owner.credential, owner.account_id
        self.frames = FrameRate()

        # Join before reading the snapshot, so no change committed after the read is missed
        # (one committed before it arrives with a version the client already has, and is ignored).
        self.held = []
        await fanout.join(self.account_id, self)
        self.joined = True
        await self.send_snapshot(check_first=False)
        if not self.closed:
            resume_reading(self.base_send)
        logger.debug("socket open user=%s account=%s", self.user_id, self.account_id)

    async def refuse(self, code: int, why: str) -> None:
        logger.info("socket closed (%s): %s", code, why)
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        await self.leave()

    async def leave(self) -> None:
        """Out of the fan-out, nothing more read for it; safe to repeat."""
        for task in (self.snapshot_task, self.check_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self.held = None
        if self.joined:
            self.joined = False
            await process_fanout().leave(self.account_id, self)

    async def fail(self) -> None:
        await self.leave()
        await self.close(code=CLOSE_SERVER_ERROR)

    async def end(self, code: int, why: str) -> None:
        """Out of the fan-out first, then closed: once the client sees the close, nothing is left here."""
        await self.leave()
        await self.refuse(code, why)

    # --- client -> server

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.joined or self.closed:  # a refused socket, between its close frame and the disconnect
            return
        # Frames already waiting count too: a client that sent thousands while its socket connected
        # is a flood whatever the time they took to be read here.
        if not self.frames.admit() or self.backlog() > BURST:
            stop_reading(self.base_send)
            await self.send_error(_("Too many messages: slow down."))
            return await self.refuse(
                CLOSE_TOO_MANY, f"user={self.user_id} account={self.account_id} flooding"
            )
        if frame_too_large(text_data, bytes_data):
            await self.send_error(
                format_lazy(_("A message may be at most {max_bytes} bytes."), max_bytes=MAX_FRAME_BYTES)
            )
            return await self.refuse(
                CLOSE_TOO_MANY, f"user={self.user_id} account={self.account_id} frame too large"
            )
        request = parsed_request(text_data)
        if not isinstance(request, dict):
            return await self.send_error(request)
        kind = request["type"]
        if kind == "ping":
            await self.send_json({"type": "pong", "timestamp": int(time.time())})
        elif kind == "resync":
            if self.snapshot_task is None:
                self.snapshot_task = asyncio.create_task(self.resync(), name="watchlist resync")
        else:
            await self.send_error(format_lazy(_("Unknown message type: {type}."), type=repr(str(kind)[:40])))

    async def resync(self) -> None:
        """Off the receive loop, so that the frames the client sends meanwhile are metered as they come
        and resyncs fold into this one instead of piling up behind it."""
        try:
            await self.send_snapshot(check_first=True)
        except Exception:
            logger.exception("socket user=%s account=%s: resync failed", self.user_id, self.account_id)
            await self.fail()
        finally:
            self.snapshot_task = None

    # --- revocations (watchlist/socket_revocation.py, through fanout.py)

    async def revoke(self, event: dict) -> None:
        if self.closed or self.credential is None:
            return
        if event.get("session") is not None and event["session"] == self.credential.session_fingerprint:
            return await self.end(CLOSE_UNAUTHENTICATED, f"user={self.user_id}: its session ended")
        # One check at a time, and one more after it when a revocation came meanwhile: the check in
        # flight may have read before that change committed.
        self.check_wanted = True
        if self.check_task is None:
            self.check_task = asyncio.create_task(self.check_again(), name="watchlist socket check")

    async def check_again(self) -> None:
        try:
            while self.check_wanted and not self.closed:
                self.check_wanted = False
                code = await database_sync_to_async(refusal, thread_sensitive=False)(
                    self.credential, self.account_id
                )
                if code is not None:
                    await self.end(code, f"user={self.user_id} account={self.account_id} revoked")
        except Exception:
            logger.exception(
                "socket user=%s account=%s: checking again failed", self.user_id, self.account_id
            )
            await self.fail()
        finally:
            self.check_task = None

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
            with translation.override(self.language):
                rows = rows_html(message["full_list"], changes["added"] + changes["updated"])
                totals = totals_html(message.get("totals"))
            message = {**message, "rows_html": rows, "totals_html": totals}
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
        if self.closed:
            return
        unsent = unsent_bytes(self.base_send)
        if unsent is not None and unsent > MAX_UNSENT_BYTES:
            # Its leave() follows from the disconnect: this may run in the fan-out's own reader.
            return await self.refuse(
                CLOSE_FALLING_BEHIND, f"user={self.user_id} account={self.account_id} {unsent} bytes unread"
            )
        await super().send(text_data, bytes_data, close)

    # --- helpers

    async def send_snapshot(self, *, check_first: bool) -> None:
        if self.held is None:
            self.held = []
        if check_first:
            code, snapshot = await database_sync_to_async(checked_snapshot, thread_sensitive=False)(
                self.credential, self.account_id
            )
        else:
            code, snapshot = (
                None,
                await database_sync_to_async(snapshot_of_account, thread_sensitive=False)(self.account_id),
            )
        if code is not None or snapshot is None:
            return await self.end(
                code or CLOSE_FORBIDDEN,
                f"user={self.user_id} account={self.account_id} "
                f"{'no longer allowed' if code else 'no longer exists'}",
            )
        message = {"type": "watchlist_snapshot", **snapshot}
        if self.render_html:
            with translation.override(self.language):
                message["rows_html"] = rows_html(snapshot["full_list"])
                message["totals_html"] = totals_html(snapshot["totals"])
        await self.send_json(message)
        # What arrived meanwhile follows, in order; a change the snapshot already has carries a version
        # the client has, and is ignored.
        while self.held:
            await self.handle(self.held.pop(0))
        self.held = None

    async def send_error(self, text: str | Promise) -> None:
        with translation.override(self.language):
            text = str(text)
        await self.send_json({"type": "error", "message": text})

    async def send_json(self, message: dict) -> None:
        await self.send(text_data=json.dumps(message, ensure_ascii=False))
