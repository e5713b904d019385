"""Serializer fields and shapes shared by the APIs.

Order fields are checked by the broker layer's own rules (`trading.brokers.base.*_error`), and
strictly: JSON `"10"`, `10.0` and `true` are not quantities.
"""

from __future__ import annotations

from collections.abc import Callable

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from trading.brokers.base import MAX_ORDER_PRICE, MAX_ORDER_QTY, price_error, qty_error
from trading.services import MAX_ACCOUNT_ID

from .diff import ITEM_FIELDS
from .models import WatchlistItem


class CheckedField(serializers.Field):
    """A JSON value taken as it is when `check` finds nothing wrong with it (`check` returns the message)."""

    check: Callable[[object], str | None]

    def to_internal_value(self, data):
        if message := type(self).check(data):
            raise serializers.ValidationError(message)
        return data

    def to_representation(self, value):
        return value


def account_id_error(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ACCOUNT_ID:
        return _("An account is given by its id, a whole number.")
    return None


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": MAX_ORDER_QTY})
class QuantityField(CheckedField):
    check = staticmethod(qty_error)


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": MAX_ORDER_PRICE, "nullable": True})
class PriceField(CheckedField):
    check = staticmethod(price_error)


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": MAX_ACCOUNT_ID})
class AccountIdField(CheckedField):
    check = staticmethod(account_id_error)


class ErrorSerializer(serializers.Serializer):
    """The shape of every error answer (config/exceptions.py)."""

    success = serializers.BooleanField(default=False)
    message = serializers.CharField()
    errors = serializers.DictField(required=False, help_text="Each invalid field with its messages.")


class AccountSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    number = serializers.CharField(help_text="CANO-product code, e.g. 50123456-01.")


class ItemSerializer(serializers.ModelSerializer):
    """The contract's Item (selectors.item_to_dict), its field types taken from the model."""

    updated_at = serializers.IntegerField(help_text="Unix seconds.")

    class Meta:
        model = WatchlistItem
        fields = [*ITEM_FIELDS, "updated_at"]


class SyncStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "failing", "never"])
    last_success_at = serializers.IntegerField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    next_attempt_at = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    realtime_error = serializers.CharField(allow_blank=True)


class TotalsSerializer(serializers.Serializer):
    """The account's totals as the broker reported them at the last sync (KIS balance output2)."""

    total_eval = serializers.IntegerField(help_text="Deposit plus the securities at market (tot_evlu_amt).")
    purchase = serializers.IntegerField(help_text="Purchase amount of the holdings (pchs_amt_smtl_amt).")
    eval_amount = serializers.IntegerField(help_text="The holdings at market (evlu_amt_smtl_amt).")
    pnl = serializers.IntegerField(help_text="Unrealised P&L (evlu_pfls_smtl_amt).")
    pnl_rate = serializers.FloatField(help_text="pnl / purchase in percent, 2 decimals.")
    deposit = serializers.IntegerField(help_text="Cash deposit (dnca_tot_amt).")


class SnapshotSerializer(serializers.Serializer):
    """watchlist.selectors.watchlist_snapshot(), the shape the WebSocket sends too."""

    account = AccountSerializer()
    version = serializers.IntegerField()
    timestamp = serializers.IntegerField(help_text="Unix seconds.")
    full_list = ItemSerializer(many=True)
    totals = TotalsSerializer(allow_null=True, help_text="null until a sync read them.")
    sync = SyncStatusSerializer()


class ChangesSerializer(serializers.Serializer):
    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    updated = serializers.ListField(child=serializers.CharField())
