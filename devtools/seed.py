"""Data that tests and benchmarks put in the database directly (Django must be set up first)."""

from __future__ import annotations


def watch_many(account_id: int, count: int) -> None:
    """`count` held codes (100000, 100001, ...) on the account's watchlist: a large `?render=html` snapshot."""
    from watchlist.models import Watchlist, WatchlistItem

    watchlist, _ = Watchlist.objects.get_or_create(account_id=account_id)
    WatchlistItem.objects.bulk_create(
        WatchlistItem(
            watchlist=watchlist,
            stock_code=f"{100000 + n:06d}",
            name=f"종목 {n}",
            quantity=10,
            avg_price=71250.5,
            current_price=72100,
            eval_amount=721000,
            pnl=8495,
            pnl_rate=1.19,
        )
        for n in range(count)
    )
