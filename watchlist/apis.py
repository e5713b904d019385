"""The HTTP API (contract.md, "HTTP"): one class per operation; each validates, calls one service, renders.

Errors of every kind go through config.exceptions.api_exception_handler, so every answer is the
same JSON shape; the trade endpoints add `stock_code` and `qty` to their error answers too.
"""

from __future__ import annotations

import hashlib

from django.contrib.auth import get_user_model
from django.contrib.auth.views import LoginView
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
)
from knox.auth import TokenAuthentication
from knox.models import AuthToken
from rest_framework import serializers, status
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle, UserRateThrottle
from rest_framework.views import APIView

from trading.brokers.base import STOCK_CODE_PATTERN, BrokerError, Side, stock_code_error
from trading.services import MAX_ACCOUNT_ID, AccountNotFound, TradeOutcome, user_account

from .selectors import watchlist_snapshot
from .serializers import (
    AccountIdField,
    ChangesSerializer,
    ErrorSerializer,
    PriceField,
    QuantityField,
    SnapshotSerializer,
)
from .services import SyncNotServed, sync_now
from .trades import place_trade

TRADE_STATUS = {
    TradeOutcome.ACCEPTED: status.HTTP_200_OK,
    TradeOutcome.EXCEEDS_HOLDINGS: status.HTTP_409_CONFLICT,
    TradeOutcome.KEY_IN_FLIGHT: status.HTTP_409_CONFLICT,
    TradeOutcome.REJECTED: status.HTTP_502_BAD_GATEWAY,
    TradeOutcome.UNREACHABLE: status.HTTP_502_BAD_GATEWAY,
    TradeOutcome.STATE_UNKNOWN: status.HTTP_502_BAD_GATEWAY,
}


class JSONBodyParser(JSONParser):
    """DRF's JSON parser, also for bodies nested too deep for Python's decoder (a 400, not a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(_("JSON parse error - nested too deeply.")) from None


# --- Throttles ----------------------------------------------------------------------------------
# The contract's floor: never refuse a user below 20 trade requests within a second or 120 within a
# minute, nor below 12 manual syncs a minute per account. The rates are settings (REST_FRAMEWORK).


class TradeBurstThrottle(UserRateThrottle):
    scope = "trades-burst"


class TradeThrottle(UserRateThrottle):
    scope = "trades"


class AccountSyncThrottle(SimpleRateThrottle):
    """Manual syncs per account, whichever way the request names it (its id, or none for the first)."""

    scope = "sync"

    def get_cache_key(self, request, view):
        try:
            account = requested_account(request)
        except (ValidationError, AccountNotFound):  # the view answers the same error itself
            return None
        return self.cache_format % {"scope": self.scope, "ident": account.id}


# --- Trades -------------------------------------------------------------------------------------


class TradeApi(APIView):
    side: Side
    parser_classes = [JSONBodyParser]
    throttle_classes = (TradeBurstThrottle, TradeThrottle)

    @extend_schema_serializer(component_name="TradeRequest")
    class InputSerializer(serializers.Serializer):
        qty = QuantityField(help_text="Shares, 1 to 1,000,000.")
        price = PriceField(
            required=False, allow_null=True, help_text="Limit price in KRW; absent: a market order."
        )
        account = AccountIdField(
            required=False, help_text="One of your account ids; default: your first account."
        )

    @extend_schema_serializer(component_name="TradeResponse")
    class OutputSerializer(serializers.Serializer):
        OPTIONAL = ("outcome", "order_id", "watchlist_version", "broker_code", "errors")

        success = serializers.BooleanField()
        outcome = serializers.ChoiceField(
            choices=[outcome.value for outcome in TradeOutcome],
            required=False,
            help_text="What became of the order (absent when the request itself was refused). `state_unknown`: "
            "it may have reached the broker unconfirmed; a sync follows, and a retry must reuse the "
            "Idempotency-Key. `unreachable`: it was certainly not placed.",
        )
        message = serializers.CharField()
        stock_code = serializers.CharField()
        qty = serializers.IntegerField(allow_null=True)
        order_id = serializers.CharField(required=False, help_text="The broker's order number (on success).")
        watchlist_version = serializers.IntegerField(
            required=False,
            allow_null=True,
            help_text="The watchlist version after the optimistic change (on success).",
        )
        broker_code = serializers.CharField(required=False, help_text="The broker's msg_cd when it refused.")
        errors = serializers.DictField(
            required=False, help_text="Each invalid field with its messages (400)."
        )

        def to_representation(self, instance):
            data = super().to_representation(instance)
            return {
                key: value for key, value in data.items() if key not in self.OPTIONAL or value is not None
            }

    def post(self, request, stock_code: str):
        data = self.validated_input(request, stock_code)
        result = place_trade(
            user=request.user,
            account_id=data.get("account"),
            stock_code=stock_code,
            side=self.side,
            qty=data["qty"],
            price=data.get("price"),
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
        return Response(self.OutputSerializer(result).data, status=TRADE_STATUS[result.outcome])

    def validated_input(self, request, stock_code: str) -> dict:
        """The body, checked together with the code in the path so one answer names every bad field."""
        errors = {}
        if message := stock_code_error(stock_code):
            errors["stock_code"] = [message]
        serializer = self.InputSerializer(data=request.data)
        if not serializer.is_valid():
            errors.update(serializer.errors)
        if errors:
            raise ValidationError(errors)
        return serializer.validated_data

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        response.data.update(stock_code=self.kwargs.get("stock_code", ""), qty=self._requested_qty())
        return response

    def _requested_qty(self) -> int | None:
        try:
            qty = self.request.data.get("qty") if isinstance(self.request.data, dict) else None
        except APIException:  # the body itself is what failed (malformed JSON, wrong content type)
            return None
        return qty if isinstance(qty, int) and not isinstance(qty, bool) else None


TRADE_PARAMETERS = [
    # The rule of trading.brokers.base.stock_code_error, as the ECMA regex OpenAPI uses.
    OpenApiParameter(
        "stock_code",
        OpenApiTypes.STR,
        OpenApiParameter.PATH,
        pattern=f"^{STOCK_CODE_PATTERN}$",
        description="KRX short code: 6 digits or upper-case letters, e.g. 005930.",
    ),
    OpenApiParameter(
        "Idempotency-Key",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        required=False,
        description="The same key from the same user within 24 h returns the first answer and places no second "
        "order; a request arriving while the first is in flight waits for it.",
    ),
]


def trade_schema(side: Side):
    output = TradeApi.OutputSerializer
    return extend_schema(
        operation_id=f"execute_{side}",
        summary=f"Place a {side} order, then update the watchlist at once (pending until the account confirms).",
        parameters=TRADE_PARAMETERS,
        request=TradeApi.InputSerializer,
        responses={
            200: OpenApiResponse(output, description="The broker accepted the order."),
            400: OpenApiResponse(
                output, description="Invalid stock code, qty, price or account; `errors` per field."
            ),
            401: OpenApiResponse(output, description="Not authenticated."),
            403: OpenApiResponse(output, description="CSRF check failed or not allowed."),
            404: OpenApiResponse(output, description="The account is not one of yours."),
            409: OpenApiResponse(
                output,
                description="Sell of more than the account holds, or the same "
                "Idempotency-Key is still in flight.",
            ),
            502: OpenApiResponse(
                output,
                description="The broker rejected the order (`broker_code`), the order was "
                "not sent (`unreachable`), or it may have reached the broker "
                "unconfirmed (`state_unknown`: a sync is queued).",
            ),
            429: OpenApiResponse(
                output,
                description="Too many trade requests (more than 20 a second or 120 a minute); "
                "`Retry-After` says when to try again. Nothing was sent.",
            ),
            503: OpenApiResponse(
                output,
                description="The database is unavailable, or the account stayed busy with "
                "another trade or a sync; nothing was sent.",
            ),
        },
        tags=["trades"],
    )


@extend_schema_view(post=trade_schema("buy"))
class ExecuteBuyApi(TradeApi):
    side = "buy"


@extend_schema_view(post=trade_schema("sell"))
class ExecuteSellApi(TradeApi):
    side = "sell"


# --- Watchlist ----------------------------------------------------------------------------------

ACCOUNT_QUERY = OpenApiParameter(
    "account",
    OpenApiTypes.INT,
    OpenApiParameter.QUERY,
    required=False,
    description="One of your account ids; default: your first account.",
)
ERROR_RESPONSES = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid account parameter."),
    401: OpenApiResponse(ErrorSerializer, description="Not authenticated."),
    403: OpenApiResponse(ErrorSerializer, description="CSRF check failed or not allowed."),
    404: OpenApiResponse(ErrorSerializer, description="The account is not one of yours."),
    503: OpenApiResponse(
        ErrorSerializer, description="The database is unavailable, or the account stayed busy."
    ),
}


class AccountQuerySerializer(serializers.Serializer):
    account = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ACCOUNT_ID)


def requested_account(request):
    query = AccountQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return user_account(user=request.user, account_id=query.validated_data.get("account"))


class WatchlistApi(APIView):
    @extend_schema(
        operation_id="watchlist_snapshot",
        summary="The watchlist of one of your accounts.",
        parameters=[ACCOUNT_QUERY],
        responses={200: SnapshotSerializer, **ERROR_RESPONSES},
        tags=["watchlist"],
    )
    def get(self, request):
        # The selector's dict is the contract's shape, shared with the WebSocket: returned as it is.
        return Response(watchlist_snapshot(requested_account(request)))


class WatchlistSyncApi(APIView):
    throttle_classes = (AccountSyncThrottle,)

    @extend_schema_serializer(component_name="SyncResponse")
    class OutputSerializer(SnapshotSerializer):
        changes = ChangesSerializer()

    @extend_schema(
        operation_id="watchlist_sync",
        summary="Sync the watchlist with the account now.",
        parameters=[ACCOUNT_QUERY],
        request=None,
        responses={
            200: OutputSerializer,
            **ERROR_RESPONSES,
            429: OpenApiResponse(
                ErrorSerializer,
                description="More than 12 manual syncs of the account a minute; "
                "`Retry-After` says when to try again.",
            ),
            502: OpenApiResponse(
                ErrorSerializer, description="The broker could not be read; the sync state records it."
            ),
            503: OpenApiResponse(
                ErrorSerializer,
                description="No read of the account could begin in time "
                "(the app key's call budget is busy); Retry-After says when to ask again.",
            ),
        },
        tags=["watchlist"],
    )
    def post(self, request):
        account = requested_account(request)
        try:
            result = sync_now(account)
        except SyncNotServed as exc:
            body = {
                "success": False,
                "message": _(
                    "The account could not be read in time: the broker's call "
                    "budget is busy. Try again shortly."
                ),
            }
            return Response(
                body,
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": str(exc.retry_after)},
            )
        except BrokerError as exc:
            message = _("The account could not be read from the broker: %(reason)s") % {"reason": exc.message}
            body = {"success": False, "message": message}
            if exc.msg_cd:
                body["broker_code"] = exc.msg_cd
            return Response(body, status=status.HTTP_502_BAD_GATEWAY)
        return Response({**watchlist_snapshot(account), "changes": result.changes.as_dict()})


# --- Authentication -----------------------------------------------------------------------------


def login_username(raw: object) -> str | None:
    """The username as the login form compares it (stripped, NFKC as `normalize_username`), case-folded:
    every spelling of one name counts against one limit."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    return get_user_model().normalize_username(raw.strip()).casefold()


class UsernameAddressRateThrottle(SimpleRateThrottle):
    """The "auth" rate per (username, address): guessing one user's password from one address is slow,
    and a stranger elsewhere cannot use up the user's own attempts (the wider "auth-address" rate bounds
    an address trying many names)."""

    scope = "auth-username"

    def get_rate(self):
        return self.THROTTLE_RATES["auth"]

    def get_cache_key(self, request, view):
        data = request.data if isinstance(request, Request) else request.POST
        username = login_username(data.get("username") if hasattr(data, "get") else None)
        if username is None:
            return None
        # Hashed: any text may come in, and a cache key must stay short and plain.
        pair = f"{username}\n{self.get_ident(request)}".encode("utf-8", "surrogatepass")
        return self.cache_format % {"scope": self.scope, "ident": hashlib.sha256(pair).hexdigest()}


class AddressRateThrottle(SimpleRateThrottle):
    """Every login attempt of one address, whatever the name tried: "auth-address", wider than "auth"
    so that the users behind one address (an office) do not share one user's limit."""

    scope = "auth-address"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


LOGIN_THROTTLES = (AddressRateThrottle, UsernameAddressRateThrottle)


class AuthTokenApi(APIView):
    """A new API token for a username and password. Tokens are stored hashed (knox), expire after
    REST_KNOX["TOKEN_TTL"] and are revoked one by one (AuthTokenRevokeApi)."""

    # No session here: a stale session cookie must not make a token request fail its CSRF check.
    authentication_classes = ()
    permission_classes = ()
    parser_classes = (FormParser, MultiPartParser, JSONBodyParser)
    throttle_classes = LOGIN_THROTTLES

    @extend_schema_serializer(component_name="AuthTokenResponse")
    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField(help_text="Send as `Authorization: Token <token>`.")
        expiry = serializers.DateTimeField(help_text="When the token stops working.")

    @extend_schema(
        operation_id="auth_token",
        summary="Exchange a username and password for an API token (`Authorization: Token <token>`).",
        request=AuthTokenSerializer,
        responses={
            200: OutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Wrong username or password."),
            429: OpenApiResponse(ErrorSerializer, description="Too many attempts; wait and retry."),
        },
        auth=[],
        tags=["auth"],
    )
    def post(self, request):
        credentials = AuthTokenSerializer(data=request.data, context={"request": request})
        credentials.is_valid(raise_exception=True)
        token, key = AuthToken.objects.create(user=credentials.validated_data["user"])
        return Response(self.OutputSerializer({"token": key, "expiry": token.expiry}).data)


class AuthTokenRevokeApi(APIView):
    authentication_classes = (TokenAuthentication,)

    @extend_schema(
        operation_id="auth_token_revoke",
        summary="Revoke the API token this request is authenticated by; it stops working at once.",
        request=None,
        responses={
            204: OpenApiResponse(description="Revoked."),
            401: OpenApiResponse(
                ErrorSerializer, description="No valid token (missing, expired or revoked)."
            ),
        },
        tags=["auth"],
    )
    def post(self, request):
        request.auth.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class ThrottledLoginView(LoginView):
    """Django's login form, with the same limits as the token endpoint on password guessing."""

    def post(self, request, *args, **kwargs):
        for throttle in (throttle_class() for throttle_class in LOGIN_THROTTLES):
            if not throttle.allow_request(request, self):
                form = self.get_form()
                form.add_error(None, _("Too many login attempts. Wait a minute and try again."))
                return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)
