"""Create (or refresh) the demo user `demo`/`demo` with a paper account on the local KIS simulator."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from trading.models import BrokerAccount

DEMO_CANO = "50123456"


class Command(BaseCommand):
    help = "Create the demo user (demo/demo) and its paper account on the KIS simulator."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo")
        parser.add_argument("--base-url", default=settings.KIS_SIMULATOR_URL)

    def handle(self, *args, username, password, base_url, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            # The demo password is deliberately weak and known; set_password skips the validators.
            user.set_password(password)
            user.save(update_fields=["password"])
        account, _ = BrokerAccount.objects.update_or_create(
            owner=user,
            account_number=DEMO_CANO,
            product_code="01",
            defaults={
                "display_name": "모의투자 데모 계좌",
                "environment": BrokerAccount.Environment.PAPER,
                "base_url": base_url,
                "app_key": "PSdemo-simulator-app-key",
                "app_secret": "demo-simulator-app-secret",
                "hts_id": f"sim{DEMO_CANO}",
            },
        )
        self.stdout.write(f"demo user '{username}' ready with account {account.number} on {base_url}")
