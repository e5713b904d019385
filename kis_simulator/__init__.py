"""A local KIS Open API server for development, the demo and tests. Pure Python, no Django, no database.

Run it:  python -m kis_simulator --host 127.0.0.1 --port 8765
    --port 0 picks a free port (the first line printed says which); --tick-interval SECONDS (default 1,
    0 keeps prices still); --timeout-delay SECONDS (default 30, see faults); --seed N; --access-log;
    --token-issue-interval SECONDS (default 60; 0 lifts the token rule); --rate-limit on|off (default on)
    with --rate-limit-paper / --rate-limit-real CALLS_PER_SECOND (default 2 and 20). Benchmarks and the
    test fixture pass --rate-limit off where they lift the adapter's own limiter.

KIS wire format (../shared/docs/kis-api.md), so the real adapter runs unchanged against it:
    POST /oauth2/tokenP        any non-empty appkey/appsecret; empty ones answer 403 EGW00103/EGW00105.
                               A second one for an app key within 60 s of the last answered one: 403
                               EGW00133 (a refusal does not restart the minute). Later within 6 h: the
                               same token (24 h life).
    POST /oauth2/Approval      {"grant_type", "appkey", "secretkey"} -> {"approval_key"}
    POST /uapi/hashkey         -> {"JsonBody", "HASH"} (optional for orders; not verified)
    GET  .../trading/inquire-balance    TTTC8434R / VTTC8434R, every query parameter required;
                               INQR_DVSN "01" only: any other value ("02" included) answers HTTP 200,
                               rt_cd "2", OPSQ2001 "ERROR : INPUT INVALID_CHECK_INQR_DVSN". One row per
                               lot (a stock held in several lots comes back as several rows, in the
                               lots' order); 20 rows a page on paper accounts, 50 on real; the answer's
                               tr_cont header is F/M while more follow, D/E on the last; continue with
                               tr_cont N and the previous ctx_area_fk100/nk100. A continuation asked
                               after the holdings changed (a fill, a PUT of holdings) answers rt_cd "7"
                               SYDB0050: read again from page 1. Sold-out-today rows stay, hldg_qty "0".
    POST .../trading/order-cash         TTTC0012U/0011U, the older 0802U/0801U, and their VTTC twins.
                               ORD_DVSN 00 limit / 01 market. Market orders fill at once at the current
                               price; a limit buy fills when price <= limit (a sell when >=), now or later
                               as prices move (then at its limit). Refusals: APBK0400 sell beyond the
                               orderable quantity, APBK0952 buy beyond orderable cash, APBK0506 limit outside
                               the daily band, 40580000 market closed.
    GET  .../quotations/inquire-price   FHKST01010100: stck_prpr, prdy_vrss, prdy_vrss_sign, prdy_ctrt,
                               acml_vol, stck_mxpr, stck_llam, stck_sdpr and more.
  Every /uapi/ call checks its headers, in this order, with the codes of KIS's error table: authorization
  "Bearer <token>" (absent EGW00205, unknown EGW00121, expired EGW00123: HTTP 500), appkey (absent 403
  EGW00102; another key's token EGW00121), appsecret (absent 403 EGW00104), tr_id (absent OPSQ9999,
  unknown OPSQ0002: HTTP 500; real vs paper must match the account, else EGW02006) and custtype P/B
  (else EGW00208, HTTP 500); rt_cd "1". An answer to a request without tr_id carries tr_id "(null)".
  A missing or malformed input field answers HTTP 200, rt_cd "2", OPSQ2001 "ERROR : INPUT
  INVALID_CHECK_<FIELD>" (OPSQ2000 INVALID_CHECK_ACNO for CANO). The statuses not shown by a source
  (all but 403 for keys, 500 for tokens and EGW00201) are the simulator's choice.
  Call budget: every /uapi/ call of an app key spends from a budget of N calls a second (paper 2, real
  20; a burst of N after a quiet second); beyond it HTTP 500, rt_cd "1", EGW00201 "초당 거래건수를
  초과하였습니다." and the call takes no effect. The environment is the one the tr_id names (V... paper,
  T... real); a quotation counts under the environment the key last used (paper at first).

Market: seeded KRX stocks (005930 삼성전자, 000660 SK하이닉스, ... see seed.py); any other well-formed code
gets a stable generated name and price. Prices follow a random walk (one trade per stock per tick, on the
KRX price grid, inside ±30% of the previous close). Open at all hours unless told otherwise.
Accounts: 50123456 (the demo account, a handful of holdings), 50123457 (a few), 50123458 (empty); all
paper, product "01", 5억 원 cash, hts_id f"sim{cano}". Any other CANO is created empty (paper) on first use.

Control API (JSON), never affected by faults:
    PUT  /_fake/accounts/{cano}/holdings   [{"stock_code", "quantity", "avg_price", "loan_date"?}]: replace
                                           holdings. Entries of one stock code are its lots (balance rows),
                                           in the order given; "loan_date" YYYYMMDD marks a loan lot
                                           (trad_dvsn_name 자기융자), absent the cash lot. Cash buys join the
                                           cash lot; sells take from the lots in order.
    GET  /_fake/accounts/{cano}            cano, environment, hts_id, cash, holdings (quantity > 0; each
                                           with its weighted avg_price and its "lots"), sold_out_today,
                                           pending_orders
    PUT  /_fake/accounts/{cano}            {"environment": "paper"|"real", "hts_id", "cash"} (each optional)
    GET  /_fake/accounts/{cano}/orders     the order log (accepted orders, oldest first, with status)
    POST /_fake/faults   {"mode": "http_500"|"timeout"|"rate_limit"|"token_expired"|"sydb0050", "count": N,
                         "delay": s} the next N API calls (tokenP included) fail that way: http_500 a bare
                         500; rate_limit EGW00201; token_expired EGW00123 and the presented token expires
                         (as after 24 h: its app key may have a new one at once); sydb0050: the next N
                         balance continuation pages (tr_cont N) answer rt_cd "7" SYDB0050, other calls
                         pass and do not use it up;
                         timeout: the call takes effect (an order IS placed) but its answer is held back
                         `delay` seconds (default --timeout-delay), longer than any client waits.
    POST /_fake/reset    back to the seeded market and accounts, no faults, counters zeroed, the limits
                         of the command line; issued tokens and approval keys stay valid but when they
                         were issued is forgotten (a new tokenP is not refused); order numbers keep growing.
    GET  /_fake/limits   {"token_issue_interval", "limits": {"paper", "real"} | null, "calls": {appkey: n},
                         "egw00201": {appkey: n}}: /uapi/ calls and EGW00201 answers per app key since reset
    POST /_fake/limits   {"token_issue_interval": s (0: off), "rate_limits": {"paper", "real"} | null (off)}
    PUT  /_fake/prices/{code}   {"price": int}: a trade at that price now (fills limit orders it reaches);
                         outside the daily band, the price becomes the new previous close.
    GET  /_fake/prices/{code}   price, prev_close, change, limits, volume
    POST /_fake/market   {"open": bool, "moving": bool}: a closed market refuses orders and stops the walk;
                         "moving": false keeps prices still while open.
    GET  /_fake/stats    calls per endpoint (last path segment: "tokenP", "inquire-balance", ...),
                         tokens_issued (new tokens only), orders_rejected, calls_by_appkey,
                         egw00201_by_appkey, accounts, stocks

For the real-time feed (realtime.py): create_app() calls realtime.setup_realtime(app, state) with the
SimulatorState (state.py). `state.add_listener(callback)` (and remove_listener) registers a function that
is called synchronously, in the event loop, with every event:
    {"kind": "tick", "stock_code", "price", "change", "change_rate", "volume" (accumulated), "open", "high",
     "low", "trade_volume", "time": "HHMMSS"}
    {"kind": "order", "cano", "hts_id", "order_no", "stock_code", "name", "side", "qty", "price" (the limit,
     0 for a market order), "order_type" ("market"|"limit"), "time"}: an order accepted, before any fill
    {"kind": "fill", "cano", "hts_id", "order_no", "stock_code", "name", "side", "qty", "price",
     "order_price", "order_type", "time"}
    {"kind": "reset"}: /_fake/reset
`state.accounts` (cano -> Account), `state.account_by_hts_id(hts_id)`, `state.stocks` (code -> Stock),
`state.appkey_of_approval_key(key)` give the rest. Objects are replaced by /_fake/reset: look them up
each time rather than keeping them.
"""

from .app import create_app
from .state import SimulatorState

__all__ = ["SimulatorState", "create_app"]
