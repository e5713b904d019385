"""Who a WebSocket belongs to, and which account it follows: one self-contained read per socket.

A socket that presents `Authorization: Token <key>` (an API token, for scripts) is authenticated
by it alone: a bad token leaves it anonymous, it never falls back to the session. Any other socket
gets its session's user, checked as Django checks an HTTP request's (`django.contrib.auth.get_user`:
the backend, the session hash after a password change). Only session sockets need an allowed
Origin (a cross-site page can send the cookie, but not this header); the consumer checks it.

An open socket keeps what it was opened with (`Credential`: the token's key or the session's key) and
is checked again with it (`refusal`) on every resync and whenever watchlist/socket_revocation.py says
that its user or account changed.

The consumer calls this itself instead of channels' AuthMiddlewareStack, whose cookie, session and
auth middlewares each keep a copy of the scope and a suspended frame for as long as the socket is
open, and each take a database read of their own (a reconnect storm queues them all).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.core.handlers.asgi import ASGIRequest
from django.http.cookie import parse_cookie
from django.middleware.csrf import CsrfViewMiddleware
from knox.auth import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from .selectors import account_from_param

TOKEN_KEYWORD = "token"

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


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
    """The active owner of an unexpired, unrevoked API token, checked as the HTTP API checks it (knox)."""
    try:
        user, _ = TokenAuthentication().authenticate_credentials(key.encode())
    except AuthenticationFailed:
        return AnonymousUser()
    return user


def session_key_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    return parse_cookie(header(headers, b"cookie") or "").get(settings.SESSION_COOKIE_NAME)


def user_for_session_key(session_key: str | None):
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return auth.get_user(SimpleNamespace(session=session))


def session_fingerprint(session_key: str) -> str:
    """What names a session in a revocation message: never the key itself, which signs a user in."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Credential:
    """What a socket was opened with: a token's key, or else a session's key."""

    user_id: int
    token: str | None
    session: str | None

    @property
    def session_fingerprint(self) -> str | None:
        return session_fingerprint(self.session) if self.session else None


@dataclass(frozen=True)
class SocketOwner:
    user: object
    credential: Credential | None  # None: anonymous
    account_id: int | None  # None: the user has no such account (or is anonymous)

    @property
    def by_token(self) -> bool:
        return self.credential is not None and self.credential.token is not None


def socket_owner(headers: list[tuple[bytes, bytes]], account_param: str | None) -> SocketOwner:
    key = token_from_headers(headers)
    session_key = None if key is not None else session_key_from_headers(headers)
    user = user_for_token(key) if key is not None else user_for_session_key(session_key)
    if not user.is_authenticated:
        return SocketOwner(user, None, None)
    account = account_from_param(user, account_param)
    return SocketOwner(user, Credential(user.pk, key, session_key), account.id if account else None)


def refusal(credential: Credential, account_id: int) -> int | None:
    """The close code for a socket opened with `credential` on `account_id` now (4401: the token or
    session no longer signs its user in, or the user was deactivated; 4403: the account is no longer
    the user's), None while it may stay open."""
    if credential.token is not None:
        user = user_for_token(credential.token)
    else:
        user = user_for_session_key(credential.session)
    if not user.is_authenticated or user.pk != credential.user_id:
        return CLOSE_UNAUTHENTICATED
    if account_from_param(user, str(account_id)) is None:
        return CLOSE_FORBIDDEN
    return None


def origin_allowed(scope: dict) -> bool:
    """Whether the handshake's Origin is one Django's CSRF check accepts for a request to the same
    host: the request's own scheme, host and port, or one of CSRF_TRUSTED_ORIGINS. The socket's
    scheme (ws/wss) stands for its page's (http/https); behind a proxy, SECURE_PROXY_SSL_HEADER is
    read as for HTTP."""
    if header(scope["headers"], b"origin") is None:
        return False
    page_scheme = "https" if scope.get("scheme") == "wss" else "http"
    request = ASGIRequest({**scope, "type": "http", "method": "GET", "scheme": page_scheme}, io.BytesIO())
    # The same comparison as for an unsafe HTTP request, scheme and port included.
    return CsrfViewMiddleware(lambda request: None)._origin_verified(request)
