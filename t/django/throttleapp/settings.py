"""Settings of the test application: everything variable comes from the environment, which
t/lib/Throttle/Django.pm sets (see t/README.md, "Django application").

THROTTLE_DJANGO_DIR     data directory (required): db.sqlite3, cache/ (DRF's throttle counts)
THROTTLE_DJANGO_SECRET  SECRET_KEY (default: a fixed test value)
THROTTLE_DJANGO_USERS   "alice:alice-pw,bob:bob-pw": users the harness_setup command creates
THROTTLE_DJANGO_RATE_ANON / _USER / _LOGIN   DRF throttle rates (default 5/min, 10/min, 3/min)
"""
import os
import sys
from pathlib import Path

DATA_DIR = Path(os.environ["THROTTLE_DJANGO_DIR"])
BASE_DIR = Path(__file__).resolve().parent.parent  # t/django
REPO_DIR = BASE_DIR.parent.parent

# The identity view is the one shipped in conf.examples/django/: the tests use that file.
sys.path.insert(0, str(REPO_DIR / "conf.examples" / "django"))

SECRET_KEY = os.environ.get("THROTTLE_DJANGO_SECRET", "test-only-not-secret-0123456789abcdef")
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "throttleapp",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "throttleapp.urls"
WSGI_APPLICATION = "throttleapp.wsgi.application"
APPEND_SLASH = False

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "db.sqlite3"),
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Sessions in the database (Django's default), cookie "sessionid".
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# DRF keeps its throttle history in the default cache. The file cache is shared by every
# gunicorn worker (LocMemCache would count per process).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "cache"),
        "OPTIONS": {"MAX_ENTRIES": 100000},
    }
}

# Cheap hashing: users are created at every start.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

USE_TZ = True
TIME_ZONE = "UTC"

REST_FRAMEWORK = {
    # Session authentication without the CSRF check on writes (a test-only simplification:
    # the tests post without a CSRF token; a real application keeps DRF's
    # SessionAuthentication and its CSRF check).
    "DEFAULT_AUTHENTICATION_CLASSES": ["throttleapp.auth.SessionAuthenticationNoCsrf"],
    # DRF's default renderers (JSON and the browsable API): responses carry Vary: Accept.
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("THROTTLE_DJANGO_RATE_ANON", "5/min"),
        "user": os.environ.get("THROTTLE_DJANGO_RATE_USER", "10/min"),
        "login": os.environ.get("THROTTLE_DJANGO_RATE_LOGIN", "3/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
