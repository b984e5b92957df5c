"""Migrates the database and creates the users named in THROTTLE_DJANGO_USERS
("alice:alice-pw,bob:bob-pw"); prints "username pk" per user."""
import os

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "migrate and create the test users"

    def handle(self, *args, **options):
        call_command("migrate", verbosity=0, interactive=False)
        User = get_user_model()
        spec = os.environ.get("THROTTLE_DJANGO_USERS", "")
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, password = item.partition(":")
            user, _ = User.objects.get_or_create(username=name)
            user.set_password(password)
            user.save()
            self.stdout.write(f"{name} {user.pk}")
