"""The operator's endpoints: /healthz, /readyz (watchlist/health.py) and /metrics (docs/OPERATIONS.md).

Plain Django views, outside the API: no login, no session, no CSRF and no throttle applies to them."""

from __future__ import annotations

import ipaddress

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from watchlist.health import cached_readiness
from watchlist.metrics import SyncHealthCollector

# Read from the database at each scrape of an ASGI server only: not in every process's registry.
_sync_health_registry = CollectorRegistry(auto_describe=False)
_sync_health_registry.register(SyncHealthCollector())


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    report = cached_readiness.get()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


def from_loopback_directly(request: HttpRequest) -> bool:
    """A scraper on this host, not a client through the reverse proxy (which also connects from
    loopback, but adds X-Forwarded-For)."""
    if "HTTP_X_FORWARDED_FOR" in request.META:
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not from_loopback_directly(request):
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    body = generate_latest(REGISTRY) + generate_latest(_sync_health_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
