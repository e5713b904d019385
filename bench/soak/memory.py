"""Resident memory of every server process, sampled while the soak runs, for the end check on its growth."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.soak.system import System


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


class MemoryWatch:
    """Each server process's resident memory once it has run `warm_up` seconds, and at the end."""

    def __init__(self, warm_up: float) -> None:
        self.warm_up = warm_up
        self.seen: dict[int, float] = {}
        self.first: dict[str, tuple[int, float]] = {}
        self.last: dict[str, tuple[int, float]] = {}

    def sample(self, pids: dict[str, int]) -> None:
        now = time.time()
        for name, pid in pids.items():
            rss = rss_mb(pid)
            if rss is None:
                continue
            warm = now - self.seen.setdefault(pid, now) >= self.warm_up
            if warm and (name not in self.first or self.first[name][0] != pid):
                self.first[name] = (pid, rss)
            self.last[name] = (pid, rss)

    def growth(self) -> dict[str, float]:
        return {
            name: self.last[name][1] - rss
            for name, (pid, rss) in self.first.items()
            if name in self.last and self.last[name][0] == pid
        }


async def watch_memory(system: System, memory: MemoryWatch, until: float) -> None:
    while time.time() < until:
        memory.sample(system.server_pids())
        await asyncio.sleep(1)
    memory.sample(system.server_pids())
