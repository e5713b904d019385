"""The watchlist page: server-rendered from the current state, then kept live by static/js/watchlist.js."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from trading.models import BrokerAccount
from trading.services import AccountNotFound, user_account

from .selectors import watchlist_snapshot


def requested_account(user, account_param: str | None) -> BrokerAccount | None:
    """The account an `?account=<id>` parameter picks (the user's first without one); None when it
    names no account of theirs. The page and the socket pick the same way."""
    account_id = int(account_param) if account_param and account_param.isdecimal() else account_param
    try:
        return user_account(user=user, account_id=account_id)
    except AccountNotFound:
        return None


@login_required
@ensure_csrf_cookie
def watchlist_page(request: HttpRequest) -> HttpResponse:
    accounts = list(request.user.broker_accounts.all())
    if not accounts:
        return render(request, "watchlist/page.html", {"accounts": accounts})
    account = requested_account(request.user, request.GET.get("account"))
    if account is None:
        raise Http404("No such account.")
    return render(
        request,
        "watchlist/page.html",
        {
            "accounts": accounts,
            "account": account,
            "snapshot": watchlist_snapshot(account),
        },
    )
