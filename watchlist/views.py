"""The watchlist page: server-rendered from the current state, then kept live by static/js/watchlist.js."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.csrf import ensure_csrf_cookie

from .selectors import account_from_param, watchlist_snapshot


@login_required
@ensure_csrf_cookie
def watchlist_page(request: HttpRequest) -> HttpResponse:
    accounts = list(request.user.broker_accounts.all())
    if not accounts:
        return render(request, "watchlist/page.html", {"accounts": accounts})
    account = account_from_param(request.user, request.GET.get("account"))
    if account is None:
        raise Http404(_("No such account."))
    return render(
        request,
        "watchlist/page.html",
        {
            "accounts": accounts,
            "account": account,
            "snapshot": watchlist_snapshot(account),
        },
    )
