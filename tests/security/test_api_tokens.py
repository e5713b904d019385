"""API tokens (django-rest-knox): stored only as digests, expiring, revocable one by one, and the same
for the HTTP API and the WebSocket."""

from datetime import timedelta

import pytest
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from watchlist.socket_auth import user_for_token

pytestmark = pytest.mark.django_db

CREDENTIALS = {"username": "trader", "password": "trader-pass-123"}


@pytest.fixture
def token(user, redis_client) -> str:
    response = APIClient().post("/api/auth/token/", CREDENTIALS, format="json")
    assert response.status_code == 200
    return response.json()["token"]


def client_with(token: str) -> APIClient:
    return APIClient(HTTP_AUTHORIZATION=f"Token {token}")


def test_the_database_holds_a_digest_never_the_token(token):
    stored = AuthToken.objects.get()
    assert token not in (stored.digest, stored.token_key) and stored.token_key == token[:15]
    assert client_with(token).get("/api/watchlist/").status_code != 401


def test_a_token_expires(token, user, settings):
    stored = AuthToken.objects.get()
    assert stored.expiry - timezone.now() == pytest.approx(
        settings.REST_KNOX["TOKEN_TTL"], abs=timedelta(minutes=1)
    )
    AuthToken.objects.update(expiry=timezone.now() - timedelta(seconds=1))
    response = client_with(token).get("/api/watchlist/")
    assert response.status_code == 401 and response.json()["success"] is False
    assert response["WWW-Authenticate"] == "Token"
    assert user_for_token(token).is_anonymous


def test_revoking_a_token_ends_it_for_the_api_and_the_socket_and_spares_the_others(token, user, account):
    other = APIClient().post("/api/auth/token/", CREDENTIALS, format="json").json()["token"]
    assert user_for_token(token) == user

    revoked = client_with(token).post("/api/auth/token/revoke/")

    assert revoked.status_code == 204
    assert client_with(token).get("/api/watchlist/").status_code == 401
    assert client_with(token).post("/api/auth/token/revoke").status_code == 401  # once only
    assert user_for_token(token).is_anonymous
    assert client_with(other).get("/api/watchlist/").status_code == 200
    assert user_for_token(other) == user


def test_revoking_needs_a_token_not_a_session(user, client):
    client.force_login(user)
    assert client.post("/api/auth/token/revoke/").status_code == 401


def test_an_inactive_users_token_stops_working(token, user):
    user.is_active = False
    user.save()
    assert client_with(token).get("/api/watchlist/").status_code == 401
    assert user_for_token(token).is_anonymous


@pytest.mark.parametrize("key", ["", "x", "not a token at all", "é" * 64])
def test_malformed_tokens_are_anonymous_on_the_socket(key, user, token):
    assert user_for_token(key).is_anonymous


def test_the_schema_documents_the_revoke_endpoint(client):
    schema = client.get("/api/schema/?format=json").json()
    revoke = schema["paths"]["/api/auth/token/revoke/"]["post"]
    assert set(revoke["responses"]) >= {"204", "401"}
    assert "expiry" in schema["components"]["schemas"]["AuthTokenResponse"]["properties"]
