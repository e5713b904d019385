"""Brokers: the interface (base.py), the real KIS adapter (kis.py), the in-memory fake (memory.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Broker
from .kis import KoreaInvestService

if TYPE_CHECKING:
    from trading.models import BrokerAccount


def broker_for(account: BrokerAccount) -> Broker:
    """The broker that serves `account`: the one factory the application uses."""
    return KoreaInvestService(account)
