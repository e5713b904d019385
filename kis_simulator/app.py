"""The simulator's aiohttp application: KIS REST routes, the /_fake/ control API, faults, the price walk."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from . import control, realtime, rest
from .rest import STATE
from .state import Rejection, SimulatorState

logger = logging.getLogger(__name__)

TICK_INTERVAL = web.AppKey("tick_interval", float)
TIMEOUT_DELAY = web.AppKey("timeout_delay", float)

RATE_LIMITED = Rejection("EGW00201", "초당 거래건수를 초과하였습니다.", http_status=500)
TOKEN_EXPIRED = Rejection("EGW00123", "기간이 만료된 token 입니다.", http_status=500)


def error_response(request: web.Request, rejection: Rejection) -> web.Response:
    """KIS's two error shapes: error_code on /oauth2/, rt_cd + msg_cd on /uapi/."""
    if request.path.startswith("/oauth2/"):
        return web.json_response(
            {"error_description": rejection.msg1, "error_code": rejection.msg_cd},
            status=rejection.http_status if rejection.http_status >= 400 else 403,
            dumps=rest.json_dumps,
        )
    return rest.kis_json(
        {"rt_cd": rejection.rt_cd, "msg_cd": rejection.msg_cd, "msg1": rejection.msg1},
        tr_id=request.headers.get("tr_id", ""),
        status=rejection.http_status,
    )


def expire_presented_token(request: web.Request) -> None:
    _, _, value = request.headers.get("authorization", "").partition(" ")
    token = request.app[STATE].token(value.strip())
    if token:
        request.app[STATE].expire_token(token)


def environment_of(tr_id: str) -> str | None:
    """The environment a TR id names: KIS's paper TRs start with V (VTTC8434R), real ones with T."""
    return {"V": "paper", "T": "real"}.get(tr_id[:1])


@web.middleware
async def kis_api(request: web.Request, handler) -> web.StreamResponse:
    """Count every API call and let it suffer the next injected fault; /_fake/ is never affected."""
    if not request.path.startswith(("/oauth2/", "/uapi/")):
        return await handler(request)
    state = request.app[STATE]
    state.calls[request.path.rsplit("/", 1)[-1]] += 1
    mode, delay = state.take_fault() or (None, None)
    if mode == "http_500":
        return web.Response(status=500, text="500 Internal Server Error")
    if mode == "rate_limit":
        return error_response(request, RATE_LIMITED)
    if mode == "token_expired":
        expire_presented_token(request)  # so that renewing really yields a new token
        return error_response(request, TOKEN_EXPIRED)
    # The call budget is per app key on /uapi/; tokenP and Approval have their own rules.
    appkey = request.headers.get("appkey", "")
    spent = appkey and request.path.startswith("/uapi/")
    if spent and not state.spend_call(appkey, environment_of(request.headers.get("tr_id", ""))):
        return error_response(request, RATE_LIMITED)
    try:
        response = await handler(request)
    except Rejection as rejection:
        response = error_response(request, rejection)
    if mode == "timeout":
        # The call took effect (an order is placed) but its answer never comes in time: the
        # client cannot know the outcome, which is exactly what it must cope with.
        await asyncio.sleep(request.app[TIMEOUT_DELAY] if delay is None else delay)
    return response


async def walk_prices(app: web.Application) -> None:
    state, interval = app[STATE], app[TICK_INTERVAL]
    while True:
        await asyncio.sleep(interval)
        if state.market_open and state.prices_moving:
            try:
                state.tick()
            except Exception:
                logger.exception("price walk failed; it goes on at the next tick")


async def price_walk_ctx(app: web.Application):
    task = asyncio.create_task(walk_prices(app)) if app[TICK_INTERVAL] > 0 else None
    yield
    if task:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(
    state: SimulatorState | None = None, *, tick_interval: float = 1.0, timeout_delay: float = 30.0
) -> web.Application:
    """The whole simulator. `tick_interval` 0 keeps prices still unless set through /_fake/prices/."""
    state = state or SimulatorState()
    app = web.Application(middlewares=[kis_api], client_max_size=1024**2)
    app[STATE] = state
    app[TICK_INTERVAL] = tick_interval
    app[TIMEOUT_DELAY] = timeout_delay
    rest.add_routes(app)
    control.add_routes(app)
    app.cleanup_ctx.append(price_walk_ctx)
    realtime.setup_realtime(app, state)
    return app
