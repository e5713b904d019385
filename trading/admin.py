"""Broker accounts in the admin. The app key and secret can be set or replaced, never read back.

The form's secret fields are write-only: they render empty (no `value`), their stored value is
dropped from the form's initial data, and left empty on an edit they keep the current value. A staff
user who may only view accounts does not get the fields at all (the read-only view would print them).

The adapter sends the key and secret to the account's base URL, so the base URL is one of KIS's two
hosts (a loopback address only where settings.KIS_ALLOW_LOOPBACK_BASE_URL allows it), and moving an
existing account to another base URL or environment needs its app secret typed again: otherwise a
staff user could point an account at a host of their own and receive its secrets at the next sync.
"""

from django import forms
from django.conf import settings
from django.contrib import admin

from .brokers.kis import base_url_error
from .models import BrokerAccount

SECRET_FIELDS = ("app_key", "app_secret")
WHERE_SECRETS_GO = ("base_url", "environment")


class BrokerAccountForm(forms.ModelForm):
    base_url = forms.URLField(
        assume_scheme="https", help_text=BrokerAccount._meta.get_field("base_url").help_text
    )
    app_key = forms.CharField(widget=forms.PasswordInput(render_value=False), required=False)
    app_secret = forms.CharField(widget=forms.PasswordInput(render_value=False), required=False)

    class Meta:
        model = BrokerAccount
        fields = "__all__"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        creating = self.instance.pk is None
        for name in SECRET_FIELDS:
            self.initial.pop(name, None)
            field = self.fields[name]
            field.required = creating
            field.help_text = (
                "Stored encrypted and never shown again."
                if creating
                else "Stored encrypted and never shown. Leave empty to keep the current one; "
                "type a new one to replace it."
            )
        if not creating:
            self.fields["app_secret"].help_text += " Required when the base URL or the environment changes."

    def _typed(self, name: str) -> bool:
        return bool(self.data.get(self.add_prefix(name)))

    def _new_or_current(self, name: str) -> str:
        return self.cleaned_data.get(name) or getattr(self.instance, name)

    def clean_base_url(self) -> str:
        url = self.cleaned_data["base_url"]
        if error := base_url_error(url, allow_loopback=settings.KIS_ALLOW_LOOPBACK_BASE_URL):
            raise forms.ValidationError(error)
        return url

    def clean_app_key(self) -> str:
        return self._new_or_current("app_key")

    def clean_app_secret(self) -> str:
        return self._new_or_current("app_secret")

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.instance.pk is None or self._typed("app_secret"):
            return cleaned
        moved = [
            name
            for name in WHERE_SECRETS_GO
            if name in cleaned and cleaned[name] != getattr(self.instance, name)
        ]
        if moved:
            what = " and the ".join(str(BrokerAccount._meta.get_field(name).verbose_name) for name in moved)
            self.add_error(
                "app_secret",
                f"Type the app secret again to change the {what}: the key and secret are sent there.",
            )
        return cleaned


@admin.register(BrokerAccount)
class BrokerAccountAdmin(admin.ModelAdmin):
    form = BrokerAccountForm
    list_display = (
        "display_name",
        "number",
        "owner",
        "environment",
        "base_url",
        "hts_id",
        "has_credentials",
        "created_at",
    )
    list_select_related = ("owner",)
    list_filter = ("environment",)
    search_fields = ("display_name", "account_number", "owner__username", "hts_id")
    autocomplete_fields = ("owner",)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            return [name for name in fields if name not in SECRET_FIELDS]
        return fields

    @admin.display(boolean=True, description="key and secret set")
    def has_credentials(self, account: BrokerAccount) -> bool:
        return bool(account.app_key and account.app_secret)
