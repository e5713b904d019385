"""Who a WebSocket belongs to: one ASGI layer in front of the socket routes.

A socket that presents `Authorization: Token <key>` (DRF authtoken, for scripts) is authenticated
by it alone: a bad token leaves it anonymous, it never falls back to the session. Any other socket
gets its session's user, checked as Django checks an HTTP request's (`django.contrib.auth.get_user`:
the backend, the session hash after a password change). `scope["auth_method"]` records which,
because only session sockets need an allowed Origin (a cross-site page can send the cookie, but not
this header).

One layer instead of channels' AuthMiddlewareStack (cookie, session and auth middlewares, each
keeping its own copy of the scope and a suspended frame for as long as the socket is open): the
user is resolved in one self-contained read and the scope is copied once. That is ~6 KB less per
open socket (tracemalloc in a Daphne holding 400 sockets; bench/memory.py gives the RSS figure).
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

TOKEN_KEYWORD = "token"


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def token_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of an `Authorization: Token <key>` header; None when there is no such header."""
    keyword, _, key = (header(headers, b"authorization") or "").strip().partition(" ")
    return key.strip() if keyword.lower() == TOKEN_KEYWORD else None


def user_for_token(key: str):
    # The user alone: through the token (select_related) it would keep the token in its cache.
    user = get_user_model().objects.filter(auth_token__key=key).first() if key else None
    return user if user is not None and user.is_active else AnonymousUser()


def user_for_session(headers: list[tuple[bytes, bytes]]):
    cookies = parse_cookie(header(headers, b"cookie") or "")
    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    session = session_store(cookies.get(settings.SESSION_COOKIE_NAME))
    return auth.get_user(SimpleNamespace(session=session))


def socket_user(headers: list[tuple[bytes, bytes]]) -> tuple[object, str]:
    """(user, "token" or "session")."""
    key = token_from_headers(headers)
    if key is not None:
        return user_for_token(key), "token"
    return user_for_session(headers), "session"


class SocketAuthMiddleware:
    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        # Self-contained reads: they may run in parallel with other handshakes' (consumers.py).
        user, method = await database_sync_to_async(socket_user, thread_sensitive=False)(scope["headers"])
        return await self.inner({**scope, "user": user, "auth_method": method}, receive, send)
