"""The page and the API's paths. Every API path answers with and without its trailing slash, never with
a redirect; any other path under the API's prefixes gets a JSON 404 (config/urls.py)."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import apis, views

urlpatterns = [
    path("", views.watchlist_page, name="watchlist-page"),
    re_path(r"^execute-buy/(?P<stock_code>[^/]*)/?$", apis.ExecuteBuyApi.as_view(), name="execute-buy"),
    re_path(r"^execute-sell/(?P<stock_code>[^/]*)/?$", apis.ExecuteSellApi.as_view(), name="execute-sell"),
    re_path(r"^api/auth/token/?$", apis.AuthTokenApi.as_view(), name="api-token"),
    re_path(r"^api/auth/token/revoke/?$", apis.AuthTokenRevokeApi.as_view(), name="api-token-revoke"),
    re_path(r"^api/watchlist/?$", apis.WatchlistApi.as_view(), name="api-watchlist"),
    re_path(r"^api/watchlist/sync/?$", apis.WatchlistSyncApi.as_view(), name="api-watchlist-sync"),
    re_path(r"^api/schema/?$", SpectacularAPIView.as_view(), name="api-schema"),
    re_path(r"^api/docs/?$", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
