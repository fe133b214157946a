"""Helpers for the Helm chart's tests: the Helm binary scripts/testbed/build.sh built, rendering, and
the value sets every structural test runs against.

Helm runs with its cache, config and data directories in a temporary directory, so nothing a
developer has in ~/.config/helm (repositories, plugins) changes what the tests see.
"""

import ast
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed import REPO_ROOT

CHART = REPO_ROOT / "charts" / "gpu-capacity-portal"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "testbed" / "build.sh"
VERSIONS = REPO_ROOT / "scripts" / "testbed" / "versions.env"
RELEASE = "portal"
NAMESPACE = "gpu-portal"

Obj = dict[str, Any]


def versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in VERSIONS.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


# The chart is checked against the Kubernetes the testbed runs, not Helm's built-in default.
KUBE_VERSION = versions()["KUBE_VERSION"]


def build_paths() -> dict[str, Path]:
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "paths"], capture_output=True, text=True, check=True)
    return {k: Path(v) for k, v in (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)}


def production_required_env() -> set[str]:
    """The variables portal.settings.production refuses to start without: its `_required("X")` calls."""
    tree = ast.parse((REPO_ROOT / "portal" / "settings" / "production.py").read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_required"
        and isinstance(node.args[0], ast.Constant)
    }


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, check=False, timeout=120
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}", pytrace=False
            )
        return result

    def template_args(
        self, values: tuple[str, ...] = (), sets: tuple[str, ...] = (), namespace: str = NAMESPACE
    ) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
        for path in values:
            args += ["-f", str(CHART / path)]
        for item in sets:
            args += ["--set-json" if item.startswith("json:") else "--set", item.removeprefix("json:")]
        return args

    def render(
        self, values: tuple[str, ...] = (), sets: tuple[str, ...] = (), namespace: str = NAMESPACE
    ) -> "Rendered":
        out = self.run(*self.template_args(values, sets, namespace)).stdout
        return Rendered([doc for doc in yaml.safe_load_all(out) if doc])


@dataclass(frozen=True)
class Rendered:
    objects: list[Obj]
    value_set: str = ""

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, suffix: str = "") -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, (
            f"expected one {kind} named *{suffix}, got {[o['metadata']['name'] for o in found]}"
        )
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.of_kind(kind))

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "Job")]

    def component(self, name: str) -> Obj:
        found = [
            w for w in self.workloads() if w["metadata"]["labels"]["app.kubernetes.io/component"] == name
        ]
        assert len(found) == 1, f"expected one workload for {name}"
        return found[0]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


# Value sets every structural test renders: the defaults, the production example, everything
# optional switched on, and everything optional switched off.
EVERYTHING = (
    "ingress.enabled=true",
    "ingress.hosts[0]=portal.example.com",
    "ingress.tls[0].secretName=portal-tls",
    "ingress.tls[0].hosts[0]=portal.example.com",
    "web.autoscaling.enabled=true",
    "web.autoscaling.minReplicas=3",
    "web.podDisruptionBudget.minAvailable=2",
    "metrics.serviceMonitor.enabled=true",
    "oidc.enabled=true",
    "oidc.authorizationEndpoint=https://sso.example.com/auth",
    "oidc.tokenEndpoint=https://sso.example.com/token",
    "oidc.userEndpoint=https://sso.example.com/userinfo",
    "oidc.jwksEndpoint=https://sso.example.com/certs",
    "oidc.groups.adminGroups[0]=/ops/platform",
    "image.pullSecrets[0]=registry-credentials",
    'json:networkPolicy.egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]',
    "config.allowedHosts[0]=portal.internal.example.com",
    "config.env.PORTAL_PREFLIGHT=false",
    "worker.clusterShards.count=3",
    "collector.replicas=3",
)
MINIMAL = (
    "rbac.create=false",
    "serviceAccount.create=false",
    "networkPolicy.enabled=false",
    "web.podDisruptionBudget.enabled=false",
    "migrations.enabled=false",
    "web.replicas=1",
    "worker.replicas=0",
    "collector.replicas=1",
)
VALUE_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "production": (("values-production.yaml",), ()),
    "everything": ((), EVERYTHING),
    "minimal": ((), MINIMAL),
}
