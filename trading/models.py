from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from .fields import EncryptedTextField


class BrokerAccount(models.Model):
    """One KIS brokerage account (CANO + product code) owned by one user."""

    class Environment(models.TextChoices):
        REAL = "real", "실전 (real)"
        PAPER = "paper", "모의투자 (paper)"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="broker_accounts")
    display_name = models.CharField(max_length=100)
    account_number = models.CharField(
        max_length=8, validators=[RegexValidator(r"^\d{8}$", "CANO is exactly 8 digits.")]
    )
    product_code = models.CharField(
        max_length=2, default="01", validators=[RegexValidator(r"^\d{2}$", "Product code is exactly 2 digits.")]
    )
    environment = models.CharField(max_length=5, choices=Environment.choices, default=Environment.PAPER)
    base_url = models.URLField(help_text="KIS REST base URL (the local simulator in demo mode).")
    app_key = EncryptedTextField()
    app_secret = EncryptedTextField()
    hts_id = models.CharField(max_length=16, blank=True, help_text="HTS id, the key of real-time fill notices.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "account_number", "product_code"], name="uniq_owner_account"),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.number})"

    @property
    def number(self) -> str:
        return f"{self.account_number}-{self.product_code}"

    @property
    def is_paper(self) -> bool:
        return self.environment == self.Environment.PAPER
