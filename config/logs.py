"""Logs an aggregator can read: with LOG_FORMAT=json (settings.LOGGING) every record is one JSON object
a line, with its context fields (account, stock code, version, order number, request id) as fields.

The context comes from where the code base already puts it: the `key=value` pairs of its messages
("sync failed account=7 reason=timeout ...", "order accepted account=7 stock=005930 ..."), the same
names given in `extra=`, and the request id of the HTTP request being served (request_id_middleware).
Only those fields and the record's own (time, level, logger, message, exception) are written, so
nothing else attached to a record can reach the log; secrets are never put in a message (tests/security)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Message key -> field: the code base writes both "stock=" and "stock_code=", "order=" and "order_no=".
CONTEXT_FIELDS = {
    "account": "account",
    "stock": "stock_code",
    "stock_code": "stock_code",
    "version": "version",
    "order": "order_no",
    "order_no": "order_no",
    "reason": "reason",
    "msg_cd": "msg_cd",
    "user": "user",
}
KEY_VALUE = re.compile(r"(?<![\w.])(" + "|".join(CONTEXT_FIELDS) + r")=([^\s,;:()'\"]+)")
REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"
REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in KEY_VALUE.findall(message):
            if value != "-":
                entry.setdefault(CONTEXT_FIELDS[key], value)
        for key, field in CONTEXT_FIELDS.items():
            if hasattr(record, key):
                entry[field] = str(getattr(record, key))
        if current := request_id.get():
            entry["request_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _start_request(request: HttpRequest) -> contextvars.Token:
    given = request.META.get(REQUEST_ID_HEADER, "")
    return request_id.set(given if REQUEST_ID_SHAPE.match(given) else uuid.uuid4().hex)


def _end_request(response: HttpResponse, token: contextvars.Token) -> HttpResponse:
    response["X-Request-ID"] = request_id.get()
    request_id.reset(token)
    return response


@sync_and_async_middleware
def request_id_middleware(get_response):
    """Gives each request an id (the proxy's X-Request-ID when it looks like one) for its log lines,
    and answers it in X-Request-ID. Sync and async, so it costs Daphne no thread hop."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            token = _start_request(request)
            return _end_request(await get_response(request), token)

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            token = _start_request(request)
            return _end_request(get_response(request), token)

    return middleware
