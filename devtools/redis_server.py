"""A redis-server of our own, for tests, the soak and the benchmarks that stop or restart Redis.

The shared Redis of this machine serves every engineer's test runs, so nothing here ever stops it:
`PrivateRedis` runs on a free port and keeps nothing on disk, so a restart loses locks, cached tokens
and queued tasks, as a production restart without persistence would.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from devtools.processes import free_port, stop_process, wait_for


class PrivateRedis:
    """A redis-server on 127.0.0.1:<free port> with no persistence; the port survives `restart()`."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=5)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._answers, 20, f"the private redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text(errors='replace')}")
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False
