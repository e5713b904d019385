"""Broker accounts in the admin. The app key and secret can be set or replaced, never read back.

The form's secret fields are write-only: they render empty (no `value`), their stored value is
dropped from the form's initial data, and left empty on an edit they keep the current value. A staff
user who may only view accounts does not get the fields at all (the read-only view would print them).
"""

from django import forms
from django.contrib import admin

from .models import BrokerAccount

SECRET_FIELDS = ("app_key", "app_secret")


class BrokerAccountForm(forms.ModelForm):
    base_url = forms.URLField(assume_scheme="https",
                              help_text=BrokerAccount._meta.get_field("base_url").help_text)
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

    def _new_or_current(self, name: str) -> str:
        return self.cleaned_data.get(name) or getattr(self.instance, name)

    def clean_app_key(self) -> str:
        return self._new_or_current("app_key")

    def clean_app_secret(self) -> str:
        return self._new_or_current("app_secret")


@admin.register(BrokerAccount)
class BrokerAccountAdmin(admin.ModelAdmin):
    form = BrokerAccountForm
    list_display = ["display_name", "number", "owner", "environment", "base_url", "hts_id", "has_credentials",
                    "created_at"]
    list_select_related = ["owner"]
    list_filter = ["environment"]
    search_fields = ["display_name", "account_number", "owner__username", "hts_id"]
    autocomplete_fields = ["owner"]

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            return [name for name in fields if name not in SECRET_FIELDS]
        return fields

    @admin.display(boolean=True, description="key and secret set")
    def has_credentials(self, account: BrokerAccount) -> bool:
        return bool(account.app_key and account.app_secret)
