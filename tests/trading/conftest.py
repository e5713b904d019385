"""Fixtures of the real-time adapter's tests (test_realtime.py, test_realtime_faults.py)."""

from __future__ import annotations

import asyncio

import pytest

from trading.brokers.realtime import RealtimeSession


@pytest.fixture
async def running():
    """Runs sessions in the background for the test; cancels them after it."""
    tasks = []

    def start(session: RealtimeSession) -> RealtimeSession:
        tasks.append(asyncio.create_task(session.run()))
        return session

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
