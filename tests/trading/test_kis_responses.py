"""The adapter's requests and its reading of odd KIS answers, through a scripted transport (real Redis)."""

import json
from datetime import UTC, datetime

import httpx
import pytest
from django.core.cache import cache

from trading.brokers.base import (
    BALANCE_COLUMNS,
    BadBrokerResponse,
    BalanceChangedWhileRead,
    BrokerError,
    BrokerUnavailable,
    NotSent,
    OrderRejected,
    RequestRefused,
    TokenIssueLimited,
    UnknownStock,
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
        "EXCG_ID_DVSN_CD": "KRX",
        "SLL_TYPE": "",
        "CNDT_PRIC": "",
    }
    assert market_order.headers["tr_id"] == "TTTC0011U"
    assert json.loads(market_order.content) | {"CANO": ""} == {
        "CANO": "",
        "ACNT_PRDT_CD": "01",
        "PDNO": "000660",
        "ORD_DVSN": "01",
        "ORD_QTY": "2",
        "ORD_UNPR": "0",
        "EXCG_ID_DVSN_CD": "KRX",
        "SLL_TYPE": "01",
        "CNDT_PRIC": "",
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
    assert first.url.params["INQR_DVSN"] == "01"


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
        # Bounded at the boundary: nothing beyond what the database and the DataFrame hold.
        ROW | {"pchs_avg_pric": "1e400"},  # a finite Decimal, but inf as a float
        ROW | {"evlu_pfls_rt": "nan"},
        ROW | {"evlu_amt": "1e400"},
        ROW | {"hldg_qty": "9223372036854775808"},  # 2**63
        ROW | {"evlu_pfls_amt": "-9223372036854775809"},
        ROW | {"prpr": "1" * 50},
        ROW | {"hldg_qty": "-1"},
        ROW | {"ord_psbl_qty": "-3"},
        ROW | {"prpr": "-72100"},
        ROW | {"pdno": "5930"},
        ROW | {"pdno": "0059300"},
        ROW | {"pdno": "00593!"},
        ROW | {"pdno": "x" * 200},
        ROW | {"prdt_name": "가" * 101},
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


# --- balance reads as KIS answers them today (issue 13) -------------------------------------------


def test_a_refused_inqr_dvsn_is_a_clear_refusal_that_is_not_retried(account):
    """python-kis #81: since 2026-02-10, INQR_DVSN "02" is answered rt_cd "2" OPSQ2001 (HTTP 200)."""
    refusal = httpx.Response(
        200, json={"rt_cd": "2", "msg_cd": "OPSQ2001", "msg1": "ERROR : INPUT INVALID_CHECK_INQR_DVSN"}
    )
    script = ScriptedKis(**{"inquire-balance": [refusal]})
    with pytest.raises(RequestRefused) as refused:
        broker(account, script).get_acct_balance()
    assert not refused.value.retryable
    assert (refused.value.msg_cd, refused.value.message) == (
        "OPSQ2001",
        "ERROR : INPUT INVALID_CHECK_INQR_DVSN",
    )
    assert len(script.calls("inquire-balance")) == 1


def test_rows_of_one_stock_by_loan_date_are_summed_across_pages(account):
    """INQR_DVSN "01" lists a stock once per loan date; the holdings see one position per code."""
    older = ROW | {
        "hldg_qty": "10",
        "ord_psbl_qty": "10",
        "pchs_avg_pric": "70000.0000",
        "evlu_amt": "721000",
        "evlu_pfls_amt": "21000",
        "evlu_pfls_rt": "3.00",
    }
    hynix = ROW | {
        "pdno": "000660",
        "prdt_name": "SK하이닉스",
        "hldg_qty": "2",
        "ord_psbl_qty": "2",
        "pchs_avg_pric": "180000",
        "prpr": "181000",
        "evlu_amt": "362000",
        "evlu_pfls_amt": "2000",
        "evlu_pfls_rt": "0.56",
    }
    newer = ROW | {
        "hldg_qty": "30",
        "ord_psbl_qty": "20",
        "pchs_avg_pric": "74000.0000",
        "evlu_amt": "2163000",
        "evlu_pfls_amt": "-57000",
        "evlu_pfls_rt": "-2.57",
    }
    script = ScriptedKis(**{"inquire-balance": [page([older, hynix], "F", nk="000660"), page([newer], "E")]})
    frame = broker(account, script).get_acct_balance()

    assert list(frame["stock_code"]) == ["005930", "000660"]
    samsung = frame.iloc[0]
    assert (samsung["quantity"], samsung["orderable_quantity"]) == (40, 30)
    assert samsung["avg_price"] == pytest.approx((10 * 70_000 + 30 * 74_000) / 40)
    assert (samsung["current_price"], samsung["eval_amount"], samsung["pnl"]) == (72100, 2_884_000, -36_000)
    assert samsung["pnl_rate"] == pytest.approx(round(-36_000 / 2_920_000 * 100, 2))
    assert frame.iloc[1]["quantity"] == 2 and frame.iloc[1]["pnl_rate"] == pytest.approx(0.56)
    assert frame.dtypes.astype(str).to_dict() == BALANCE_COLUMNS


def test_rows_adding_up_beyond_64_bits_are_a_bad_response(account):
    huge = ROW | {"hldg_qty": str(2**62), "ord_psbl_qty": "0"}
    with pytest.raises(BadBrokerResponse):
        broker(account, ScriptedKis(**{"inquire-balance": [page([huge, huge, huge])]})).get_acct_balance()


DATA_CHANGED = {
    "rt_cd": "7",
    "msg_cd": "SYDB0050",
    "msg1": "조회이후에 자료가 변경되었습니다.(다시 조회하세요)",
}


def test_a_balance_that_changed_during_paging_is_read_again_from_page_one(account):
    """python-kis #20: a continuation page answers SYDB0050; pages of two moments are never merged."""
    after = ROW | {"pdno": "035420", "hldg_qty": "4"}
    script = ScriptedKis(
        **{
            "inquire-balance": [
                page([ROW], "F", nk="005930"),
                httpx.Response(200, json=DATA_CHANGED),
                page([ROW | {"hldg_qty": "12"}], "F", nk="005930"),
                page([after], "E"),
            ]
        }
    )
    frame = broker(account, script).get_acct_balance()

    # 12, not 10 + 12: the first read's page 1 was dropped, not summed with the second read's.
    assert frame[["stock_code", "quantity"]].values.tolist() == [["005930", 12], ["035420", 4]]
    _, _, again, last = script.calls("inquire-balance")
    assert again.headers["tr_cont"] == "" and again.url.params["CTX_AREA_NK100"] == ""
    assert last.headers["tr_cont"] == "N"


def test_a_balance_changing_on_every_read_fails_retryably_after_two_restarts(account):
    answers = [page([ROW], "F", nk="005930"), httpx.Response(200, json=DATA_CHANGED)] * 3
    script = ScriptedKis(**{"inquire-balance": answers})
    with pytest.raises(BalanceChangedWhileRead) as changed:
        broker(account, script).get_acct_balance()
    assert changed.value.retryable and changed.value.msg_cd == "SYDB0050"
    assert len(script.calls("inquire-balance")) == 6


def test_a_bad_balance_fails_the_sync_and_stores_nothing(account, django_capture_on_commit_callbacks):
    from watchlist.models import SyncState, WatchlistItem
    from watchlist.services import sync_and_record

    script = ScriptedKis(**{"inquire-balance": [page([ROW, ROW | {"pdno": "000660", "prpr": "1e400"}])]})
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(BadBrokerResponse):
        sync_and_record(account, broker(account, script))
    assert SyncState.objects.get(account=account).status == "failing"
    assert not WatchlistItem.objects.filter(watchlist__account=account).exists()


# --- prices, tokens, connections --------------------------------------------------------------------

PRICE = {"stck_prpr": "72100", "prdy_vrss": "100", "prdy_ctrt": "0.14", "acml_vol": "1000"}


def test_a_price_of_zero_means_an_unknown_code(account):
    zero = {"stck_prpr": "0", "prdy_vrss": "0", "prdy_ctrt": "0.00", "acml_vol": "0"}
    with pytest.raises(UnknownStock) as unknown:
        broker(account, ScriptedKis(**{"inquire-price": [ok(output=zero)]})).get_price("999999")
    assert not unknown.value.retryable


@pytest.mark.parametrize(
    "output", [PRICE | {"stck_prpr": "1e400"}, PRICE | {"acml_vol": "-1"}, PRICE | {"prdy_ctrt": "inf"}]
)
def test_an_unbounded_price_answer_is_a_bad_response(account, output):
    with pytest.raises(BadBrokerResponse):
        broker(account, ScriptedKis(**{"inquire-price": [ok(output=output)]})).get_price("005930")


def test_the_kst_expiry_timestamp_wins_over_expires_in(account):
    answer = TOKEN | {"access_token_token_expired": "2099-01-01 09:00:00", "expires_in": 10}
    script = ScriptedKis(tokenP=[httpx.Response(200, json=answer)], **{"inquire-price": [ok(output=PRICE)]})
    service = broker(account, script)
    service.get_price("005930")
    assert service.token.cached() == "scripted-token"
    assert (
        cache.get(service.token.cache_key)["expires_at"] == datetime(2099, 1, 1, 0, 0, tzinfo=UTC).timestamp()
    )


TOO_SOON = {"error_code": "EGW00133", "error_description": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)"}


def test_a_refused_token_issue_fails_retryably_without_asking_again_then_a_later_call_succeeds(account):
    """python-kis #24: a second tokenP within a minute is refused (HTTP 403, EGW00133). Even with our
    own pacing off (KIS_TOKEN_MIN_INTERVAL 0), nothing asks again before the minute is over."""
    script = ScriptedKis(
        tokenP=[httpx.Response(403, json=TOO_SOON), httpx.Response(200, json=TOKEN)],
        **{"inquire-price": [ok(output=PRICE)]},
    )
    service = broker(account, script)
    for _ in range(3):
        with pytest.raises(TokenIssueLimited) as limited:
            service.get_price("005930")
        assert limited.value.retryable
    assert len(script.calls("tokenP")) == 1 and not script.calls("inquire-price")

    cache.delete(service.token.issued_key)  # the minute is over
    assert service.get_price("005930").price == 72100
    assert len(script.calls("tokenP")) == 2


def test_a_closed_port_is_unavailable_in_plain_words(account):
    """Nothing listens on the account's base URL (port 9): the error names the host and the reason."""
    service = KoreaInvestService(account, http=httpx.Client())
    with pytest.raises(BrokerUnavailable) as unavailable:
        service.access_token()
    assert unavailable.value.message == "cannot connect to 127.0.0.1:9 for tokenP (connection refused)"
