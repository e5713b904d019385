"""The watchlist page and the login form, server-rendered (before any script runs)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from trading.brokers.memory import MemoryBroker
from watchlist.consumers import render_row
from watchlist.models import SyncState, Watchlist, WatchlistItem
from watchlist.selectors import watchlist_snapshot
from watchlist.services import WatchlistService
from watchlist.templatetags import watchlist_format

pytestmark = pytest.mark.django_db

FORMAT_CASES = json.loads((settings.BASE_DIR / "static/js/tests/format_cases.json").read_text())


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    """The sync takes account locks in this Redis db."""


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


def synced(account, holdings: dict, prices: dict | None = None) -> None:
    broker = MemoryBroker()
    broker.set_holdings(holdings, prices)
    WatchlistService(account, broker).sync_with_account()
    SyncState.objects.update_or_create(account=account, defaults={"last_success_at": timezone.now()})


def rows(html: str) -> list[str]:
    return re.findall(r'<tr class="item[^"]*" data-code="([0-9A-Z]{6})"', html)


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_the_login_form_signs_in_and_leads_to_the_page(client, user):
    form = client.get("/accounts/login/")
    assert form.status_code == 200
    html = form.content.decode()
    assert 'name="username"' in html and 'name="password"' in html and "로그인" in html

    response = client.post("/accounts/login/", {"username": "trader", "password": "trader-pass-123"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_wrong_password_says_so(client, user):
    response = client.post("/accounts/login/", {"username": "trader", "password": "wrong"})
    assert response.status_code == 200
    assert "올바르지 않습니다" in response.content.decode()


def test_the_table_is_rendered_from_the_current_state_one_row_per_item(signed_in, account):
    synced(
        account,
        {"005930": (10, 71250.5), "000660": (3, 180_000.0)},
        prices={"005930": 72_100, "000660": 175_500},
    )

    html = signed_in.get("/").content.decode()

    assert rows(html) == ["000660", "005930"]
    for item in watchlist_snapshot(account)["full_list"]:
        assert render_row(item) in html, "the page and rows_html share one row template"
    assert '<td class="code">005930</td>' in html
    assert "72,100원" in html and "71,250.5원" in html and "721,000원" in html
    assert "+8,495원" in html and "+1.19%" in html and "-13,500원" in html
    assert 'class="num rise"' in html and 'class="num fall"' in html
    assert "마지막 동기화" in html
    snapshot = json.loads(
        re.search(
            r'<script id="watchlist-snapshot" type="application/json">(.*?)</script>', html, re.DOTALL
        ).group(1)
    )
    assert snapshot["version"] == 1 and snapshot["account"]["id"] == account.id
    assert 'src="/static/js/watchlist.js"' in html and "/static/css/watchlist.css" in html
    assert "csrftoken" in signed_in.cookies


def test_pending_items_are_marked(signed_in, account):
    watchlist = Watchlist.objects.create(account=account, version=1)
    WatchlistItem.objects.create(
        watchlist=watchlist,
        stock_code="035420",
        name="NAVER",
        quantity=2,
        avg_price=200_000,
        current_price=200_000,
        eval_amount=400_000,
        pnl=0,
        pnl_rate=0.0,
        pending=True,
    )

    html = signed_in.get("/").content.decode()

    assert rows(html) == ["035420"]
    assert 'class="item is-pending"' in html and "확인 중" in html


def test_before_the_first_sync_the_holdings_are_unknown_not_empty(signed_in, account):
    html = signed_in.get("/").content.decode()

    assert rows(html) == []
    assert "보유 종목을 아직 확인하지 못했습니다" in html
    assert "보유 종목이 없습니다" not in html


def test_after_a_sync_an_empty_account_holds_nothing(signed_in, account):
    synced(account, {})

    html = signed_in.get("/").content.decode()

    assert "보유 종목이 없습니다" in html
    assert "아직 확인하지 못했습니다" not in html


def test_a_failing_sync_keeps_the_last_list_as_of_its_time(signed_in, account):
    synced(account, {"005930": 10})
    last_success = timezone.now() - timedelta(minutes=3)
    SyncState.objects.filter(account=account).update(
        last_success_at=last_success, consecutive_failures=2, last_error="broker unreachable"
    )

    html = signed_in.get("/").content.decode()

    assert rows(html) == ["005930"]
    as_of = watchlist_format.clock(int(last_success.timestamp()))
    assert f"계좌에 연결할 수 없습니다 (2회 실패) — {as_of} 기준 목록입니다" in html
    assert "sync--failing" in html


def test_several_accounts_get_a_picker_and_a_foreign_account_is_not_found(
    signed_in, user, other_user, account, make_account
):
    second = make_account(user, cano="50999999", display_name="연금 계좌")
    theirs = make_account(other_user, cano="50888888")

    html = signed_in.get(f"/?account={second.id}").content.decode()

    assert 'id="account-picker"' in html
    assert f'<option value="{second.id}" selected>연금 계좌 · 50999999-01</option>' in html
    assert f'data-account="{second.id}"' in html
    assert signed_in.get(f"/?account={theirs.id}").status_code == 404
    assert signed_in.get("/?account=abc").status_code == 404


def test_a_user_without_accounts_is_told_so(signed_in):
    html = signed_in.get("/").content.decode()
    assert "연결된 증권 계좌가 없습니다" in html and "watchlist-app" not in html


@pytest.mark.parametrize("name", ["krw", "signed_krw", "signed_rate", "direction"])
def test_formatting_matches_the_javascript_client(name):
    """static/js/tests/watchlist.test.js checks the same cases against watchlist.js."""
    for value, expected in FORMAT_CASES[name]:
        assert getattr(watchlist_format, name)(value) == expected, (name, value)


def test_sync_line_says_how_long_ago_the_last_sync_was():
    now = 1_764_000_000
    assert watchlist_format.ago(now - 3, now) == "방금"
    assert watchlist_format.ago(now - 12, now) == "12초 전"
    assert watchlist_format.ago(now - 125, now) == "2분 전"
    assert watchlist_format.ago(now - 7200, now) == "2시간 전"
    ok = {"status": "ok", "last_success_at": now, "consecutive_failures": 0}
    assert watchlist_format.sync_status_text(ok).startswith("마지막 동기화 ")
    never = {"status": "never", "last_success_at": None, "consecutive_failures": 0}
    assert (
        watchlist_format.sync_status_text(never) == "보유 종목을 아직 확인하지 못했습니다 (첫 동기화 대기 중)"
    )


# --- the trader's language


def test_the_page_is_korean_by_default_and_english_when_asked(signed_in, account):
    synced(account, {"005930": (10, 70_000.0)}, {"005930": 72_100})
    WatchlistItem.objects.filter(stock_code="005930").update(pending=True)

    korean = signed_in.get("/").content.decode()
    english = signed_in.get("/", HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9,ko;q=0.8").content.decode()

    assert '<html lang="ko">' in korean and '<html lang="en">' in english
    for text in ("보유 종목", "평가손익", "매수", "매도", "확인 중", "마지막 동기화 방금", "72,100원"):
        assert text in korean and text not in english, text
    for text in ("Holdings", "P&amp;L", "Buy", "Sell", "Pending", "Last sync just now", "72,100 KRW"):
        assert text in english and text not in korean, text
    assert rows(korean) == rows(english) == ["005930"]
    texts = {
        language: json.loads(
            re.search(r'<script id="watchlist-texts" type="application/json">(.*?)</script>', html).group(1)
        )
        for language, html in (("ko", korean), ("en", english))
    }
    assert texts["ko"]["sync_ok"] == "마지막 동기화 %(ago)s" and texts["en"]["sync_ok"] == "Last sync %(ago)s"


def test_the_login_page_is_english_when_asked(client):
    html = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Sign in" in html and "Username" in html and "로그인" not in html


@pytest.mark.parametrize("language", ["ko", "en"])
def test_the_javascript_clients_text_tables_are_the_servers(language):
    """static/js/tests/texts_*.json feed the client's unit tests: they must be what the page hands the client."""
    from django.utils import translation

    path = settings.BASE_DIR / f"static/js/tests/texts_{language}.json"
    with translation.override(language):
        expected = watchlist_format.client_texts()
    assert json.loads(path.read_text()) == expected, (
        f"rewrite {path.name} as: {json.dumps(expected, ensure_ascii=False, indent=2)}"
    )
    assert bool(re.search(r"[가-힣]", json.dumps(expected, ensure_ascii=False))) == (language == "ko")
