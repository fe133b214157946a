"""Settings for the test suite: the same as base, against the PostgreSQL and Redis `make test` starts."""

from portal.settings.base import *  # noqa: F403
from portal.settings.base import env

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed: tests create many users
PORTAL_CREDENTIALS_KEYS = env.list(
    "PORTAL_CREDENTIALS_KEYS", default=["ECeU29ZqdPsixSZ-80aiWQ9wB5XP6aQPx8NI6zX5hOs="]
)
