"""The control API under /_fake/ that tests, the demo and the soak use to steer the simulator."""

from __future__ import annotations

import json
import re

from aiohttp import web

from .rest import STATE, json_dumps
from .state import CANO_RE, FAULT_MODES, STOCK_CODE_RE, SimulatorState, Stock

LOAN_DATE_RE = re.compile(r"^(?:[0-9]{8})?\Z")


class BadInput(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(
            text=json.dumps({"error": message}, ensure_ascii=False), content_type="application/json"
        )


def answer(payload: object) -> web.Response:
    return web.json_response(payload, dumps=json_dumps)


def cano_of(request: web.Request) -> str:
    cano = request.match_info["cano"]
    if not CANO_RE.match(cano):
        raise BadInput("CANO is exactly 8 digits")
    return cano


async def json_of(request: web.Request):
    try:
        return await request.json()
    except ValueError:
        raise BadInput("the body is not JSON") from None


def is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def stock_view(stock: Stock) -> dict:
    return {
        "stock_code": stock.code,
        "name": stock.name,
        "price": stock.price,
        "prev_close": stock.prev_close,
        "change": stock.change,
        "change_rate": stock.change_rate,
        "upper_limit": stock.upper_limit,
        "lower_limit": stock.lower_limit,
        "volume": stock.volume,
    }


async def put_holdings(request: web.Request) -> web.Response:
    cano = cano_of(request)
    holdings = await json_of(request)
    if not isinstance(holdings, list):
        raise BadInput('the body is a list of {"stock_code", "quantity", "avg_price", "loan_date"?}')
    for holding in holdings:
        if not isinstance(holding, dict) or not STOCK_CODE_RE.match(str(holding.get("stock_code", ""))):
            raise BadInput(f"not a holding with a 6-character stock code: {holding}")
        if not LOAN_DATE_RE.match(str(holding.get("loan_date", ""))):
            raise BadInput(f"loan_date is YYYYMMDD (or absent for the cash lot): {holding}")
        if not is_whole(holding.get("quantity")) or holding["quantity"] < 0:
            raise BadInput(f"quantity is a whole number >= 0: {holding}")
        if not is_number(holding.get("avg_price")) or holding["avg_price"] <= 0:
            raise BadInput(f"avg_price is a number > 0: {holding}")
    state = request.app[STATE]
    state.set_holdings(cano, holdings)
    return answer(state.account_view(cano))


async def get_account(request: web.Request) -> web.Response:
    return answer(request.app[STATE].account_view(cano_of(request)))


async def put_account(request: web.Request) -> web.Response:
    cano = cano_of(request)
    body = await json_of(request)
    if not isinstance(body, dict):
        raise BadInput('the body is {"environment", "hts_id", "cash"} (each optional)')
    if body.get("environment", "paper") not in ("paper", "real"):
        raise BadInput("environment is 'paper' or 'real'")
    if "hts_id" in body and not (isinstance(body["hts_id"], str) and body["hts_id"]):
        raise BadInput("hts_id is a non-empty string")
    if "cash" in body and not (is_whole(body["cash"]) and body["cash"] >= 0):
        raise BadInput("cash is a whole number of KRW >= 0")
    state = request.app[STATE]
    state.configure_account(
        cano, environment=body.get("environment"), hts_id=body.get("hts_id"), cash=body.get("cash")
    )
    return answer(state.account_view(cano))


async def get_orders(request: web.Request) -> web.Response:
    account = request.app[STATE].account(cano_of(request))
    return answer([order.as_dict() for order in account.orders])


async def post_faults(request: web.Request) -> web.Response:
    body = await json_of(request)
    if not isinstance(body, dict) or body.get("mode") not in FAULT_MODES:
        raise BadInput(f"mode is one of {', '.join(FAULT_MODES)}")
    count = body.get("count", 1)
    delay = body.get("delay")
    if not is_whole(count) or count < 0:
        raise BadInput("count is a whole number >= 0")
    if delay is not None and (not is_number(delay) or delay < 0):
        raise BadInput("delay is a number of seconds >= 0")
    state = request.app[STATE]
    state.inject_fault(body["mode"], count, delay)
    return answer(
        {
            "faults": [{"mode": m, "remaining": n, "delay": d} for m, n, d in state.faults],
            "sydb0050_pages": state.stale_pages,
        }
    )


def limits_view(state: SimulatorState) -> dict:
    return {"token_issue_interval": state.token_issue_interval} | state.rate_view()


async def get_limits(request: web.Request) -> web.Response:
    return answer(limits_view(request.app[STATE]))


async def post_limits(request: web.Request) -> web.Response:
    """{"token_issue_interval": s (0: off), "rate_limits": {"paper": n, "real": n} | null (null: off)}."""
    body = await json_of(request)
    if not isinstance(body, dict) or not set(body) <= {"token_issue_interval", "rate_limits"}:
        raise BadInput('the body is {"token_issue_interval", "rate_limits"} (each optional)')
    interval = body.get("token_issue_interval", 0)
    if not is_number(interval) or interval < 0:
        raise BadInput("token_issue_interval is a number of seconds >= 0")
    limits = body.get("rate_limits")
    if limits is not None and not (
        isinstance(limits, dict)
        and set(limits) == {"paper", "real"}
        and all(is_number(v) and v > 0 for v in limits.values())
    ):
        raise BadInput('rate_limits is {"paper": calls/s > 0, "real": calls/s > 0} or null')
    state = request.app[STATE]
    if "token_issue_interval" in body:
        state.token_issue_interval = float(interval)
    if "rate_limits" in body:
        state.rate_limits = {k: float(v) for k, v in limits.items()} if limits else None
        state.budgets.clear()
    return answer(limits_view(state))


async def post_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return answer({"reset": True})


async def put_price(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    if not STOCK_CODE_RE.match(code):
        raise BadInput("a stock code is 6 digits or upper-case letters")
    body = await json_of(request)
    if not isinstance(body, dict) or not is_whole(body.get("price")) or body["price"] <= 0:
        raise BadInput('the body is {"price": <whole number of KRW > 0>}')
    return answer(stock_view(request.app[STATE].set_price(code, body["price"])))


async def get_price(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    if not STOCK_CODE_RE.match(code):
        raise BadInput("a stock code is 6 digits or upper-case letters")
    return answer(stock_view(request.app[STATE].stock(code)))


async def post_market(request: web.Request) -> web.Response:
    body = await json_of(request)
    if not isinstance(body, dict) or any(not isinstance(body.get(k, True), bool) for k in ("open", "moving")):
        raise BadInput('the body is {"open": bool, "moving": bool} (each optional)')
    state = request.app[STATE]
    state.market_open = body.get("open", state.market_open)
    state.prices_moving = body.get("moving", state.prices_moving)
    return answer({"open": state.market_open, "moving": state.prices_moving})


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return answer(
        {
            "calls": dict(state.calls),
            "tokens_issued": state.tokens_issued,
            "orders_rejected": state.orders_rejected,
            "calls_by_appkey": dict(state.calls_by_appkey),
            "egw00201_by_appkey": dict(state.rate_limited_by_appkey),
            "accounts": len(state.accounts),
            "stocks": len(state.stocks),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_put("/_fake/accounts/{cano}/holdings", put_holdings)
    app.router.add_get("/_fake/accounts/{cano}", get_account)
    app.router.add_put("/_fake/accounts/{cano}", put_account)
    app.router.add_get("/_fake/accounts/{cano}/orders", get_orders)
    app.router.add_post("/_fake/faults", post_faults)
    app.router.add_post("/_fake/reset", post_reset)
    app.router.add_put("/_fake/prices/{code}", put_price)
    app.router.add_get("/_fake/prices/{code}", get_price)
    app.router.add_post("/_fake/market", post_market)
    app.router.add_get("/_fake/stats", get_stats)
    app.router.add_get("/_fake/limits", get_limits)
    app.router.add_post("/_fake/limits", post_limits)
