import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

# Imported once Django is set up: they load models.
from channels.routing import ProtocolTypeRouter, URLRouter

from watchlist.routing import websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # No auth middleware: the consumer authenticates (watchlist/socket_auth.py) and checks the
        # Origin, not an OriginValidator here: token sockets (scripts) legitimately send none.
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
