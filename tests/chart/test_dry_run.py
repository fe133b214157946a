"""The rendered chart against a real apiserver: the testbed's kube-apiserver (v1.36.1).

What this proves: the apiserver accepts every object the chart renders, for each value set, with
server-side dry-run apply: the built-in kinds' schemas, the ServiceMonitor against the CRD of the
pinned prometheus-operator release, Pod Security admission on a namespace that enforces `restricted`
(each pod template is also tried as a Pod, because admission only warns for Deployments and Jobs),
and the RBAC objects (valid, no escalation beyond the installing user). The ClusterRole is applied
for real and the portal's own permission check passes with the ServiceAccount's token. `helm install
--dry-run=server` runs against the same apiserver, and refuses bad values with the schema's message.

What it does not prove: no container ever starts. The testbed's kubelets are simulated and there is
no image, so the probes, the read-only root filesystem at run time, the migration, gunicorn, Celery,
the collector and their connections to PostgreSQL and Redis are not exercised here.
"""

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from pools import services
from pools.kube import ops
from pools.models import Cluster
from tests.chart.support import CHART, RELEASE, VALUE_SETS, Helm, Obj, Rendered, build_paths
from tests.testbed import TEST_LABEL, load_testbed_module, unique_name, wait_until

if TYPE_CHECKING:
    # Imported for annotations only: a module-level Testbed class would be collected as a test class.
    from tests.testbed import Testbed

pytestmark = pytest.mark.cluster

FIELD_MANAGER = "gpu-portal-chart-test"
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"


@dataclass(frozen=True)
class Kubectl:
    binary: Path
    kubeconfig: Path

    def apply(
        self, objects: list[Obj], namespace: str, *, dry_run: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = [str(self.binary), "--kubeconfig", str(self.kubeconfig), "apply", "--server-side"]
        args += ["--field-manager", FIELD_MANAGER, "--namespace", namespace, "-f", "-"]
        if dry_run:
            args.append("--dry-run=server")
        return subprocess.run(
            args,
            input=yaml.safe_dump_all(objects),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


@pytest.fixture(scope="module")
def kubectl(testbed: "Testbed") -> Kubectl:
    return Kubectl(load_testbed_module().binaries().kubectl, testbed.kubeconfig_path)


@pytest.fixture(scope="module")
def service_monitor_crd(testbed: "Testbed", kubectl: Kubectl) -> None:
    """The ServiceMonitor CRD of the pinned prometheus-operator release, applied for real (idempotent;
    it stays, like any CRD a cluster's monitoring stack installs once)."""
    crd_file = build_paths()["PROMETHEUS_CRDS"] / "monitoring.coreos.com_servicemonitors.yaml"
    assert crd_file.is_file(), f"{crd_file} missing: run `make testbed-build`"
    result = kubectl.apply([yaml.safe_load(crd_file.read_text())], "default", dry_run=False)
    assert result.returncode == 0, result.stderr

    def established() -> bool:
        crd = ops.get(
            testbed.admin, "apiextensions.k8s.io/v1", "CustomResourceDefinition", SERVICE_MONITOR_CRD
        )
        # A CRD just created has a status whose conditions are still null.
        conditions = ((crd or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_until("the ServiceMonitor CRD to be established", established)


@pytest.fixture
def restricted_namespace(testbed: "Testbed", request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_name("chart", request.node.name)
    cluster = testbed.admin
    labels = {TEST_LABEL: "true"}
    for mode in ("enforce", "warn", "audit"):
        labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
        labels[f"pod-security.kubernetes.io/{mode}-version"] = "latest"
    ops.apply(
        cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )
    wait_until(
        f"the default service account of namespace {name}",
        lambda: ops.get(cluster, "v1", "ServiceAccount", "default", name),
    )
    yield name
    ops.delete(cluster, "v1", "Namespace", name)


def as_pod(workload: Obj, namespace: str) -> Obj:
    template = workload["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{workload['metadata']['name']}-pod",
            "namespace": namespace,
            **template["metadata"],
        },
        "spec": template["spec"],
    }


def create_service_account(testbed: "Testbed", rendered: Rendered, namespace: str) -> None:
    # The ServiceAccount admission plugin refuses a Pod whose account does not exist, even in a
    # dry run, so the (dry-run) Pods below need the real account.
    for account in rendered.of_kind("ServiceAccount"):
        ops.apply(testbed.admin, {**account, "metadata": {**account["metadata"], "namespace": namespace}})


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_the_apiserver_accepts_every_rendered_object(
    helm: Helm,
    testbed: "Testbed",
    kubectl: Kubectl,
    service_monitor_crd: None,
    restricted_namespace: str,
    value_set: str,
) -> None:
    values, sets = VALUE_SETS[value_set]
    rendered = helm.render(values, sets, namespace=restricted_namespace)
    create_service_account(testbed, rendered, restricted_namespace)

    result = kubectl.apply(rendered.objects, restricted_namespace)
    assert result.returncode == 0, result.stderr
    # Admission only warns about a Deployment's or Job's pod template: a warning is a failure here.
    assert "Warning" not in result.stderr, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(rendered.objects), result.stdout

    pods = [as_pod(w, restricted_namespace) for w in rendered.workloads()]
    result = kubectl.apply(pods, restricted_namespace)
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]) == len(
        pods
    )


def test_the_restricted_namespace_really_refuses_a_weaker_pod(
    helm: Helm, testbed: "Testbed", kubectl: Kubectl, restricted_namespace: str
) -> None:
    """The control for the test above: the same web pod with one hardening setting undone is refused,
    and the Deployment carrying it draws the warning the test above forbids."""
    rendered = helm.render(namespace=restricted_namespace)
    create_service_account(testbed, rendered, restricted_namespace)
    web = json.loads(json.dumps(rendered.component("web")))
    web["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    result = kubectl.apply([as_pod(web, restricted_namespace)], restricted_namespace)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in result.stderr
    result = kubectl.apply([web], restricted_namespace)
    assert result.returncode == 0 and 'would violate PodSecurity "restricted:latest"' in result.stderr


@pytest.fixture
def installed_rbac(helm: Helm, testbed: "Testbed", restricted_namespace: str) -> Iterator[Rendered]:
    """The chart's ServiceAccount, ClusterRole and ClusterRoleBinding, applied for real."""
    rendered = helm.render(namespace=restricted_namespace)
    cluster = testbed.admin
    role, binding = rendered.get("ClusterRole"), rendered.get("ClusterRoleBinding")
    create_service_account(testbed, rendered, restricted_namespace)
    try:
        ops.apply(cluster, role)
        yield rendered
    finally:
        for obj in (binding, role):
            ops.delete(cluster, "rbac.authorization.k8s.io/v1", obj["kind"], obj["metadata"]["name"])


def _portal_check(testbed: "Testbed", namespace: str, account: str) -> None:
    request = {"spec": {"expirationSeconds": 600}}
    token = ops.call(
        testbed.admin,
        lambda conn: conn.core.create_namespaced_service_account_token(account, namespace, request),
    ).status.token
    cluster = Cluster(
        name=unique_name("chart-sa"), api_url=testbed.server, token=token, ca_data=testbed.ca_data
    )
    services.cluster_check_connection(cluster=cluster)


def test_the_portal_accepts_the_charts_service_account_on_its_cluster(
    testbed: "Testbed", installed_rbac: Rendered, restricted_namespace: str
) -> None:
    """The registration check (a SelfSubjectAccessReview per REQUIRED_PERMISSIONS entry) with the
    ServiceAccount's own token: refused before the binding exists, accepted after."""
    from django.core.exceptions import ValidationError

    account = installed_rbac.get("ServiceAccount")["metadata"]["name"]
    with pytest.raises(ValidationError) as refused:
        _portal_check(testbed, restricted_namespace, account)
    assert refused.value.error_dict["__all__"][0].code == "missing_permissions"

    ops.apply(testbed.admin, installed_rbac.get("ClusterRoleBinding"))
    user = f"system:serviceaccount:{restricted_namespace}:{account}"

    def allowed(verb: str, resource: str, group: str = "") -> bool:
        review = ops.create(
            testbed.admin,
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "resourceAttributes": {"verb": verb, "resource": resource, "group": group},
                },
            },
        )
        return bool(review.get("status", {}).get("allowed"))

    # RBAC is eventually consistent with the binding: wait until the first permission shows.
    first = services.REQUIRED_PERMISSIONS[0]
    wait_until("the binding to take effect", lambda: allowed(first.verb, first.resource, first.group))
    _portal_check(testbed, restricted_namespace, account)
    # And nothing beyond what the portal uses.
    for verb, resource, group in [
        ("get", "secrets", ""),
        ("list", "secrets", ""),
        ("patch", "nodes", ""),
        ("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
        ("escalate", "clusterroles", "rbac.authorization.k8s.io"),
        ("delete", "resourcequotas", ""),
    ]:
        assert not allowed(verb, resource, group), f"{verb} {resource}"


def test_helm_install_dry_run_against_the_testbed(
    helm: Helm, testbed: "Testbed", service_monitor_crd: None, restricted_namespace: str
) -> None:
    args: list[Any] = ["install", RELEASE, str(CHART), "--namespace", restricted_namespace]
    args += ["--kubeconfig", str(testbed.kubeconfig_path), "--dry-run=server"]
    result = helm.run(*args, "-f", str(CHART / "values-production.yaml"))
    assert "STATUS: pending-install" in result.stdout
    refused = helm.run(*args, "--set", "web.replicas=-1", check=False)
    assert refused.returncode != 0
    assert "at '/web/replicas': minimum: got -1, want 1" in refused.stderr
