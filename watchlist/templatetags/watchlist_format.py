"""Display formatting of the watchlist: KRW amounts, signed P&L, rates, market colours, sync times.

static/js/watchlist.js mirrors these (formatKrw, formatSignedKrw, formatSignedRate, direction,
syncStatusText) for the cells it patches in the browser; keep the two in step.
"""

from __future__ import annotations

import time
from datetime import datetime

from django import template

from trading.brokers.base import KST

register = template.Library()


@register.filter
def grouped(value: float) -> str:
    """Thousands separators, at most two decimals and none when whole: 71250.5 -> '71,250.5'."""
    number = float(value)
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:,.2f}".rstrip("0").rstrip(".")


@register.filter
def krw(value: float) -> str:
    return f"{grouped(value)}원"


@register.filter
def signed_krw(value: float) -> str:
    return f"+{krw(value)}" if value > 0 else krw(value)


@register.filter
def signed_rate(value: float) -> str:
    return f"{float(value):+.2f}%" if value else "0.00%"


@register.filter
def direction(value: float) -> str:
    """Korean market colours: a rise is red, a fall is blue."""
    if value > 0:
        return "rise"
    return "fall" if value < 0 else "flat"


@register.filter
def clock(unix_seconds: int | None) -> str:
    """HH:MM:SS in Korean market time."""
    if not unix_seconds:
        return ""
    return datetime.fromtimestamp(unix_seconds, KST).strftime("%H:%M:%S")


def ago(unix_seconds: int, now: float | None = None) -> str:
    elapsed = max(0, int((time.time() if now is None else now) - unix_seconds))
    if elapsed < 5:
        return "방금"
    if elapsed < 60:
        return f"{elapsed}초 전"
    if elapsed < 3600:
        return f"{elapsed // 60}분 전"
    if elapsed < 86400:
        return f"{elapsed // 3600}시간 전"
    return f"{elapsed // 86400}일 전"


@register.filter
def sync_status_text(sync: dict) -> str:
    """The sync line under the table: never / ok / failing, as the contract's sync dict says, and what
    the real-time feed cannot do for the account, if anything."""
    text = sync_outcome_text(sync)
    if sync.get("realtime_error"):
        text += f" · {realtime_problem_text(sync['realtime_error'])}"
    return text


# watchlist.prices writes these reasons into realtime_error.
REALTIME_PROBLEM_TEXTS = {
    "realtime_refused": "실시간 시세 연결이 거부되었습니다 (앱 키가 다른 곳에서 사용 중)",
    "fill_notices_off": "체결 알림이 꺼졌습니다 (HTS ID를 확인하세요)",
}


def realtime_problem_text(error: str) -> str:
    texts = [text for reason, text in REALTIME_PROBLEM_TEXTS.items() if f"{reason}:" in error]
    return " · ".join(texts) or "실시간 시세에 문제가 있습니다"


def sync_outcome_text(sync: dict) -> str:
    if sync["status"] == "never":
        return "보유 종목을 아직 확인하지 못했습니다 (첫 동기화 대기 중)"
    if sync["status"] == "failing":
        failures = sync["consecutive_failures"]
        if not sync["last_success_at"]:
            return f"계좌에 연결할 수 없습니다 ({failures}회 실패) — 보유 종목을 아직 확인하지 못했습니다"
        return (
            f"계좌에 연결할 수 없습니다 ({failures}회 실패) — "
            f"{clock(sync['last_success_at'])} 기준 목록입니다"
        )
    return f"마지막 동기화 {ago(sync['last_success_at'])}"


@register.filter
def list_state_text(snapshot: dict) -> str:
    """What to say instead of an empty table: never "no holdings" before the account was read once."""
    if snapshot["full_list"]:
        return ""
    return (
        "보유 종목이 없습니다"
        if snapshot["sync"]["last_success_at"]
        else "보유 종목을 아직 확인하지 못했습니다"
    )
