"""The KIS simulator (`python -m kis_simulator`) as a subprocess on a free port, and a handle on it: its
URLs and plain HTTP calls to its /_fake/ control API. Tests (tests/fixtures/simulator.py), the benchmarks
and the soak start it from here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from devtools.processes import ROOT

# How long a "timeout" fault holds its answer: longer than any client timeout the suite uses.
FAULT_TIMEOUT_DELAY = 10


class SimulatorHandle:
    """A running simulator: its URLs and plain HTTP calls to its /_fake/ control API."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.ws_url = url.replace("http://", "ws://", 1)
        self.process = process
        self.log_path = log_path
        self._http = httpx.Client(base_url=url, timeout=10)

    def _call(self, method: str, path: str, json: object = None):
        response = self._http.request(method, path, json=json)
        if response.is_error:
            raise AssertionError(
                f"simulator {method} {path} answered {response.status_code}: {response.text}"
            )
        return response.json()

    def reset(self) -> None:
        self._call("POST", "/_fake/reset")

    def set_holdings(self, cano: str, holdings: list[dict]) -> dict:
        """Replace the holdings: [{"stock_code", "quantity", "avg_price"}]."""
        return self._call("PUT", f"/_fake/accounts/{cano}/holdings", holdings)

    def account(self, cano: str) -> dict:
        return self._call("GET", f"/_fake/accounts/{cano}")

    def configure_account(self, cano: str, **fields) -> dict:
        """environment ("paper"/"real"), hts_id, cash."""
        return self._call("PUT", f"/_fake/accounts/{cano}", fields)

    def orders(self, cano: str) -> list[dict]:
        return self._call("GET", f"/_fake/accounts/{cano}/orders")

    def inject_fault(self, mode: str, count: int = 1, delay: float | None = None) -> None:
        body = {"mode": mode, "count": count} | ({} if delay is None else {"delay": delay})
        self._call("POST", "/_fake/faults", body)

    def set_price(self, code: str, price: int) -> dict:
        return self._call("PUT", f"/_fake/prices/{code}", {"price": price})

    def price(self, code: str) -> dict:
        return self._call("GET", f"/_fake/prices/{code}")

    def set_market_open(self, is_open: bool) -> None:
        self._call("POST", "/_fake/market", {"open": is_open})

    def set_prices_moving(self, moving: bool) -> None:
        self._call("POST", "/_fake/market", {"moving": moving})

    def set_limits(self, **limits) -> dict:
        """token_issue_interval (seconds, 0: off), rate_limits ({"paper", "real"} calls/s, None: off)."""
        return self._call("POST", "/_fake/limits", limits)

    def limits(self) -> dict:
        """The limits in force and, per app key, the /uapi/ calls and the EGW00201 answers since reset."""
        return self._call("GET", "/_fake/limits")

    def stats(self) -> dict:
        return self._call("GET", "/_fake/stats")

    def calls(self, endpoint: str) -> int:
        """API calls since the last reset to one endpoint, named by its last path segment ("tokenP")."""
        return self.stats()["calls"].get(endpoint, 0)

    def close(self) -> None:
        self._http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_simulator(log_path: Path, *extra_args: str) -> SimulatorHandle:
    """Start `python -m kis_simulator` on a free port and wait until it answers."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kis_simulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--timeout-delay",
            str(FAULT_TIMEOUT_DELAY),
            *extra_args,
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the KIS simulator exited at start:\n{log_path.read_text()}")
        for line in log_path.read_text().splitlines():
            if "listening on " in line:
                handle = SimulatorHandle(line.rsplit(" ", 1)[-1], process, log_path)
                handle.stats()
                return handle
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the KIS simulator did not start in 30 s:\n{log_path.read_text()}")
