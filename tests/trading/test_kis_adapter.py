"""The real KIS adapter against the KIS simulator over real HTTP, with real Redis (tokens, rate limit)."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache

from trading.brokers import broker_for, kis
from trading.brokers.base import (
    BALANCE_COLUMNS,
    AuthenticationFailed,
    BrokerTimeout,
    BrokerUnavailable,
    NotSent,
    OrderRejected,
    RateLimited,
    TokenExpired,
    TokenIssueLimited,
)
from trading.brokers.kis import READ_ATTEMPTS, KoreaInvestService
from trading.models import BrokerAccount

FAULT_ERRORS = {
    "http_500": BrokerUnavailable,
    "rate_limit": RateLimited,
    "timeout": BrokerTimeout,
    "token_expired": TokenExpired,
}


@pytest.fixture
def quick_timeout(settings):
    """The client gives up after 0.5 s; a "timeout" fault then holds its answer for 2 s."""
    settings.KIS_TIMEOUT = 0.5
    return 2.0


def holdings(count: int) -> list[dict]:
    return [
        {"stock_code": f"{100000 + i * 7:06d}", "quantity": 1 + i, "avg_price": 5_000 + i * 10.5}
        for i in range(count)
    ]


# --- tokens ------------------------------------------------------------------------------


def test_one_token_serves_every_call_and_every_adapter(simulator, sim_account, redis_client):
    first, second = KoreaInvestService(sim_account), broker_for(sim_account)
    first.get_price("005930")
    first.get_acct_balance()
    second.get_price("000660")
    second.place_order("005930", "buy", 1)
    assert simulator.calls("tokenP") == 1


def test_concurrent_adapters_on_a_cold_cache_issue_one_token(simulator, sim_account, redis_client):
    with ThreadPoolExecutor(8) as pool:
        quotes = list(pool.map(lambda _: KoreaInvestService(sim_account).get_price("005930"), range(8)))
    assert all(quote.price > 0 for quote in quotes)
    assert simulator.calls("tokenP") == 1 and simulator.calls("inquire-price") == 8


def test_a_refused_token_is_renewed_once_and_the_call_sent_again(simulator, sim_account, redis_client):
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    issued = simulator.stats()["tokens_issued"]

    simulator.inject_fault("token_expired", 1)
    assert broker.get_price("005930").price > 0
    simulator.inject_fault("token_expired", 1)
    order_no = broker.place_order("005930", "buy", 1)  # the gateway refused the first try: safe to resend

    assert simulator.calls("tokenP") == 3
    assert simulator.stats()["tokens_issued"] == issued + 2
    assert [o["order_no"] for o in simulator.orders("50123456")] == [order_no]
    assert KoreaInvestService(sim_account).get_price("005930").price > 0  # the renewed token is shared
    assert simulator.calls("tokenP") == 3


def test_a_token_refused_again_after_renewal_is_an_error(simulator, sim_account, redis_client):
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    simulator.inject_fault("token_expired", 2)  # the call, then the renewal itself
    with pytest.raises(TokenExpired):
        broker.get_price("005930")
    assert simulator.calls("inquire-price") == 2 and simulator.calls("tokenP") == 2


def test_no_token_is_asked_for_within_the_minimum_interval(simulator, sim_account, redis_client, settings):
    settings.KIS_TOKEN_MIN_INTERVAL = 60
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    simulator.inject_fault("token_expired", 1)
    with pytest.raises(TokenIssueLimited):
        broker.get_price("005930")
    assert simulator.calls("tokenP") == 1


def test_empty_app_key_is_refused_by_kis(simulator, user, make_account, redis_client):
    account = make_account(user, cano="50123457", base_url=simulator.url, app_key="")
    with pytest.raises(AuthenticationFailed) as refused:
        KoreaInvestService(account).get_price("005930")
    assert refused.value.msg_cd == "EGW00103"


# --- balance ---------------------------------------------------------------------------------


def test_the_balance_of_65_positions_is_read_across_pages_into_one_typed_frame(simulator, sim_account):
    simulator.set_holdings("50123456", holdings(65))
    frame = KoreaInvestService(sim_account).get_acct_balance()

    assert simulator.calls("inquire-balance") == 4  # paper pages hold 20 rows
    assert len(frame) == 65 and frame["stock_code"].is_unique
    assert {column: str(dtype) for column, dtype in frame.dtypes.items()} == {
        column: "string" if dtype == "string" else dtype for column, dtype in BALANCE_COLUMNS.items()
    }
    row = frame.set_index("stock_code").loc["100007"]
    assert (row["quantity"], row["orderable_quantity"], row["avg_price"]) == (2, 2, 5_010.5)
    assert row["eval_amount"] == row["quantity"] * row["current_price"]
    assert row["pnl"] == row["eval_amount"] - round(row["quantity"] * row["avg_price"])


def test_a_real_account_reads_50_row_pages_with_real_tr_ids(simulator, user, make_account):
    simulator.configure_account("61000003", environment="real")
    simulator.set_holdings("61000003", holdings(65))
    account = make_account(
        user, cano="61000003", base_url=simulator.url, environment=BrokerAccount.Environment.REAL
    )
    broker = KoreaInvestService(account)

    assert len(broker.get_acct_balance()) == 65
    assert simulator.calls("inquire-balance") == 2
    broker.place_order("100000", "sell", 1)
    assert simulator.orders("61000003")[0]["tr_id"] == "TTTC0011U"


def test_a_position_sold_out_today_is_not_a_holding(simulator, sim_account):
    broker = KoreaInvestService(sim_account)
    broker.place_order("005930", "sell", 10)
    assert "005930" not in set(broker.get_acct_balance()["stock_code"])
    assert "005930" in simulator.account("50123456")["sold_out_today"]


# --- orders and prices -------------------------------------------------------------------------


def test_market_orders_fill_at_once(simulator, sim_account):
    broker = KoreaInvestService(sim_account)
    buy_no = broker.place_order("005930", "buy", 5)
    sell_no = broker.place_order("000660", "sell", 5)

    log = {o["order_no"]: o for o in simulator.orders("50123456")}
    assert log[buy_no] | {"fill_price": None, "time": None} == {
        "order_no": buy_no,
        "stock_code": "005930",
        "side": "buy",
        "qty": 5,
        "price": None,
        "order_type": "market",
        "tr_id": "VTTC0012U",
        "time": None,
        "status": "filled",
        "fill_price": None,
    }
    assert log[sell_no]["status"] == "filled" and log[sell_no]["tr_id"] == "VTTC0011U"
    balance = broker.get_acct_balance().set_index("stock_code")
    assert balance.loc["005930", "quantity"] == 15 and "000660" not in balance.index


def test_limit_orders_fill_when_the_price_reaches_them(simulator, sim_account):
    simulator.set_prices_moving(False)
    simulator.set_price("035720", 41_000)
    broker = KoreaInvestService(sim_account)
    buy_no = broker.place_order("035720", "buy", 10, price=40_000)
    sell_no = broker.place_order("035720", "sell", 5, price=42_000)
    assert {o["status"] for o in simulator.orders("50123456")} == {"pending"}

    simulator.set_price("035720", 39_950)
    assert {o["order_no"]: o["status"] for o in simulator.orders("50123456")} == {
        buy_no: "filled",
        sell_no: "pending",
    }
    simulator.set_price("035720", 42_050)
    log = {o["order_no"]: o for o in simulator.orders("50123456")}
    assert (log[buy_no]["fill_price"], log[sell_no]["fill_price"]) == (40_000, 42_000)
    assert broker.get_acct_balance().set_index("stock_code").loc["035720", "quantity"] == 20 + 10 - 5


def test_a_sell_beyond_the_holding_is_rejected_with_kis_reason(simulator, sim_account):
    with pytest.raises(OrderRejected) as rejected:
        KoreaInvestService(sim_account).place_order("005930", "sell", 11)
    assert rejected.value.msg_cd == "APBK0400" and "주문가능수량" in rejected.value.message
    assert simulator.orders("50123456") == []


def test_the_current_price_is_a_typed_quote(simulator, sim_account):
    simulator.set_prices_moving(False)
    simulator.set_price("005930", 70_600)
    quote = KoreaInvestService(sim_account).get_price("005930")
    assert (quote.stock_code, quote.price, quote.change, quote.change_rate) == (
        "005930",
        70_600,
        -1_400,
        -1.94,
    )
    assert isinstance(quote.volume, int) and quote.volume > 0


# --- faults: typed errors, retries for reads only --------------------------------------------


@pytest.mark.parametrize("mode", ["http_500", "rate_limit", "timeout", "token_expired"])
def test_each_fault_maps_to_its_typed_error(simulator, sim_account, quick_timeout, mode):
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")  # a token first, so faults hit the price calls
    simulator.inject_fault(mode, READ_ATTEMPTS, delay=quick_timeout)
    with pytest.raises(FAULT_ERRORS[mode]):
        broker.get_price("005930")


@pytest.mark.parametrize("mode", ["http_500", "rate_limit", "timeout"])
def test_reads_are_tried_again_after_a_passing_fault(simulator, sim_account, quick_timeout, mode):
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    simulator.inject_fault(mode, READ_ATTEMPTS - 1, delay=quick_timeout)
    assert len(broker.get_acct_balance()) == 5
    assert simulator.calls("inquire-balance") == READ_ATTEMPTS


@pytest.mark.parametrize("mode", ["http_500", "rate_limit", "timeout"])
def test_orders_are_never_sent_twice(simulator, sim_account, quick_timeout, mode):
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    simulator.inject_fault(mode, 1, delay=quick_timeout)
    with pytest.raises(FAULT_ERRORS[mode]):
        broker.place_order("005930", "buy", 1)
    assert simulator.calls("order-cash") == 1
    # A timed-out order did reach KIS (its answer was lost): exactly why it must not be sent again.
    assert len(simulator.orders("50123456")) == (1 if mode == "timeout" else 0)


def test_an_unreachable_broker_is_unavailable_and_an_order_is_not_sent(user, make_account, redis_client):
    broker = KoreaInvestService(make_account(user))  # nothing listens on its base URL
    with pytest.raises(BrokerUnavailable):
        broker.get_price("005930")
    with pytest.raises(NotSent):  # not even a token could be had
        broker.place_order("005930", "buy", 1)


def test_secrets_and_tokens_never_reach_the_logs(simulator, sim_account, redis_client, caplog, quick_timeout):
    caplog.set_level("DEBUG")
    broker = KoreaInvestService(sim_account)
    broker.get_acct_balance()
    simulator.inject_fault("token_expired", 1)
    broker.place_order("005930", "buy", 1)
    simulator.inject_fault("rate_limit", 1)
    broker.get_price("005930")
    with pytest.raises(OrderRejected):
        broker.place_order("005930", "sell", 1_000)
    token = broker.token.cached()
    assert token and caplog.text
    for secret in (sim_account.app_key, sim_account.app_secret, token):
        assert secret not in caplog.text


def due_for_renewal(broker: KoreaInvestService) -> str:
    """Make the cached token expire in 10 minutes, inside the renewal margin; return it."""
    record = cache.get(broker.token.cache_key)
    cache.set(broker.token.cache_key, record | {"expires_at": time.time() + 600})
    return record["access_token"]


def test_a_token_is_renewed_ahead_of_its_expiry(simulator, sim_account, redis_client):
    # The 23 hours before a renewal pass on the adapter's side only: on the simulator's clock the
    # renewal comes within the minute in which KIS refuses a second token (EGW00133).
    simulator.set_limits(token_issue_interval=0)
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    due_for_renewal(broker)
    broker.get_price("005930")
    assert simulator.calls("tokenP") == 2
    assert cache.get(broker.token.cache_key)["expires_at"] > time.time() + kis.TOKEN_RENEW_MARGIN


def test_a_token_due_for_renewal_stays_in_use_while_kis_cannot_issue(simulator, sim_account, redis_client):
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    old_token = due_for_renewal(broker)
    simulator.inject_fault("http_500", 1)  # the renewal fails
    assert broker.get_price("005930").price > 0
    assert simulator.calls("tokenP") == 2 and cache.get(broker.token.cache_key)["access_token"] == old_token


def test_every_thread_of_a_process_shares_one_pooled_http_client(simulator, sim_account, redis_client):
    """Django runs each request of an ASGI server in a thread of its own: one client per thread would
    build a TLS context and open a connection to KIS for every order."""
    with ThreadPoolExecutor(4) as pool:
        clients = set(pool.map(lambda _: id(kis.http_client()), range(8)))
        list(pool.map(lambda _: KoreaInvestService(sim_account).get_price("005930"), range(8)))

    assert clients == {id(kis.http_client())}
    assert simulator.calls("inquire-price") == 8


def test_a_redis_that_lost_the_token_gets_it_back_from_the_process_without_asking_kis(
    simulator, sim_account, redis_client
):
    """A Redis restarted without persistence: KIS would refuse a new token within the minute (EGW00133)."""
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")
    redis_client.flushdb()  # the restart

    broker.get_price("005930")
    KoreaInvestService(sim_account).get_price("000660")

    assert simulator.calls("tokenP") == 1
    assert redis_client.keys("*kis:token:*")  # put back for the other processes
