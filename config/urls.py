from django.contrib import admin
from django.urls import include, path, re_path

from config import ops
from config.exceptions import api_not_found
from watchlist.apis import ThrottledLoginView

urlpatterns = [
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("watchlist.urls")),
    # Anything else under the API's prefixes: a JSON 404 (not Django's HTML page, not a slash redirect).
    re_path(r"^(?:api|execute-buy|execute-sell)(?:/.*)?$", api_not_found),
]

handler404 = "config.exceptions.page_not_found"
handler500 = "config.exceptions.server_error"
