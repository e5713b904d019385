"""The simulator's in-memory world: market, accounts, orders, tokens and injected faults.

Plain Python, no aiohttp and no Django: the HTTP layer (rest.py, control.py) and the real-time feed
(realtime.py) read and change it. Everything runs in one event loop, so no method needs a lock.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from .seed import DEFAULT_PAPER_CASH, SEEDED_ACCOUNTS, SEEDED_STOCKS, generated_stock, tick_size

logger = logging.getLogger(__name__)

KST = ZoneInfo("Asia/Seoul")
STOCK_CODE_RE = re.compile(r"^[0-9A-Z]{6}\Z")
CANO_RE = re.compile(r"^[0-9]{8}\Z")

TOKEN_LIFETIME = 86_400
TOKEN_REUSE_WINDOW = 6 * 3600  # KIS answers the same token when asked again within 6 h
# KIS answers a second tokenP of one app key within a minute with HTTP 403 EGW00133 (python-kis #24).
TOKEN_ISSUE_INTERVAL = 60.0
# Calls a second per app key: "실전투자 1초당 20건, 모의투자 1초당 2건" as KIS users quote its rule
# (shared/docs/kis-api.md says about 18 on real, 1-2 on paper).
RATE_LIMITS: dict[str, float] = {"paper": 2.0, "real": 20.0}
FAULT_MODES = ("http_500", "timeout", "rate_limit", "token_expired", "sydb0050")
# Pull each price back towards the previous close so a long run stays plausible.
MEAN_REVERSION = 0.01

Side = Literal["buy", "sell"]
Environment = Literal["paper", "real"]
Listener = Callable[[dict], None]


class Rejection(Exception):
    """A call KIS would refuse: rt_cd "1" (or, on /oauth2/, error_code) with its msg_cd and message.

    Business refusals (an order over the holding) come with HTTP 200; gateway ones (tokens, keys,
    unknown TR ids, malformed input) with the 4xx/5xx KIS uses for them."""

    def __init__(self, msg_cd: str, msg1: str, *, http_status: int = 200, rt_cd: str = "1") -> None:
        super().__init__(f"{msg_cd} {msg1}")
        self.msg_cd = msg_cd
        self.msg1 = msg1
        self.http_status = http_status
        self.rt_cd = rt_cd


def now_kst() -> datetime:
    return datetime.now(KST)


def hhmmss() -> str:
    return now_kst().strftime("%H%M%S")


@dataclass
class Stock:
    code: str
    name: str
    prev_close: int
    price: int
    open: int
    high: int
    low: int
    volume: int = 0

    @classmethod
    def listed(cls, code: str, name: str, prev_close: int) -> Stock:
        return cls(code, name, prev_close, prev_close, prev_close, prev_close, prev_close)

    @property
    def upper_limit(self) -> int:
        limit = self.prev_close * 13 // 10
        return limit - limit % tick_size(limit)

    @property
    def lower_limit(self) -> int:
        limit = -(-self.prev_close * 7 // 10)
        unit = tick_size(limit)
        return -(-limit // unit) * unit

    @property
    def change(self) -> int:
        return self.price - self.prev_close

    @property
    def change_rate(self) -> float:
        return round(self.change / self.prev_close * 100, 2)

    @property
    def sign(self) -> str:
        """KIS prdy_vrss_sign: 1 upper limit, 2 up, 3 flat, 4 lower limit, 5 down."""
        if self.price >= self.upper_limit:
            return "1"
        if self.price <= self.lower_limit:
            return "4"
        return "2" if self.change > 0 else "5" if self.change < 0 else "3"

    def trade(self, price: int, volume: int) -> None:
        self.price = price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.volume += volume


@dataclass
class Lot:
    """One balance row of a stock: the cash holding (loan_date "") or a holding bought on a loan."""

    quantity: int
    avg_price: float
    loan_date: str = ""  # YYYYMMDD of the loan


@dataclass
class Position:
    """A stock held, as one or more lots: under INQR_DVSN 01 KIS lists one row per lot (by loan date)."""

    stock_code: str
    lots: list[Lot]
    bought_today: int = 0
    sold_today: int = 0

    @property
    def quantity(self) -> int:
        return sum(lot.quantity for lot in self.lots)

    @property
    def avg_price(self) -> float:
        quantity = self.quantity
        return sum(lot.quantity * lot.avg_price for lot in self.lots) / quantity if quantity else 0.0

    def buy(self, qty: int, price: int) -> None:
        """A cash buy: it joins the cash lot (created first in line when the stock was held only on loans)."""
        cash = next((lot for lot in self.lots if not lot.loan_date), None)
        if cash is None:
            cash = Lot(0, 0.0)
            self.lots.insert(0, cash)
        cash.avg_price = (cash.avg_price * cash.quantity + price * qty) / (cash.quantity + qty)
        cash.quantity += qty
        self.lots = [lot for lot in self.lots if lot.quantity > 0]
        self.bought_today += qty

    def sell(self, qty: int) -> None:
        """Sell from the lots in row order; a stock sold out stays listed as one row of quantity 0."""
        left = qty
        for lot in self.lots:
            taken = min(left, lot.quantity)
            lot.quantity -= taken
            left -= taken
        self.lots = [lot for lot in self.lots if lot.quantity > 0] or [Lot(0, self.lots[0].avg_price)]
        self.sold_today += qty


@dataclass
class Order:
    order_no: str
    cano: str
    stock_code: str
    side: Side
    qty: int
    limit_price: int | None  # None: market order
    tr_id: str
    time: str
    status: Literal["pending", "filled", "cancelled"] = "pending"
    fill_price: int | None = None

    def as_dict(self) -> dict:
        return {
            "order_no": self.order_no,
            "stock_code": self.stock_code,
            "side": self.side,
            "qty": self.qty,
            "price": self.limit_price,
            "order_type": "market" if self.limit_price is None else "limit",
            "tr_id": self.tr_id,
            "time": self.time,
            "status": self.status,
            "fill_price": self.fill_price,
        }


@dataclass
class Account:
    cano: str
    product_code: str = "01"
    environment: Environment = "paper"
    hts_id: str = ""
    cash: int = DEFAULT_PAPER_CASH
    positions: dict[str, Position] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    pending: list[Order] = field(default_factory=list)
    # Grows with every change of the holdings: a balance read paging across a change is refused (SYDB0050).
    version: int = 0

    def orderable_qty(self, stock_code: str) -> int:
        held = self.positions.get(stock_code)
        selling = sum(o.qty for o in self.pending if o.side == "sell" and o.stock_code == stock_code)
        return (held.quantity if held else 0) - selling

    def orderable_cash(self) -> int:
        return self.cash - sum(o.qty * o.limit_price for o in self.pending if o.side == "buy")

    def holdings(self) -> list[Position]:
        """Positions in code order, including those sold out today (quantity 0), as KIS lists them."""
        return [self.positions[code] for code in sorted(self.positions)]


@dataclass
class Token:
    value: str
    appkey: str
    issued_at: float
    expires_at: float
    revoked: bool = False

    def expired(self, now: float) -> bool:
        return self.revoked or now >= self.expires_at


class CallBudget:
    """`rate` calls a second, and a burst of at most `rate` (at least 1) after a quiet second.

    The sources give only the rate; letting a burst of one second's worth through is this
    simulator's reading of it, and it forgives a client's evenly spaced calls the jitter of the
    network (a strict sliding window would refuse them whenever two arrive closer than sent)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def spend(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class SimulatorState:
    """The whole simulated world. `add_listener` lets the real-time feed observe ticks and fills."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        max_ticks_per_round: int = 3000,
        token_issue_interval: float = TOKEN_ISSUE_INTERVAL,
        rate_limits: dict[str, float] | None = RATE_LIMITS,
    ) -> None:
        self.rng = random.Random(seed)
        self.max_ticks_per_round = max_ticks_per_round
        # What the command line chose; /_fake/reset comes back to it.
        self.default_token_issue_interval = token_issue_interval
        self.default_rate_limits = dict(rate_limits) if rate_limits else None
        self.listeners: list[Listener] = []
        # Tokens and approval keys outlive /_fake/reset, like KIS's own.
        self.tokens: dict[str, Token] = {}
        self.latest_token_by_appkey: dict[str, Token] = {}
        self.approval_keys: dict[str, str] = {}
        self._order_numbers = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        self.stocks: dict[str, Stock] = {
            code: Stock.listed(code, name, price) for code, (name, price) in SEEDED_STOCKS.items()
        }
        self.accounts: dict[str, Account] = {}
        self.accounts_by_hts_id: dict[str, Account] = {}
        self.pending_by_code: dict[str, list[Order]] = {}
        self.faults: list[list] = []  # [mode, remaining, delay or None], served in order
        self.stale_pages = 0  # continuation pages still to answer SYDB0050 (the "sydb0050" fault)
        self.calls: Counter[str] = Counter()
        self.token_issue_interval = self.default_token_issue_interval
        # The issue history (not the tokens): app key -> when its last token was issued.
        self.last_issue_at: dict[str, float] = {}
        self.rate_limits = dict(self.default_rate_limits) if self.default_rate_limits else None
        self.budgets: dict[str, CallBudget] = {}
        self.environment_by_appkey: dict[str, Environment] = {}
        self.calls_by_appkey: Counter[str] = Counter()
        self.rate_limited_by_appkey: Counter[str] = Counter()
        self.tokens_issued = 0
        self.orders_rejected = 0
        self.market_open = True
        self.prices_moving = True
        self._tick_cursor = 0
        for cano, spec in SEEDED_ACCOUNTS.items():
            self.create_account(cano, hts_id=spec["hts_id"], cash=spec["cash"])
            self.set_holdings(
                cano, [{"stock_code": c, "quantity": q, "avg_price": p} for c, q, p in spec["holdings"]]
            )
        self._emit({"kind": "reset"})

    # --- listeners (the real-time feed) ----------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        self.listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        self.listeners.remove(callback)

    def _emit(self, event: dict) -> None:
        for callback in list(self.listeners):
            try:
                callback(event)
            except Exception:
                logger.exception("simulator listener failed on a %s event", event["kind"])

    # --- tokens ----------------------------------------------------------------------------

    def issue_token(self, appkey: str) -> Token:
        """The app key's token: refused within `token_issue_interval` of the last one answered, the
        same one within 6 h, else a new one. A refused request does not restart the minute."""
        now = time.time()
        last = self.last_issue_at.get(appkey)
        if self.token_issue_interval and last is not None and now - last < self.token_issue_interval:
            raise Rejection("EGW00133", "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)", http_status=403)
        self.last_issue_at[appkey] = now
        latest = self.latest_token_by_appkey.get(appkey)
        if latest and not latest.expired(now) and now - latest.issued_at < TOKEN_REUSE_WINDOW:
            return latest
        token = Token(secrets.token_urlsafe(48), appkey, now, now + TOKEN_LIFETIME)
        self.tokens[token.value] = token
        self.latest_token_by_appkey[appkey] = token
        self.tokens_issued += 1
        return token

    def expire_token(self, token: Token) -> None:
        """Make `token` expired, as 24 h would: its issue is then long past, so a new one may be issued."""
        token.revoked = True
        self.last_issue_at.pop(token.appkey, None)

    # --- the call budget (rate limit) --------------------------------------------------------

    def spend_call(self, appkey: str, environment: Environment | None) -> bool:
        """Count one /uapi/ call of `appkey`; False when it is beyond the budget of its environment.

        The environment is the one the TR id names (VTTC paper, TTTC real); a TR that names none
        (a quotation) counts under the environment the key last used, paper if it used none yet."""
        self.calls_by_appkey[appkey] += 1
        if environment:
            self.environment_by_appkey[appkey] = environment
        if not self.rate_limits:
            return True
        rate = self.rate_limits[environment or self.environment_by_appkey.get(appkey, "paper")]
        budget = self.budgets.get(appkey)
        if budget is None or budget.rate != rate:
            budget = self.budgets[appkey] = CallBudget(rate)
        if budget.spend(time.monotonic()):
            return True
        self.rate_limited_by_appkey[appkey] += 1
        return False

    def rate_view(self) -> dict:
        return {
            "limits": self.rate_limits,
            "calls": dict(self.calls_by_appkey),
            "egw00201": dict(self.rate_limited_by_appkey),
        }

    def token(self, value: str) -> Token | None:
        return self.tokens.get(value)

    def issue_approval_key(self, appkey: str) -> str:
        key = str(uuid.uuid4())
        self.approval_keys[key] = appkey
        return key

    def appkey_of_approval_key(self, approval_key: str) -> str | None:
        return self.approval_keys.get(approval_key)

    # --- faults ----------------------------------------------------------------------------

    def inject_fault(self, mode: str, count: int, delay: float | None = None) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        if mode == "sydb0050":
            self.stale_pages += count  # served by continuation pages only, not by any call
        elif count > 0:
            self.faults.append([mode, count, delay])

    def take_stale_page(self) -> bool:
        if not self.stale_pages:
            return False
        self.stale_pages -= 1
        return True

    def take_fault(self) -> tuple[str, float | None] | None:
        """The fault the next API call suffers, if any; every call uses up one."""
        if not self.faults:
            return None
        fault = self.faults[0]
        fault[1] -= 1
        if fault[1] == 0:
            self.faults.pop(0)
        return fault[0], fault[2]

    # --- market ----------------------------------------------------------------------------

    def stock(self, code: str) -> Stock:
        """The stock of any well-formed code; a code never seen gets a generated name and price."""
        stock = self.stocks.get(code)
        if stock is None:
            if not STOCK_CODE_RE.match(code):
                raise ValueError(f"not a stock code: {code!r}")
            stock = self.stocks[code] = Stock.listed(code, *generated_stock(code))
        return stock

    def set_price(self, code: str, price: int) -> Stock:
        """Trade `code` at `price` now; outside today's ±30% band the price becomes the new base."""
        stock = self.stock(code)
        if not stock.lower_limit <= price <= stock.upper_limit:
            stock.prev_close = stock.open = stock.high = stock.low = price
        self._trade(stock, price, volume=1)
        return stock

    def tick(self) -> None:
        """One round of the random walk: a trade in each stock (a rotating slice of a very large market)."""
        codes = list(self.stocks)
        count = min(len(codes), self.max_ticks_per_round)
        start = self._tick_cursor % len(codes)
        self._tick_cursor = start + count
        for code in (codes[(start + i) % len(codes)] for i in range(count)):
            stock = self.stocks[code]
            unit = tick_size(stock.price)
            pull = MEAN_REVERSION * (stock.prev_close - stock.price) / unit
            steps = round(self.rng.gauss(pull, 1.0))
            price = min(stock.upper_limit, max(stock.lower_limit, stock.price + steps * unit))
            self._trade(stock, price, volume=self.rng.randint(1, 300))

    def _trade(self, stock: Stock, price: int, volume: int) -> None:
        stock.trade(price, volume)
        self._emit(
            {
                "kind": "tick",
                "stock_code": stock.code,
                "price": stock.price,
                "change": stock.change,
                "change_rate": stock.change_rate,
                "volume": stock.volume,
                "open": stock.open,
                "high": stock.high,
                "low": stock.low,
                "trade_volume": volume,
                "time": hhmmss(),
            }
        )
        self._match_pending(stock)

    def _match_pending(self, stock: Stock) -> None:
        waiting = self.pending_by_code.get(stock.code)
        if not waiting:
            return
        for order in list(waiting):
            reached = (
                stock.price <= order.limit_price if order.side == "buy" else stock.price >= order.limit_price
            )
            if reached:
                # A resting order trades at its own price when the market comes to it.
                self._fill(self.accounts[order.cano], order, order.limit_price)

    # --- accounts --------------------------------------------------------------------------

    def create_account(
        self,
        cano: str,
        *,
        environment: Environment = "paper",
        hts_id: str = "",
        cash: int = DEFAULT_PAPER_CASH,
    ) -> Account:
        if not CANO_RE.match(cano):
            raise ValueError(f"CANO is 8 digits, not {cano!r}")
        account = Account(cano, environment=environment, hts_id=hts_id or f"sim{cano}", cash=cash)
        self.accounts[cano] = account
        self.accounts_by_hts_id[account.hts_id] = account
        return account

    def account(self, cano: str) -> Account:
        """The account of `cano`, created empty (paper) on first use."""
        return self.accounts.get(cano) or self.create_account(cano)

    def account_by_hts_id(self, hts_id: str) -> Account | None:
        return self.accounts_by_hts_id.get(hts_id)

    def configure_account(
        self,
        cano: str,
        *,
        environment: Environment | None = None,
        hts_id: str | None = None,
        cash: int | None = None,
    ) -> Account:
        account = self.account(cano)
        if environment is not None:
            account.environment = environment
        if hts_id is not None:
            del self.accounts_by_hts_id[account.hts_id]
            account.hts_id = hts_id
            self.accounts_by_hts_id[hts_id] = account
        if cash is not None:
            account.cash = cash
        return account

    def set_holdings(self, cano: str, holdings: list[dict]) -> Account:
        """Replace the account's holdings. Entries of one stock code are its lots, in the order given,
        each with an optional "loan_date" (YYYYMMDD); a quantity of 0 leaves the lot out."""
        account = self.account(cano)
        positions: dict[str, Position] = {}
        for holding in holdings:
            self.stock(holding["stock_code"])  # list a code the market has not seen yet
            if holding["quantity"] > 0:
                lot = Lot(holding["quantity"], float(holding["avg_price"]), holding.get("loan_date", ""))
                positions.setdefault(holding["stock_code"], Position(holding["stock_code"], [])).lots.append(
                    lot
                )
        account.positions = positions
        account.version += 1
        return account

    # --- orders ----------------------------------------------------------------------------

    def place_order(
        self, cano: str, stock_code: str, side: Side, qty: int, limit_price: int | None, tr_id: str
    ) -> Order:
        """Accept (and fill, when the price allows) a cash order, or raise Rejection as KIS would."""
        account = self.account(cano)
        stock = self.stock(stock_code)
        try:
            if not self.market_open:
                raise Rejection("40580000", "모의투자 장종료 입니다.")
            if limit_price is not None and not stock.lower_limit <= limit_price <= stock.upper_limit:
                raise Rejection(
                    "APBK0506",
                    f"주문단가가 가격제한폭({stock.lower_limit}~{stock.upper_limit})을 벗어났습니다.",
                )
            if side == "sell" and qty > account.orderable_qty(stock_code):
                raise Rejection("APBK0400", "주문가능수량을 초과하였습니다.")
            if side == "buy" and qty * (limit_price or stock.price) > account.orderable_cash():
                raise Rejection("APBK0952", "주문가능금액을 초과 했습니다")
        except Rejection:
            self.orders_rejected += 1
            raise
        order = Order(
            f"{next(self._order_numbers):010d}", cano, stock_code, side, qty, limit_price, tr_id, hhmmss()
        )
        account.orders.append(order)
        # The acceptance notice (CNTG_YN "1") goes out before any fill of the order.
        self._emit(
            {
                "kind": "order",
                "cano": account.cano,
                "hts_id": account.hts_id,
                "order_no": order.order_no,
                "stock_code": stock_code,
                "name": stock.name,
                "side": side,
                "qty": qty,
                "price": limit_price or 0,
                "order_type": "market" if limit_price is None else "limit",
                "time": order.time,
            }
        )
        marketable = (
            limit_price is None
            or (side == "buy" and stock.price <= limit_price)
            or (side == "sell" and stock.price >= limit_price)
        )
        if marketable:
            stock.volume += qty
            self._fill(account, order, stock.price)
        else:
            account.pending.append(order)
            self.pending_by_code.setdefault(stock_code, []).append(order)
        return order

    def _fill(self, account: Account, order: Order, price: int) -> None:
        if order in account.pending:
            account.pending.remove(order)
            self.pending_by_code[order.stock_code].remove(order)
        held = account.positions.get(order.stock_code)
        if order.side == "sell" and (held is None or held.quantity < order.qty):
            order.status = "cancelled"  # the holdings were replaced under a resting sell
            return
        if order.side == "buy":
            if held is None:
                held = account.positions[order.stock_code] = Position(order.stock_code, [])
            held.buy(order.qty, price)
            account.cash -= price * order.qty
        else:
            held.sell(order.qty)  # a position sold out stays listed with quantity 0 until settlement
            account.cash += price * order.qty
        account.version += 1
        order.status, order.fill_price = "filled", price
        logger.info(
            "filled order %s of %s: %s %s x%d at %d",
            order.order_no,
            account.cano,
            order.side,
            order.stock_code,
            order.qty,
            price,
        )
        self._emit(
            {
                "kind": "fill",
                "cano": account.cano,
                "hts_id": account.hts_id,
                "order_no": order.order_no,
                "stock_code": order.stock_code,
                "name": self.stock(order.stock_code).name,
                "side": order.side,
                "qty": order.qty,
                "price": price,
                "order_price": order.limit_price or 0,
                "order_type": "market" if order.limit_price is None else "limit",
                "time": hhmmss(),
            }
        )

    # --- views for /_fake/ -----------------------------------------------------------------

    def account_view(self, cano: str) -> dict:
        account = self.account(cano)
        return {
            "cano": account.cano,
            "product_code": account.product_code,
            "environment": account.environment,
            "hts_id": account.hts_id,
            "cash": account.cash,
            "orderable_cash": account.orderable_cash(),
            "holdings": [
                {
                    "stock_code": p.stock_code,
                    "name": self.stock(p.stock_code).name,
                    "quantity": p.quantity,
                    "orderable_quantity": account.orderable_qty(p.stock_code),
                    "avg_price": p.avg_price,
                    "current_price": self.stock(p.stock_code).price,
                    "lots": [
                        {"quantity": lot.quantity, "avg_price": lot.avg_price, "loan_date": lot.loan_date}
                        for lot in p.lots
                    ],
                }
                for p in account.holdings()
                if p.quantity > 0
            ],
            "sold_out_today": [p.stock_code for p in account.holdings() if p.quantity == 0],
            "pending_orders": [o.as_dict() for o in account.pending],
        }
