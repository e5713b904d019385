"""The KIS simulator on the wire (raw HTTP, as KIS clients speak it) and its in-memory state."""

import httpx
import pytest

from kis_simulator import SimulatorState

BALANCE = "/uapi/domestic-stock/v1/trading/inquire-balance"
ORDER = "/uapi/domestic-stock/v1/trading/order-cash"
PRICE = "/uapi/domestic-stock/v1/quotations/inquire-price"
BALANCE_QUERY = {
    "ACNT_PRDT_CD": "01",
    "AFHR_FLPR_YN": "N",
    "OFL_YN": "",
    "INQR_DVSN": "01",
    "UNPR_DVSN": "01",
    "FUND_STTL_ICLD_YN": "N",
    "FNCG_AMT_AUTO_RDPT_YN": "N",
    "PRCS_DVSN": "00",
    "CTX_AREA_FK100": "",
    "CTX_AREA_NK100": "",
}


class Wire:
    """A bare KIS client: just enough to speak to the simulator by hand."""

    def __init__(self, url: str, appkey: str = "wire-test-key") -> None:
        self.http = httpx.Client(base_url=url, timeout=10)
        self.appkey = appkey
        self.token = self.issue_token().json()["access_token"]

    def issue_token(self, appkey: str | None = None, appsecret: str = "secret") -> httpx.Response:
        body = {
            "grant_type": "client_credentials",
            "appkey": self.appkey if appkey is None else appkey,
            "appsecret": appsecret,
        }
        return self.http.post("/oauth2/tokenP", json=body)

    def headers(self, tr_id: str, **extra: str) -> dict:
        return {
            "authorization": f"Bearer {self.token}",
            "appkey": self.appkey,
            "appsecret": "secret",
            "tr_id": tr_id,
            "custtype": "P",
            "content-type": "application/json; charset=utf-8",
        } | extra

    def balance(
        self, cano: str, tr_id: str = "VTTC8434R", tr_cont: str = "", fk: str = "", nk: str = ""
    ) -> httpx.Response:
        query = BALANCE_QUERY | {"CANO": cano, "CTX_AREA_FK100": fk, "CTX_AREA_NK100": nk}
        return self.http.get(BALANCE, params=query, headers=self.headers(tr_id, tr_cont=tr_cont))

    def order(
        self, cano: str, code: str, qty: int, price: int | None = None, tr_id: str = "VTTC0012U", **extra
    ) -> dict:
        body = {
            "CANO": cano,
            "ACNT_PRDT_CD": "01",
            "PDNO": code,
            "ORD_DVSN": "01" if price is None else "00",
            "ORD_QTY": str(qty),
            "ORD_UNPR": str(price or 0),
            "EXCG_ID_DVSN_CD": "KRX",
        }
        body = {name: value for name, value in (body | extra).items() if value is not None}
        return self.http.post(ORDER, json=body, headers=self.headers(tr_id)).json()

    def price(self, code: str) -> httpx.Response:
        query = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": code}
        return self.http.get(PRICE, params=query, headers=self.headers("FHKST01010100"))

    def all_pages(self, cano: str, tr_id: str = "VTTC8434R") -> list[tuple[str, list[dict]]]:
        pages, response = [], self.balance(cano, tr_id)
        while True:
            body = response.json()
            pages.append((response.headers["tr_cont"], body["output1"]))
            if response.headers["tr_cont"] in ("D", "E"):
                return pages
            response = self.balance(cano, tr_id, "N", body["ctx_area_fk100"], body["ctx_area_nk100"])


@pytest.fixture
def wire(simulator):
    client = Wire(simulator.url)
    yield client
    client.http.close()


def many_holdings(count: int) -> list[dict]:
    return [{"stock_code": f"9{i:05d}", "quantity": i + 1, "avg_price": 10_000 + i} for i in range(count)]


def test_a_second_token_within_a_minute_is_refused_and_reset_forgets_the_issue(simulator, wire):
    again = wire.issue_token()
    assert again.status_code == 403
    assert again.json() == {
        "error_code": "EGW00133",
        "error_description": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)",
    }
    assert wire.issue_token(appkey="another-key").status_code == 200  # the rule is per app key
    simulator.reset()
    assert wire.price("005930").json()["rt_cd"] == "0"  # tokens outlive a reset
    assert wire.issue_token().json()["access_token"] == wire.token  # the same token within 6 h


def test_the_token_rule_can_be_lifted(simulator, wire):
    simulator.set_limits(token_issue_interval=0)
    again = wire.issue_token().json()
    assert again["access_token"] == wire.token
    assert again["token_type"] == "Bearer" and 0 < again["expires_in"] <= 86_400
    assert simulator.limits()["token_issue_interval"] == 0


def test_empty_app_key_or_secret_answers_kis_error(wire):
    for appkey, appsecret, code in (("", "secret", "EGW00103"), ("key", "", "EGW00105")):
        response = wire.issue_token(appkey, appsecret)
        assert response.status_code == 403
        assert response.json()["error_code"] == code


@pytest.mark.parametrize(
    ("header", "value", "status", "msg_cd"),
    [
        ("authorization", None, 500, "EGW00205"),
        ("authorization", "Bearer nope", 500, "EGW00121"),
        ("appkey", None, 403, "EGW00102"),
        ("appsecret", None, 403, "EGW00104"),
        ("tr_id", None, 500, "OPSQ9999"),
        ("tr_id", "XXXX0000R", 500, "OPSQ0002"),
        ("custtype", None, 500, "EGW00208"),
        ("custtype", "X", 500, "EGW00208"),
    ],
)
def test_missing_or_wrong_headers_are_refused_like_kis(simulator, wire, header, value, status, msg_cd):
    headers = wire.headers("VTTC8434R")
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    response = wire.http.get(BALANCE, params=BALANCE_QUERY | {"CANO": "50123456"}, headers=headers)
    assert response.status_code == status
    assert response.json()["rt_cd"] == "1" and response.json()["msg_cd"] == msg_cd
    assert response.headers["tr_id"] == (value or "(null)" if header == "tr_id" else "VTTC8434R")


def test_environment_and_input_checks(simulator, wire):
    wrong_environment = wire.balance("50123456", tr_id="TTTC8434R").json()
    assert (wrong_environment["rt_cd"], wrong_environment["msg_cd"]) == ("1", "EGW02006")
    missing = wire.http.get(BALANCE, params={"CANO": "50123456"}, headers=wire.headers("VTTC8434R"))
    assert missing.status_code == 200
    assert (missing.json()["rt_cd"], missing.json()["msg_cd"]) == ("2", "OPSQ2001")
    bad_account = wire.balance("5012345X").json()
    assert (bad_account["rt_cd"], bad_account["msg_cd"]) == ("2", "OPSQ2000")


@pytest.mark.parametrize(
    ("field", "value"), [("EXCG_ID_DVSN_CD", None), ("EXCG_ID_DVSN_CD", "NYSE"), ("SLL_TYPE", "99")]
)
def test_an_order_needs_its_exchange_and_a_known_sell_type(simulator, wire, field, value):
    """order_cash.py: EXCG_ID_DVSN_CD is required (KRX); SLL_TYPE is 01, 02, 05 or empty."""
    answer = wire.order("50123456", "005930", 1, **{field: value})
    assert (answer["rt_cd"], answer["msg_cd"], answer["msg1"]) == (
        "2",
        "OPSQ2001",
        f"ERROR : INPUT INVALID_CHECK_{field}",
    )
    assert simulator.orders("50123456") == []


@pytest.mark.parametrize("inqr_dvsn", ["02", "00", ""])
def test_balance_by_stock_is_refused_as_kis_does_since_2026_02_10(simulator, wire, inqr_dvsn):
    query = BALANCE_QUERY | {"CANO": "50123456", "INQR_DVSN": inqr_dvsn}
    response = wire.http.get(BALANCE, params=query, headers=wire.headers("VTTC8434R"))
    assert response.status_code == 200 and response.headers["tr_id"] == "VTTC8434R"
    assert response.json() == {
        "rt_cd": "2",
        "msg_cd": "OPSQ2001",
        "msg1": "ERROR : INPUT INVALID_CHECK_INQR_DVSN",
    }


def test_seeded_demo_account_and_values_are_strings(wire):
    [(tr_cont, rows)] = wire.all_pages("50123456")
    assert tr_cont == "D"
    by_code = {row["pdno"]: row for row in rows}
    assert by_code["005930"]["prdt_name"] == "삼성전자" and by_code["005930"]["hldg_qty"] == "10"
    summary = wire.balance("50123456").json()["output2"][0]
    assert all(isinstance(v, str) for row in rows for v in row.values())
    assert all(isinstance(v, str) for v in summary.values()) and int(summary["dnca_tot_amt"]) > 0


@pytest.mark.parametrize(
    ("environment", "tr_id", "sizes", "conts"),
    [
        ("paper", "VTTC8434R", [20, 20, 20, 5], ["F", "M", "M", "E"]),
        ("real", "TTTC8434R", [50, 15], ["F", "E"]),
    ],
)
def test_balance_pages_like_kis(simulator, wire, environment, tr_id, sizes, conts):
    simulator.configure_account("61000001", environment=environment)
    simulator.set_holdings("61000001", many_holdings(65))
    pages = wire.all_pages("61000001", tr_id)
    assert [len(rows) for _, rows in pages] == sizes
    assert [cont for cont, _ in pages] == conts
    codes = [row["pdno"] for _, rows in pages for row in rows]
    assert codes == sorted({h["stock_code"] for h in many_holdings(65)})


def test_continuation_keys_count_only_with_tr_cont_n(simulator, wire):
    simulator.set_holdings("61000002", many_holdings(30))
    first = wire.balance("61000002").json()
    again = wire.balance("61000002", fk=first["ctx_area_fk100"], nk=first["ctx_area_nk100"])
    assert again.json()["output1"] == first["output1"]


def test_market_orders_fill_and_a_sold_out_position_stays_with_zero(simulator, wire):
    answer = wire.order("50123456", "005930", 10, tr_id="VTTC0011U")
    assert answer["rt_cd"] == "0" and answer["msg_cd"] == "40590000"
    assert set(answer["output"]) == {"KRX_FWDG_ORD_ORGNO", "ODNO", "ORD_TMD"}
    [(_, rows)] = wire.all_pages("50123456")
    sold = next(row for row in rows if row["pdno"] == "005930")
    assert sold["hldg_qty"] == "0" and sold["thdt_sll_qty"] == "10"
    assert "005930" not in {h["stock_code"] for h in simulator.account("50123456")["holdings"]}

    bought = wire.order("50123456", "123450", 3, tr_id="VTTC0802U")  # old TR id, a generated stock
    assert bought["msg_cd"] == "40600000"
    [order] = [o for o in simulator.orders("50123456") if o["order_no"] == bought["output"]["ODNO"]]
    assert order["status"] == "filled" and order["side"] == "buy" and order["qty"] == 3


def test_limit_orders_fill_when_the_price_reaches_them(simulator, wire):
    simulator.set_prices_moving(False)
    simulator.set_price("005930", 70_000)
    buy = wire.order("50123456", "005930", 2, price=60_000)
    sell = wire.order("50123456", "005930", 4, price=80_000, tr_id="VTTC0011U")
    assert {o["status"] for o in simulator.orders("50123456")} == {"pending"}
    assert (
        next(h for h in simulator.account("50123456")["holdings"] if h["stock_code"] == "005930")[
            "orderable_quantity"
        ]
        == 6
    )

    simulator.set_price("005930", 59_500)
    simulator.set_price("005930", 80_100)
    filled = {o["order_no"]: o for o in simulator.orders("50123456")}
    assert filled[buy["output"]["ODNO"]]["fill_price"] == 60_000
    assert filled[sell["output"]["ODNO"]]["fill_price"] == 80_000
    holding = next(h for h in simulator.account("50123456")["holdings"] if h["stock_code"] == "005930")
    assert holding["quantity"] == 10 + 2 - 4


def test_refusals_sell_beyond_holding_closed_market_and_price_band(simulator, wire):
    assert wire.order("50123456", "005930", 11, tr_id="VTTC0011U")["msg_cd"] == "APBK0400"
    assert wire.order("50123456", "000000", 1, tr_id="VTTC0011U")["msg_cd"] == "APBK0400"
    assert wire.order("50123456", "005930", 1, price=10_000)["msg_cd"] == "APBK0506"
    simulator.set_market_open(False)
    assert wire.order("50123456", "005930", 1)["msg_cd"] == "40580000"
    assert simulator.orders("50123456") == []
    assert simulator.stats()["orders_rejected"] == 4


def test_current_price_answers_kis_fields(simulator, wire):
    simulator.set_prices_moving(False)
    simulator.set_price("005930", 73_000)
    output = wire.price("005930").json()["output"]
    assert (output["stck_prpr"], output["prdy_vrss"], output["prdy_vrss_sign"], output["prdy_ctrt"]) == (
        "73000",
        "1000",
        "2",
        "1.39",
    )
    assert (output["stck_mxpr"], output["stck_llam"]) == ("93600", "50400")
    assert wire.price("00593").json()["msg_cd"] == "OPSQ2001"


def test_faults_hit_the_next_api_calls_tokenp_included(simulator, wire):
    simulator.inject_fault("http_500", 2)
    assert wire.issue_token().status_code == 500
    assert wire.price("005930").status_code == 500
    assert wire.price("005930").json()["rt_cd"] == "0"

    simulator.inject_fault("rate_limit", 1)
    assert wire.price("005930").json()["msg_cd"] == "EGW00201"

    simulator.inject_fault("token_expired", 1)
    assert wire.price("005930").json()["msg_cd"] == "EGW00123"
    assert wire.price("005930").json()["msg_cd"] == "EGW00123"  # the token really expired
    wire.token = wire.issue_token().json()["access_token"]
    assert wire.price("005930").json()["rt_cd"] == "0"

    simulator.inject_fault("timeout", 1, delay=1.5)
    with pytest.raises(httpx.ReadTimeout):
        wire.http.get(
            PRICE,
            params={"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": "005930"},
            headers=wire.headers("FHKST01010100"),
            timeout=0.3,
        )
    assert simulator.calls("inquire-price") == 7 and simulator.calls("tokenP") == 3


def test_control_api_refuses_bad_input(simulator):
    for path, body in (
        ("/_fake/accounts/5012345/holdings", []),
        ("/_fake/accounts/50123456/holdings", [{"stock_code": "5930", "quantity": 1, "avg_price": 1}]),
        ("/_fake/accounts/50123456/holdings", [{"stock_code": "005930", "quantity": -1, "avg_price": 1}]),
        ("/_fake/prices/005930", {"price": 0}),
    ):
        assert httpx.put(simulator.url + path, json=body).status_code == 400
    assert httpx.post(simulator.url + "/_fake/faults", json={"mode": "boom", "count": 1}).status_code == 400


# --- the in-memory state, directly ---------------------------------------------------------


def test_listeners_see_every_tick_and_fill():
    state = SimulatorState(seed=7)
    events = []
    state.add_listener(events.append)
    state.tick()
    ticks = [e for e in events if e["kind"] == "tick"]
    assert {e["stock_code"] for e in ticks} == set(state.stocks)
    assert set(ticks[0]) == {
        "kind",
        "stock_code",
        "price",
        "change",
        "change_rate",
        "volume",
        "open",
        "high",
        "low",
        "trade_volume",
        "time",
    }
    order = state.place_order("50123456", "035720", "buy", 5, None, "VTTC0012U")
    [accepted, fill] = [e for e in events if e["kind"] in ("order", "fill")]
    assert accepted["kind"] == "order" and (accepted["qty"], accepted["price"]) == (5, 0)
    assert fill | {"price": 0, "time": "", "name": ""} == {
        "kind": "fill",
        "cano": "50123456",
        "hts_id": "sim50123456",
        "order_no": order.order_no,
        "stock_code": "035720",
        "side": "buy",
        "qty": 5,
        "price": 0,
        "order_price": 0,
        "order_type": "market",
        "time": "",
        "name": "",
    }
    assert state.account_by_hts_id("sim50123456").cano == "50123456"


def test_prices_walk_inside_the_daily_band():
    state = SimulatorState(seed=1)
    state.set_price("005930", 93_000)  # near the upper limit of 93,600
    for _ in range(500):
        state.tick()
    for stock in state.stocks.values():
        assert stock.lower_limit <= stock.price <= stock.upper_limit
        assert stock.low <= stock.price <= stock.high


def test_unknown_codes_and_accounts_are_made_on_demand():
    state = SimulatorState()
    stock = state.stock("A12345")
    assert stock.name and stock.price > 0 and state.stock("A12345") is stock
    assert SimulatorState().stock("A12345").price == stock.price  # the same code, the same stock
    account = state.account("77777777")
    assert (account.environment, account.hts_id, account.positions) == ("paper", "sim77777777", {})


# --- several rows of one stock (INQR_DVSN 01: by loan date) ------------------------------------


def test_a_position_in_lots_comes_back_as_one_row_per_lot(simulator, wire):
    simulator.set_holdings(
        "61000003",
        [
            {"stock_code": "005930", "quantity": 10, "avg_price": 70_000},
            {"stock_code": "005930", "quantity": 4, "avg_price": 65_000, "loan_date": "20260105"},
            {"stock_code": "000660", "quantity": 2, "avg_price": 180_000},
        ],
    )
    [(_, rows)] = wire.all_pages("61000003")
    assert [(r["pdno"], r["hldg_qty"], r["loan_dt"], r["trad_dvsn_name"]) for r in rows] == [
        ("000660", "2", "", "현금"),
        ("005930", "10", "", "현금"),
        ("005930", "4", "20260105", "자기융자"),
    ]
    [samsung] = [h for h in simulator.account("61000003")["holdings"] if h["stock_code"] == "005930"]
    assert samsung["quantity"] == 14 and samsung["avg_price"] == pytest.approx(
        (10 * 70_000 + 4 * 65_000) / 14
    )
    assert [lot["loan_date"] for lot in samsung["lots"]] == ["", "20260105"]

    wire.order("61000003", "005930", 12, tr_id="VTTC0011U")  # sells the cash lot, then from the loan
    [(_, rows)] = wire.all_pages("61000003")
    assert [(r["hldg_qty"], r["loan_dt"], r["thdt_sll_qty"]) for r in rows if r["pdno"] == "005930"] == [
        ("2", "20260105", "12")
    ]


def test_lots_page_like_rows(simulator, wire):
    lots = [
        {
            "stock_code": f"9{i // 3:05d}",
            "quantity": 1,
            "avg_price": 10_000,
            "loan_date": f"202601{i % 3 + 1:02d}",
        }
        for i in range(45)
    ]
    simulator.set_holdings("61000004", lots)
    pages = wire.all_pages("61000004")
    assert [len(rows) for _, rows in pages] == [20, 20, 5]
    assert [(r["pdno"], r["loan_dt"]) for _, rows in pages for r in rows] == [
        (lot["stock_code"], lot["loan_date"]) for lot in lots
    ]


def test_control_api_refuses_a_bad_loan_date(simulator):
    body = [{"stock_code": "005930", "quantity": 1, "avg_price": 1, "loan_date": "2026-01-05"}]
    assert httpx.put(simulator.url + "/_fake/accounts/50123456/holdings", json=body).status_code == 400


# --- SYDB0050: the data changed under the paging -----------------------------------------------

STALE = {"rt_cd": "7", "msg_cd": "SYDB0050", "msg1": "조회이후에 자료가 변경되었습니다.(다시 조회하세요)"}


def test_the_sydb0050_fault_hits_continuation_pages_only(simulator, wire):
    simulator.set_holdings("61000005", many_holdings(45))
    simulator.inject_fault("sydb0050", 2)
    first = wire.balance("61000005")
    assert first.json()["rt_cd"] == "0"  # a first page never suffers it
    assert wire.price("005930").json()["rt_cd"] == "0"  # nor any other call
    body = first.json()
    for _ in range(2):
        stale = wire.balance("61000005", tr_cont="N", fk=body["ctx_area_fk100"], nk=body["ctx_area_nk100"])
        assert stale.status_code == 200 and stale.json() == STALE
    assert [len(rows) for _, rows in wire.all_pages("61000005")] == [20, 20, 5]


def test_a_change_of_the_holdings_between_pages_answers_sydb0050(simulator, wire):
    simulator.set_holdings("61000006", many_holdings(25))
    body = wire.balance("61000006").json()
    wire.order("61000006", "900000", 1, tr_id="VTTC0011U")  # a fill changes the holdings
    stale = wire.balance("61000006", tr_cont="N", fk=body["ctx_area_fk100"], nk=body["ctx_area_nk100"])
    assert stale.json() == STALE
    assert [len(rows) for _, rows in wire.all_pages("61000006")] == [20, 5]  # a new read from page 1 works

    simulator.set_prices_moving(True)  # prices moving is not a change of the holdings
    body = wire.balance("61000006").json()
    simulator.set_price("900001", 10_500)
    assert (
        wire.balance("61000006", tr_cont="N", fk=body["ctx_area_fk100"], nk=body["ctx_area_nk100"]).json()[
            "rt_cd"
        ]
        == "0"
    )


# --- the call budget (EGW00201) ----------------------------------------------------------------


def test_calls_beyond_the_budget_of_an_app_key_answer_egw00201(simulator, wire):
    simulator.set_limits(rate_limits={"paper": 2, "real": 20})
    answers = [wire.price("005930") for _ in range(3)]
    assert [a.json()["rt_cd"] for a in answers[:2]] == ["0", "0"]
    assert answers[2].status_code == 500
    assert answers[2].json() == {
        "rt_cd": "1",
        "msg_cd": "EGW00201",
        "msg1": "초당 거래건수를 초과하였습니다.",
    }

    other = Wire(simulator.url, appkey="another-app-key")  # each app key has its own budget
    assert other.price("005930").json()["rt_cd"] == "0"
    limits = simulator.limits()
    assert limits["calls"] == {"wire-test-key": 3, "another-app-key": 1}
    assert limits["egw00201"] == {"wire-test-key": 1}


def test_a_real_app_key_has_the_larger_budget(simulator, wire):
    simulator.set_limits(rate_limits={"paper": 2, "real": 20})
    simulator.configure_account("61000007", environment="real")
    answers = [wire.balance("61000007", tr_id="TTTC8434R").json()["rt_cd"] for _ in range(5)]
    assert answers == ["0"] * 5
    assert simulator.limits()["egw00201"] == {}


def test_the_budget_is_lifted_for_tests_and_can_be_lifted_again(simulator, wire):
    assert simulator.limits()["limits"] is None  # the test fixture starts it with --rate-limit off
    assert all(wire.price("005930").json()["rt_cd"] == "0" for _ in range(10))
    simulator.set_limits(rate_limits={"paper": 1, "real": 1})
    simulator.reset()
    assert simulator.limits()["limits"] is None  # reset comes back to the command line's choice
    assert simulator.limits()["calls"] == {}
