"""Every benchmark stays runnable as `scripts/bench <name>`: its module imports and answers --help."""

import pkgutil
import subprocess
import sys

import pytest
from django.conf import settings

import bench

COMMANDS = sorted(
    module.name
    for module in pkgutil.iter_modules(bench.__path__)
    if module.name not in {"production", "ws_stack", "ws_clients", "bare_ws_server"}  # helpers, not commands
)


@pytest.mark.parametrize("name", COMMANDS)
def test_the_benchmark_answers_help(name):
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
