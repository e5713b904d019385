"""The adapter's requests and its reading of odd KIS answers, through a scripted transport (real Redis)."""

import json

import httpx
import pytest

from trading.brokers.base import (
    BadBrokerResponse,
    BrokerError,
    BrokerUnavailable,
    NotSent,
    OrderRejected,
    TokenIssueLimited,
)
from trading.brokers.kis import KoreaInvestService
from trading.models import BrokerAccount

ROW = {
    "pdno": "005930",
    "prdt_name": "삼성전자",
    "hldg_qty": "10",
    "ord_psbl_qty": "8",
    "pchs_avg_pric": "71250.5000",
    "pchs_amt": "712505",
    "prpr": "72100",
    "evlu_amt": "721000",
    "evlu_pfls_amt": "8495",
    "evlu_pfls_rt": "1.19",
}
TOKEN = {"access_token": "scripted-token", "token_type": "Bearer", "expires_in": 86400}


class ScriptedKis:
    """Answers tokenP with TOKEN and every other call from `answers` (path suffix -> list of responses)."""

    def __init__(self, **answers: list[httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        endpoint = request.url.path.rsplit("/", 1)[-1]
        if endpoint == "tokenP" and "tokenP" not in self.answers:
            return httpx.Response(200, json=TOKEN)
        return self.answers[endpoint].pop(0)

    def calls(self, endpoint: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(endpoint)]


def ok(**fields) -> httpx.Response:
    return httpx.Response(
        200, json={"rt_cd": "0", "msg_cd": "MCA00000", "msg1": "정상처리 되었습니다."} | fields
    )


def page(rows: list[dict], tr_cont: str = "D", nk: str = "") -> httpx.Response:
    body = {
        "rt_cd": "0",
        "msg_cd": "20310000",
        "msg1": "",
        "output1": rows,
        "output2": [{}],
        "ctx_area_fk100": "FK",
        "ctx_area_nk100": nk,
    }
    return httpx.Response(200, json=body, headers={"tr_cont": tr_cont})


@pytest.fixture(autouse=True)
def fast_and_fresh(settings, redis_client):
    settings.KIS_RATE_LIMIT_PAPER = settings.KIS_RATE_LIMIT_REAL = 10_000
    settings.KIS_TOKEN_MIN_INTERVAL = 0


def broker(account, script: ScriptedKis) -> KoreaInvestService:
    return KoreaInvestService(account, http=httpx.Client(transport=httpx.MockTransport(script)))


def test_requests_carry_kis_headers_tr_ids_and_string_values(account, user, make_account):
    script = ScriptedKis(**{"order-cash": [ok(output={"ODNO": f"000000000{n}"}) for n in (1, 2)]})
    paper = broker(account, script)
    paper.place_order("005930", "buy", 3, price=70_000)
    real = broker(make_account(user, cano="61000009", environment=BrokerAccount.Environment.REAL), script)
    real.place_order("000660", "sell", 2)

    token_request, limit_order, market_order = script.requests  # one token: same host, same app key
    assert json.loads(token_request.content) == {
        "grant_type": "client_credentials",
        "appkey": account.app_key,
        "appsecret": account.app_secret,
    }
    assert {
        k: limit_order.headers[k] for k in ("authorization", "appkey", "appsecret", "tr_id", "custtype")
    } == {
        "authorization": "Bearer scripted-token",
        "appkey": account.app_key,
        "appsecret": account.app_secret,
        "tr_id": "VTTC0012U",
        "custtype": "P",
    }
    assert limit_order.headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(limit_order.content) == {
        "CANO": "50123456",
        "ACNT_PRDT_CD": "01",
        "PDNO": "005930",
        "ORD_DVSN": "00",
        "ORD_QTY": "3",
        "ORD_UNPR": "70000",
    }
    assert market_order.headers["tr_id"] == "TTTC0011U"
    assert json.loads(market_order.content) | {"CANO": ""} == {
        "CANO": "",
        "ACNT_PRDT_CD": "01",
        "PDNO": "000660",
        "ORD_DVSN": "01",
        "ORD_QTY": "2",
        "ORD_UNPR": "0",
    }


def test_balance_pages_follow_tr_cont_and_the_continuation_keys(account):
    second_row = ROW | {"pdno": "000660", "hldg_qty": "3"}
    script = ScriptedKis(**{"inquire-balance": [page([ROW], "F", nk="005930"), page([second_row], "E")]})
    frame = broker(account, script).get_acct_balance()

    assert list(frame["stock_code"]) == ["005930", "000660"]
    first, second = script.calls("inquire-balance")
    assert first.headers["tr_cont"] == "" and first.url.params["CTX_AREA_NK100"] == ""
    assert second.headers["tr_cont"] == "N"
    assert (second.url.params["CTX_AREA_FK100"], second.url.params["CTX_AREA_NK100"]) == ("FK", "005930")
    assert set(first.url.params) == {
        "CANO",
        "ACNT_PRDT_CD",
        "AFHR_FLPR_YN",
        "OFL_YN",
        "INQR_DVSN",
        "UNPR_DVSN",
        "FUND_STTL_ICLD_YN",
        "FNCG_AMT_AUTO_RDPT_YN",
        "PRCS_DVSN",
        "CTX_AREA_FK100",
        "CTX_AREA_NK100",
    }


def test_unknown_extra_fields_and_integral_decimals_are_harmless(account):
    row = ROW | {"prpr": "72100.00", "brand_new_field": "whatever", "evlu_pfls_amt": "-1200"}
    frame = broker(account, ScriptedKis(**{"inquire-balance": [page([row])]})).get_acct_balance()
    assert (frame.loc[0, "current_price"], frame.loc[0, "pnl"], frame.loc[0, "avg_price"]) == (
        72100,
        -1200,
        71250.5,
    )


@pytest.mark.parametrize(
    "row",
    [
        ROW | {"hldg_qty": "ten"},
        ROW | {"prpr": "72100.5"},
        ROW | {"evlu_pfls_rt": None},
        ROW | {"pchs_avg_pric": "NaN"},
        ROW | {"evlu_pfls_rt": "Infinity"},
        {k: v for k, v in ROW.items() if k != "prpr"},
        ROW | {"pdno": ""},
        "not an object",
    ],
)
def test_malformed_balance_rows_are_bad_responses(account, row):
    with pytest.raises(BadBrokerResponse):
        broker(account, ScriptedKis(**{"inquire-balance": [page([row])]})).get_acct_balance()


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"rt_cd": "0", "output1": "nope"}, headers={"tr_cont": "D"}),
        page([ROW], "M", nk=""),  # says more follow, but gives no key to continue from
        httpx.Response(200, json={"output1": []}),
        httpx.Response(200, text="<html>maintenance</html>"),
    ],
)
def test_malformed_balance_answers_are_bad_responses(account, answer):
    with pytest.raises(BadBrokerResponse):
        broker(account, ScriptedKis(**{"inquire-balance": [answer]})).get_acct_balance()


def test_a_server_error_without_a_kis_answer_is_unavailable_after_retries(account):
    gateway = [httpx.Response(502, text="<html>Bad Gateway</html>") for _ in range(3)]
    script = ScriptedKis(**{"inquire-price": gateway})
    with pytest.raises(BrokerUnavailable):
        broker(account, script).get_price("005930")
    assert len(script.calls("inquire-price")) == 3


def test_a_read_refused_with_an_unknown_code_is_a_broker_error_with_it(account):
    refusal = httpx.Response(200, json={"rt_cd": "1", "msg_cd": "OPSQ9999", "msg1": "무언가 잘못되었습니다"})
    with pytest.raises(BrokerError) as refused:
        broker(account, ScriptedKis(**{"inquire-price": [refusal]})).get_price("005930")
    assert (refused.value.msg_cd, refused.value.message) == ("OPSQ9999", "무언가 잘못되었습니다")


def test_an_order_refusal_and_an_answer_without_order_number(account):
    refusal = httpx.Response(
        200, json={"rt_cd": "1", "msg_cd": "APBK0952", "msg1": "주문가능금액을 초과 했습니다"}
    )
    script = ScriptedKis(**{"order-cash": [refusal, ok(output={"ODNO": ""})]})
    service = broker(account, script)
    with pytest.raises(OrderRejected) as rejected:
        service.place_order("005930", "buy", 1)
    assert rejected.value.msg_cd == "APBK0952"
    with pytest.raises(BadBrokerResponse):
        service.place_order("005930", "buy", 1)
    assert len(script.calls("order-cash")) == 2


def test_a_price_with_a_non_numeric_field_is_a_bad_response(account):
    output = {"stck_prpr": "72100", "prdy_vrss": "-", "prdy_ctrt": "0.00", "acml_vol": "1"}
    with pytest.raises(BadBrokerResponse):
        broker(account, ScriptedKis(**{"inquire-price": [ok(output=output)]})).get_price("005930")


def test_token_issued_too_often_is_typed_and_not_asked_again_too_soon(account, settings):
    settings.KIS_TOKEN_MIN_INTERVAL = 60
    too_soon = httpx.Response(
        403,
        json={
            "error_code": "EGW00133",
            "error_description": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)",
        },
    )
    script = ScriptedKis(tokenP=[too_soon])
    service = broker(account, script)
    for _ in range(2):
        with pytest.raises(NotSent) as refused:  # an order without a token never left
            service.place_order("005930", "buy", 1)
        assert isinstance(refused.value.__cause__, TokenIssueLimited) and refused.value.msg_cd == "EGW00133"
    with pytest.raises(TokenIssueLimited):
        service.get_price("005930")
    assert len(script.calls("tokenP")) == 1 and not script.calls("order-cash")


def test_token_expiry_read_from_the_kst_timestamp_when_expires_in_is_missing(account):
    answer = {"access_token": "kst-token", "access_token_token_expired": "2099-01-01 09:00:00"}
    script = ScriptedKis(
        tokenP=[httpx.Response(200, json=answer)],
        **{
            "inquire-price": [
                ok(output={"stck_prpr": "72100", "prdy_vrss": "100", "prdy_ctrt": "0.14", "acml_vol": "1000"})
            ]
        },
    )
    service = broker(account, script)
    assert service.get_price("005930").price == 72100
    assert service.token.cached() == "kst-token"
