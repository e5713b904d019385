"""Times the watchlist diff on large accounts: `scripts/bench diff_bench [items ...]`.

Prints, per size and case, the median and best time of `diff_items` (pure, no database), and of
`holdings_from_balance` (the balance DataFrame -> dicts, done once per sync before the diff).
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from dataclasses import replace

from trading.brokers.base import balance_frame
from watchlist.diff import ItemState, diff_items, holdings_from_balance

REPEAT, NUMBER = 25, 20


def watchlist(size: int) -> dict[str, ItemState]:
    return {
        code: ItemState(code, f"종목{code}", 10 + n % 7, 50_000.0 + n, 51_000 + n, 0, 0, 0.0).revalued()
        for n, code in ((n, f"{n:06d}") for n in range(size))
    }


def cases(stored: dict[str, ItemState]) -> dict[str, dict[str, ItemState]]:
    codes = list(stored)
    mixed = dict(stored)
    for code in codes[::10]:
        mixed[code] = replace(stored[code], quantity=stored[code].quantity + 1)
    for code in codes[1::10]:
        del mixed[code]
    for n in range(len(codes) // 10):
        mixed[f"Z{n:05d}"] = replace(stored[codes[0]], stock_code=f"Z{n:05d}")
    return {
        "unchanged": dict(stored),
        "every price moved": {
            code: s.revalued(current_price=s.current_price + 100) for code, s in stored.items()
        },
        "10% added/removed/updated": mixed,
    }


def millis(statement) -> tuple[float, float]:
    runs = [t / NUMBER * 1000 for t in timeit.repeat(statement, repeat=REPEAT, number=NUMBER)]
    return statistics.median(runs), min(runs)


def main(sizes: list[int]) -> None:
    print(f"{'items':>6}  {'case':<32} {'median ms':>10} {'best ms':>9}")
    for size in sizes:
        stored = watchlist(size)
        for name, target in cases(stored).items():
            median, best = millis(lambda stored=stored, target=target: diff_items(stored, target))
            print(f"{size:>6}  {'diff: ' + name:<32} {median:>10.3f} {best:>9.3f}")
        frame = balance_frame(
            [
                {
                    **{
                        k: getattr(s, k)
                        for k in (
                            "stock_code",
                            "name",
                            "quantity",
                            "avg_price",
                            "current_price",
                            "eval_amount",
                            "pnl",
                            "pnl_rate",
                        )
                    },
                    "orderable_quantity": s.quantity,
                }
                for s in stored.values()
            ]
        )
        median, best = millis(lambda frame=frame: holdings_from_balance(frame))
        print(f"{size:>6}  {'balance frame -> holdings':<32} {median:>10.3f} {best:>9.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "sizes",
        type=int,
        nargs="*",
        default=[200, 2_000, 10_000],
        metavar="items",
        help="watchlist sizes to time (default: 200 2000 10000)",
    )
    main(parser.parse_args().sizes)
