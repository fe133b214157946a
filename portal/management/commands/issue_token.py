"""`manage.py issue_token USERNAME [--expires DAYS] [--read-only] [--name NAME]`: print a new token once."""

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from portal.api.services import api_token_issue
from portal.models import User


class Command(BaseCommand):
    help = "Issue a personal API token for USERNAME and print it. Only a hash is stored: save it now."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--expires",
            type=int,
            default=settings.PORTAL_API_TOKEN_DEFAULT_DAYS,
            metavar="DAYS",
            help=f"Days until it expires (default {settings.PORTAL_API_TOKEN_DEFAULT_DAYS}, "
            f"at most {settings.PORTAL_API_TOKEN_MAX_DAYS})",
        )
        parser.add_argument(
            "--read-only", action="store_true", help="Refuse every call that changes something"
        )
        parser.add_argument("--name", default="issued with manage.py issue_token", help="What will use it")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = User.objects.get(username=options["username"])
        except User.DoesNotExist:
            raise CommandError(f"No user {options['username']!r}.") from None
        try:
            issued = api_token_issue(
                user=user,
                name=options["name"],
                expires_in_days=options["expires"],
                read_only=options["read_only"],
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        # The token alone on stdout, so `TOKEN=$(manage.py issue_token alice)` works; the rest on stderr.
        self.stdout.write(issued.raw)
        access = "read-only" if issued.token.read_only else "read-write"
        self.stderr.write(
            f"Token {issued.token.prefix}… for {user.username} ({access}), expires "
            f"{issued.token.expires_at:%Y-%m-%d %H:%M} UTC. It is not shown again."
        )
