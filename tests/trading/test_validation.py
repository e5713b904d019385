"""Bad order input is refused before any call leaves the process, by every broker."""

import httpx
import pytest

from trading.brokers.base import InvalidOrder, validate_order
from trading.brokers.kis import KoreaInvestService
from trading.brokers.memory import MemoryBroker

FULL_WIDTH_005930 = "\uff10\uff10\uff15\uff19\uff13\uff10"
BAD_CODES = ["5930", "005930\n", "00593a", "0059300", "", None, "005 93", FULL_WIDTH_005930, 5930, " 05930"]
BAD_QUANTITIES = [0, -1, 1.5, "10", True, None, 1_000_001]
BAD_PRICES = [0, -100, 1.5, "70000", True, 100_000_001]
BAD_ORDERS = (
    [(code, "buy", 1, None, "stock_code") for code in BAD_CODES]
    + [("005930", "sell", qty, None, "qty") for qty in BAD_QUANTITIES]
    + [("005930", "buy", 1, price, "price") for price in BAD_PRICES]
    + [("005930", "hold", 1, None, "side")]
)


def refuse_every_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a request left the process: {request.method} {request.url}")


@pytest.fixture
def offline_kis(account):
    """The real adapter on a transport that fails the test on any request."""
    return KoreaInvestService(account, http=httpx.Client(transport=httpx.MockTransport(refuse_every_request)))


@pytest.mark.parametrize(("code", "side", "qty", "price", "field"), BAD_ORDERS)
def test_bad_orders_are_refused_naming_the_field(offline_kis, code, side, qty, price, field):
    with pytest.raises(InvalidOrder) as refused:
        offline_kis.place_order(code, side, qty, price)
    assert set(refused.value.errors) == {field}


@pytest.mark.parametrize("code", BAD_CODES)
def test_bad_codes_are_refused_for_prices_too(offline_kis, code):
    with pytest.raises(InvalidOrder):
        offline_kis.get_price(code)


def test_good_orders_pass_validation():
    for code, qty, price in (("005930", 1, None), ("A12345", 1_000_000, 70_000), ("0000Z0", 7, 1)):
        validate_order(code, "buy", qty, price)


def test_the_simulator_sees_no_call_for_bad_input(simulator, sim_account):
    broker = KoreaInvestService(sim_account)
    for code, side, qty, price, _ in BAD_ORDERS:
        with pytest.raises(InvalidOrder):
            broker.place_order(code, side, qty, price)
    assert simulator.stats()["calls"] == {}


@pytest.mark.parametrize(("code", "side", "qty", "price", "field"), BAD_ORDERS)
def test_the_memory_broker_validates_the_same_way(code, side, qty, price, field):
    broker = MemoryBroker()
    with pytest.raises(InvalidOrder):
        broker.place_order(code, side, qty, price)
    assert broker.orders == []


def test_the_memory_broker_basics():
    broker = MemoryBroker()
    broker.set_holdings({"005930": (10, 70_000.0)}, prices={"005930": 72_000})
    assert broker.place_order("005930", "buy", 10, price=74_000)
    frame = broker.get_acct_balance()
    assert (frame.loc[0, "quantity"], frame.loc[0, "avg_price"]) == (20, 72_000.0)
    broker.place_order("005930", "sell", 20)
    assert broker.get_acct_balance().empty
    assert broker.get_price("005930").price == 10_000
