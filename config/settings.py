"""Settings read from the environment, with defaults that serve one machine (see README)."""

import base64
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
import redis.connection
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DJANGO_DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-change-me-in-production-0123456789abcdef"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # swagger-ui served locally: /api/docs/ works offline
    "channels",
    "trading",
    "watchlist",
]

MIDDLEWARE = [
    "config.logs.request_id_middleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (Daphne, Celery worker and beat) share one SQLite file: wait for
    # locks instead of failing at once, and take the write lock at BEGIN to avoid upgrade deadlocks.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test_db.sqlite3")}

if DATABASES["default"]["ENGINE"].endswith("postgresql") and env_bool("DATABASE_POOL", False):
    # The ASGI server (Daphne or uvicorn) sets this, Django's advice for ASGI: each
    # database_sync_to_async call ends by closing its connection, so every WebSocket handshake would
    # pay for new PostgreSQL logins; from a pool that close is a hand-back (docs/PERFORMANCE.md,
    # "Handshakes"). Off elsewhere: a pool opened before a Celery worker forks would be shared by its
    # children.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": int(os.environ.get("DATABASE_POOL_MAX_SIZE", "10")),
        "timeout": 10,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "ko"
LANGUAGES = [("ko", "한국어"), ("en", "English")]
TIME_ZONE = "Asia/Seoul"
USE_I18N = True
# Our own catalogue (English msgids, Korean texts); compiled by scripts/test and scripts/run.
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Redis: cache (KIS tokens), locks, Celery broker and the channel layer share one server.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "lw"),
    }
}


def channel_layers_setting(layer: str, redis_url: str) -> dict:
    """CHANNEL_LAYERS for `layer` ("redis" or "pubsub") on the Redis of `redis_url`.

    Both are selectable so that the choice is made by measurement (docs/PERFORMANCE.md).
    `redis`: channels_redis' RedisChannelLayer; group members and messages are kept in Redis.
    `pubsub`: RedisPubSubChannelLayer; a group is a Redis pub/sub channel that each process subscribes
    to, and nothing is stored: no capacity, message expiry or group expiry (it has none of those
    options), and it subscribes again by itself after a reconnect."""
    # redis-py 8 defaults to a 5 s socket timeout and a 100-connection async pool: the first kills
    # idle consumers' BZPOPMIN reads, the second fails handshakes in a reconnect storm. Both are set
    # on purpose here (tests: an idle socket still receives after 30 s; 300 sockets connect at once).
    # No socket timeout at all (None), rather than a longer one: with any timeout redis-py sends each
    # command through asyncio.wait_for, which on Python 3.11 swallows a cancellation landing as the send
    # completes, so a socket closed at that moment leaves its consumer's receive loop running forever
    # (docs/PERFORMANCE.md, "Channel layer"; test: sockets closed right after connecting end cleanly).
    # RedisChannelLayer's blocking reads return every 5 s anyway (the pub/sub layer's reads poll every
    # 0.1 s); keepalive notices a dead Redis. Both layers build their connection pools from these options.
    host = {
        "address": redis_url,
        "socket_timeout": None,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "max_connections": int(os.environ.get("CHANNEL_LAYER_MAX_CONNECTIONS", "2000")),
    }
    prefix = os.environ.get("CHANNEL_LAYER_PREFIX", "lw-asgi")
    if layer == "redis":
        return {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [host],
                    "prefix": prefix,
                    # Capacity counts a whole server process's unread group messages in Redis (one entry
                    # per group message, however many of its sockets are in the group) and each socket's
                    # buffer in memory: 1000 absorbs a burst of price ticks across the process's accounts.
                    # Beyond it, and after `expiry` (longer than the client's 20 s ping + 10 s pong
                    # deadline, after which it reconnects anyway), messages are dropped: the client sees
                    # the version gap and resyncs.
                    "capacity": 1000,
                    "expiry": 30,
                    "group_expiry": 86400,
                },
            }
        }
    if layer == "pubsub":
        # Pub/sub channels belong to no Redis database: the prefix names the URL's, so that runs on
        # different databases of one Redis (tests, a demo) stay apart as they do under "redis".
        database = redis.connection.parse_url(redis_url).get("db", 0)
        return {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [host], "prefix": f"{prefix}-db{database}"},
            }
        }
    raise ImproperlyConfigured(f'CHANNEL_LAYER must be "redis" or "pubsub", not {layer!r}')


CHANNEL_LAYERS = channel_layers_setting(os.environ.get("CHANNEL_LAYER", "redis"), REDIS_URL)

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
# Celery's Django fixup closes the database connections around every task, a new PostgreSQL
# connection per sync, unless this is set; config/celery.py applies DATABASE_CONN_MAX_AGE instead.
CELERY_DB_REUSE_MAX = 1000
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE = {
    "dispatch-due-syncs": {
        "task": "watchlist.tasks.dispatch_due_syncs",
        "schedule": float(os.environ.get("WATCHLIST_DISPATCH_EVERY", "2")),
    },
    # Keys live 24 h (trading.services.IDEMPOTENCY_TTL); an hourly purge keeps the table to about a day's.
    "purge-expired-idempotency-keys": {
        "task": "trading.tasks.purge_expired_idempotency_keys",
        "schedule": float(os.environ.get("IDEMPOTENCY_PURGE_EVERY", "3600")),
    },
}

# --- Product settings (contract.md, "Settings")
WATCHLIST_SYNC_INTERVAL = int(os.environ.get("WATCHLIST_SYNC_INTERVAL", "30"))
WATCHLIST_BACKOFF_MAX = int(os.environ.get("WATCHLIST_BACKOFF_MAX", "120"))
WATCHLIST_PENDING_GRACE = int(os.environ.get("WATCHLIST_PENDING_GRACE", "60"))
WATCHLIST_LOCK_TIMEOUT = int(os.environ.get("WATCHLIST_LOCK_TIMEOUT", "30"))
# A registered order not applied after this long is given up by the next read (its trade died): more
# than the longest order path (the call budget's wait, a token renewal, KIS_TIMEOUT).
WATCHLIST_ORDER_DEADLINE = int(os.environ.get("WATCHLIST_ORDER_DEADLINE", "60"))
# A manual sync waits this long for a read that began after it, then answers 503.
WATCHLIST_MANUAL_SYNC_WAIT = float(os.environ.get("WATCHLIST_MANUAL_SYNC_WAIT", "8"))

# /readyz: a heartbeat older than this means the process stopped working (watchlist/health.py).
READY_BEAT_MAX_AGE = float(os.environ.get("READY_BEAT_MAX_AGE", "20"))
READY_PRICE_FEED_MAX_AGE = float(os.environ.get("READY_PRICE_FEED_MAX_AGE", "20"))

KIS_SIMULATOR_URL = os.environ.get("KIS_SIMULATOR_URL", "http://127.0.0.1:8765")
KIS_BASE_URL = os.environ.get("KIS_BASE_URL", KIS_SIMULATOR_URL)
KIS_TIMEOUT = float(os.environ.get("KIS_TIMEOUT", "5"))
# Client-side REST rate per app key, in calls per second, shared by every process (kis-api.md).
KIS_RATE_LIMIT_REAL = float(os.environ.get("KIS_RATE_LIMIT_REAL", "18"))
KIS_RATE_LIMIT_PAPER = float(os.environ.get("KIS_RATE_LIMIT_PAPER", "2"))
# KIS answers EGW00133 to a token asked for within about a minute of the last one.
KIS_TOKEN_MIN_INTERVAL = float(os.environ.get("KIS_TOKEN_MIN_INTERVAL", "60"))
# An account's base URL receives its app key and secret: KIS's two hosts only, and an http:// loopback
# address (the simulator) only where this is on.
KIS_ALLOW_LOOPBACK_BASE_URL = env_bool("KIS_ALLOW_LOOPBACK_BASE_URL", DEBUG)
# The operator's BrokerAccount whose real-time session streams every watched price of its feed (empty:
# each user's codes go on that user's own sessions, spending nobody else's app key or slots).
KIS_MARKET_DATA_ACCOUNT_ID = int(os.environ.get("KIS_MARKET_DATA_ACCOUNT_ID") or 0) or None


def _field_encryption_key() -> str:
    key = os.environ.get("FIELD_ENCRYPTION_KEY", "")
    if key:
        return key
    if not DEBUG:
        raise RuntimeError("FIELD_ENCRYPTION_KEY must be set when DJANGO_DEBUG is off")
    # Development only: a stable Fernet key derived from SECRET_KEY.
    return base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()


FIELD_ENCRYPTION_KEY = _field_encryption_key()

# --- DRF
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its WWW-Authenticate header makes "not authenticated" a 401 (contract), not a 403.
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.exceptions.api_exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        # Password guessing: per (username, address), and per address whatever the name.
        "auth": os.environ.get("AUTH_THROTTLE_RATE", "20/min"),
        "auth-address": os.environ.get("AUTH_ADDRESS_THROTTLE_RATE", "60/min"),
        # Per user and per account: the contract's floor (20 trades a second, 120 a minute, 12 syncs a
        # minute per account) is the least these may be.
        "trades-burst": os.environ.get("TRADE_BURST_THROTTLE_RATE", "20/s"),
        "trades": os.environ.get("TRADE_THROTTLE_RATE", "120/min"),
        "sync": os.environ.get("SYNC_THROTTLE_RATE", "12/min"),
    },
    # How many reverse proxies in front append to X-Forwarded-For: throttles count the address the
    # nearest one saw. Left unset, DRF keys on the whole header, which any client can forge to reset
    # its password-guessing limit with every request.
    "NUM_PROXIES": int(os.environ.get("NUM_PROXIES", "0")),
}
# API tokens (django-rest-knox): stored as SHA-512 digests, expiring, revoked one by one
# (POST /api/auth/token/revoke/); sent as `Authorization: Token <token>` as before.
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Token",
    "TOKEN_TTL": timedelta(hours=float(os.environ.get("API_TOKEN_TTL_HOURS", "24"))),
    "AUTO_REFRESH": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Live Watchlist API",
    "DESCRIPTION": "A KIS brokerage watchlist that follows the account, with trades and live updates.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Production hardening (`manage.py check --deploy` clean with DJANGO_DEBUG=0)
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # The load balancer and the scraper call the servers directly, over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"

# LOG_FORMAT=json: one JSON object a line with the context fields (config/logs.py); else plain text.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f'LOG_FORMAT must be "plain" or "json", not {LOG_FORMAT!r}')
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.logs.JsonFormatter"},
    },
    "filters": {"channel_layer_drops": {"()": "watchlist.metrics.ChannelLayerDropCounter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        # Its DEBUG trace repeats a header value it refused (a mistyped app key) verbatim.
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # One "received"/"succeeded" pair per task every 2 s buries the sync logs that matter.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
        # At INFO whatever LOG_LEVEL: its "over capacity" line is the count of dropped messages.
        "channels_redis.core": {"level": "INFO", "filters": ["channel_layer_drops"]},
    },
}
