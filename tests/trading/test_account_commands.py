"""The operator's commands: add_broker_account (secrets from the environment) and check_broker_account
(step by step against the KIS simulator over real HTTP and WebSocket)."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from tests.fixtures.accounts import APP_KEY, APP_SECRET
from trading.brokers.account_check import check_account
from trading.models import BrokerAccount

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def run(command: str, *args: str) -> list[str]:
    out = io.StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue().splitlines()


@pytest.fixture
def key_and_secret(monkeypatch):
    monkeypatch.setenv("KIS_APP_KEY", APP_KEY)
    monkeypatch.setenv("KIS_APP_SECRET", APP_SECRET)


# --- add_broker_account -------------------------------------------------------------------------


def test_adds_an_account_with_the_environments_kis_host_and_prints_its_id_last(user, key_and_secret):
    lines = run(
        "add_broker_account",
        "--user",
        "trader",
        "--cano",
        "12345678",
        "--product",
        "01",
        "--environment",
        "real",
        "--hts-id",
        "myhts",
        "--name",
        "실전 계좌",
    )
    account = BrokerAccount.objects.get(pk=int(lines[-1]))
    assert (account.owner, account.account_number, account.product_code, account.environment) == (
        user,
        "12345678",
        "01",
        "real",
    )
    assert (account.base_url, account.hts_id, account.display_name) == (
        "https://openapi.koreainvestment.com:9443",
        "myhts",
        "실전 계좌",
    )
    assert (account.app_key, account.app_secret) == (APP_KEY, APP_SECRET)
    with connection.cursor() as cursor:
        cursor.execute("SELECT app_key, app_secret FROM trading_brokeraccount WHERE id = %s", [account.pk])
        stored = cursor.fetchone()
    assert APP_KEY not in stored and APP_SECRET not in stored
    assert not any(APP_KEY in line or APP_SECRET in line for line in lines)


def test_paper_defaults_to_the_paper_host(user, key_and_secret):
    lines = run(
        "add_broker_account",
        "--user",
        "trader",
        "--cano",
        "50000001",
        "--product",
        "01",
        "--environment",
        "paper",
    )
    assert (
        BrokerAccount.objects.get(pk=int(lines[-1])).base_url
        == "https://openapivts.koreainvestment.com:29443"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody"], "there is no user 'nobody'"),
        (["--cano", "1234"], "--cano: CANO is exactly 8 digits."),
        (["--product", "1"], "--product: Product code is exactly 2 digits."),
        (["--base-url", "https://attacker.example:9443"], "--base-url: The base URL is"),
        (["--hts-id", "x" * 40], "--hts-id:"),
    ],
)
def test_a_bad_value_or_an_unknown_user_exits_2_with_a_clear_message(user, key_and_secret, args, message):
    defaults = {"--user": "trader", "--cano": "12345678", "--product": "01", "--environment": "real"}
    options = dict(zip(args[::2], args[1::2], strict=True))
    argv = [item for pair in (defaults | options).items() for item in pair]
    with pytest.raises(CommandError) as refused:
        run("add_broker_account", *argv)
    assert refused.value.returncode == 2 and message in str(refused.value)
    assert not BrokerAccount.objects.exists()


def test_the_same_account_twice_is_refused(user, key_and_secret):
    argv = ["--user", "trader", "--cano", "12345678", "--product", "01", "--environment", "real"]
    run("add_broker_account", *argv)
    with pytest.raises(CommandError) as refused:
        run("add_broker_account", *argv)
    assert refused.value.returncode == 2 and "already exists" in str(refused.value)


@pytest.mark.parametrize("missing", ["KIS_APP_KEY", "KIS_APP_SECRET"])
def test_a_missing_secret_exits_2_from_the_shell(missing):
    environment = os.environ | {"KIS_APP_KEY": APP_KEY, "KIS_APP_SECRET": APP_SECRET}
    del environment[missing]
    finished = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "add_broker_account",
            "--user",
            "trader",
            "--cano",
            "12345678",
            "--product",
            "01",
            "--environment",
            "real",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2
    assert f"set {missing} in the environment" in finished.stderr


# --- check_broker_account -----------------------------------------------------------------------


def test_the_demo_account_passes_every_step_and_orders_nothing(simulator, sim_account, redis_client):
    lines = run("check_broker_account", str(sim_account.pk))
    assert re.fullmatch(r"balance \(first page\): ok \(\d+ rows\)", lines[2])
    assert lines[1:] == [
        "access token: ok",
        lines[2],
        "real-time approval key: ok",
        "real-time prices of 005930: ok",
        "fill-notice registration: ok",
        "every step passed",
    ]
    assert simulator.orders(sim_account.account_number) == []


def test_without_an_hts_id_the_fill_notice_step_is_left_out(simulator, sim_account, redis_client):
    sim_account.hts_id = ""
    assert [step.name for step in check_account(sim_account)] == [
        "access token",
        "balance (first page)",
        "real-time approval key",
        "real-time prices of 005930",
    ]


def failed_steps(account) -> list[str]:
    with pytest.raises(CommandError) as failed:
        run("check_broker_account", str(account.pk))
    assert failed.value.returncode == 1
    return [f"{step.name}: {step.detail}" for step in check_account(account) if not step.ok]


def test_a_refused_app_key_is_named(simulator, user, make_account, redis_client):
    account = make_account(user, base_url=simulator.url, app_key="")  # the simulator refuses an empty key
    assert failed_steps(account) == ["access token: the app key was refused (EGW00103)"]


def test_a_wrong_account_number_is_named(simulator, user, make_account, redis_client):
    account = make_account(user, base_url=simulator.url, product_code="02")
    [failure] = failed_steps(account)
    assert failure.startswith("balance (first page): the account number is wrong (")


def test_a_closed_port_is_named(account, redis_client):
    assert failed_steps(account) == [
        "access token: cannot connect to 127.0.0.1:9 for tokenP (connection refused)"
    ]


def test_an_unknown_account_id_exits_2(db):
    with pytest.raises(CommandError) as refused:
        run("check_broker_account", "999999")
    assert refused.value.returncode == 2
