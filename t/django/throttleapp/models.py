from django.conf import settings
from django.db import models


class UserData(models.Model):
    """A user's data: the per-user read view shows its counter, the write view increments it."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    counter = models.IntegerField(default=0)
