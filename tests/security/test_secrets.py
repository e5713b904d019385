"""Broker app keys, app secrets and KIS access tokens never appear in logs, output, API answers, the admin
or error pages, nor in clear in the database. The main paths run for real (the KIS adapter against the
simulator, every fault mode, keys a user mistyped) with logging at DEBUG; then everything captured and
every answer is searched for them."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import get_user_model
from django.core import serializers
from django.core.cache import cache
from django.db import connection
from django.test import Client

from config.logs import JsonFormatter
from tests.fixtures.simulator import DEMO_CANO
from tests.fixtures.trade import token_client
from trading.brokers.kis import KoreaInvestService
from trading.models import BrokerAccount, IdempotencyKey, Order
from watchlist.models import PendingTrade, SyncState, WatchlistChange
from watchlist.tasks import sync_account

pytestmark = pytest.mark.django_db

APP_KEY = "PScanaryAppKey7Q2xL9mWv4Rk8Tn3Hs6Jd1Fg5Zb"
APP_SECRET = "canarySecret/7Q2xL9mWv4Rk8Tn3Hs6Jd1Fg5Zb+Yc0Pe2Ua9Ix4Oq7Lw3Nt8Mr6Kv1Sj5Hf="
# Keys as users paste them: with a trailing newline (an illegal header value), with a non-Latin-1 letter.
MISTYPED_KEYS = {"50123457": APP_KEY[:-4] + "nl0\n", "50123458": APP_KEY[:-4] + "한글0"}


@pytest.fixture(autouse=True, params=["plain", "json"])
def everything_logged(request, caplog, redis_client):
    """The most an operator can turn on (LOG_LEVEL=DEBUG): the root at DEBUG, libraries as configured,
    in either LOG_FORMAT."""
    caplog.set_level(logging.DEBUG)
    if request.param == "json":
        caplog.handler.setFormatter(JsonFormatter())


@pytest.fixture
def canary_account(user, make_account, simulator):
    return make_account(user, cano=DEMO_CANO, base_url=simulator.url, app_key=APP_KEY, app_secret=APP_SECRET)


@pytest.fixture
def mistyped_accounts(user, make_account, simulator):
    return [
        make_account(user, cano=cano, base_url=simulator.url, app_key=key, app_secret=APP_SECRET)
        for cano, key in MISTYPED_KEYS.items()
    ]


def exercise_the_api(account, simulator, tokens: set[str]) -> list:
    """Every trade and watchlist path, healthy and under each broker fault; the answers. `tokens`
    collects the KIS access tokens the account used."""
    api = token_client(account.owner)

    def trade(side: str, code: str, **body):
        return api.post(f"/execute-{side}/{code}", {"account": account.id, **body}, format="json")

    answers = [
        api.post(f"/api/watchlist/sync/?account={account.id}"),
        api.get(f"/api/watchlist/?account={account.id}"),
        trade("buy", "005930", qty=2),
        trade("sell", "005930", qty=1),
        trade("sell", "000660", qty=999_999),
        trade("buy", "035420", qty=1, price=1),  # outside the daily price band: the broker rejects it
        api.get("/api/schema/"),
        api.get("/api/nothing-here/"),
    ]
    for mode in ("token_expired", "http_500", "rate_limit", "timeout"):
        tokens.add(current_token(account))
        simulator.inject_fault(mode, count=10, delay=1)
        answers += [api.post(f"/api/watchlist/sync/?account={account.id}"), trade("buy", "005930", qty=1)]
        simulator.reset()
    return answers


def current_token(account) -> str:
    record = cache.get(KoreaInvestService(account).token.cache_key)
    return record["access_token"] if record else ""


def admin_pages(accounts) -> list:
    boss = Client()
    boss.force_login(get_user_model().objects.create_superuser("boss", password="boss-pass-123"))
    pages = [
        "/admin/",
        "/admin/trading/brokeraccount/",
        "/admin/trading/brokeraccount/add/",
        "/admin/watchlist/watchlist/",
        "/admin/watchlist/syncstate/",
        "/admin/watchlist/watchlistchange/",
        "/admin/trading/order/",
    ]
    pages += [f"/admin/trading/brokeraccount/{account.id}/change/" for account in accounts]
    pages += [f"/admin/watchlist/watchlist/{account.watchlist.id}/change/" for account in accounts]
    return [boss.get(page) for page in pages]


def stored_rows() -> str:
    """The rows the app wrote about orders, syncs and changes, and the secrets' columns as stored."""
    models = [Order, IdempotencyKey, SyncState, WatchlistChange, PendingTrade]
    text = "".join(serializers.serialize("json", model.objects.all()) for model in models)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT app_key, app_secret FROM {BrokerAccount._meta.db_table}")
        return text + repr(cursor.fetchall())


def test_no_key_secret_or_token_leaks_from_any_main_path(
    canary_account, mistyped_accounts, simulator, settings, caplog, capsys
):
    settings.KIS_TIMEOUT = 0.5
    tokens: set[str] = set()
    for account in [canary_account, *mistyped_accounts]:
        sync_account(account.id)  # the periodic task
    answers = exercise_the_api(canary_account, simulator, tokens)
    for account in mistyped_accounts:
        answers += exercise_the_api(account, simulator, tokens)
    answers += admin_pages([canary_account, *mistyped_accounts])
    tokens = {token for token in tokens | {current_token(canary_account)} if token}

    assert {answer.status_code for answer in answers} <= {200, 404, 409, 502, 503}, [
        (answer.status_code, answer.content[:200]) for answer in answers
    ]
    captured = capsys.readouterr()
    haystacks = {
        "logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "answers": "\n".join(
            f"{answer.status_code} {answer.headers}\n{answer.content.decode()}" for answer in answers
        ),
        "database": stored_rows(),
    }
    needles = {
        "app key": APP_KEY,
        "app secret": APP_SECRET,
        **{f"access token {n}": token for n, token in enumerate(tokens)},
        **{f"mistyped key {n}": key.strip() for n, key in enumerate(MISTYPED_KEYS.values())},
    }
    leaks = [
        (what, where)
        for what, needle in needles.items()
        for where, text in haystacks.items()
        if needle in text
    ]
    assert leaks == []
    assert "sync failed account=" in caplog.text  # the faults did run and were logged
