from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from .fields import EncryptedTextField


class BrokerAccount(models.Model):
    """One KIS brokerage account (CANO + product code) owned by one user."""

    class Environment(models.TextChoices):
        REAL = "real", "실전 (real)"
        PAPER = "paper", "모의투자 (paper)"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="broker_accounts"
    )
    display_name = models.CharField(max_length=100)
    account_number = models.CharField(
        max_length=8, validators=[RegexValidator(r"\A[0-9]{8}\Z", "CANO is exactly 8 digits.")]
    )
    product_code = models.CharField(
        max_length=2,
        default="01",
        validators=[RegexValidator(r"\A[0-9]{2}\Z", "Product code is exactly 2 digits.")],
    )
    environment = models.CharField(max_length=5, choices=Environment.choices, default=Environment.PAPER)
    base_url = models.URLField(help_text="KIS REST base URL (the local simulator in demo mode).")
    app_key = EncryptedTextField()
    app_secret = EncryptedTextField()
    hts_id = models.CharField(
        max_length=16, blank=True, help_text="HTS id, the key of real-time fill notices."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "account_number", "product_code"], name="uniq_owner_account"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.number})"

    @property
    def number(self) -> str:
        return f"{self.account_number}-{self.product_code}"

    @property
    def is_paper(self) -> bool:
        return self.environment == self.Environment.PAPER


class Order(models.Model):
    """Every order sent to the broker, whatever came back: the audit trail of trades. Written (`sending`)
    before the request leaves, so that an order that may exist always has its row."""

    class Side(models.TextChoices):
        BUY = "buy", "buy"
        SELL = "sell", "sell"

    class Status(models.TextChoices):
        SENDING = "sending", "sending (no answer yet)"
        ACCEPTED = "accepted", "accepted"
        REJECTED = "rejected", "rejected by the broker"
        FAILED = "failed", "not placed (never sent or refused by the broker's gateway)"
        UNKNOWN = "unknown", "state unknown (sent, no answer)"

    account = models.ForeignKey(BrokerAccount, on_delete=models.CASCADE, related_name="orders")
    side = models.CharField(max_length=4, choices=Side.choices)
    stock_code = models.CharField(max_length=6)
    qty = models.PositiveIntegerField()
    price = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Limit price in KRW; empty = market."
    )
    status = models.CharField(max_length=8, choices=Status.choices)
    order_no = models.CharField(max_length=32, blank=True, help_text="The broker's order number (ODNO).")
    broker_code = models.CharField(max_length=16, blank=True, help_text="The broker's msg_cd on a rejection.")
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.side} {self.stock_code} x{self.qty} ({self.status})"


class IdempotencyKey(models.Model):
    """A trade request's Idempotency-Key, claimed (inserted) before the order leaves the process.

    The unique (user, key) row is what makes a repeated or concurrent request wait for, and
    return, the first one's result instead of placing a second order. `result` stays empty while
    the first request is in flight."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    result = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="uniq_idempotency_user_key")]

    def __str__(self) -> str:
        return f"{self.key} ({'done' if self.result is not None else 'in flight'})"
