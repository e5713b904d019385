"""An order is never misreported: it is "not placed" only when nothing of it can have reached KIS, and
its state is unknown (a sync follows) after any failure once it may have left. Each way a call fails is
scripted on the transport (real Redis and PostgreSQL), and the simulator's faults are tried on the wire."""

import httpx
import pytest

from trading.brokers.base import NotSent, SentButUnconfirmed
from trading.brokers.kis import KoreaInvestService
from trading.models import Order
from trading.services import TradeOutcome, place_order

TOKEN = {"access_token": "scripted-token", "token_type": "Bearer", "expires_in": 86400}

# The request never left: no connection was made, or none was free in the pool.
NOT_SENT = [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol]
# The request, or part of it, may have reached KIS before the connection failed.
MAYBE_SENT = [
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.RemoteProtocolError,
    httpx.WriteError,
    httpx.WriteTimeout,
]


@pytest.fixture(autouse=True)
def fast_and_fresh(settings, redis_client):
    settings.KIS_RATE_LIMIT_PAPER = settings.KIS_RATE_LIMIT_REAL = 10_000
    settings.KIS_TOKEN_MIN_INTERVAL = 0


def kis_failing_orders_with(account, order_answer) -> KoreaInvestService:
    """Issues tokens; every order gets `order_answer`: an exception class raised, or a Response."""

    def transport(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("tokenP"):
            return httpx.Response(200, json=TOKEN)
        if isinstance(order_answer, httpx.Response):
            return order_answer
        raise order_answer("scripted", request=request)

    return KoreaInvestService(account, http=httpx.Client(transport=httpx.MockTransport(transport)))


def order_with(account, broker):
    result = place_order(account=account, stock_code="005930", side="buy", qty=1, price=None, broker=broker)
    return result, Order.objects.get().status


@pytest.mark.parametrize("failure", NOT_SENT, ids=lambda failure: failure.__name__)
def test_a_call_that_never_left_is_not_placed(account, failure):
    broker = kis_failing_orders_with(account, failure)
    with pytest.raises(NotSent):
        broker.place_order("005930", "buy", 1)
    result, status = order_with(account, broker)
    assert (result.outcome, result.needs_reconcile, status) == (TradeOutcome.UNREACHABLE, False, "failed")


@pytest.mark.parametrize("failure", MAYBE_SENT, ids=lambda failure: failure.__name__)
def test_a_call_that_may_have_left_is_state_unknown(account, failure):
    broker = kis_failing_orders_with(account, failure)
    with pytest.raises(SentButUnconfirmed):
        broker.place_order("005930", "buy", 1)
    result, status = order_with(account, broker)
    assert (result.outcome, result.needs_reconcile, status) == (TradeOutcome.STATE_UNKNOWN, True, "unknown")


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, text="Internal Server Error"),
        httpx.Response(502, json={"error": "bad gateway"}),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(
            200, json={"rt_cd": "0", "msg_cd": "APBK0013", "msg1": "주문 전송 완료", "output": {}}
        ),
    ],
    ids=["500-text", "502-json-without-code", "200-not-json", "200-without-order-number"],
)
def test_an_answer_that_does_not_settle_the_order_is_state_unknown(account, answer):
    result, status = order_with(account, kis_failing_orders_with(account, answer))
    assert (result.outcome, result.needs_reconcile, status) == (TradeOutcome.STATE_UNKNOWN, True, "unknown")


def test_an_order_without_a_token_was_not_sent(account):
    def transport(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("tokenP"), "no order may leave without a token"
        raise httpx.ReadTimeout("tokenP timed out", request=request)  # tokenP's own state is unknown

    broker = KoreaInvestService(account, http=httpx.Client(transport=httpx.MockTransport(transport)))
    result, status = order_with(account, broker)
    assert (result.outcome, result.needs_reconcile, status) == (TradeOutcome.UNREACHABLE, False, "failed")


def test_the_client_side_rate_limit_refuses_before_sending(account, settings, monkeypatch, redis_client):
    monkeypatch.setattr("trading.brokers.call_budget.MAX_WAIT", 0.0)
    settings.KIS_RATE_LIMIT_PAPER = 0.01  # the first order takes the app key's slot for 100 s
    accepted = httpx.Response(
        200, json={"rt_cd": "0", "msg_cd": "APBK0013", "msg1": "", "output": {"ODNO": "1"}}
    )
    broker = kis_failing_orders_with(account, accepted)
    first = place_order(account=account, stock_code="005930", side="buy", qty=1, price=None, broker=broker)
    second = place_order(account=account, stock_code="005930", side="buy", qty=1, price=None, broker=broker)
    assert (first.outcome, second.outcome) == (TradeOutcome.ACCEPTED, TradeOutcome.UNREACHABLE)
    assert list(Order.objects.order_by("id").values_list("status", flat=True)) == ["accepted", "failed"]


def test_a_key_that_cannot_go_in_a_header_is_not_sent(account):
    account.app_secret = "비밀"  # not ASCII: httpx refuses the header before connecting
    result, status = order_with(account, kis_failing_orders_with(account, httpx.Response(200, json=TOKEN)))
    assert (result.outcome, status) == (TradeOutcome.UNREACHABLE, "failed")


@pytest.mark.parametrize("mode", ["timeout", "http_500"])
def test_the_simulators_faults_leave_the_order_state_unknown(simulator, sim_account, settings, mode):
    settings.KIS_TIMEOUT = 0.5
    broker = KoreaInvestService(sim_account)
    broker.get_price("005930")  # a token first, so the fault hits the order
    simulator.inject_fault(mode, 1, delay=2.0)
    result, status = order_with(sim_account, broker)
    assert (result.outcome, result.needs_reconcile, status) == (TradeOutcome.STATE_UNKNOWN, True, "unknown")
    assert simulator.calls("order-cash") == 1
