"""Open sockets follow authorisation (contract.md, "WebSocket"): when a user logs out, changes password,
loses a token, is deactivated or deleted, or an account changes hands, every process checks again
the sockets concerned and closes those no longer allowed (4401, or 4403 for an account no longer the
user's), through the revocations group of every process's fan-out (watchlist/fanout.py).

Connected from Django's own signals (WatchlistConfig.ready), so the views, the admin and the token
endpoints that cause these changes need no hook of their own. A message is sent once the change
committed, so that the check reads it; a logout names its session, whose sockets close unchecked
(Django flushes the session only after the signal).
"""

from __future__ import annotations

import logging
from functools import partial

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from knox.models import AuthToken

from trading.models import BrokerAccount

from .events import send_socket_revocation
from .socket_auth import session_fingerprint

logger = logging.getLogger(__name__)


def revoke(**target) -> None:
    try:
        send_socket_revocation(**target)
    except Exception:
        # The change itself stands; the sockets are checked again at their next resync.
        logger.exception("socket revocation %s could not be sent", target)


def revoke_after_commit(**target) -> None:
    transaction.on_commit(partial(revoke, **target))


def on_logout(sender, request, user, **kwargs) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None:
        revoke(user_id=user.pk, session=session_fingerprint(session_key) if session_key else None)


def on_user_saved(sender, instance, created, update_fields=None, **kwargs) -> None:
    # A login saves last_login alone, on every sign-in: nothing a socket depends on.
    if not created and not (update_fields and set(update_fields) == {"last_login"}):
        revoke_after_commit(user_id=instance.pk)


def on_user_deleted(sender, instance, **kwargs) -> None:
    revoke_after_commit(user_id=instance.pk)


def on_token_deleted(sender, instance, **kwargs) -> None:
    revoke_after_commit(user_id=instance.user_id)


def on_account_changed(sender, instance, created=False, **kwargs) -> None:
    if not created:
        revoke_after_commit(account_id=instance.pk)


def connect_signals() -> None:
    user_model = get_user_model()
    user_logged_out.connect(on_logout, dispatch_uid="socket_revocation.logout")
    post_save.connect(on_user_saved, sender=user_model, dispatch_uid="socket_revocation.user_saved")
    post_delete.connect(on_user_deleted, sender=user_model, dispatch_uid="socket_revocation.user_deleted")
    post_delete.connect(on_token_deleted, sender=AuthToken, dispatch_uid="socket_revocation.token_deleted")
    post_save.connect(
        on_account_changed, sender=BrokerAccount, dispatch_uid="socket_revocation.account_saved"
    )
    post_delete.connect(
        on_account_changed, sender=BrokerAccount, dispatch_uid="socket_revocation.account_deleted"
    )
