"""Pure: the stored watchlist and the list it should become -> what changed. No Django here.

Both sides are mappings stock code -> `ItemState`, built once from the database rows and from the
balance DataFrame (`holdings_from_balance` converts it column by column, never row by row), so the
diff is one pass over dicts: about a millisecond for 2,000 items (bench/diff_bench.py).

What counts as a change is the contract's: a code `added`, a code `removed`, or a code `updated`
because its quantity, average price or `pending` flag differs. Prices move all day; a move of the
current price (with the evaluation and P&L that follow from it, or a renamed stock) is not a watchlist
change. Those codes are reported apart in `repriced`, so the caller can refresh the stored values
without a new version and without a broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import pandas as pd

from trading.brokers.base import HOLDING_FIELDS, Holding


@dataclass(frozen=True, slots=True)
class ItemState(Holding):
    """A watchlist item's values: a holding, and whether it is an optimistic change not yet confirmed."""

    pending: bool = False

    @classmethod
    def of(cls, item) -> ItemState:
        """The values of a stored item (a WatchlistItem, or anything with these attributes)."""
        return cls(*(getattr(item, name) for name in ITEM_FIELDS))

    def identity(self) -> tuple[int, float, bool]:
        """The values whose change is a watchlist change."""
        return (self.quantity, self.avg_price, self.pending)

    def revalued(
        self,
        *,
        quantity: int | None = None,
        avg_price: float | None = None,
        current_price: int | None = None,
        pending: bool | None = None,
    ) -> ItemState:
        """This item with some values replaced and its evaluation and P&L recomputed from them."""
        quantity = self.quantity if quantity is None else quantity
        avg_price = self.avg_price if avg_price is None else avg_price
        current_price = self.current_price if current_price is None else current_price
        eval_amount = quantity * current_price
        cost = quantity * avg_price
        return replace(
            self,
            quantity=quantity,
            avg_price=avg_price,
            current_price=current_price,
            eval_amount=eval_amount,
            pnl=round(eval_amount - cost),
            pnl_rate=round((eval_amount - cost) / cost * 100, 2) if cost else 0.0,
            pending=self.pending if pending is None else pending,
        )


ITEM_FIELDS = tuple(field.name for field in fields(ItemState))


@dataclass(frozen=True)
class WatchlistDiff:
    """Sorted stock codes. Truthy exactly when the watchlist changed (`repriced` alone is not a change)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    repriced: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)

    def as_dict(self) -> dict[str, list[str]]:
        """The contract's `changes` object."""
        return {"added": list(self.added), "removed": list(self.removed), "updated": list(self.updated)}


def diff_items(stored: Mapping[str, ItemState], target: Mapping[str, ItemState]) -> WatchlistDiff:
    added, updated, repriced = [], [], []
    for code, new in target.items():
        old = stored.get(code)
        if old is None:
            added.append(code)
        elif old.identity() != new.identity():
            updated.append(code)
        elif old != new:
            repriced.append(code)
    removed = [code for code in stored if code not in target]
    return WatchlistDiff(
        added=tuple(sorted(added)),
        removed=tuple(sorted(removed)),
        updated=tuple(sorted(updated)),
        repriced=tuple(sorted(repriced)),
    )


def holdings_from_balance(account_df: pd.DataFrame) -> dict[str, ItemState]:
    """The holdings of a balance frame (BALANCE_COLUMNS): rows with quantity > 0, keyed by code.

    Rows with quantity 0 are positions sold out today that KIS keeps listing until settlement.
    Columns are converted whole (`tolist` gives Python ints, floats and strs), never row by row."""
    held = account_df[account_df["quantity"] > 0]
    columns = [held[name].tolist() for name in HOLDING_FIELDS]
    return {values[0]: ItemState(*values) for values in zip(*columns, strict=True)}
