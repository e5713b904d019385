"""The KIS REST wire format the real adapter speaks: tokens, balance pages, cash orders, current price.

Field names, TR ids, headers and message codes follow ../shared/docs/kis-api.md. Every value in an
answer is a string, as KIS sends them.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import time
import uuid
from datetime import datetime

from aiohttp import web

from .seed import tick_size
from .state import CANO_RE, KST, STOCK_CODE_RE, Account, Position, Rejection, SimulatorState, Stock

STATE = web.AppKey("state", SimulatorState)

BALANCE_PATH = "/uapi/domestic-stock/v1/trading/inquire-balance"
ORDER_PATH = "/uapi/domestic-stock/v1/trading/order-cash"
PRICE_PATH = "/uapi/domestic-stock/v1/quotations/inquire-price"

BALANCE_TR_IDS = {"TTTC8434R": "real", "VTTC8434R": "paper"}
# tr_id -> (environment, side); the older 0802/0801 ids are still used by many clients.
ORDER_TR_IDS = {
    "TTTC0012U": ("real", "buy"),
    "TTTC0011U": ("real", "sell"),
    "VTTC0012U": ("paper", "buy"),
    "VTTC0011U": ("paper", "sell"),
    "TTTC0802U": ("real", "buy"),
    "TTTC0801U": ("real", "sell"),
    "VTTC0802U": ("paper", "buy"),
    "VTTC0801U": ("paper", "sell"),
}
PRICE_TR_IDS = {"FHKST01010100": None}
PAGE_SIZE = {"paper": 20, "real": 50}
BALANCE_QUERY = (
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
)
ORDER_BODY = ("CANO", "ACNT_PRDT_CD", "PDNO", "ORD_DVSN", "ORD_QTY", "ORD_UNPR", "EXCG_ID_DVSN_CD")
# examples_llm/domestic_stock/order_cash/order_cash.py: the exchange is required ("KRX"); a sell's
# type is 01 plain, 02 discretionary, 05 lent-stock sale, and may be left empty.
EXCHANGES = ("KRX", "NXT", "SOR")
SELL_TYPES = ("", "01", "02", "05")
ORDER_ACCEPTED = {
    ("paper", "buy"): ("40600000", "모의투자 매수주문이 완료 되었습니다."),
    ("paper", "sell"): ("40590000", "모의투자 매도주문이 완료 되었습니다."),
    ("real", "buy"): ("APBK0013", "주문 전송 완료 되었습니다."),
    ("real", "sell"): ("APBK0013", "주문 전송 완료 되었습니다."),
}
ORDER_ORGNO = "00950"


INQR_DVSN_ACCEPTED = ("01",)  # "02" (by stock) is refused since 2026-02-10 (python-kis #81)
STALE_PAGE = Rejection("SYDB0050", "조회이후에 자료가 변경되었습니다.(다시 조회하세요)", rt_cd="7")


def invalid_field(name: str) -> Rejection:
    """A field KIS's input check refuses: HTTP 200, rt_cd "2", OPSQ2001 "ERROR : INPUT INVALID_CHECK_<NAME>",
    the shape of the INQR_DVSN refusal (python-kis #81). The account number has its own code (OPSQ2000
    INVALID_CHECK_ACNO in KIS's error table)."""
    if name == "CANO":
        return Rejection("OPSQ2000", "ERROR : INPUT INVALID_CHECK_ACNO", rt_cd="2")
    return Rejection("OPSQ2001", f"ERROR : INPUT INVALID_CHECK_{name.upper()}", rt_cd="2")


# A missing field fails the same input check as a malformed one (the sources show no other answer).
missing_field = invalid_field


def json_dumps(payload: object) -> str:
    return json.dumps(payload, ensure_ascii=False)


def kis_json(payload: dict, *, tr_id: str = "", tr_cont: str = "", status: int = 200) -> web.Response:
    """A KIS answer: JSON in UTF-8 with the tr_id, tr_cont and gt_uid headers. A request without a
    tr_id is answered with tr_id "(null)", as KIS's servers write an absent one."""
    headers = {"tr_id": tr_id or "(null)", "tr_cont": tr_cont, "gt_uid": uuid.uuid4().hex}
    return web.json_response(payload, status=status, headers=headers, dumps=json_dumps)


# Header refusals. The codes and messages are those of KIS's error table (EGW gateway, OPSQ query
# server); the sources show the HTTP status only for the key and token errors (403 / 500), so the
# others answer 500, as KIS's gateway errors do, with rt_cd "1".
NO_AUTHORIZATION = Rejection("EGW00205", "credentials_type이 유효하지 않습니다.(Bearer)", http_status=500)
INVALID_TOKEN = Rejection("EGW00121", "유효하지 않은 token 입니다.", http_status=500)
EXPIRED_TOKEN = Rejection("EGW00123", "기간이 만료된 token 입니다.", http_status=500)
NO_APPKEY = Rejection("EGW00102", "AppKey는 필수입니다.", http_status=403)
NO_APPSECRET = Rejection("EGW00104", "AppSecret은 필수입니다.", http_status=403)
NO_TR_ID = Rejection("OPSQ9999", "JSON PARSING ERROR : tr_id not found", http_status=500)
UNKNOWN_TR_ID = Rejection("OPSQ0002", "없는 서비스 코드 입니다.", http_status=500)
BAD_CUSTTYPE = Rejection("EGW00208", "고객유형(custtype)이 유효하지 않습니다.", http_status=500)


def authorize(request: web.Request, tr_ids: dict) -> str:
    """Check the headers KIS checks; the request's tr_id when they are right."""
    state = request.app[STATE]
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise NO_AUTHORIZATION
    token = state.token(value.strip())
    if token is None:
        raise INVALID_TOKEN
    if token.expired(time.time()):
        raise EXPIRED_TOKEN
    if not request.headers.get("appkey"):
        raise NO_APPKEY
    if request.headers["appkey"] != token.appkey:
        raise INVALID_TOKEN
    if not request.headers.get("appsecret"):
        raise NO_APPSECRET
    tr_id = request.headers.get("tr_id", "")
    if not tr_id:
        raise NO_TR_ID
    if tr_id not in tr_ids:
        raise UNKNOWN_TR_ID
    if request.headers.get("custtype") not in ("P", "B"):
        raise BAD_CUSTTYPE
    return tr_id


def account_for(state: SimulatorState, cano: str, product_code: str, environment: str) -> Account:
    if not CANO_RE.match(cano):
        raise invalid_field("CANO")
    account = state.account(cano)
    if product_code != account.product_code:
        raise invalid_field("ACNT_PRDT_CD")
    if environment != account.environment:
        raise Rejection(
            "EGW02006",
            "모의투자 TR 이 아닙니다." if account.environment == "paper" else "실전투자 TR 이 아닙니다.",
            http_status=500,
        )
    return account


# --- /oauth2/ -------------------------------------------------------------------------------


async def json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise Rejection("OPSQ2003", "ERROR : JSON PARSING", http_status=500) from None
    if not isinstance(body, dict):
        raise Rejection("OPSQ2003", "ERROR : JSON PARSING", http_status=500)
    return body


async def issue_token(request: web.Request) -> web.Response:
    body = await json_body(request)
    if body.get("grant_type") != "client_credentials":
        raise Rejection("EGW00002", "grant_type 이 유효하지 않습니다.", http_status=403)
    if not body.get("appkey"):
        raise Rejection("EGW00103", "유효하지 않은 AppKey입니다.", http_status=403)
    if not body.get("appsecret"):
        raise Rejection("EGW00105", "유효하지 않은 AppSecret입니다.", http_status=403)
    token = request.app[STATE].issue_token(body["appkey"])
    return kis_json(
        {
            "access_token": token.value,
            "access_token_token_expired": datetime.fromtimestamp(token.expires_at, KST).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "token_type": "Bearer",
            "expires_in": int(token.expires_at - time.time()),
        }
    )


async def issue_approval_key(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not body.get("appkey"):
        raise Rejection("EGW00103", "유효하지 않은 AppKey입니다.", http_status=403)
    if not body.get("secretkey"):
        raise Rejection("EGW00105", "유효하지 않은 AppSecret입니다.", http_status=403)
    return kis_json({"approval_key": request.app[STATE].issue_approval_key(body["appkey"])})


async def hashkey(request: web.Request) -> web.Response:
    if not request.headers.get("appkey") or not request.headers.get("appsecret"):
        raise Rejection("EGW00103", "유효하지 않은 AppKey입니다.", http_status=403)
    body = await json_body(request)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return kis_json({"JsonBody": body, "HASH": digest})


# --- balance ----------------------------------------------------------------------------------


def lot_rows(account: Account, position: Position, stock: Stock) -> list[dict]:
    """The balance rows of one stock under INQR_DVSN 01: one per lot, today's trades on the first,
    what may be sold taken from the lots in order."""
    orderable = account.orderable_qty(stock.code)
    rows = []
    for number, lot in enumerate(position.lots):
        cost = round(lot.quantity * lot.avg_price)
        evaluation = lot.quantity * stock.price
        pnl = evaluation - cost
        rate = pnl / cost * 100 if cost else 0.0
        lot_orderable = min(orderable, lot.quantity)
        orderable -= lot_orderable
        rows.append(
            {
                "pdno": stock.code,
                "prdt_name": stock.name,
                "trad_dvsn_name": "자기융자" if lot.loan_date else "현금",
                "bfdy_buy_qty": "0",
                "bfdy_sll_qty": "0",
                "thdt_buyqty": str(position.bought_today if number == 0 else 0),
                "thdt_sll_qty": str(position.sold_today if number == 0 else 0),
                "hldg_qty": str(lot.quantity),
                "ord_psbl_qty": str(lot_orderable),
                "pchs_avg_pric": f"{lot.avg_price:.4f}",
                "pchs_amt": str(cost),
                "prpr": str(stock.price),
                "evlu_amt": str(evaluation),
                "evlu_pfls_amt": str(pnl),
                "evlu_pfls_rt": f"{rate:.2f}",
                "evlu_erng_rt": f"{rate:.8f}",
                "loan_dt": lot.loan_date,
                "loan_amt": "0",
                "stln_slng_chgs": "0",
                "expd_dt": "",
                "fltt_rt": f"{stock.change_rate:.8f}",
                "bfdy_cprs_icdc": str(stock.change),
                "item_mgna_rt_name": "20%",
                "grta_rt_name": "",
                "sbst_pric": str(stock.price * 7 // 10),
                "stck_loan_unpr": "0.0000",
            }
        )
    return rows


def row_key(stock_code: str, lot_number: int) -> str:
    """ctx_area_nk100 of a page: where the next one starts (the simulator's own format; KIS's is opaque)."""
    return f"{stock_code}^{lot_number:03d}"


def balance_summary(state: SimulatorState, account: Account) -> dict:
    positions = account.holdings()
    purchase = sum(round(p.quantity * p.avg_price) for p in positions)
    evaluation = sum(p.quantity * state.stock(p.stock_code).price for p in positions)
    return {
        "dnca_tot_amt": str(account.cash),
        "nxdy_excc_amt": str(account.cash),
        "prvs_rcdl_excc_amt": str(account.cash),
        "cma_evlu_amt": "0",
        "bfdy_buy_amt": "0",
        "thdt_buy_amt": "0",
        "nxdy_auto_rdpt_amt": "0",
        "bfdy_sll_amt": "0",
        "thdt_sll_amt": "0",
        "d2_auto_rdpt_amt": "0",
        "bfdy_tlex_amt": "0",
        "thdt_tlex_amt": "0",
        "tot_loan_amt": "0",
        "scts_evlu_amt": str(evaluation),
        "tot_evlu_amt": str(account.cash + evaluation),
        "nass_amt": str(account.cash + evaluation),
        "fncg_gld_auto_rdpt_yn": "",
        "pchs_amt_smtl_amt": str(purchase),
        "evlu_amt_smtl_amt": str(evaluation),
        "evlu_pfls_smtl_amt": str(evaluation - purchase),
        "tot_stln_slng_chgs": "0",
        "bfdy_tot_asst_evlu_amt": str(account.cash + purchase),
        "asst_icdc_amt": str(evaluation - purchase),
        "asst_icdc_erng_rt": "0.00000000",
    }


def search_key(account: Account) -> str:
    """ctx_area_fk100: the search condition, with the version of the holdings it was read at."""
    return f"{account.cano}^{account.product_code}^N^N^01^01^N^N^00^{account.version}"


def read_at_version(fk100: str) -> int | None:
    _, _, version = fk100.strip().rpartition("^")
    return int(version) if version.isdigit() else None


async def inquire_balance(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tr_id = authorize(request, BALANCE_TR_IDS)
    query = request.query
    for name in BALANCE_QUERY:
        if name not in query:
            raise missing_field(name)
    if query["INQR_DVSN"] not in INQR_DVSN_ACCEPTED:
        raise invalid_field("INQR_DVSN")
    account = account_for(state, query["CANO"], query["ACNT_PRDT_CD"], BALANCE_TR_IDS[tr_id])
    rows = [
        (row_key(position.stock_code, number), row)
        for position in account.holdings()
        for number, row in enumerate(lot_rows(account, position, state.stock(position.stock_code)))
    ]
    start = 0
    # Like KIS, the continuation keys count only on a request that says it continues (tr_cont N).
    if request.headers.get("tr_cont") == "N" and query["CTX_AREA_NK100"].strip():
        read_at = read_at_version(query["CTX_AREA_FK100"])
        if state.take_stale_page() or (read_at is not None and read_at != account.version):
            raise STALE_PAGE  # the holdings changed since page 1: the client must start again
        start = bisect.bisect_right([key for key, _ in rows], query["CTX_AREA_NK100"].strip())
    page = rows[start : start + PAGE_SIZE[account.environment]]
    more = start + len(page) < len(rows)
    first = start == 0
    tr_cont = ("F" if first else "M") if more else ("D" if first else "E")
    return kis_json(
        {
            "ctx_area_fk100": search_key(account),
            "ctx_area_nk100": page[-1][0] if page else "",
            "output1": [row for _, row in page],
            "output2": [balance_summary(state, account)],
            "rt_cd": "0",
            "msg_cd": "20310000" if account.environment == "paper" else "KIOK0510",
            "msg1": "모의투자 조회가 완료되었습니다."
            if account.environment == "paper"
            else "조회가 완료되었습니다",
        },
        tr_id=tr_id,
        tr_cont=tr_cont,
    )


# --- cash order -------------------------------------------------------------------------------


def whole_number(body: dict, name: str) -> int:
    value = body[name]
    if not isinstance(value, str) or not value.isdigit():
        raise invalid_field(name)
    return int(value)


async def order_cash(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tr_id = authorize(request, ORDER_TR_IDS)
    environment, side = ORDER_TR_IDS[tr_id]
    body = await json_body(request)
    for name in ORDER_BODY:
        if name not in body:
            raise missing_field(name)
    account = account_for(state, body["CANO"], body["ACNT_PRDT_CD"], environment)
    if not isinstance(body["PDNO"], str) or not STOCK_CODE_RE.match(body["PDNO"]):
        raise invalid_field("PDNO")
    if body["ORD_DVSN"] not in ("00", "01"):
        raise invalid_field("ORD_DVSN")
    if body["EXCG_ID_DVSN_CD"] not in EXCHANGES:
        raise invalid_field("EXCG_ID_DVSN_CD")
    if body.get("SLL_TYPE", "") not in SELL_TYPES:
        raise invalid_field("SLL_TYPE")
    qty, unit_price = whole_number(body, "ORD_QTY"), whole_number(body, "ORD_UNPR")
    if qty == 0:
        raise Rejection("APBK0904", "주문수량을 확인하여 주십시오.")
    if body["ORD_DVSN"] == "00" and unit_price == 0:
        raise Rejection("APBK0905", "주문단가를 확인하여 주십시오.")
    limit_price = unit_price if body["ORD_DVSN"] == "00" else None
    order = state.place_order(account.cano, body["PDNO"], side, qty, limit_price, tr_id)
    msg_cd, msg1 = ORDER_ACCEPTED[(environment, side)]
    return kis_json(
        {
            "rt_cd": "0",
            "msg_cd": msg_cd,
            "msg1": msg1,
            "output": {"KRX_FWDG_ORD_ORGNO": ORDER_ORGNO, "ODNO": order.order_no, "ORD_TMD": order.time},
        },
        tr_id=tr_id,
    )


# --- current price ----------------------------------------------------------------------------


async def inquire_price(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tr_id = authorize(request, PRICE_TR_IDS)
    for name in ("FID_COND_MRKT_DIV_CODE", "FID_INPUT_ISCD"):
        if name not in request.query:
            raise missing_field(name)
    if request.query["FID_COND_MRKT_DIV_CODE"] not in ("J", "NX", "UN"):
        raise invalid_field("FID_COND_MRKT_DIV_CODE")
    code = request.query["FID_INPUT_ISCD"]
    if not STOCK_CODE_RE.match(code):
        raise invalid_field("FID_INPUT_ISCD")
    stock = state.stock(code)
    return kis_json(
        {
            "output": {
                "iscd_stat_cls_code": "55",
                "marg_rate": "20.00",
                "rprs_mrkt_kor_name": "KOSPI",
                "bstp_kor_isnm": "시뮬레이터",
                "temp_stop_yn": "N",
                "oprc_rang_cont_yn": "N",
                "clpr_rang_cont_yn": "N",
                "crdt_able_yn": "Y",
                "grmn_rate_cls_code": "40",
                "elw_pblc_yn": "N",
                "stck_prpr": str(stock.price),
                "prdy_vrss": str(stock.change),
                "prdy_vrss_sign": stock.sign,
                "prdy_ctrt": f"{stock.change_rate:.2f}",
                "acml_tr_pbmn": str(stock.volume * stock.price),
                "acml_vol": str(stock.volume),
                "prdy_vrss_vol_rate": "0.00",
                "stck_oprc": str(stock.open),
                "stck_hgpr": str(stock.high),
                "stck_lwpr": str(stock.low),
                "stck_mxpr": str(stock.upper_limit),
                "stck_llam": str(stock.lower_limit),
                "stck_sdpr": str(stock.prev_close),
                "wghn_avrg_stck_prc": f"{stock.price:.2f}",
                "hts_frgn_ehrt": "0.00",
                "frgn_ntby_qty": "0",
                "pgtr_ntby_qty": "0",
                "per": "0.00",
                "pbr": "0.00",
                "eps": "0.00",
                "bps": "0.00",
                "w52_hgpr": str(stock.upper_limit),
                "w52_lwpr": str(stock.lower_limit),
                "aspr_unit": str(tick_size(stock.price)),
                "vi_cls_code": "N",
                "ovtm_vi_cls_code": "N",
                "last_ssts_cntg_qty": "0",
                "stck_shrn_iscd": stock.code,
            },
            "rt_cd": "0",
            "msg_cd": "MCA00000",
            "msg1": "정상처리 되었습니다.",
        },
        tr_id=tr_id,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/oauth2/tokenP", issue_token)
    app.router.add_post("/oauth2/Approval", issue_approval_key)
    app.router.add_post("/uapi/hashkey", hashkey)
    app.router.add_get(BALANCE_PATH, inquire_balance)
    app.router.add_post(ORDER_PATH, order_cash)
    app.router.add_get(PRICE_PATH, inquire_price)
