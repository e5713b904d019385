"""Who a WebSocket belongs to, and which account it follows: one self-contained read per socket.

A socket that presents `Authorization: Token <key>` (an API token, for scripts) is authenticated
by it alone: a bad token leaves it anonymous, it never falls back to the session. Any other socket
gets its session's user, checked as Django checks an HTTP request's (`django.contrib.auth.get_user`:
the backend, the session hash after a password change). Only session sockets need an allowed
Origin (a cross-site page can send the cookie, but not this header); the consumer checks it.

The consumer calls this itself instead of channels' AuthMiddlewareStack, whose cookie, session and
auth middlewares each keep a copy of the scope and a suspended frame for as long as the socket is
open, and each take a database read of their own (a reconnect storm queues them all).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from knox.auth import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from .selectors import account_from_param

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
    """The active owner of an unexpired, unrevoked API token, checked as the HTTP API checks it (knox)."""
    try:
        user, _ = TokenAuthentication().authenticate_credentials(key.encode())
    except AuthenticationFailed:
        return AnonymousUser()
    return user


def user_for_session(headers: list[tuple[bytes, bytes]]):
    cookies = parse_cookie(header(headers, b"cookie") or "")
    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    session = session_store(cookies.get(settings.SESSION_COOKIE_NAME))
    return auth.get_user(SimpleNamespace(session=session))


@dataclass(frozen=True)
class SocketOwner:
    user: object
    by_token: bool
    account_id: int | None  # None: the user has no such account (or is anonymous)


def socket_owner(headers: list[tuple[bytes, bytes]], account_param: str | None) -> SocketOwner:
    key = token_from_headers(headers)
    user = user_for_token(key) if key is not None else user_for_session(headers)
    account = account_from_param(user, account_param) if user.is_authenticated else None
    return SocketOwner(user, key is not None, account.id if account else None)
