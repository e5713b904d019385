"""The application's ASGI server (Daphne, or uvicorn as scripts/run starts it with ASGI_SERVER=uvicorn) as a
subprocess on a free loopback port, for end-to-end tests, the benchmarks and the soak. Its environment
(database, Redis, settings) is the caller's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from devtools.processes import ROOT, free_port, stop_process
from watchlist.socket_limits import MAX_FRAME_BYTES

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
# As scripts/run starts the server: freed buffers of 32 KB and more go back to the system at once.
SERVER_ENV = {"MALLOC_MMAP_THRESHOLD_": "32768"}


def asgi_server_command(server: str, port: int) -> list[str]:
    """One process of `server` ("daphne" or "uvicorn") serving config.asgi:application on 127.0.0.1:<port>,
    with the options scripts/run gives it (the reasons are there)."""
    if server == "daphne":
        return [
            str(BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "--websocket-max-frame-size",
            str(MAX_FRAME_BYTES),
            "config.asgi:application",
        ]
    if server == "uvicorn":
        return [
            str(BIN / "uvicorn"),
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-proxy-headers",
            "--ws-per-message-deflate",
            "false",
            "--ws-max-size",
            str(MAX_FRAME_BYTES),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    raise ValueError(f"unknown ASGI server {server!r}: daphne or uvicorn")


class AsgiServer:
    """`config.asgi:application` under `server` (daphne or uvicorn) on 127.0.0.1:<port>; the port survives
    a restart."""

    def __init__(self, log_path: Path, env: dict[str, str], server: str = "daphne") -> None:
        self.server = server
        self.port = free_port()
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str = "/ws/watchlist/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                asgi_server_command(self.server, self.port),
                cwd=ROOT,
                env={**self.env, **SERVER_ENV},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_it_answers()

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, timeout=15)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_until_it_answers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.server} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/accounts/login/", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.server} did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
