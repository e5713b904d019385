"""WebSocket authentication by `Authorization: Token <key>` (DRF authtoken), for scripts.

Sits inside channels' AuthMiddlewareStack: a socket that presents a token is authenticated by it
alone (a bad token leaves it anonymous, it never falls back to the session); any other socket keeps
the session user. `scope["auth_method"]` records which, because only session sockets need an
allowed Origin (a cross-site page can send the cookie, but not this header).
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AnonymousUser
from rest_framework.authtoken.models import Token

TOKEN_KEYWORD = "token"


def token_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of an `Authorization: Token <key>` header; None when there is no such header."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        keyword, _, key = value.decode("latin-1").strip().partition(" ")
        if keyword.lower() == TOKEN_KEYWORD:
            return key.strip()
    return None


def user_for_token(key: str):
    token = Token.objects.select_related("user").filter(key=key).first() if key else None
    if token is None or not token.user.is_active:
        return AnonymousUser()
    return token.user


class TokenAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        key = token_from_headers(scope.get("headers", []))
        if key is None:
            scope = dict(scope, auth_method="session")
        else:
            # One self-contained read: it may run in parallel with other handshakes' (consumers.py).
            user = await database_sync_to_async(user_for_token, thread_sensitive=False)(key)
            scope = dict(scope, user=user, auth_method="token")
        return await super().__call__(scope, receive, send)
