"""The page in Debian's Chromium (Playwright, never `playwright install`) against the whole stack.

Screenshots go to test-artifacts/ (gitignored)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connections
from django.utils import translation
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.fixtures.simulator import DEMO_CANO
from watchlist import events
from watchlist.models import Watchlist, WatchlistItem
from watchlist.selectors import watchlist_snapshot
from watchlist.tasks import sync_account
from watchlist.templatetags.watchlist_format import signed_krw

pytestmark = pytest.mark.django_db(transaction=True)

ARTIFACTS = settings.BASE_DIR / "test-artifacts"
LIVE_TIMEOUT_MS = 60_000


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page_errors():
    """Script errors of every page a test opens; none is expected."""
    errors: list[str] = []
    yield errors
    assert errors == []


def signed_in_page(browser: Browser, server, errors: list[str], locale: str = "ko-KR") -> Page:
    """A browser of its own (a new context), signed in through the login form, its socket open. Its
    `locale` is the Accept-Language of its requests and handshakes: the page is Korean unless it prefers
    English."""
    page = browser.new_context(locale=locale, viewport={"width": 1280, "height": 860}).new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.fill('input[name="username"]', "trader")
    page.fill('input[name="password"]', "trader-pass-123")
    screenshot(page, "login")
    page.click('button[type="submit"]')
    expect(page).to_have_url(f"{server.url}/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=LIVE_TIMEOUT_MS)
    # Survives only as long as the document: proves that later updates came without a reload.
    page.evaluate("window.loadedOnce = true")
    return page


def order(page: Page, side: str, code: str, qty: int, *, outcome: str = "is-success") -> str:
    """Submit the page's buy or sell form; returns the message shown once the API answered."""
    form = page.locator(f'form[data-side="{side}"]')
    form.locator('input[name="stock_code"]').fill(code)
    form.locator('input[name="qty"]').fill(str(qty))
    form.locator('button[type="submit"]').click()
    message = page.locator("#order-message")
    expect(message).to_have_class(re.compile(outcome), timeout=LIVE_TIMEOUT_MS)
    return message.inner_text()


def codes_on(page: Page) -> list[str]:
    return page.locator("#watchlist-rows tr").evaluate_all("rows => rows.map(row => row.dataset.code)")


def in_thread(function, *args):
    """Run database code off this thread: Playwright's sync API keeps an event loop running here, and
    Django refuses ORM calls next to one."""

    def run():
        try:
            return function(*args)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(run).result()


def screenshot(page: Page, name: str) -> None:
    expect(page.locator("tr.flash")).to_have_count(0)  # the page at rest, not mid-highlight
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_buy_in_one_page_appears_in_another_and_a_full_sell_removes_it(
    live, browser, page_errors, sim_account
):
    trader = signed_in_page(browser, live, page_errors)
    watcher = signed_in_page(browser, live, page_errors)
    expect(watcher.locator("#list-state")).to_have_text(
        "보유 종목을 아직 확인하지 못했습니다"
    )  # never synced
    screenshot(watcher, "watchlist-never-synced")

    order(trader, "buy", "005930", 5)

    row = watcher.locator('#watchlist-rows tr[data-code="005930"]')
    expect(row).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(row.locator("td.code")).to_have_text("005930")
    expect(row.locator(".pending-mark")).to_have_count(0, timeout=LIVE_TIMEOUT_MS)  # confirmed by the sync
    expect(row.locator("td").nth(2)).to_have_text("5")
    expect(watcher.locator("#list-state")).to_be_hidden()
    screenshot(trader, "watchlist-after-buy-trader")

    [held] = in_thread(watchlist_snapshot, sim_account)["full_list"]
    in_thread(
        events.send_price_update,
        sim_account.id,
        events.price_update_message("005930", 80_000, 1_200, 1.52, 9),
    )
    expect(row.locator('[data-field="current_price"]')).to_have_text("80,000원", timeout=LIVE_TIMEOUT_MS)
    expect(row.locator('[data-field="change"]')).to_have_text("▲1,200 (+1.52%)")
    expect(row.locator('[data-field="eval_amount"]')).to_have_text("400,000원")
    with translation.override("ko"):  # the page's language, whatever an earlier test left active here
        pnl = signed_krw(round(400_000 - held["avg_price"] * 5))
    expect(row.locator('[data-field="pnl"]')).to_have_text(pnl)
    expect(row.locator('[data-field="pnl"]')).to_have_class(re.compile("rise"))
    screenshot(watcher, "watchlist-after-buy-and-price-update-watcher")

    refused = order(trader, "sell", "005930", 999, outcome="is-error")
    assert refused.strip(), "the API's error message is shown"
    screenshot(trader, "order-refused")
    order(trader, "sell", "005930", 5)

    expect(row).to_have_count(0, timeout=LIVE_TIMEOUT_MS)
    expect(watcher.locator("#list-state")).to_have_text("보유 종목이 없습니다")
    screenshot(watcher, "watchlist-after-full-sell")
    assert watcher.evaluate("window.loadedOnce") is True, "the second page was never reloaded"


def test_after_the_server_restarts_the_page_reconnects_and_shows_the_right_list(
    live, browser, page_errors, simulator, sim_account
):
    page = signed_in_page(browser, live, page_errors)
    indicator = page.locator("#connection")

    live.stop()
    expect(indicator).to_have_attribute(
        "data-state", re.compile("waiting|connecting"), timeout=LIVE_TIMEOUT_MS
    )
    screenshot(page, "watchlist-server-down")
    # While the server is down the account changes; the worker syncs and broadcasts to nobody.
    simulator.set_holdings(
        DEMO_CANO,
        [
            {"stock_code": "035420", "quantity": 3, "avg_price": 210_000},
            {"stock_code": "005930", "quantity": 7, "avg_price": 71_000},
        ],
    )
    sync_account.delay(sim_account.id)
    deadline = time.monotonic() + LIVE_TIMEOUT_MS / 1000
    while in_thread(lambda: Watchlist.objects.get(account=sim_account).version) < 1:
        assert time.monotonic() < deadline, "the worker did not sync the account"
        time.sleep(0.1)
    live.start()

    expect(indicator).to_have_attribute("data-state", "open", timeout=LIVE_TIMEOUT_MS)
    expected = [item["stock_code"] for item in in_thread(watchlist_snapshot, sim_account)["full_list"]]
    assert expected == ["005930", "035420"]
    expect(page.locator("#watchlist-rows tr")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
    assert codes_on(page) == expected
    expect(page.locator("#sync-status")).to_contain_text("마지막 동기화")
    assert page.evaluate("window.loadedOnce") is True, "reconnected by itself, without a reload"
    screenshot(page, "watchlist-after-restart")


def test_a_missed_change_makes_the_page_redraw_from_a_snapshot(live, browser, page_errors, sim_account):
    page = signed_in_page(browser, live, page_errors)
    app = page.locator("#watchlist-app")
    expect(app).to_have_attribute("data-version", "0")

    def commit_changes_nobody_hears_of() -> dict:
        watchlist = Watchlist.objects.get(account=sim_account)
        for code, name in (("005380", "현대차"), ("000660", "SK하이닉스")):
            WatchlistItem.objects.create(
                watchlist=watchlist,
                stock_code=code,
                name=name,
                quantity=2,
                avg_price=100_000,
                current_price=101_000,
                eval_amount=202_000,
                pnl=2_000,
                pnl_rate=1.0,
            )
        Watchlist.objects.filter(pk=watchlist.pk).update(version=3)
        return watchlist_snapshot(sim_account)

    snapshot = in_thread(commit_changes_nobody_hears_of)
    # Only the last change reaches the page: version 3 after 0, a gap.
    last_change = events.watchlist_changed_message({"added": ["000660"]}, snapshot["full_list"], 3)
    in_thread(events.send_watchlist_changed, sim_account.id, last_change)

    expect(app).to_have_attribute("data-version", "3", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#watchlist-rows tr")).to_have_count(2)
    assert codes_on(page) == ["000660", "005380"]
    assert page.evaluate("window.loadedOnce") is True


def test_the_account_totals_follow_a_buy_without_a_reload(live, browser, page_errors, sim_account):
    in_thread(sync_account, sim_account.id)  # the account's totals are known before the page opens
    page = signed_in_page(browser, live, page_errors)
    totals = page.locator("#account-totals")
    before = in_thread(watchlist_snapshot, sim_account)["totals"]
    expect(totals.locator('[data-field="purchase"]')).to_have_text("0원")
    expect(totals.locator('[data-field="deposit"]')).to_have_text(f"{before['deposit']:,}원")

    order(page, "buy", "005930", 3)

    # The reconciling sync reads the new totals and its change carries them to the page.
    expect(totals.locator('[data-field="purchase"]')).not_to_have_text("0원", timeout=LIVE_TIMEOUT_MS)
    after = in_thread(watchlist_snapshot, sim_account)["totals"]
    assert after["purchase"] > 0 and after["deposit"] < before["deposit"]
    expect(totals.locator('[data-field="purchase"]')).to_have_text(f"{after['purchase']:,}원")
    expect(totals.locator('[data-field="total_eval"]')).to_have_text(f"{after['total_eval']:,}원")
    expect(totals.locator('[data-field="deposit"]')).to_have_text(f"{after['deposit']:,}원")
    expect(totals.locator('[data-field="pnl_rate"]')).to_have_text(re.compile(r"^[+-]?\d+\.\d\d%$"))
    expect(page.locator(".totals.flash")).to_have_count(0)
    screenshot(page, "watchlist-totals-after-buy")
    assert page.evaluate("window.loadedOnce") is True, "the page was never reloaded"


def test_a_click_retried_after_a_lost_answer_is_one_order(live, browser, page_errors, sim_account, simulator):
    """The first request reaches the server and places the order, but its answer never reaches the
    page; the page says the state is being checked, and the second click reuses the key."""
    trader = signed_in_page(browser, live, page_errors)
    keys: list[str] = []

    def lose_the_first_answer(route):
        keys.append(route.request.headers["idempotency-key"])
        if len(keys) == 1:
            route.fetch()  # the order is placed...
            route.abort("connectionreset")  # ...and the page never learns it
        else:
            route.continue_()

    trader.route("**/execute-buy/**", lose_the_first_answer)
    checking = order(trader, "buy", "005930", 2, outcome="is-checking")
    assert "확인하는 중" in checking and "다시 시도" not in checking
    screenshot(trader, "order-state-being-checked")
    trader.locator('form[data-side="buy"] button[type="submit"]').click()
    expect(trader.locator("#order-message")).to_have_class(re.compile("is-success"), timeout=LIVE_TIMEOUT_MS)

    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(simulator.orders(DEMO_CANO)) == 1


def test_a_browser_that_prefers_english_gets_the_page_its_answers_and_its_rows_in_english(
    live, browser, page_errors, sim_account
):
    english = signed_in_page(browser, live, page_errors, locale="en-US")
    korean = signed_in_page(browser, live, page_errors)
    expect(english.locator("h1")).to_have_text("Holdings")
    expect(english.locator("#connection")).to_have_text("Live")
    expect(korean.locator("#connection")).to_have_text("실시간 연결됨")

    answer = order(english, "buy", "005930", 2)
    assert re.fullmatch(r"The buy order for 2 of 005930 at market was accepted \(order \d+\)\.", answer), (
        answer
    )
    assert re.fullmatch(
        r"매수 주문 1주\(005930, 시장가\)가 접수되었습니다 \(주문번호 \d+\)\.",
        order(korean, "buy", "005930", 1),
    )

    # Rows come over each page's socket, rendered in the language of its handshake.
    for page, currency in ((english, " KRW"), (korean, "원")):
        row = page.locator('#watchlist-rows tr[data-code="005930"]')
        expect(row.locator("td").nth(2)).to_have_text("3", timeout=LIVE_TIMEOUT_MS)
        expect(row.locator("td").nth(3)).to_contain_text(currency)
    expect(english.locator("#sync-status")).to_contain_text("Last sync", timeout=LIVE_TIMEOUT_MS)
    screenshot(english, "watchlist-in-english")
