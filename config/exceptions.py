"""One JSON error shape for every API failure: {"success": false, "message": ..., ["errors": ...]}.

Domain errors of the services become their HTTP status here, so views stay thin; a database
outage is a 503 and anything unexpected a 500, both in the same JSON shape (never an HTML page).
"""

import logging

from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.utils.translation import gettext as _
from django.views import defaults
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler, set_rollback

from trading.brokers.base import InvalidOrder
from trading.services import AccountNotFound
from watchlist.locks import AccountLockTimeout

logger = logging.getLogger(__name__)

# Paths whose every answer is JSON, also when Django (not DRF) answers them.
API_PATH_PREFIXES = ("/api/", "/execute-buy", "/execute-sell")


def api_exception_handler(exc, context):
    if isinstance(exc, InvalidOrder):
        exc = exceptions.ValidationError({field: [message] for field, message in exc.errors.items()})
    elif isinstance(exc, AccountNotFound):
        exc = exceptions.NotFound(str(exc))

    if message := unavailable_message(exc):
        set_rollback()
        logger.warning("503 for %s: %s", _path(context), exc)
        return Response(
            {"success": False, "message": message},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    response = exception_handler(exc, context)
    if response is None:
        set_rollback()
        logger.exception("unexpected error for %s", _path(context), exc_info=exc)
        return Response(
            {"success": False, "message": _("Internal error.")}, status=status.HTTP_500_INTERNAL_SERVER_ERROR
        )

    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        response.data = {"success": False, "message": str(data["detail"])}
    else:
        response.data = {"success": False, "message": validation_message(data), "errors": data}
    return response


def unavailable_message(exc) -> str | None:
    """What to tell the client when `exc` is a passing unavailability (a 503), else None."""
    if isinstance(exc, AccountLockTimeout):
        return _("The account is busy with another trade or a sync; try again shortly.")
    if isinstance(exc, (OperationalError, InterfaceError)):
        return _("The database is unavailable; try again shortly.")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        # Locks, the KIS token and rate limit live in Redis: without it no order can leave.
        return _("A service the app needs (Redis) is unavailable; try again shortly.")
    return None


def validation_message(errors) -> str:
    """One human-readable line from DRF's error detail: each field's first message."""
    if isinstance(errors, dict):
        parts = [
            _first_message(detail)
            if field == api_settings.NON_FIELD_ERRORS_KEY
            else f"{field}: {_first_message(detail)}"
            for field, detail in errors.items()
        ]
        return _("Invalid input. %(problems)s") % {"problems": " ".join(parts)}
    return _("Invalid input. %(problems)s") % {"problems": _first_message(errors)}


def _first_message(detail) -> str:
    while isinstance(detail, (list, dict)) and detail:
        detail = detail[0] if isinstance(detail, list) else next(iter(detail.values()))
    return str(detail)


def _path(context) -> str:
    request = context.get("request")
    return request.path if request is not None else "?"


def is_api_path(path: str) -> bool:
    return path.startswith(API_PATH_PREFIXES)


def api_not_found(request, *args, **kwargs):
    """Any unknown path under the API prefixes: JSON whatever DEBUG says (no HTML, no slash redirect)."""
    message = _("No API endpoint at %(path)s.") % {"path": request.path}
    return JsonResponse({"success": False, "message": message}, status=404)


def page_not_found(request, exception=None):
    if is_api_path(request.path):
        return api_not_found(request)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if is_api_path(request.path):
        return JsonResponse({"success": False, "message": _("Internal error.")}, status=500)
    return defaults.server_error(request)
