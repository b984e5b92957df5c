from django.apps import AppConfig


class ThrottleAppConfig(AppConfig):
    name = "throttleapp"
    default_auto_field = "django.db.models.AutoField"
