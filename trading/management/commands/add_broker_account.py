"""Connect a KIS account for a user, from the shell: the app key and secret come from the environment.

    KIS_APP_KEY=... KIS_APP_SECRET=... python manage.py add_broker_account --user alice --cano 12345678 \\
        --product 01 --environment real [--base-url URL] [--hts-id ID] [--name NAME]

Never from the command line, where shell history and `ps` would keep them. The new account's id is the
last line printed; a bad value, an unknown user or a missing secret exits with status 2.
"""

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, no_translations

from trading.brokers.kis import KIS_BASE_URLS, base_url_error
from trading.models import BrokerAccount

KEY_VARIABLES = {"app_key": "KIS_APP_KEY", "app_secret": "KIS_APP_SECRET"}
BAD_USAGE = 2


def refuse(message: str) -> CommandError:
    return CommandError(message, returncode=BAD_USAGE)


class Command(BaseCommand):
    help = "Create a KIS broker account for a user (app key and secret from KIS_APP_KEY / KIS_APP_SECRET)."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="the owner's username")
        parser.add_argument("--cano", required=True, help="the account number's first 8 digits (CANO)")
        parser.add_argument(
            "--product", required=True, help="the account product code, 2 digits (01: stocks)"
        )
        parser.add_argument("--environment", required=True, choices=BrokerAccount.Environment.values)
        parser.add_argument("--base-url", help="default: the environment's KIS host")
        parser.add_argument("--hts-id", default="", help="the HTS id, the key of real-time fill notices")
        parser.add_argument("--name", help="display name (default: KIS <environment> <CANO>)")

    @no_translations  # the command's own messages are English: so are the model's
    def handle(self, *args, user, cano, product, environment, base_url, hts_id, name, **options):
        secrets = {field: os.environ.get(variable, "").strip() for field, variable in KEY_VARIABLES.items()}
        missing = [KEY_VARIABLES[field] for field, value in secrets.items() if not value]
        if missing:
            raise refuse(f"set {' and '.join(missing)} in the environment (never on the command line)")
        try:
            owner = get_user_model().objects.get(username=user)
        except get_user_model().DoesNotExist:
            raise refuse(f"there is no user {user!r}") from None
        base_url = base_url or KIS_BASE_URLS[environment]
        if error := base_url_error(base_url, allow_loopback=settings.KIS_ALLOW_LOOPBACK_BASE_URL):
            raise refuse(f"--base-url: {error}")
        account = BrokerAccount(
            owner=owner,
            display_name=name or f"KIS {environment} {cano}",
            account_number=cano,
            product_code=product,
            environment=environment,
            base_url=base_url,
            hts_id=hts_id,
            **secrets,
        )
        try:
            account.full_clean()
        except ValidationError as error:
            raise refuse(describe(error)) from None
        account.save()
        self.stdout.write(
            f"created account {account.number} ({environment}, {base_url}) for {owner.username}"
        )
        self.stdout.write(str(account.pk))


def describe(error: ValidationError) -> str:
    """A model's validation errors on one line, named by the options that set them."""
    options = {
        "account_number": "--cano",
        "product_code": "--product",
        "hts_id": "--hts-id",
        "display_name": "--name",
        "base_url": "--base-url",
        "__all__": "account",
    }
    return "; ".join(
        f"{options.get(field, field)}: {' '.join(messages)}" for field, messages in error.message_dict.items()
    )
