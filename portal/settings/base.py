"""Settings for every environment, read from the environment with defaults that need no setup.

The defaults are for `make run` on a laptop: a SQLite file database and a Redis on a local port
that `make run` starts itself. `portal.settings.production` removes every default that is unsafe.
"""

from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("PORTAL_DEBUG", default=True)
SECRET_KEY = env.str(
    "PORTAL_SECRET_KEY", default="dev-only-insecure-key-change-me-0123456789abcdefghijklmnop"
)
ALLOWED_HOSTS = env.list("PORTAL_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("PORTAL_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "axes",
    "csp",
    "portal",
    "pools",
    "quotas",
]

# When the SSL redirect is on (production), probes and Prometheus still reach these over plain HTTP:
# they address a pod by IP inside the cluster, and redirecting them would fail every probe and
# scrape. Nothing here is for browsers (/metrics wants its bearer token).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^livez$", r"^metrics$"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "portal.security.PermissionsPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "portal.sessions.AuthenticationMiddleware",  # Django's, the user read with the session
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes requires: it turns a lockout flagged during authentication into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
AUTH_USER_MODEL = "portal.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'portal.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets web, worker and beat share the file; IMMEDIATE takes the write lock at BEGIN so two
    # concurrent approvals serialise instead of failing half-way with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
            "transaction_mode": "IMMEDIATE",
        }
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env.bool(
    "PORTAL_DB_PREPARED_STATEMENTS", default=True
):
    # Server-side binding lets psycopg prepare a statement it has run twice on a connection, so the
    # hot reads skip PostgreSQL's planner: planning the request list's join cost more than running it.
    # Turn off behind a transaction-pooling PgBouncer older than 1.21 (it cannot keep prepared
    # statements per client).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"server_side_binding": True, "prepare_threshold": 2}
    )
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Persistent connections (production defaults to 60 s): opening a PostgreSQL connection per request costs
# more than most of the requests themselves. Health checks drop a connection the server has closed.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("PORTAL_DB_CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's, with a health check that costs no round trip when the server has said nothing.
    DATABASES["default"]["ENGINE"] = "portal.postgresql"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Set by production settings only: whitenoise serves collected files there, runserver serves from the apps.
STATIC_ROOT = None

SESSION_ENGINE = "portal.sessions"  # the database store; one compiled read brings the session and its user
SESSION_COOKIE_AGE = env.int("PORTAL_SESSION_SECONDS", default=8 * 3600)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie

# --- REST API (/api/v1/, docs/api.md) ------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header turns "not logged in" into a 401 instead of a 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "portal.api.permissions.TokenAllowsMethod",
        "portal.api.permissions.AuditorsReadOnly",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # DRF's JSON, written by orjson (portal/api/renderers.py).
    "DEFAULT_RENDERER_CLASSES": ["portal.api.renderers.FastJSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.PagePagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        # django-filter's backend, skipped for requests that filter nothing (portal/api/filters.py).
        "portal.api.filters.FilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "EXCEPTION_HANDLER": "portal.api.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "portal.api.schema.PortalAutoSchema",
    # A courtesy limit per token that keeps one runaway script from crowding out everyone else; it is
    # counted per process in the local cache, so it is not a security boundary.
    "DEFAULT_THROTTLE_CLASSES": ["portal.api.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"token": env.str("PORTAL_API_TOKEN_RATE", default="600/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "GPU Capacity Portal API",
    "DESCRIPTION": (
        "Request GPU capacity, approve it, follow grants and serving deployments, read pool utilisation. "
        "Every error has the same JSON shape: {code, message, fields}. See docs/api.md."
    ),
    "VERSION": "1.0.0",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "PoolClassEnum": "pools.models.PoolClass",
        "RequestStateEnum": "quotas.states.RequestState",
        "PrecisionEnum": "quotas.models.Precision",
    },
}
# Personal API tokens: lifetime when none is given, and the longest allowed.
PORTAL_API_TOKEN_DEFAULT_DAYS = env.int("PORTAL_API_TOKEN_DEFAULT_DAYS", default=90)
PORTAL_API_TOKEN_MAX_DAYS = env.int("PORTAL_API_TOKEN_MAX_DAYS", default=365)
# How long a successful POST is remembered under its Idempotency-Key.
PORTAL_API_IDEMPOTENCY_HOURS = env.int("PORTAL_API_IDEMPOTENCY_HOURS", default=24)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("PORTAL_LOG_LEVEL", default="INFO")},
    "loggers": {
        "kubernetes": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}

# Cluster credentials are encrypted with these Fernet keys (comma-separated, newest first, so keys
# can be rotated). Without one, a key is derived from SECRET_KEY: fine for a laptop, refused in production.
PORTAL_CREDENTIALS_KEYS = env.list("PORTAL_CREDENTIALS_KEYS", default=[])

# --- Provisioning (docs/provisioning.md) ---------------------------------------------------------
PORTAL_PROVISIONING = {
    # Serving images must start with one of these prefixes.
    "IMAGE_REGISTRY_ALLOWLIST": env.list(
        "PORTAL_IMAGE_REGISTRY_ALLOWLIST", default=["registry.example.com/llm/"]
    ),
    # Grant namespace quota beside the GPUs, unless the request names CPU or memory: a base number of
    # pods plus one per GPU, and CPU and memory per GPU.
    "QUOTA_PODS_BASE": env.int("PORTAL_QUOTA_PODS_BASE", default=20),
    "QUOTA_CPU_PER_GPU": env.int("PORTAL_QUOTA_CPU_PER_GPU", default=8),
    "QUOTA_MEMORY_GIB_PER_GPU": env.int("PORTAL_QUOTA_MEMORY_GIB_PER_GPU", default=64),
    # LimitRange defaults for containers that name no CPU or memory.
    "DEFAULT_REQUEST": {"cpu": "500m", "memory": "1Gi"},
    "DEFAULT_LIMIT": {"memory": "4Gi"},
    "POD_SECURITY": {"enforce": "baseline", "warn": "restricted", "audit": "restricted"},
    "TEAM_CLUSTER_ROLE": env.str("PORTAL_TEAM_CLUSTER_ROLE", default="edit"),
    # Serving deployments: time a model may take to load before its startup probe gives up, and the
    # CPU and memory each GPU's replica share gets.
    "MODEL_LOAD_BUDGET_SECONDS": env.int("PORTAL_MODEL_LOAD_BUDGET_SECONDS", default=900),
    "SERVING_CPU_MILLIS_PER_GPU": 4000,
    "SERVING_MEMORY_GIB_PER_GPU": 32,
    "SERVING_PORT": 8000,
    "SERVING_HEALTH_PATH": "/health",
    # The local testbed simulates model loading (its kwok Stages read an annotation the portal sets):
    # a serving pod becomes Ready after weights / SIMULATED_LOAD_GIB_PER_SECOND + SIMULATED_LOAD_BASE
    # seconds, from the request's parameters and precision. `make run` turns it on for the testbed;
    # on a real cluster leave it off: models load for real and the annotation means nothing.
    "SIMULATED_MODEL_LOAD": env.bool("PORTAL_SIMULATED_MODEL_LOAD", default=False),
    "SIMULATED_LOAD_GIB_PER_SECOND": env.float("PORTAL_SIMULATED_LOAD_GIB_PER_SECOND", default=2.0),
    "SIMULATED_LOAD_BASE_SECONDS": env.int("PORTAL_SIMULATED_LOAD_BASE_SECONDS", default=5),
    # Every object is re-applied this often (drift repair); the sweeper re-queues lagging work this often.
    "RESYNC_SECONDS": env.int("PORTAL_RESYNC_SECONDS", default=300),
    "SWEEP_SECONDS": env.int("PORTAL_SWEEP_SECONDS", default=30),
    # Retries of a reconcile whose cluster does not answer: exponential backoff with full jitter.
    "RETRY_BACKOFF_MAX_SECONDS": env.int("PORTAL_RETRY_BACKOFF_MAX_SECONDS", default=120),
    "MAX_RETRIES": env.int("PORTAL_RECONCILE_MAX_RETRIES", default=12),
}
# Approval checks, from the collector's live inventory, that the pool's selector matches Ready, tainted
# nodes of its cluster, or a node group that can make them (docs/provisioning.md).
PORTAL_PREFLIGHT = env.bool("PORTAL_PREFLIGHT", default=True)

# --- Scaling out (docs/utilisation.md "Scaling out", README "Scaling out") ----------------------------
# Collector replicas share the clusters through one lease per cluster in the database: a replica
# renews its leases every RENEW seconds and a lease not renewed for LEASE seconds may be taken by
# another replica, so a dead replica's clusters are watched again within LEASE + RENEW seconds.
PORTAL_COLLECTOR_LEASE_SECONDS = env.float("PORTAL_COLLECTOR_LEASE_SECONDS", default=15.0)
PORTAL_COLLECTOR_RENEW_SECONDS = env.float("PORTAL_COLLECTOR_RENEW_SECONDS", default=5.0)
# Cluster-bound tasks (grant and serving reconciles, inventory sync, policies apply) go to the queue
# `clusters-<cluster id mod N>` when N > 0, each consumed by its own worker pool, so one slow or
# unreachable cluster holds up only its shard; 0 keeps every task on the default queue ("celery").
PORTAL_CLUSTER_QUEUE_SHARDS = env.int("PORTAL_CLUSTER_QUEUE_SHARDS", default=0)
# --- Elastic pools (docs/elastic.md) ------------------------------------------------------------
# GPU resources per node of the instance types node groups name, for the types no node has shown
# yet (a node's own allocatable wins once one exists). The defaults are public cloud GPU shapes.
_GPU = "nvidia.com/gpu"
PORTAL_INSTANCE_TYPES = env.json(
    "PORTAL_INSTANCE_TYPES",
    default={
        **{t: {_GPU: 8} for t in ("p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge", "p4d.24xlarge")},
        **{t: {_GPU: 8} for t in ("p4de.24xlarge", "g5.48xlarge", "g6.48xlarge", "g6e.48xlarge")},
        **{t: {_GPU: 4} for t in ("g5.12xlarge", "g5.24xlarge", "g6.12xlarge", "g6.24xlarge")},
        **{t: {_GPU: 4} for t in ("g6e.12xlarge", "g6e.24xlarge")},
        **{t: {_GPU: 1} for t in ("g5.xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge", "g5.16xlarge")},
        **{t: {_GPU: 1} for t in ("g6.xlarge", "g6.2xlarge", "g6.4xlarge", "g6.8xlarge", "g6.16xlarge")},
        **{t: {_GPU: 1} for t in ("g6e.xlarge", "g6e.2xlarge", "g6e.4xlarge", "g6e.8xlarge")},
        **{t: {_GPU: 8} for t in ("a2-highgpu-8g", "a2-ultragpu-8g", "a3-highgpu-8g", "a3-megagpu-8g")},
        **{t: {_GPU: 1} for t in ("a2-highgpu-1g", "g2-standard-4", "g2-standard-8")},
    },
)
# Placeholder pods holding interactive pools' warm headroom (pools/headroom.py): their namespace on
# each cluster, their image (a pause image; it must pass the image allowlist), and the PriorityClass
# below every workload class.
PORTAL_WARM_HEADROOM = {
    "NAMESPACE": env.str("PORTAL_WARM_NAMESPACE", default="gpu-portal-warm-headroom"),
    "IMAGE": env.str(
        "PORTAL_WARM_IMAGE", default=f"{PORTAL_PROVISIONING['IMAGE_REGISTRY_ALLOWLIST'][0]}pause:3.10"
    ),
    "PRIORITY_CLASS": env.str("PORTAL_WARM_PRIORITY_CLASS", default="gpu-portal-warm-headroom"),
}

# --- Celery -------------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6390/0")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = TIME_ZONE
# A worker that dies mid-task (SIGKILL, OOM) must not lose the task: ack only after it ran, and let
# Redis redeliver it. The visibility timeout has to exceed the hard time limit or a slow task would be
# delivered twice while still running.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 120
CELERY_TASK_TIME_LIMIT = 150
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
# A broker outage must not hang a web request that queues work: give up publishing after about a
# second; the provisioning sweeper queues whatever was lost.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.3,
    "interval_max": 0.5,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Cluster-bound tasks to their cluster's shard queue (PORTAL_CLUSTER_QUEUE_SHARDS); the rest, the
# beat's periodic tasks included, to the default queue.
CELERY_TASK_ROUTES = ("pools.queues.route_task",)
# The whole beat schedule, in one place.
CELERY_BEAT_SCHEDULE = {
    "expire-grants": {"task": "quotas.tasks.grants_expire_due", "schedule": timedelta(seconds=60)},
    # Inventory: pools appear, grow, shrink or vanish as node groups change.
    "sync-inventory": {"task": "pools.tasks.clusters_sync_inventory", "schedule": timedelta(minutes=10)},
    "provisioning-sweep": {
        "task": "quotas.tasks.provisioning_sweep",
        "schedule": timedelta(seconds=PORTAL_PROVISIONING["SWEEP_SECONDS"]),
    },
    # Warm headroom: re-apply every interactive elastic pool's placeholders (drift healed).
    "warm-headroom-sweep": {
        "task": "pools.tasks.warm_headroom_sweep",
        "schedule": timedelta(seconds=PORTAL_PROVISIONING["SWEEP_SECONDS"]),
    },
    # Utilisation history: roll samples up into 5-minute and hourly averages, drop expired rows.
    "utilisation-history-compact": {
        "task": "pools.utilisation.tasks.utilisation_history_compact",
        "schedule": timedelta(minutes=5),
    },
    # Kueue queue history (docs/queueing.md): the same tiers and retention as utilisation.
    "queue-history-compact": {
        "task": "pools.utilisation.tasks.queue_history_compact",
        "schedule": timedelta(minutes=5),
    },
    # Idempotency-Key records older than PORTAL_API_IDEMPOTENCY_HOURS are forgotten.
    "idempotency-records-purge": {
        "task": "portal.tasks.idempotency_records_purge",
        "schedule": timedelta(hours=1),
    },
    # Expired sign-in sessions (Django refuses them when read but never deletes them).
    "sessions-purge": {"task": "portal.tasks.sessions_purge", "schedule": timedelta(hours=1)},
}

# --- Portal rules -------------------------------------------------------------------------------
# Requests that may be approved without a human, per pool class.
PORTAL_AUTO_APPROVAL = env.json(
    "PORTAL_AUTO_APPROVAL",
    default={"experimentation": {"max_gpus": 2, "max_days": 7}},
)
# Longest validity window a request may ask for.
PORTAL_MAX_REQUEST_DAYS = env.int("PORTAL_MAX_REQUEST_DAYS", default=180)
# Pods the conformance report accepts on GPU nodes without a GPU request: the daemons GPUs need.
# `namespaces`: any pod there; `daemonset_namespaces`: only DaemonSet pods (kube-proxy, CNI);
# `labels`: pods whose label has one of the listed values.
_GPU_DAEMONS = [
    "nvidia-device-plugin-daemonset",
    "nvidia-device-plugin",
    "gpu-feature-discovery",
    "nvidia-dcgm-exporter",
    "dcgm-exporter",
    "nvidia-driver-daemonset",
    "nvidia-container-toolkit-daemonset",
    "nvidia-mig-manager",
    "nvidia-operator-validator",
]
PORTAL_GPU_NODE_ALLOWLIST = env.json(
    "PORTAL_GPU_NODE_ALLOWLIST",
    default={
        "namespaces": ["gpu-operator", "nvidia-gpu-operator", "nvidia-device-plugin", "dcgm-exporter"],
        "daemonset_namespaces": ["kube-system"],
        "labels": {"app.kubernetes.io/name": _GPU_DAEMONS, "app": _GPU_DAEMONS},
    },
)
DEMO_PASSWORD = env.str("DEMO_PASSWORD", default="demo")
# Bearer token Prometheus must send to /metrics; empty leaves /metrics open, for a network where
# only the monitoring system reaches it (docs/utilisation.md).
PORTAL_METRICS_TOKEN = env.str("PORTAL_METRICS_TOKEN", default="")

# --- Browser UI (docs/ui.md) ----------------------------------------------------------------------
TEMPLATES[0]["OPTIONS"]["context_processors"].append("portal.context_processors.navigation")
# An htmx request whose CSRF token went stale (session ended, signed in again in another tab)
# reloads its page or goes to the login form, instead of swapping Django's 403 page into the page.
CSRF_FAILURE_VIEW = "portal.views.csrf_failure"

# --- Sign-in: single sign-on, local accounts, password guessing (docs/ui.md) --------------------------
# The axes backend comes first: it refuses a locked-out account or address before any password is checked.
# The OIDC backend answers only while PORTAL_OIDC_ENABLED is on; local accounts (ModelBackend) always work.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "portal.sso.PortalOIDCBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PORTAL_OIDC_ENABLED = env.bool("PORTAL_OIDC_ENABLED", default=False)
# How the identity provider's groups claim maps to the portal (portal/sso.py). {team} stands for a team slug.
# An empty claim name turns the mapping off: memberships and roles are then kept in the portal by hand.
PORTAL_OIDC_GROUPS = {
    "CLAIM": env.str("PORTAL_OIDC_GROUPS_CLAIM", default="groups"),
    "TEAM_GROUP": env.str("PORTAL_OIDC_TEAM_GROUP", default="/teams/{team}"),
    "LEAD_GROUP": env.str("PORTAL_OIDC_LEAD_GROUP", default="/teams/{team}/leads"),
    "ADMIN_GROUPS": env.list("PORTAL_OIDC_ADMIN_GROUPS", default=["/platform-admins"]),
    "AUDITOR_GROUPS": env.list("PORTAL_OIDC_AUDITOR_GROUPS", default=["/auditors"]),
}
OIDC_USERNAME_ALGO = "portal.oidc.username_from_email"
LOGIN_REDIRECT_URL_FAILURE = "/login/"  # the library redirects to it as is, unresolved
OIDC_USE_PKCE = True
OIDC_TIMEOUT = env.int("PORTAL_OIDC_TIMEOUT_SECONDS", default=10)
if PORTAL_OIDC_ENABLED:
    OIDC_RP_CLIENT_ID = env.str("PORTAL_OIDC_CLIENT_ID")
    OIDC_RP_CLIENT_SECRET = env.str("PORTAL_OIDC_CLIENT_SECRET")
    OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("PORTAL_OIDC_AUTHORIZATION_ENDPOINT")
    OIDC_OP_TOKEN_ENDPOINT = env.str("PORTAL_OIDC_TOKEN_ENDPOINT")
    OIDC_OP_USER_ENDPOINT = env.str("PORTAL_OIDC_USER_ENDPOINT")
    OIDC_OP_JWKS_ENDPOINT = env.str("PORTAL_OIDC_JWKS_ENDPOINT", default="") or None
    OIDC_RP_SIGN_ALGO = env.str("PORTAL_OIDC_SIGN_ALGO", default="RS256")
    OIDC_RP_SCOPES = env.str("PORTAL_OIDC_SCOPES", default="openid email profile")
    OIDC_CREATE_USER = env.bool("PORTAL_OIDC_CREATE_USER", default=True)
    if OIDC_RP_SIGN_ALGO.startswith(("RS", "ES")) and not OIDC_OP_JWKS_ENDPOINT:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"PORTAL_OIDC_SIGN_ALGO={OIDC_RP_SIGN_ALGO} needs PORTAL_OIDC_JWKS_ENDPOINT (the provider's keys)"
        )

# Password guessing (django-axes, portal/security.py): this many failures for one account or from one
# address within the lockout window lock sign-in for it until the window has passed since the last failure.
AXES_FAILURE_LIMIT = env.int("PORTAL_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("PORTAL_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
# Attempts during a lockout are refused without counting, so the time the page states stays true.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "portal.security.lockout_response"
AXES_CLIENT_IP_CALLABLE = "portal.security.client_ip"
AXES_VERBOSE = False
# Reverse proxies in front of the portal that append to X-Forwarded-For (production defaults to 1). With 0
# the header is ignored: a client could write anything in it.
PORTAL_TRUSTED_PROXIES = env.int("PORTAL_TRUSTED_PROXIES", default=0)

# --- Response headers (portal/security.py, docs/ui.md "Content-Security-Policy") --------------------------
# Everything is served by the portal itself, so scripts and styles come from 'self' only: no inline script,
# style or event handler anywhere (htmx runs with allowEval off and without its injected indicator styles).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
PORTAL_PERMISSIONS_POLICY = env.str(
    "PORTAL_PERMISSIONS_POLICY",
    default="accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), "
    "payment=(), usb=()",
)
