"""A local KIS Open API server for development, the demo and tests. Pure Python, no Django, no database.

Run it:  python -m kis_simulator --host 127.0.0.1 --port 8765
    --port 0 picks a free port (the first line printed says which); --tick-interval SECONDS (default 1,
    0 keeps prices still); --timeout-delay SECONDS (default 30, see faults); --seed N; --access-log.

KIS wire format (../shared/docs/kis-api.md), so the real adapter runs unchanged against it:
    POST /oauth2/tokenP        any non-empty appkey/appsecret; empty ones answer 403 EGW00103/EGW00105.
                               Asking again within 6 h returns the same token (24 h life).
    POST /oauth2/Approval      {"grant_type", "appkey", "secretkey"} -> {"approval_key"}
    POST /uapi/hashkey         -> {"JsonBody", "HASH"} (optional for orders; not verified)
    GET  .../trading/inquire-balance    TTTC8434R / VTTC8434R, every query parameter required;
                               20 rows a page on paper accounts, 50 on real; the answer's tr_cont header
                               is F/M while more follow, D/E on the last; continue with tr_cont N and
                               the previous ctx_area_fk100/nk100. Sold-out-today rows stay, hldg_qty "0".
    POST .../trading/order-cash         TTTC0012U/0011U, the older 0802U/0801U, and their VTTC twins.
                               ORD_DVSN 00 limit / 01 market. Market orders fill at once at the current
                               price; a limit buy fills when price <= limit (a sell when >=), now or later
                               as prices move (then at its limit). Refusals: APBK0400 sell beyond the
                               orderable quantity, APBK0952 buy beyond orderable cash, APBK0506 limit outside
                               the daily band, 40580000 market closed.
    GET  .../quotations/inquire-price   FHKST01010100: stck_prpr, prdy_vrss, prdy_vrss_sign, prdy_ctrt,
                               acml_vol, stck_mxpr, stck_llam, stck_sdpr and more.
  Every /uapi/ call checks its headers: authorization "Bearer <token>" (unknown EGW00121, expired
  EGW00123), appkey (the token's), appsecret, tr_id (unknown OPSQ0002; real vs paper must match the
  account, else EGW02006) and custtype P/B. Malformed input answers OPSQ2001 (missing field) or OPSQ2002
  (bad value): those two codes are the simulator's own choice.

Market: seeded KRX stocks (005930 삼성전자, 000660 SK하이닉스, ... see seed.py); any other well-formed code
gets a stable generated name and price. Prices follow a random walk (one trade per stock per tick, on the
KRX price grid, inside ±30% of the previous close). Open at all hours unless told otherwise.
Accounts: 50123456 (the demo account, a handful of holdings), 50123457 (a few), 50123458 (empty); all
paper, product "01", 5억 원 cash, hts_id f"sim{cano}". Any other CANO is created empty (paper) on first use.

Control API (JSON), never affected by faults:
    PUT  /_fake/accounts/{cano}/holdings   [{"stock_code", "quantity", "avg_price"}]: replace holdings
    GET  /_fake/accounts/{cano}            cano, environment, hts_id, cash, holdings (quantity > 0),
                                           sold_out_today, pending_orders
    PUT  /_fake/accounts/{cano}            {"environment": "paper"|"real", "hts_id", "cash"} (each optional)
    GET  /_fake/accounts/{cano}/orders     the order log (accepted orders, oldest first, with status)
    POST /_fake/faults   {"mode": "http_500"|"timeout"|"rate_limit"|"token_expired", "count": N, "delay": s}
                         the next N API calls (tokenP included) fail that way: http_500 a bare 500;
                         rate_limit EGW00201; token_expired EGW00123 and the presented token is revoked;
                         timeout: the call takes effect (an order IS placed) but its answer is held back
                         `delay` seconds (default --timeout-delay), longer than any client waits.
    POST /_fake/reset    back to the seeded market and accounts, no faults, counters zeroed; issued
                         tokens and approval keys stay valid; order numbers keep growing.
    PUT  /_fake/prices/{code}   {"price": int}: a trade at that price now (fills limit orders it reaches);
                         outside the daily band, the price becomes the new previous close.
    GET  /_fake/prices/{code}   price, prev_close, change, limits, volume
    POST /_fake/market   {"open": bool, "moving": bool}: a closed market refuses orders and stops the walk;
                         "moving": false keeps prices still while open.
    GET  /_fake/stats    calls per endpoint (last path segment: "tokenP", "inquire-balance", ...),
                         tokens_issued (new tokens only), orders_rejected, accounts, stocks

For the real-time feed (realtime.py): create_app() calls realtime.setup_realtime(app, state) with the
SimulatorState (state.py). `state.add_listener(callback)` (and remove_listener) registers a function that
is called synchronously, in the event loop, with every event:
    {"kind": "tick", "stock_code", "price", "change", "change_rate", "volume" (accumulated), "open", "high",
     "low", "trade_volume", "time": "HHMMSS"}
    {"kind": "fill", "cano", "hts_id", "order_no", "stock_code", "name", "side", "qty", "price", "time"}
`state.accounts` (cano -> Account), `state.account_by_hts_id(hts_id)`, `state.stocks` (code -> Stock),
`state.appkey_of_approval_key(key)` give the rest. Objects are replaced by /_fake/reset: look them up
each time rather than keeping them.
"""

from .app import create_app
from .state import SimulatorState

__all__ = ["SimulatorState", "create_app"]
