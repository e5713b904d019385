"""The adapter against the simulator for the KIS behaviours that each side wrote from the sources on its
own (docs/KIS_CONFORMANCE.md): the two independent readings meet on the wire."""

from __future__ import annotations

import pytest

from tests.fixtures.simulator import DEMO_CANO
from trading.brokers.base import BalanceChangedWhileRead, TokenIssueLimited
from trading.brokers.kis import KoreaInvestService, forget_process_tokens


def test_lots_of_one_stock_by_loan_date_come_back_as_one_holding(simulator, sim_account, redis_client):
    simulator.set_holdings(
        DEMO_CANO,
        [
            {"stock_code": "005930", "quantity": 10, "avg_price": 70_000},
            {"stock_code": "005930", "quantity": 30, "avg_price": 74_000, "loan_date": "20261120"},
            {"stock_code": "000660", "quantity": 2, "avg_price": 180_000},
        ],
    )

    frame = KoreaInvestService(sim_account).get_acct_balance()

    samsung = frame[frame["stock_code"] == "005930"]
    assert len(frame) == 2 and len(samsung) == 1
    assert int(samsung["quantity"].iloc[0]) == 40
    assert samsung["avg_price"].iloc[0] == pytest.approx(73_000)


def positions(count: int) -> list[dict]:
    return [{"stock_code": f"{100000 + n:06d}", "quantity": 1 + n, "avg_price": 5_000} for n in range(count)]


def test_a_balance_that_changed_while_paging_is_read_again_from_page_one(
    simulator, sim_account, redis_client
):
    simulator.set_holdings(DEMO_CANO, positions(25))  # two pages of 20 on a paper account
    simulator.inject_fault("sydb0050", 1)

    frame = KoreaInvestService(sim_account).get_acct_balance()

    assert len(frame) == 25
    assert simulator.calls("inquire-balance") == 4  # page 1, the refused page 2, then pages 1 and 2 again


def test_a_balance_changing_on_every_read_fails_retryably(simulator, sim_account, redis_client):
    simulator.set_holdings(DEMO_CANO, positions(25))
    simulator.inject_fault("sydb0050", 10)

    with pytest.raises(BalanceChangedWhileRead) as refused:
        KoreaInvestService(sim_account).get_acct_balance()
    assert refused.value.retryable and refused.value.msg_cd == "SYDB0050"


def test_a_new_token_within_the_minute_is_refused_and_not_asked_again(simulator, sim_account, redis_client):
    """As after a deployment that lost every copy of the token: KIS's one-a-minute rule (EGW00133)."""
    KoreaInvestService(sim_account).get_price("005930")
    redis_client.flushdb()
    forget_process_tokens()

    with pytest.raises(TokenIssueLimited) as refused:
        KoreaInvestService(sim_account).get_price("005930")
    with pytest.raises(TokenIssueLimited):
        KoreaInvestService(sim_account).get_price("005930")

    assert refused.value.retryable and refused.value.msg_cd == "EGW00133"
    assert simulator.calls("tokenP") == 2  # the second refusal was the adapter's own, without a request


def test_the_adapters_pace_keeps_within_the_paper_budget(simulator, sim_account, redis_client, settings):
    """The default paper limits on both sides: 2 calls a second per app key, and no EGW00201."""
    settings.KIS_RATE_LIMIT_PAPER = 2
    simulator.set_limits(rate_limits={"paper": 2, "real": 20})
    broker = KoreaInvestService(sim_account)

    for _ in range(3):
        broker.get_price("005930")
        broker.get_acct_balance()

    limits = simulator.limits()
    assert sum(limits["calls"].values()) == 6
    assert sum(limits["egw00201"].values()) == 0
