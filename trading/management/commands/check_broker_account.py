"""Check a broker account step by step, as the application will use it; nothing is ordered.

    python manage.py check_broker_account ID

One line per step: ok, or the broker's answer in plain words. Exit status 0 only when every step passed.
"""

from django.core.management.base import BaseCommand, CommandError

from trading.brokers.account_check import check_account
from trading.models import BrokerAccount


class Command(BaseCommand):
    help = "Check a broker account: token, balance, real-time approval, subscription and fill notices."

    def add_arguments(self, parser):
        parser.add_argument("account_id", type=int)

    def handle(self, *args, account_id, **options):
        try:
            account = BrokerAccount.objects.get(pk=account_id)
        except BrokerAccount.DoesNotExist:
            raise CommandError(f"there is no broker account {account_id}", returncode=2) from None
        self.stdout.write(
            f"checking account {account.pk}, {account.number} ({account.environment}) at {account.base_url}"
        )
        failed = False
        for step in check_account(account):
            outcome = "ok" + (f" ({step.detail})" if step.detail else "") if step.ok else step.detail
            self.stdout.write(f"{step.name}: {outcome}")
            failed = failed or not step.ok
        if failed:
            raise CommandError("the account is not ready: see the failed step above")
        self.stdout.write("every step passed")
