"""Kueue on the testbed: a ResourceFlavor, a ClusterQueue and a LocalQueue admit Jobs within quota
and keep the next one waiting; its webhooks are served for grant namespaces and fail closed."""

import json
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.testbed import TEST_LABEL, unique_name, wait_until
from tests.testbed_engines.conftest import KUEUE, PROVISION_TIMEOUT, condition, elastic_spec

pytestmark = pytest.mark.cluster

PREFIX = "accelerator.platform.example.com/"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@pytest.fixture(scope="module")
def batch(kube: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(kube)


@pytest.fixture
def kueue_objects(custom: client.CustomObjectsApi) -> Iterator[Callable[[str, dict], dict]]:
    """Create cluster-scoped Kueue objects (plural, body); deleted after the test."""
    made: list[tuple[str, str]] = []

    def create(plural: str, body: dict) -> dict:
        body = {"apiVersion": "/".join(KUEUE), **body}
        body["metadata"].setdefault("labels", {})[TEST_LABEL] = "true"
        made.append((plural, body["metadata"]["name"]))
        return custom.create_cluster_custom_object(*KUEUE, plural, body)

    yield create
    for plural, name in reversed(made):
        try:
            custom.delete_cluster_custom_object(*KUEUE, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def job(name: str, queue: str | None, gpus: int, suspend: bool = True) -> dict:
    labels = {TEST_LABEL: "true", **({QUEUE_LABEL: queue} if queue else {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "suspend": suspend,
            "parallelism": 1,
            "completions": 1,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/batch:1",
                            "resources": {
                                "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)}
                            },
                        }
                    ],
                }
            },
        },
    }


def workload_of(custom: client.CustomObjectsApi, namespace: str, job_name: str) -> dict | None:
    items = custom.list_namespaced_custom_object(*KUEUE, namespace, "workloads")["items"]
    for item in items:
        if any(ref["name"] == job_name for ref in item["metadata"].get("ownerReferences", [])):
            return item
    return None


def status_of(obj: dict | None, kind: str) -> str | None:
    cond = condition(obj, kind) if obj else None
    return cond["status"] if cond else None


def test_a_clusterqueue_admits_a_job_within_quota_and_keeps_the_next_waiting(
    testbed, core, custom, batch, namespace, elastic_pool, kueue_objects
):
    pool = elastic_spec(testbed)
    elastic_pool(pool)
    ns = namespace(grant=True)
    flavor, cluster_queue = unique_name("rf"), unique_name("cq")
    # The flavour carries the pool's placement: Kueue adds it to the pods of the Jobs it admits.
    kueue_objects(
        "resourceflavors",
        {
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": {
                "nodeLabels": {f"{PREFIX}pool": pool["name"]},
                "tolerations": [
                    {"key": f"{PREFIX}gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                    {
                        "key": f"{PREFIX}pool",
                        "operator": "Equal",
                        "value": pool["name"],
                        "effect": "NoSchedule",
                    },
                ],
            },
        },
    )
    # Every resource the pods request must be covered, or Kueue admits nothing.
    kueue_objects(
        "clusterqueues",
        {
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "8"},
                                    {"name": "memory", "nominalQuota": "32Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": "4"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    custom.create_namespaced_custom_object(
        *KUEUE,
        ns,
        "localqueues",
        {
            "apiVersion": "/".join(KUEUE),
            "kind": "LocalQueue",
            "metadata": {"name": "batch"},
            "spec": {"clusterQueue": cluster_queue},
        },
    )
    wait_until(
        "the ClusterQueue to be active",
        lambda: (
            status_of(custom.get_cluster_custom_object(*KUEUE, "clusterqueues", cluster_queue), "Active")
            == "True"
        ),
    )

    batch.create_namespaced_job(ns, job("first", "batch", gpus=3))
    wait_until(
        "the first Job's workload to be admitted",
        lambda: status_of(workload_of(custom, ns, "first"), "Admitted") == "True",
        timeout=60,
    )
    wait_until(
        "Kueue to unsuspend the first Job",
        lambda: batch.read_namespaced_job("first", ns).spec.suspend is False,
    )

    batch.create_namespaced_job(ns, job("second", "batch", gpus=3))
    waiting = wait_until(
        "the second Job's workload to be refused quota",
        lambda: status_of(w := workload_of(custom, ns, "second"), "QuotaReserved") == "False" and w,
        timeout=60,
    )
    assert "insufficient" in condition(waiting, "QuotaReserved")["message"], condition(
        waiting, "QuotaReserved"
    )
    assert batch.read_namespaced_job("second", ns).spec.suspend is True

    # The admitted Job's pod gets the flavour's placement and runs on a node Karpenter brings up.
    pods = wait_until(
        "the first Job's pod",
        lambda: core.list_namespaced_pod(ns, label_selector="job-name=first").items,
    )
    assert pods[0].spec.node_selector == {f"{PREFIX}pool": pool["name"]}
    wait_until(
        "the first Job's pod to run",
        lambda: core.read_namespaced_pod(pods[0].metadata.name, ns).status.phase == "Running",
        PROVISION_TIMEOUT + testbed.node_bringup_seconds,
    )
    assert status_of(workload_of(custom, ns, "second"), "Admitted") != "True"


def test_with_kueue_stopped_jobs_in_grant_namespaces_are_refused(testbed, batch, namespace):
    grant_ns, other_ns = namespace(grant=True), namespace()
    testbed.stop_kueue()
    try:
        with pytest.raises(ApiException) as refused:
            batch.create_namespaced_job(grant_ns, job("refused", "batch", gpus=1, suspend=False))
        assert refused.value.status == 500
        message = json.loads(refused.value.body)["message"]
        # Refused (connection refused, or reset when the apiserver held a connection open).
        port = testbed.engine_ports["kueueWebhook"]
        assert 'failed calling webhook "mjob.kueue.x-k8s.io"' in message, message
        assert f"https://127.0.0.1:{port}/mutate-batch-v1-job" in message, message
        # Outside grant namespaces nothing depends on Kueue.
        batch.create_namespaced_job(other_ns, job("elsewhere", None, gpus=0, suspend=True))
    finally:
        testbed.start_kueue()
    # Back: the same Job is accepted, and Kueue's own webhook suspended it for queueing.
    created = batch.create_namespaced_job(grant_ns, job("accepted", "batch", gpus=1, suspend=False))
    assert created.spec.suspend is True
