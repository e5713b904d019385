"""The admin: watchlists with their items, the change history, sync state (with a health overview above
its list) and pending trades.

Everything here is read-only: the watchlist is written by watchlist.services (and its prices by the
price feed), and an edit made in the admin would bypass its version and its broadcast. "Sync now" queues the same task the
dispatcher queues.
"""

from django.contrib import admin, messages
from django.db.models import Count, QuerySet

from .diff import ITEM_FIELDS
from .jobs import request_sync
from .models import PendingTrade, SyncState, Watchlist, WatchlistChange, WatchlistItem
from .selectors import sync_health


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.action(description="Sync now with the account")
def sync_now(modeladmin: admin.ModelAdmin, request, queryset: QuerySet) -> None:
    account_ids = list(queryset.values_list("account_id", flat=True))
    for account_id in account_ids:
        request_sync(account_id)
    modeladmin.message_user(request, f"Queued a sync of {len(account_ids)} account(s).", messages.SUCCESS)


class WatchlistItemInline(ReadOnlyInline):
    model = WatchlistItem
    fields = [*ITEM_FIELDS, "updated_at"]  # the item's values, as the API and the socket show them
    readonly_fields = fields


class PendingTradeInline(ReadOnlyInline):
    model = PendingTrade
    fields = [
        "side",
        "stock_code",
        "qty",
        "expected_quantity",
        "order_id",
        "created_at",
        "resolved_at",
        "resolution",
    ]
    readonly_fields = fields
    verbose_name_plural = "pending trades (optimistic changes)"


@admin.register(Watchlist)
class WatchlistAdmin(ReadOnlyAdmin):
    list_display = ["account", "owner", "version", "item_count", "updated_at"]
    list_select_related = ["account__owner"]
    list_filter = ["account", "items__pending"]
    search_fields = ["items__stock_code", "items__name", "account__display_name", "account__account_number"]
    readonly_fields = ["account", "version", "updated_at"]
    inlines = [WatchlistItemInline, PendingTradeInline]
    actions = [sync_now]

    def get_queryset(self, request) -> QuerySet:
        return super().get_queryset(request).annotate(item_count=Count("items", distinct=True))

    @admin.display(ordering="account__owner__username")
    def owner(self, watchlist: Watchlist):
        return watchlist.account.owner

    @admin.display(description="items", ordering="item_count")
    def item_count(self, watchlist: Watchlist) -> int:
        return watchlist.item_count


@admin.register(WatchlistItem)
class WatchlistItemAdmin(ReadOnlyAdmin):
    list_display = [
        "stock_code",
        "name",
        "account",
        "quantity",
        "avg_price",
        "current_price",
        "pnl_rate",
        "pending",
        "updated_at",
    ]
    list_select_related = ["watchlist__account"]
    list_filter = ["pending", "watchlist__account"]
    search_fields = ["stock_code", "name"]

    @admin.display(ordering="watchlist__account")
    def account(self, item: WatchlistItem):
        return item.watchlist.account


@admin.register(WatchlistChange)
class WatchlistChangeAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "account", "version", "cause", "added", "removed", "updated", "note"]
    list_select_related = ["watchlist__account"]
    list_filter = ["cause", "watchlist__account"]
    search_fields = ["note"]
    date_hierarchy = "created_at"

    @admin.display(ordering="watchlist__account")
    def account(self, change: WatchlistChange):
        return change.watchlist.account


@admin.register(SyncState)
class SyncStateAdmin(ReadOnlyAdmin):
    list_display = [
        "account",
        "status",
        "consecutive_failures",
        "last_success_at",
        "last_attempt_at",
        "next_attempt_at",
        "last_error",
        "realtime_error",
    ]
    list_select_related = ["account"]
    list_filter = ["consecutive_failures", "account"]
    actions = [sync_now]

    def changelist_view(self, request, extra_context=None):
        """Above the list, the overview an operator looks for first (templates/admin/.../change_list.html)."""
        return super().changelist_view(request, {**(extra_context or {}), "sync_health": sync_health()})

    @admin.display(description="status")
    def status(self, state: SyncState) -> str:
        return state.status


@admin.register(PendingTrade)
class PendingTradeAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "account",
        "side",
        "stock_code",
        "qty",
        "expected_quantity",
        "order_id",
        "resolution",
        "resolved_at",
    ]
    list_select_related = ["watchlist__account"]
    list_filter = ["resolution", "side", "watchlist__account"]
    search_fields = ["stock_code", "order_id"]

    @admin.display(ordering="watchlist__account")
    def account(self, trade: PendingTrade):
        return trade.watchlist.account
