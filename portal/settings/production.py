"""Production settings: no embedded defaults for anything secret or environment-specific.

Start-up fails with a message naming the missing variable rather than running insecurely.
"""

from django.core.exceptions import ImproperlyConfigured

from portal.settings.base import *  # noqa: F403
from portal.settings.base import BASE_DIR, DATABASES, env


def _required(name: str) -> str:
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(f"{name} must be set in production")
    return value


DEBUG = False
SECRET_KEY = _required("PORTAL_SECRET_KEY")
ALLOWED_HOSTS = [h for h in _required("PORTAL_ALLOWED_HOSTS").split(",") if h]
_required("DATABASE_URL")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL in production, not SQLite")
DATABASES["default"]["CONN_MAX_AGE"] = env.int("PORTAL_DB_CONN_MAX_AGE", default=60)
PORTAL_CREDENTIALS_KEYS = [k for k in _required("PORTAL_CREDENTIALS_KEYS").split(",") if k]
CELERY_BROKER_URL = _required("CELERY_BROKER_URL")
# /metrics names teams and namespaces: in production it always wants a bearer token.
PORTAL_METRICS_TOKEN = _required("PORTAL_METRICS_TOKEN")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The same proxy that sets X-Forwarded-Proto appends the client's address to X-Forwarded-For: sign-in
# throttling per address counts that address, not the proxy's.
PORTAL_TRUSTED_PROXIES = env.int("PORTAL_TRUSTED_PROXIES", default=1)
SECURE_SSL_REDIRECT = env.bool("PORTAL_SSL_REDIRECT", default=True)

SECURE_HSTS_SECONDS = env.int("PORTAL_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"
STATIC_ROOT = env.str("PORTAL_STATIC_ROOT", default=str(BASE_DIR / "var" / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
