from django.contrib import admin
from django.urls import include, path

from trading.apis import ThrottledLoginView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("trading.urls")),
    path("", include("watchlist.urls")),
]

handler404 = "config.exceptions.page_not_found"
handler500 = "config.exceptions.server_error"
