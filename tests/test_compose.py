"""docker-compose.yml, the single-machine production-like stack, checked without a Docker engine.

Exercised here: the file's structure against the settings module and the Dockerfile — every
variable portal.settings.production requires is given to every portal service (and the secrets
among them must come from .env, or compose stops), `check --deploy` passes with exactly that
environment, the database and broker URLs point at the stack's own services, every command exists
(manage.py commands, the Celery app), dependencies form a sane start order (health-gated services
have healthchecks, the migration completes first), and the web's healthcheck passes Django's
production security middleware.
Not exercised: building the image, starting any container, the PostgreSQL and Redis images
themselves, volumes, and the published port.
"""

import os
import re
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from django.core.management import get_commands
from django.test import Client, override_settings
from django.urls import reverse

from pools.queues import DEFAULT_QUEUE, shard_queues
from tests.chart.dockerfile import dockerfile
from tests.chart.support import production_required_env
from tests.testbed import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
STAND_INS = {
    "POSTGRES_PASSWORD": "pg-password",
    "PORTAL_SECRET_KEY": "c" * 20 + "Zq8!kP2@vN5#mL9$wR4%tY7^uI1&oE6*",
    "PORTAL_CREDENTIALS_KEYS": "ECeU29ZqdPsixSZ-80aiWQ9wB5XP6aQPx8NI6zX5hOs=",
    "PORTAL_METRICS_TOKEN": "metrics-token",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML's safe loader resolves the `<<: *portal` merge keys as compose does.
    return yaml.safe_load(COMPOSE.read_text())


def portal_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


def interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's variable interpolation, with `shell` as the environment (.env included)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in shell and (shell[name] or not (op or "").startswith(":")):
            return shell[name]
        if op in (":?", "?"):
            raise LookupError(f"{name}: {arg}")
        return arg if op in (":-", "-") else ""

    return INTERPOLATION.sub(one, value)


def required_variables(compose: dict[str, Any]) -> set[str]:
    found = INTERPOLATION.finditer(COMPOSE.read_text())
    return {m["name"] for m in found if m["op"] in (":?", "?")}


def test_the_stack_has_the_portal_processes(compose: dict[str, Any]) -> None:
    shards = {f"worker-clusters-{i}" for i in range(_shard_count(compose))}
    assert set(portal_services(compose)) == {"migrate", "web", "worker", "beat", "collector"} | shards
    assert {"postgres", "redis"} <= set(compose["services"])
    # Collector replicas share the clusters through leases: more than one is safe, and survives one.
    assert compose["services"]["collector"]["deploy"]["replicas"] >= 2


def _shard_count(compose: dict[str, Any]) -> int:
    (count,) = {
        int(s["environment"]["PORTAL_CLUSTER_QUEUE_SHARDS"]) for s in portal_services(compose).values()
    }
    return count


def test_every_queue_the_router_uses_has_its_own_workers(compose: dict[str, Any]) -> None:
    """The default queue and each shard queue PORTAL_CLUSTER_QUEUE_SHARDS routes to are consumed by
    a worker service of their own, and by no other."""
    consumed = {}
    for name, service in portal_services(compose).items():
        command = service.get("command", [])
        if command[:4] == ["celery", "-A", "portal", "worker"]:
            consumed[name] = command[command.index("--queues") + 1].split(",")
    assert all(len(queues) == 1 for queues in consumed.values()), consumed
    with override_settings(PORTAL_CLUSTER_QUEUE_SHARDS=_shard_count(compose)):
        expected = [DEFAULT_QUEUE, *shard_queues()]
    assert sorted(q for queues in consumed.values() for q in queues) == sorted(expected)
    assert consumed["worker"] == [DEFAULT_QUEUE]


def test_every_portal_service_gets_what_production_requires(compose: dict[str, Any]) -> None:
    for name, service in portal_services(compose).items():
        missing = production_required_env() - set(service["environment"])
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_secrets_must_come_from_env_and_the_readme_names_them(compose: dict[str, Any]) -> None:
    required = required_variables(compose)
    assert required == set(STAND_INS), required
    # Without one of them compose itself stops, naming it.
    env = portal_services(compose)["web"]["environment"]
    for name in required - {"POSTGRES_PASSWORD"}:
        with pytest.raises(LookupError, match=name):
            interpolate(env[name], {k: v for k, v in STAND_INS.items() if k != name})
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Production-like stack", 1)[1].split("\n## ", 1)[0]
    for name in required:
        assert f"`{name}`" in section, f"README's production-like stack section does not name {name}"


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(str(v), STAND_INS) for k, v in service["environment"].items()}


def test_production_settings_pass_check_deploy_with_the_compose_environment(compose: dict[str, Any]) -> None:
    env = _service_env(portal_services(compose)["web"])
    ours = ("PORTAL_", "DATABASE_URL", "CELERY_", "DJANGO_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    base.update(env, DJANGO_SETTINGS_MODULE=dockerfile().env["DJANGO_SETTINGS_MODULE"])
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        env=base,
        cwd=REPO_ROOT,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_urls_point_at_the_stacks_own_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    for name, service in portal_services(compose).items():
        env = _service_env(service)
        db = urlsplit(env["DATABASE_URL"])
        assert db.scheme in ("postgres", "postgresql"), name  # production refuses SQLite
        assert (db.hostname, db.port, db.path.lstrip("/")) == ("postgres", 5432, postgres["POSTGRES_DB"]), (
            name
        )
        assert (db.username, db.password) == (postgres["POSTGRES_USER"], STAND_INS["POSTGRES_PASSWORD"]), name
        assert interpolate(postgres["POSTGRES_PASSWORD"], STAND_INS) == db.password
        broker = urlsplit(env["CELERY_BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379), name
    # Queued reconciles survive a Redis restart.
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]


def test_every_command_exists(compose: dict[str, Any]) -> None:
    import portal

    commands = get_commands()
    image = dockerfile()
    for name, service in portal_services(compose).items():
        command = service.get("command", image.cmd)
        if command[:2] == ["python", "manage.py"]:
            assert command[2] in commands, f"{name}: no manage.py command {command[2]}"
        elif command[0] == "celery":
            assert command[1:3] == ["-A", "portal"] and portal.celery_app.main == "portal", name
            assert command[3] in ("worker", "beat"), name
        else:
            assert name == "web" and command == image.cmd, name  # the image's gunicorn
    beat = compose["services"]["beat"]["command"]
    assert beat[beat.index("--schedule") + 1].startswith("/tmp/")  # the app user cannot write /app
    (published,) = compose["services"]["web"]["ports"]
    assert published.split(":")[-1] == str(image.port)


def test_start_order_is_sane(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def dependencies(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on", {})
        return (
            {d: "service_started" for d in deps}
            if isinstance(deps, list)
            else {d: c["condition"] for d, c in deps.items()}
        )

    def reaches(name: str, target: str, condition: str) -> bool:
        deps = dependencies(name)
        return deps.get(target) == condition or any(reaches(d, target, condition) for d in deps)

    for name in services:
        for dep, condition in dependencies(name).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits for {dep}'s health"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot and must not restart"
    for name in portal_services(compose):
        assert reaches(name, "postgres", "service_healthy") and reaches(name, "redis", "service_healthy"), (
            name
        )
        if name != "migrate":
            assert reaches(name, "migrate", "service_completed_successfully"), name
    for name, service in services.items():
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_the_web_healthcheck_passes_the_production_middleware(
    compose: dict[str, Any], db: None, settings: Any
) -> None:
    web = compose["services"]["web"]
    (script,) = [part for part in web["healthcheck"]["test"] if "urlopen" in part]
    url = re.search(r"'(http://[^']+)'", script)[1]  # type: ignore[index]
    parts = urlsplit(url)
    assert parts.path == reverse("healthz") and parts.port == dockerfile().port
    headers = dict(re.findall(r"'([\w-]+)': '([^']*)'", script))
    settings.ALLOWED_HOSTS = _service_env(web)["PORTAL_ALLOWED_HOSTS"].split(",")
    settings.SECURE_SSL_REDIRECT = True  # production's default
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = Client().get(parts.path, HTTP_HOST=parts.netloc, headers=headers)
    assert response.status_code == 200
