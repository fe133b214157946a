import os
import subprocess
import sys

import pytest
from django.db import connection

from pools.models import Cluster
from tests import factories

SECRET = "kubeconfig-with-a-very-secret-token-abc123"


def test_cluster_credentials_are_encrypted_at_rest(db: None) -> None:
    cluster = factories.cluster("secret")
    cluster.kubeconfig = SECRET
    cluster.token = "bearer-" + SECRET
    cluster.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT kubeconfig, token FROM pools_cluster WHERE id = %s", [cluster.pk])
        raw_kubeconfig, raw_token = cursor.fetchone()
    assert SECRET not in raw_kubeconfig and SECRET not in raw_token
    assert raw_kubeconfig.startswith("gAAAA")  # a Fernet token
    reloaded = Cluster.objects.get(pk=cluster.pk)
    assert reloaded.kubeconfig == SECRET
    assert SECRET not in repr(reloaded) and SECRET not in str(reloaded)


def test_admin_never_renders_stored_credentials(admin_client: object, db: None) -> None:
    cluster = factories.cluster("secret")
    cluster.kubeconfig = SECRET
    cluster.token = SECRET
    cluster.save()
    page = admin_client.get(f"/admin/pools/cluster/{cluster.pk}/change/")  # type: ignore[attr-defined]
    assert page.status_code == 200
    assert SECRET not in page.content.decode()


def _run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Start from the real environment minus everything the portal reads, so only `env` configures it.
    ours = ("PORTAL_", "DATABASE_URL", "CELERY_", "DJANGO_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    base.update(env, DJANGO_SETTINGS_MODULE="portal.settings.production")
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        env=base,
        check=False,
        timeout=120,
    )


GOOD = {
    "PORTAL_SECRET_KEY": "x" * 20 + "Zq8!kP2@vN5#mL9$wR4%tY7^uI1&oE6*",
    "PORTAL_ALLOWED_HOSTS": "portal.example.com",
    "DATABASE_URL": "postgres://portal@db.example.com/portal",
    "PORTAL_CREDENTIALS_KEYS": "ECeU29ZqdPsixSZ-80aiWQ9wB5XP6aQPx8NI6zX5hOs=",
    "CELERY_BROKER_URL": "redis://redis.example.com:6379/0",
    "PORTAL_METRICS_TOKEN": "metrics-bearer-token",
}


def test_production_settings_pass_check_deploy() -> None:
    result = _run_check(GOOD)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_production_refuses_to_start_without(missing: str) -> None:
    env = {k: v for k, v in GOOD.items() if k != missing}
    result = _run_check(env)
    assert result.returncode != 0
    assert f"{missing} must be set in production" in result.stderr


def test_production_refuses_sqlite() -> None:
    result = _run_check({**GOOD, "DATABASE_URL": "sqlite:////tmp/x.sqlite3"})
    assert result.returncode != 0
    assert "must point at PostgreSQL" in result.stderr
