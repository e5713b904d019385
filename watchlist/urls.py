from django.urls import path

from . import views

urlpatterns = [
    path("", views.watchlist_page, name="watchlist-page"),
]
