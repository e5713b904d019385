"""What happened during the soak, for the end checks: every HTTP answer, every trade with its answers, the
windows in which a fault was on; and the soak's progress log."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[soak +{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


@dataclass
class Answer:
    method: str
    path: str
    status: int
    body: dict | None  # None: not JSON
    at: float


@dataclass
class Trade:
    account_id: int
    cano: str
    side: str
    code: str
    qty: int
    key: str
    answers: list[Answer] = field(default_factory=list)


@dataclass
class Record:
    answers: list[Answer] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    # (start, end) of each window in which a fault was on: broker faults, Redis down, ...
    fault_windows: list[tuple[float, float]] = field(default_factory=list)
    redis_restarted_at: float | None = None
    worker_killed_at: float | None = None

    def in_fault_window(self, at: float) -> bool:
        return any(start <= at <= end for start, end in self.fault_windows)
