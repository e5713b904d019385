"""Display formatting of the watchlist: KRW amounts, signed P&L, rates, market colours, sync times, and
the texts of the page's client in the active language.

static/js/watchlist.js mirrors these (formatKrw, formatSignedKrw, formatSignedRate, direction,
syncStatusText) for the cells it patches in the browser, with the texts of `client_texts`; keep the
two in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from django import template
from django.utils.translation import gettext, ngettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _

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
    return KRW_AMOUNT % {"amount": grouped(value)}


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
        return str(JUST_NOW)
    if elapsed < 60:
        count, text = elapsed, seconds_ago
    elif elapsed < 3600:
        count, text = elapsed // 60, minutes_ago
    elif elapsed < 86400:
        count, text = elapsed // 3600, hours_ago
    else:
        count, text = elapsed // 86400, days_ago
    return text(count) % {"count": count}


@register.filter
def sync_status_text(sync: dict) -> str:
    """The sync line under the table: never / ok / failing, as the contract's sync dict says, and what
    the real-time feed cannot do for the account, if anything."""
    text = sync_outcome_text(sync)
    if sync.get("realtime_error"):
        text += f" · {realtime_problem_text(sync['realtime_error'])}"
    return text


def realtime_problem_text(error: str) -> str:
    texts = [str(text) for reason, text in REALTIME_PROBLEM_TEXTS.items() if f"{reason}:" in error]
    return " · ".join(texts) or str(REALTIME_PROBLEM)


def sync_outcome_text(sync: dict) -> str:
    if sync["status"] == "never":
        return str(SYNC_NEVER)
    if sync["status"] == "failing":
        failures = sync["consecutive_failures"]
        if not sync["last_success_at"]:
            return sync_failing_unread(failures) % {"failures": failures}
        return sync_failing_since(failures) % {"failures": failures, "time": clock(sync["last_success_at"])}
    return SYNC_OK % {"ago": ago(sync["last_success_at"])}


@register.filter
def list_state_text(snapshot: dict) -> str:
    """What to say instead of an empty table: never "no holdings" before the account was read once."""
    if snapshot["full_list"]:
        return ""
    return str(LIST_EMPTY if snapshot["sync"]["last_success_at"] else LIST_UNREAD)


# --- the texts, in the active language ----------------------------------------------------------
# The page hands the same texts to static/js/watchlist.js (`client_texts`), which fills them in as
# these functions do: a `%(name)s` placeholder, and for a count the singular form at 1 and the other
# form otherwise (the plural rule of both languages served, English and Korean).

KRW_AMOUNT = pgettext_lazy("an amount of money", "%(amount)s KRW")
JUST_NOW = _("just now")
SYNC_NEVER = _("Holdings not read yet (waiting for the first sync)")
SYNC_OK = _("Last sync %(ago)s")
LIST_EMPTY = _("No holdings")
LIST_UNREAD = _("Holdings not read yet")
REALTIME_PROBLEM = _("Real-time prices have a problem")
# watchlist.prices writes these reasons into realtime_error.
REALTIME_PROBLEM_TEXTS = {
    "realtime_refused": _("Real-time prices were refused (the app key is in use elsewhere)"),
    "fill_notices_off": _("Fill notices are off (check the HTS ID)"),
}


def seconds_ago(count: int) -> str:
    return ngettext("%(count)s second ago", "%(count)s seconds ago", count)


def minutes_ago(count: int) -> str:
    return ngettext("%(count)s minute ago", "%(count)s minutes ago", count)


def hours_ago(count: int) -> str:
    return ngettext("%(count)s hour ago", "%(count)s hours ago", count)


def days_ago(count: int) -> str:
    return ngettext("%(count)s day ago", "%(count)s days ago", count)


def sync_failing_unread(failures: int) -> str:
    return ngettext(
        "Cannot reach the account (%(failures)s failure) — holdings not read yet",
        "Cannot reach the account (%(failures)s failures) — holdings not read yet",
        failures,
    )


def sync_failing_since(failures: int) -> str:
    return ngettext(
        "Cannot reach the account (%(failures)s failure) — the list as of %(time)s",
        "Cannot reach the account (%(failures)s failures) — the list as of %(time)s",
        failures,
    )


def reconnecting_in(seconds: int) -> str:
    return ngettext(
        "Disconnected · reconnecting in %(seconds)s second (attempt %(attempt)s)",
        "Disconnected · reconnecting in %(seconds)s seconds (attempt %(attempt)s)",
        seconds,
    )


def plural_forms(text: Callable[[int], str]) -> list[str]:
    """[the form for 1, the form for any other count]."""
    return [text(1), text(2)]


@register.simple_tag
def client_texts() -> dict:
    """Every text static/js/watchlist.js shows, in the active language (the page embeds them as JSON;
    static/js/tests/texts_*.json are copies for its unit tests)."""
    return {
        "krw_amount": str(KRW_AMOUNT),
        "just_now": str(JUST_NOW),
        "seconds_ago": plural_forms(seconds_ago),
        "minutes_ago": plural_forms(minutes_ago),
        "hours_ago": plural_forms(hours_ago),
        "days_ago": plural_forms(days_ago),
        "sync_never": str(SYNC_NEVER),
        "sync_ok": str(SYNC_OK),
        "sync_failing_unread": plural_forms(sync_failing_unread),
        "sync_failing_since": plural_forms(sync_failing_since),
        "realtime_problem": str(REALTIME_PROBLEM),
        "realtime_problems": {reason: str(text) for reason, text in REALTIME_PROBLEM_TEXTS.items()},
        "list_empty": str(LIST_EMPTY),
        "list_unread": str(LIST_UNREAD),
        "connecting": gettext("Connecting…"),
        "connected": gettext("Live"),
        "reconnecting_in": plural_forms(reconnecting_in),
        "refused_unauthenticated": gettext("Sign-in needed — reload the page"),
        "refused_forbidden": gettext("This account cannot be shown"),
        "order_sending": gettext("Sending the order…"),
        "order_accepted": gettext("The order was accepted"),
        "order_state_checking": gettext(
            "The order's outcome is not known yet and is being checked with the account; the list will "
            "show it. Pressing the same order again checks this order's outcome, it does not place a new one."
        ),
    }
