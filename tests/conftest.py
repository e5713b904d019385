"""Fixtures shared by the whole suite. Each area keeps its fixtures in tests/fixtures/<area>.py."""

pytest_plugins = [
    "tests.fixtures.accounts",
    "tests.fixtures.redis",
    "tests.fixtures.simulator",
    "tests.fixtures.celery",
    "tests.fixtures.servers",
    "tests.fixtures.trade",
]
