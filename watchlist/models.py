from django.db import models
from django.utils import timezone

from trading.models import BrokerAccount, Order


class Watchlist(models.Model):
    """The account's holdings as the app knows them. `version` grows by one per committed change."""

    account = models.OneToOneField(BrokerAccount, on_delete=models.CASCADE, related_name="watchlist")
    version = models.PositiveIntegerField(default=0)
    totals = models.JSONField(
        null=True,
        blank=True,
        help_text="The account's totals as the broker reported them at the last sync (selectors.totals_dict).",
    )
    read_mark = models.BigIntegerField(
        default=0, help_text="The mark (watchlist_mark sequence) of the newest balance read written."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Watchlist of {self.account} v{self.version}"


class WatchlistItem(models.Model):
    watchlist = models.ForeignKey(Watchlist, on_delete=models.CASCADE, related_name="items")
    stock_code = models.CharField(max_length=6)
    name = models.CharField(max_length=100)
    quantity = models.BigIntegerField()
    avg_price = models.FloatField()
    current_price = models.BigIntegerField()
    eval_amount = models.BigIntegerField()
    pnl = models.BigIntegerField()
    pnl_rate = models.FloatField()
    pending = models.BooleanField(
        default=False, help_text="An optimistic change not yet confirmed by the account."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["stock_code"]
        constraints = [
            models.UniqueConstraint(fields=["watchlist", "stock_code"], name="uniq_watchlist_item_code"),
        ]

    def __str__(self) -> str:
        return f"{self.stock_code} {self.name} x{self.quantity}"


class WatchlistChange(models.Model):
    """One committed change: the history the admin shows and a client can be replayed from."""

    class Cause(models.TextChoices):
        SYNC = "sync", "sync"
        BUY = "buy", "buy"
        SELL = "sell", "sell"

    watchlist = models.ForeignKey(Watchlist, on_delete=models.CASCADE, related_name="changes")
    version = models.PositiveIntegerField()
    added = models.JSONField(default=list)
    removed = models.JSONField(default=list)
    updated = models.JSONField(default=list)
    cause = models.CharField(max_length=8, choices=Cause.choices)
    note = models.TextField(
        blank=True, help_text="Why, when the codes alone do not say (e.g. an unfilled order reverted)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["watchlist", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["watchlist", "version"], name="uniq_watchlist_change_version"),
        ]

    def __str__(self) -> str:
        return f"v{self.version} {self.cause}"


class SyncState(models.Model):
    """When the account last synced, how often it failed since, and when to try next; and what is wrong
    with its real-time feed now (`realtime_error`, written by the price feed, empty when all is well)."""

    account = models.OneToOneField(BrokerAccount, on_delete=models.CASCADE, related_name="sync_state")
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)
    realtime_error = models.TextField(
        blank=True,
        help_text="What the price feed cannot do for this account now, and why; empty when all is well.",
    )

    @property
    def status(self) -> str:
        if self.consecutive_failures:
            return "failing"
        return "ok" if self.last_success_at else "never"

    def __str__(self) -> str:
        return f"sync of {self.account}: {self.status}"


class PendingTrade(models.Model):
    """An order of the account as the watchlist follows it, open until a balance read settles it.

    Registered (`sending`) before the order leaves; then `applied` (the optimistic change is in the
    list), `filled` (a fill notice confirmed it), or `unknown` (the broker's answer was lost).
    `settled_mark` is the watchlist_mark taken when its change was applied (or its outcome found
    unknown): only a read that began after it (a greater read mark) may settle its code (docs/ARCHITECTURE.md,
    "Consistency"). `expected_quantity` is what the account should hold of the code once the order
    fills (0: sold out). A sync confirms it when the balance shows that quantity, and otherwise lets
    the account win once the grace period since `created_at` has passed.
    """

    class Status(models.TextChoices):
        SENDING = "sending", "the order is on its way to the broker"
        APPLIED = "applied", "accepted and applied to the watchlist"
        FILLED = "filled", "confirmed by its fill notice"
        UNKNOWN = "unknown", "the broker's answer was lost"

    class Resolution(models.TextChoices):
        CONFIRMED = "confirmed", "confirmed by the account"
        EXPIRED = "expired", "not confirmed within the grace period: the account won"
        READ = "read", "settled by a read that began after its order's unknown outcome"

    watchlist = models.ForeignKey(Watchlist, on_delete=models.CASCADE, related_name="pending_trades")
    stock_code = models.CharField(max_length=6)
    side = models.CharField(max_length=4, choices=Order.Side.choices)
    qty = models.BigIntegerField()
    expected_quantity = models.BigIntegerField()
    order_id = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=7, choices=Status.choices, default=Status.APPLIED)
    settled_mark = models.BigIntegerField(null=True, blank=True)
    assumed_price = models.BigIntegerField(
        null=True, blank=True, help_text="The fill price the optimistic change assumed."
    )
    filled_qty = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=9, choices=Resolution.choices, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["watchlist"],
                condition=models.Q(resolved_at__isnull=True),
                name="open_pending_trade_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.side} {self.stock_code} x{self.qty} (order {self.order_id or '?'})"
