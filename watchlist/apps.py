from django.apps import AppConfig


class WatchlistConfig(AppConfig):
    name = "watchlist"
    verbose_name = "Watchlist"

    def ready(self) -> None:
        from .socket_revocation import connect_signals

        connect_signals()
