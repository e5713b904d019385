"""An in-memory broker with injectable state, for fast unit tests. Not a substitute for the simulator."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import pandas as pd

from .base import BrokerError, OrderRejected, Quote, Side, balance_frame, validate_order


@dataclass
class MemoryPosition:
    name: str
    quantity: int
    avg_price: float
    current_price: int


@dataclass
class MemoryBroker:
    positions: dict[str, MemoryPosition] = field(default_factory=dict)
    fail_with: BrokerError | None = None
    fill_orders: bool = True
    orders: list[dict] = field(default_factory=list)
    balance_calls: int = 0
    _order_numbers: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_holdings(
        self, holdings: dict[str, tuple[int, float]] | dict[str, int], prices: dict[str, int] | None = None
    ) -> None:
        prices = prices or {}
        self.positions = {}
        for code, spec in holdings.items():
            quantity, avg = spec if isinstance(spec, tuple) else (spec, 10_000.0)
            self.positions[code] = MemoryPosition(
                f"종목{code}", quantity, float(avg), prices.get(code, int(avg))
            )

    def read_turn(self, priority: Callable[[], int]) -> AbstractContextManager[None]:
        return nullcontext()  # no call budget

    def get_acct_balance(self) -> pd.DataFrame:
        with self._lock:
            self.balance_calls += 1
            if self.fail_with:
                raise self.fail_with
            rows = []
            for code, pos in sorted(self.positions.items()):
                eval_amount = pos.quantity * pos.current_price
                cost = pos.quantity * pos.avg_price
                rows.append(
                    {
                        "stock_code": code,
                        "name": pos.name,
                        "quantity": pos.quantity,
                        "orderable_quantity": pos.quantity,
                        "avg_price": pos.avg_price,
                        "current_price": pos.current_price,
                        "eval_amount": eval_amount,
                        "pnl": round(eval_amount - cost),
                        "pnl_rate": round((eval_amount - cost) / cost * 100, 2) if cost else 0.0,
                    }
                )
            return balance_frame(rows)

    def place_order(self, stock_code: str, side: Side, qty: int, price: int | None = None) -> str:
        validate_order(stock_code, side, qty, price)
        with self._lock:
            if self.fail_with:
                raise self.fail_with
            held = self.positions.get(stock_code)
            if side == "sell" and (held is None or held.quantity < qty):
                raise OrderRejected("주문가능수량을 초과하였습니다.", msg_cd="APBK0400")
            order_no = f"{next(self._order_numbers):010d}"
            self.orders.append(
                {"order_no": order_no, "stock_code": stock_code, "side": side, "qty": qty, "price": price}
            )
            if self.fill_orders:
                self._fill(stock_code, side, qty, price)
            return order_no

    def _fill(self, stock_code: str, side: Side, qty: int, price: int | None) -> None:
        held = self.positions.get(stock_code)
        fill_price = price or (held.current_price if held else 10_000)
        if side == "buy":
            if held is None:
                self.positions[stock_code] = MemoryPosition(
                    f"종목{stock_code}", qty, float(fill_price), fill_price
                )
            else:
                total = held.quantity + qty
                held.avg_price = (held.avg_price * held.quantity + fill_price * qty) / total
                held.quantity = total
        else:
            held.quantity -= qty
            if held.quantity == 0:
                del self.positions[stock_code]

    def get_price(self, stock_code: str) -> Quote:
        if self.fail_with:
            raise self.fail_with
        held = self.positions.get(stock_code)
        return Quote(stock_code, held.current_price if held else 10_000, 0, 0.0, 0)
