from django.urls import path

from .consumers import WatchlistConsumer

websocket_urlpatterns = [
    path("ws/watchlist/", WatchlistConsumer.as_asgi()),
]
