import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

# Imported once Django is set up: they load models.
from channels.routing import ProtocolTypeRouter, URLRouter

from watchlist.middleware import SocketAuthMiddleware
from watchlist.routing import websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origin is checked by the consumer, not by an OriginValidator here: token sockets
        # (scripts) legitimately send none.
        "websocket": SocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
