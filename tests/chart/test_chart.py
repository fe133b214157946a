"""The Helm chart, offline: `helm lint`, `helm template` of several value sets, and values the schema
or the templates refuse. The apiserver's view of the same objects is in test_dry_run.py.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands
from django.test import Client
from django.urls import reverse

from pools.services import REQUIRED_PERMISSIONS, Permission
from tests.chart.dockerfile import dockerfile
from tests.chart.support import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Helm,
    Obj,
    Rendered,
    containers,
    env_of,
    pod_spec,
    production_required_env,
)
from tests.testbed import REPO_ROOT

FULLNAME = f"{RELEASE}-gpu-capacity-portal"
# Environment variable -> the secrets.* value that names its Secret.
SECRET_ENV = {
    "PORTAL_SECRET_KEY": "secretKey",
    "DATABASE_URL": "databaseUrl",
    "CELERY_BROKER_URL": "brokerUrl",
    "PORTAL_CREDENTIALS_KEYS": "credentialsKeys",
    "PORTAL_METRICS_TOKEN": "metricsToken",
}
COMPONENTS = {"web", "worker", "beat", "collector", "migrate"}
# Components that talk to Kubernetes and so get the ServiceAccount's token.
CLUSTER_CLIENTS = {"web", "worker", "collector"}


def merged_values(value_set: str) -> Obj:
    """values.yaml with the set's values files laid over it (the --set items touch no secret names)."""

    def merge(base: Obj, over: Obj) -> Obj:
        out = dict(base)
        for key, value in over.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if value_set == "production":
        values = merge(values, yaml.safe_load((CHART / "values-production.yaml").read_text()))
    return values


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and the In/NotIn/Exists operators) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(rendered: Rendered) -> dict[str, dict[str, str]]:
    return {
        w["metadata"]["labels"]["app.kubernetes.io/component"]: w["spec"]["template"]["metadata"]["labels"]
        for w in rendered.workloads()
    }


def settings_variables() -> set[str]:
    """Every environment variable portal/settings reads: env.<type>("NAME", ...) and _required("NAME")."""
    names = set()
    for path in (REPO_ROOT / "portal" / "settings").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            func = node.func
            reads_env = (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "env"
            )
            if reads_env or (isinstance(func, ast.Name) and func.id == "_required"):
                names.add(node.args[0].value)
    return names


# --------------------------------------------------------------------------------------------
# helm lint, and the Helm build itself


@pytest.mark.parametrize("values", [(), ("values-production.yaml",)], ids=["default", "production"])
def test_helm_lint_passes_strictly(helm: Helm, values: tuple[str, ...]) -> None:
    files = [arg for path in values for arg in ("-f", str(CHART / path))]
    result = helm.run("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *files)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_helm_lint_fails_on_bad_values(helm: Helm) -> None:
    result = helm.run(
        "lint", str(CHART), "--kube-version", KUBE_VERSION, "--set", "web.replicas=-1", check=False
    )
    assert result.returncode != 0
    assert "at '/web/replicas': minimum: got -1, want 1" in result.stdout + result.stderr


def test_helm_assumes_a_current_kubernetes_without_kube_version(helm: Helm, tmp_path: Path) -> None:
    # build.sh sets Helm's Kubernetes version variables as Helm's Makefile does; without them
    # .Capabilities would claim v1.20 and charts gating on it would render for a 2021 cluster.
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {kube: {{ .Capabilities.KubeVersion.Version | quote }}}\n"
    )
    rendered = yaml.safe_load(helm.run("template", "probe", str(chart)).stdout)
    major, minor = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", rendered["data"]["kube"]).groups()  # type: ignore[union-attr]
    testbed_minor = int(KUBE_VERSION.split(".")[1])
    assert (int(major), int(minor)) >= (1, testbed_minor)
    assert helm.run("version", "--short").stdout.startswith("v3.22.0")


# --------------------------------------------------------------------------------------------
# Rendered objects, for every value set


def test_every_pod_meets_pod_security_restricted(rendered: Rendered) -> None:
    image = dockerfile()
    workloads = rendered.workloads()
    assert {w["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads} == (
        COMPONENTS - {"migrate"} if rendered.value_set == "minimal" else COMPONENTS
    )
    for workload in workloads:
        spec = pod_spec(workload)
        where = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert (pod["runAsUser"], pod["runAsGroup"]) == (image.uid, image.gid), where
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes == {"tmp": {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}}, (
            where
        )
        for container in containers(workload):
            sc = container["securityContext"]
            what = f"{where}/{container['name']}"
            assert sc["runAsNonRoot"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["capabilities"] == {"drop": ["ALL"]}, what
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, what
            assert "privileged" not in sc and "runAsUser" not in sc, what
            # /tmp is the only writable path (the app's temporary files, beat's schedule).
            assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}], what
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], what


def test_images_are_the_values(rendered: Rendered) -> None:
    values = merged_values(rendered.value_set)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    expected = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    for workload in rendered.workloads():
        for container in containers(workload):
            assert container["image"] == expected
            assert container["imagePullPolicy"] == values["image"]["pullPolicy"]
        pulls = pod_spec(workload).get("imagePullSecrets")
        assert pulls == ([{"name": "registry-credentials"}] if rendered.value_set == "everything" else None)


def test_secrets_are_referenced_by_name_and_never_written(rendered: Rendered) -> None:
    # The chart writes no Secret and no ConfigMap: secret values never pass through values or the release.
    assert not rendered.has("Secret") and not rendered.has("ConfigMap")
    refs = merged_values(rendered.value_set)["secrets"]
    for workload in rendered.workloads():
        for container in containers(workload):
            env = env_of(container)
            assert production_required_env() <= env.keys(), container["name"]
            for name, value_key in SECRET_ENV.items():
                assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": refs[value_key]}}
            if rendered.value_set in ("everything", "production"):
                client = merged_values(rendered.value_set)["oidc"]["client"]
                for name, key in (
                    ("PORTAL_OIDC_CLIENT_ID", "idKey"),
                    ("PORTAL_OIDC_CLIENT_SECRET", "secretKey"),
                ):
                    assert env[name]["valueFrom"]["secretKeyRef"] == {
                        "name": client["name"],
                        "key": client[key],
                    }
            else:
                assert not any(name.startswith("PORTAL_OIDC") for name in env)
            # Whatever is not from a Secret is a literal the chart composed, or the pod's own IP.
            for entry in env.values():
                source = entry.get("valueFrom", {})
                assert "value" in entry or set(source) in ({"secretKeyRef"}, {"fieldRef"}), entry


def test_the_chart_maps_every_variable_production_requires() -> None:
    # A variable production starts requiring fails here until the chart provides it.
    assert set(SECRET_ENV) | {"PORTAL_ALLOWED_HOSTS"} == production_required_env()


def test_every_variable_the_chart_sets_is_read_by_the_settings(rendered: Rendered) -> None:
    known = settings_variables() | {"DJANGO_SETTINGS_MODULE", "POD_IP"}
    for workload in rendered.workloads():
        for container in containers(workload):
            unknown = set(env_of(container)) - known
            assert not unknown, f"{container['name']} sets variables no setting reads: {sorted(unknown)}"


def test_allowed_hosts_cover_the_ingress_the_service_and_the_pod_ip(rendered: Rendered) -> None:
    web = containers(rendered.component("web"))[0]
    names = [e["name"] for e in web["env"]]
    env = env_of(web)
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # $(POD_IP) only expands when POD_IP is defined earlier in the list.
    assert names.index("POD_IP") < names.index("PORTAL_ALLOWED_HOSTS")
    hosts = env["PORTAL_ALLOWED_HOSTS"]["value"].split(",")
    assert hosts[-1] == "$(POD_IP)"
    assert {FULLNAME, f"{FULLNAME}.{NAMESPACE}", f"{FULLNAME}.{NAMESPACE}.svc"} <= set(hosts)
    values = merged_values(rendered.value_set)
    if values["ingress"]["enabled"] or rendered.value_set == "everything":
        expected = {"production": "gpu-portal.example.com", "everything": "portal.example.com"}[
            rendered.value_set
        ]
        assert expected in hosts
    if rendered.value_set == "everything":
        assert "portal.internal.example.com" in hosts
    assert len(hosts) == len(set(hosts))


def _settings_env(container: Obj) -> dict[str, str]:
    """The container's environment as the process would see it, with stand-ins for the Secrets."""
    stand_ins = {
        "PORTAL_SECRET_KEY": "k" * 20 + "Zq8!kP2@vN5#mL9$wR4%tY7^uI1&oE6*",
        "DATABASE_URL": "postgres://portal:pw@db.example.com:5432/portal",
        "CELERY_BROKER_URL": "redis://redis.example.com:6379/0",
        "PORTAL_CREDENTIALS_KEYS": "ECeU29ZqdPsixSZ-80aiWQ9wB5XP6aQPx8NI6zX5hOs=",
        "PORTAL_METRICS_TOKEN": "metrics-token",
        "PORTAL_OIDC_CLIENT_ID": "portal",
        "PORTAL_OIDC_CLIENT_SECRET": "oidc-secret",
    }
    out = {}
    for entry in container["env"]:
        if "value" in entry:
            out[entry["name"]] = entry["value"].replace("$(POD_IP)", "10.1.2.3")
        elif "secretKeyRef" in entry["valueFrom"]:
            out[entry["name"]] = stand_ins[entry["name"]]
        else:
            out[entry["name"]] = "10.1.2.3"
    return out


def test_production_settings_accept_the_chart_environment(rendered: Rendered) -> None:
    """`check --deploy` on portal.settings.production with exactly the web container's environment."""
    env = _settings_env(containers(rendered.component("web"))[0])
    ours = ("PORTAL_", "DATABASE_URL", "CELERY_", "DJANGO_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=REPO_ROOT,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    warnings = set(re.findall(r"\((\w+\.W\d+)\)", result.stderr + result.stdout))
    # TLS ends at the Ingress (config.sslRedirect false): Django's own redirect is the one warning.
    assert warnings <= {"security.W008"}, result.stderr


def test_web_probes_use_the_health_endpoint(rendered: Rendered) -> None:
    web = containers(rendered.component("web"))[0]
    assert web["ports"] == [{"name": "http", "containerPort": dockerfile().port, "protocol": "TCP"}]
    paths = {"startupProbe": "healthz", "readinessProbe": "healthz", "livenessProbe": "livez"}
    for probe, url_name in paths.items():
        get = web[probe]["httpGet"]
        assert get["path"] == reverse(url_name) and get["port"] == "http", probe
        assert get["httpHeaders"] == [{"name": "X-Forwarded-Proto", "value": "https"}], probe
    # The other processes serve nothing, so they have no port to probe.
    for name in COMPONENTS - {"web"}:
        if name == "migrate" and rendered.value_set == "minimal":
            continue
        assert "ports" not in containers(rendered.component(name))[0]


@pytest.mark.parametrize("ssl_redirect", [True, False])
def test_a_probe_request_passes_the_production_security_middleware(
    db: None, settings: Any, helm: Helm, ssl_redirect: bool
) -> None:
    """The kubelet addresses the pod by IP with the probe's header: production's ALLOWED_HOSTS and
    SSL redirect must let it through, or every pod would be restarted forever."""
    web = containers(helm.render().component("web"))[0]
    settings.ALLOWED_HOSTS = _settings_env(web)["PORTAL_ALLOWED_HOSTS"].split(",")
    settings.SECURE_SSL_REDIRECT = ssl_redirect
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    headers = {h["name"]: h["value"] for h in web["readinessProbe"]["httpGet"]["httpHeaders"]}
    client = Client()
    for name in ("healthz", "livez"):
        probe = client.get(reverse(name), HTTP_HOST="10.1.2.3:8000", headers=headers)
        assert probe.status_code == 200, name
        # Plain HTTP without the header too: the health endpoints are exempt from the redirect.
        assert client.get(reverse(name), HTTP_HOST="10.1.2.3:8000").status_code == 200, name
    # A page for browsers over plain HTTP is redirected when the redirect is on.
    assert client.get(reverse("login"), HTTP_HOST="10.1.2.3:8000").status_code == (
        301 if ssl_redirect else 200
    )
    # Prometheus scrapes the pod by IP too, over plain HTTP, with the bearer token: exempt as well.
    settings.PORTAL_METRICS_TOKEN = "metrics-token"
    scrape = client.get(
        reverse("metrics"), HTTP_HOST="10.1.2.3:8000", headers={"Authorization": "Bearer metrics-token"}
    )
    assert scrape.status_code == 200


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(rendered: Rendered) -> None:
    hooks = [o for o in rendered.objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]
    if rendered.value_set == "minimal":
        assert not hooks
        return
    job = rendered.component("migrate")
    assert hooks == [job] and job["kind"] == "Job"
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation",
        "hook-succeeded",
    }
    assert containers(job)[0]["command"] == ["python", "manage.py", "migrate", "--no-input"]
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    # At pre-install the chart's other objects do not exist yet: the Job must need none of them.
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    made_by_chart = {o["metadata"]["name"] for o in rendered.objects if o is not job}
    referenced = set(re.findall(r"'name': '([^']+)'", str(spec.get("volumes", [])) + str(containers(job))))
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in containers(job)[0]["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs and not (refs & made_by_chart) and not (referenced & made_by_chart - {"tmp"})


# What each value set must produce for the web: replicas (None: the HPA's business), HPA range, PDB.
WEB_SCALING = {
    "default": (2, None, {"maxUnavailable": 1}),
    "production": (None, (3, 10), {"minAvailable": 2}),
    "everything": (None, (3, 6), {"minAvailable": 2}),
    "minimal": (1, None, None),
}


def test_web_replicas_hpa_and_pdb_agree(rendered: Rendered) -> None:
    replicas, hpa_range, budget = WEB_SCALING[rendered.value_set]
    web = rendered.component("web")
    assert web["spec"].get("replicas") == replicas
    hpas = rendered.of_kind("HorizontalPodAutoscaler")
    if hpa_range:
        (hpa,) = hpas
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": web["metadata"]["name"],
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == hpa_range
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        # A CPU utilisation target is relative to the CPU request.
        assert containers(web)[0]["resources"]["requests"]["cpu"]
    else:
        assert not hpas
    least = hpa_range[0] if hpa_range else replicas
    pdbs = rendered.of_kind("PodDisruptionBudget")
    if budget:
        (pdb,) = pdbs
        spec = dict(pdb["spec"])
        labels = pod_labels(rendered)
        selector = spec.pop("selector")
        assert [c for c, lab in labels.items() if selects(selector, lab)] == ["web"]
        assert spec == budget
        # A budget the replica count cannot exceed would block every node drain.
        assert spec.get("minAvailable", 0) < least  # type: ignore[operator]
    else:
        assert not pdbs


def test_beat_and_collector_run_exactly_once(rendered: Rendered) -> None:
    for name in ("beat", "collector"):
        deployment = rendered.component(name)
        assert deployment["spec"]["replicas"] == 1
        # A rolling update would run the old and the new process side by side.
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_selectors_pick_their_own_component_only(rendered: Rendered) -> None:
    labels = pod_labels(rendered)
    for workload in rendered.workloads():
        if workload["kind"] != "Deployment":
            continue
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        assert [c for c, lab in labels.items() if selects(workload["spec"]["selector"], lab)] == [component]
    service = rendered.get("Service")
    assert [c for c, lab in labels.items() if selects({"matchLabels": service["spec"]["selector"]}, lab)] == [
        "web"
    ]
    assert service["spec"]["ports"] == [
        {
            "name": "http",
            "port": merged_values(rendered.value_set)["web"]["service"]["port"],
            "targetPort": "http",
            "protocol": "TCP",
        }
    ]


def rules_as_permissions(rules: list[Obj]) -> set[Permission]:
    return {
        Permission(verb, resource, group)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_role_is_exactly_what_the_cluster_layer_needs(rendered: Rendered) -> None:
    if rendered.value_set == "minimal":
        assert not rendered.has("ClusterRole") and not rendered.has("ClusterRoleBinding")
        assert not rendered.has("ServiceAccount")
        return
    role = rendered.get("ClusterRole")
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no URLs
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
    granted = rules_as_permissions(role["rules"])
    needed = set(REQUIRED_PERMISSIONS)
    lacking, unused = sorted(map(str, needed - granted)), sorted(map(str, granted - needed))
    assert granted == needed, f"the chart lacks {lacking}; grants unused {unused}"
    # Cluster-scoped names carry the namespace, so two releases of the same name never collide.
    assert role["metadata"]["name"] == f"{NAMESPACE}-{FULLNAME}"
    binding = rendered.get("ClusterRoleBinding")
    account = rendered.get("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert account["automountServiceAccountToken"] is False
    for name in COMPONENTS - {"migrate"}:
        spec = pod_spec(rendered.component(name))
        assert spec["serviceAccountName"] == account["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is (name in CLUSTER_CLIENTS), name


def test_service_monitor_scrapes_metrics_with_the_token(rendered: Rendered) -> None:
    monitors = rendered.of_kind("ServiceMonitor")
    if rendered.value_set not in ("production", "everything"):
        assert not monitors
        return
    (monitor,) = monitors
    service = rendered.get("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == reverse("metrics")
    token = merged_values(rendered.value_set)["secrets"]["metricsToken"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": token}
    if rendered.value_set == "production":
        assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_network_policies_open_only_the_web_port(rendered: Rendered) -> None:
    policies = {
        p["metadata"]["name"].removeprefix(f"{FULLNAME}-"): p["spec"]
        for p in rendered.of_kind("NetworkPolicy")
    }
    if rendered.value_set == "minimal":
        assert not policies
        return
    labels = pod_labels(rendered)
    web, backend = policies.pop("web"), policies.pop("backend")
    assert [c for c, lab in labels.items() if selects(web["podSelector"], lab)] == ["web"]
    (rule,) = web["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    if rendered.value_set == "production":
        namespaces = {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]
        }
        assert namespaces == {"ingress-nginx", "monitoring"}
    expected_backends = set(labels) - {"web"}
    assert {c for c, lab in labels.items() if selects(backend["podSelector"], lab)} == expected_backends
    assert backend["policyTypes"] == ["Ingress"] and not backend.get("ingress")
    if rendered.value_set == "everything":
        egress = policies.pop("egress")
        assert {c for c, lab in labels.items() if selects(egress["podSelector"], lab)} == set(labels)
        assert egress["policyTypes"] == ["Egress"]
    assert not policies


def test_commands_fit_the_image_and_the_app(rendered: Rendered) -> None:
    image = dockerfile()
    values = merged_values(rendered.value_set)
    web = containers(rendered.component("web"))[0]["command"]
    # The web runs the Dockerfile's CMD, with the worker count from the values.
    i = image.cmd.index("--workers")
    expected = [*image.cmd[: i + 1], str(values["web"]["gunicornWorkers"]), *image.cmd[i + 2 :]]
    assert web == expected
    assert f"0.0.0.0:{image.port}" in web
    import portal

    assert portal.celery_app.main == "portal"  # `celery -A portal` finds this app
    worker = containers(rendered.component("worker"))[0]["command"]
    beat = containers(rendered.component("beat"))[0]["command"]
    assert worker[:4] == ["celery", "-A", "portal", "worker"]
    assert beat[:4] == ["celery", "-A", "portal", "beat"]
    # beat's schedule file must be on the one writable mount.
    assert beat[beat.index("--schedule") + 1].startswith("/tmp/")
    collector = containers(rendered.component("collector"))[0]["command"]
    assert collector[:3] == ["python", "manage.py", "collect_utilisation"]
    assert "collect_utilisation" in get_commands() and "migrate" in get_commands()
    assert (
        image.workdir == "/app" and (REPO_ROOT / "manage.py").is_file()
    )  # `python manage.py` runs in WORKDIR
    assert image.env["DJANGO_SETTINGS_MODULE"] == "portal.settings.production"


# --------------------------------------------------------------------------------------------
# Values that must not install


BAD_VALUES = [
    (("web.replicas=-1",), "at '/web/replicas': minimum: got -1, want 1"),
    (("worker.replicas=-1",), "at '/worker/replicas': minimum: got -1, want 0"),
    (("secrets.databaseUrl.name=",), "at '/secrets/databaseUrl/name': minLength: got 0, want 1"),
    (("secrets.metricsToken.name=null",), "at '/secrets/metricsToken': missing property 'name'"),
    (
        ("secrets.secretKey.name=Not_A_Name",),
        "at '/secrets/secretKey/name': 'Not_A_Name' does not match pattern",
    ),
    (('json:web.replicas="two"',), "at '/web/replicas': got string, want integer"),
    (("config.sslRedirect=yes",), "at '/config/sslRedirect': got string, want boolean"),
    (("podSecurity.runAsUser=0",), "at '/podSecurity/runAsUser': minimum: got 0, want 1"),
    (
        ("config.env.PORTAL_SECRET_KEY=inline",),
        "at '/config/env/PORTAL_SECRET_KEY': value must be 'set by the chart",
    ),
    (("oidc.enabled=true",), "at '/oidc/tokenEndpoint': '' does not match pattern"),
    (("ingress.enabled=true",), "at '/ingress/hosts': minItems: got 0, want 1"),
    (("replicas=3",), "additional properties 'replicas' not allowed"),
    # Relations between values, which the templates check.
    (
        ("web.podDisruptionBudget.minAvailable=2",),
        "web.podDisruptionBudget.minAvailable (2) must be below the web replica count (2)",
    ),
    (
        ("web.autoscaling.enabled=true", "web.autoscaling.minReplicas=5", "web.autoscaling.maxReplicas=3"),
        "web.autoscaling.minReplicas (5) must not exceed web.autoscaling.maxReplicas (3)",
    ),
]


@pytest.mark.parametrize(("sets", "message"), BAD_VALUES, ids=[" ".join(s) for s, _ in BAD_VALUES])
def test_bad_values_fail_with_a_clear_message(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    result = helm.run(*helm.template_args(sets=sets), check=False)
    assert result.returncode != 0, f"{sets} rendered"
    assert message in result.stderr
