"""The Kueue side of a queued grant as plain values and manifests: the QueueContract computed from a
grant and its pool's policy, the builders, and the queue contract policy. No cluster."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from pools import manifests as pm
from pools.kube.objects import LOCAL_QUEUE_ANNOTATION, QUEUE_NAME_LABEL, AdmissionLabel, Label
from pools.models import AdmissionMode, AdmissionPolicy, PoolClass
from quotas import manifests as qm
from quotas.models import CapacityRequest, Grant
from quotas.reconcile import grant_contract
from quotas.states import RequestState
from tests import factories
from tests.provisioning.test_manifests import contract


def queue(**overrides: object) -> qm.QueueContract:
    values: dict[str, object] = {
        "cluster_queue": "vision-batch-r12",
        "cohort": "gpu-pool-batch-h100",
        "flavor": "gpu-pool-batch-h100",
        "flavor_labels": {"accelerator.platform.example.com/pool": "batch-h100"},
        "reclaim_policy": "Any",
        "gpus": 8,
        "cpu": "64",
        "memory": "512Gi",
        "borrow_gpus": 4,
        "borrow_cpu": "32",
        "borrow_memory": "256Gi",
        "lend_gpus": None,
        "lend_cpu": None,
        "lend_memory": None,
        "quota_gpus": 12,
        "quota_cpu": "96",
        "quota_memory": "768Gi",
    }
    values.update(overrides)
    return qm.QueueContract(**values)  # type: ignore[arg-type]


def queued_contract(**overrides: object) -> qm.GrantContract:
    return contract(
        namespace="vision-batch-r12",
        pool_class=PoolClass.BATCH.value,
        pool="batch-h100",
        taint_value="batch-h100",
        node_selector={"accelerator.platform.example.com/pool": "batch-h100"},
        priority_class_name="gpu-batch-inference",
        gpus=8,
        queue=queue(**overrides),
    )


def resources(cluster_queue: dict) -> dict[str, dict]:
    [group] = cluster_queue["spec"]["resourceGroups"]
    [flavor] = group["flavors"]
    return {r["name"]: r for r in flavor["resources"]}


def test_the_cluster_queue_holds_the_grant_as_nominal_quota_in_the_pools_cohort() -> None:
    c = queued_contract()
    cq = qm.cluster_queue(c)
    assert cq["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert cq["metadata"]["name"] == "vision-batch-r12"
    assert cq["metadata"]["labels"][Label.GRANT] == "7"
    spec = cq["spec"]
    assert spec["cohortName"] == "gpu-pool-batch-h100"
    # Only the grant's namespace may queue to it: another team's LocalQueue pointing here is refused.
    assert spec["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "vision-batch-r12"}}
    assert spec["queueingStrategy"] == "BestEffortFIFO"
    assert spec["preemption"] == {
        "reclaimWithinCohort": "Any",
        "borrowWithinCohort": {"policy": "Never"},
        "withinClusterQueue": "LowerPriority",
    }
    # Every resource a pod requests must be covered, or Kueue admits nothing.
    assert spec["resourceGroups"][0]["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    assert spec["resourceGroups"][0]["flavors"][0]["name"] == "gpu-pool-batch-h100"
    assert resources(cq) == {
        "cpu": {"name": "cpu", "nominalQuota": "64", "borrowingLimit": "32"},
        "memory": {"name": "memory", "nominalQuota": "512Gi", "borrowingLimit": "256Gi"},
        "nvidia.com/gpu": {"name": "nvidia.com/gpu", "nominalQuota": "8", "borrowingLimit": "4"},
    }


def test_a_lending_limit_is_stated_only_when_the_pool_lends_less_than_everything() -> None:
    cq = qm.cluster_queue(queued_contract(lend_gpus=4, lend_cpu="32", lend_memory="256Gi"))
    assert {name: r.get("lendingLimit") for name, r in resources(cq).items()} == {
        "cpu": "32",
        "memory": "256Gi",
        "nvidia.com/gpu": "4",
    }
    assert all("lendingLimit" not in r for r in resources(qm.cluster_queue(queued_contract())).values())


def test_the_flavour_places_admitted_pods_on_the_pool_and_the_cohort_holds_no_quota() -> None:
    c = queued_contract()
    flavor = qm.pool_flavor(c)
    assert flavor["metadata"]["name"] == "gpu-pool-batch-h100"
    assert flavor["spec"]["nodeLabels"] == {"accelerator.platform.example.com/pool": "batch-h100"}
    assert flavor["spec"]["tolerations"] == [
        {"key": c.gpu_taint_key, "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": c.taint_key, "operator": "Equal", "value": "batch-h100", "effect": "NoSchedule"},
    ]
    cohort = qm.pool_cohort(c)
    assert (cohort["kind"], cohort["metadata"]["name"], cohort["spec"]) == (
        "Cohort",
        "gpu-pool-batch-h100",
        {},
    )
    local = qm.local_queue(c)
    assert (local["metadata"]["name"], local["metadata"]["namespace"]) == ("gpu-grant", "vision-batch-r12")
    assert local["spec"] == {"clusterQueue": "vision-batch-r12"}
    assert [m["kind"] for m in qm.queue_objects(c)] == [
        "ResourceFlavor",
        "Cohort",
        "ClusterQueue",
        "LocalQueue",
    ]


def test_only_a_queued_namespace_carries_the_admission_label_and_its_local_queue() -> None:
    queued = qm.namespace(queued_contract())["metadata"]
    assert queued["labels"][AdmissionLabel.KEY] == "kueue"
    assert queued["annotations"][LOCAL_QUEUE_ANNOTATION] == "gpu-grant"
    plain = qm.namespace(contract())["metadata"]
    assert AdmissionLabel.KEY not in plain["labels"]
    assert LOCAL_QUEUE_ANNOTATION not in plain["annotations"]


def test_a_queued_namespace_quota_is_the_ceiling_of_nominal_plus_borrowing() -> None:
    hard = qm.resource_quota(queued_contract())["spec"]["hard"]
    assert (hard["requests.nvidia.com/gpu"], hard["requests.cpu"], hard["requests.memory"]) == (
        "12",
        "96",
        "768Gi",
    )
    assert qm.resource_quota(contract())["spec"]["hard"]["requests.nvidia.com/gpu"] == "4"


@pytest.mark.parametrize(
    ("pool", "name"),
    [
        ("batch-h100", "gpu-pool-batch-h100"),
        ("Batch_H100", "gpu-pool-batch-h100-"),
        ("x" * 60, "gpu-pool-" + "x" * 45 + "-"),
    ],
)
def test_pool_object_names_are_dns_labels_and_deterministic(pool: str, name: str) -> None:
    got = qm.kueue_pool_object_name(pool)
    assert got.startswith(name) and len(got) <= 63
    assert got == qm.kueue_pool_object_name(pool)
    assert all((ch.isalnum() and ch.islower()) or ch.isdigit() or ch == "-" for ch in got)


def test_the_queue_probe_job_names_the_local_queue_only_when_asked() -> None:
    c = queued_contract()
    with_label = qm.queue_probe_job(c, queued=True)
    without = qm.queue_probe_job(c, queued=False)
    assert with_label["metadata"]["labels"][QUEUE_NAME_LABEL] == "gpu-grant"
    assert QUEUE_NAME_LABEL not in without["metadata"]["labels"]
    assert with_label["spec"]["suspend"] is True


# --- the queue contract policy ----------------------------------------------------------------------


def test_the_queue_policy_checks_jobs_only_on_portal_namespaces_and_fails_closed() -> None:
    policy = pm.grant_queue_policy()
    spec = policy["spec"]
    assert policy["metadata"]["name"] == pm.QUEUE_POLICY_NAME
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": ["batch"],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["jobs"],
        }
    ]
    [validation] = spec["validations"]
    assert QUEUE_NAME_LABEL in validation["expression"]
    assert LOCAL_QUEUE_ANNOTATION in validation["expression"]
    # The message names the grant, the label and the LocalQueue.
    assert "'grant ' +" in validation["messageExpression"]
    assert f"label the Job {QUEUE_NAME_LABEL}=" in validation["messageExpression"]
    # Apart from the pod contract: a policy is type-checked against every kind it matches.
    assert "pods" not in json.dumps(spec["matchConstraints"])


def test_the_queue_binding_selects_only_queued_grant_namespaces() -> None:
    binding = pm.grant_queue_binding()
    selector = binding["spec"]["matchResources"]["namespaceSelector"]
    assert binding["spec"]["policyName"] == pm.QUEUE_POLICY_NAME
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert selector["matchLabels"][AdmissionLabel.KEY] == "kueue"
    assert selector["matchExpressions"] == [{"key": Label.GRANT, "operator": "Exists"}]
    labels = qm.namespace(queued_contract())["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in selector["matchLabels"].items())
    plain = qm.namespace(contract())["metadata"]["labels"]
    assert not all(plain.get(k) == v for k, v in selector["matchLabels"].items())


# --- the QueueContract from a grant ---------------------------------------------------------------


def batch_grant(world, gpus: int, namespace: str, **fields: object) -> Grant:
    """An active batch grant of vision on world.batch, made directly (no approval, no reconcile)."""
    now = timezone.now()
    req = factories.request(world.alice, world.vision, world.h100, gpus=gpus, pool_class=PoolClass.BATCH)
    CapacityRequest.objects.filter(pk=req.pk).update(state=RequestState.ACTIVE, pool=world.batch)
    grant = Grant.objects.create(
        request=req,
        team=world.vision,
        pool=world.batch,
        gpus=gpus,
        namespace=namespace,
        starts_at=now,
        ends_at=now + timedelta(days=3),
        **fields,
    )
    return Grant.objects.select_related("request", "team", "pool__cluster", "pool__accelerator").get(
        pk=grant.pk
    )


@pytest.fixture
def queued_grant(world) -> Grant:
    world.batch.cluster.kueue_version = "v1beta2"
    world.batch.cluster.save()
    return batch_grant(world, 8, "vision-batch-r1", admission=AdmissionMode.KUEUE, borrow_gpus=4)


def test_the_contract_of_a_queued_grant_scales_cpu_and_memory_with_its_gpus(queued_grant: Grant) -> None:
    q = grant_contract(queued_grant).queue
    assert q is not None
    assert (q.cluster_queue, q.cohort, q.flavor) == (
        "vision-batch-r1",
        "gpu-pool-batch-h100",
        "gpu-pool-batch-h100",
    )
    assert (q.gpus, q.cpu, q.memory) == (8, "64", "512Gi")
    assert (q.borrow_gpus, q.borrow_cpu, q.borrow_memory) == (4, "32", "256Gi")
    assert (q.lend_gpus, q.lend_cpu, q.lend_memory) == (None, None, None)
    assert (q.quota_gpus, q.quota_cpu, q.quota_memory) == (12, "96", "768Gi")
    assert q.reclaim_policy == "Any"
    assert q.flavor_labels == queued_grant.pool.node_selector


def test_the_request_sets_the_share_per_gpu_and_the_pool_its_lending(queued_grant: Grant) -> None:
    req = queued_grant.request
    req.cpu, req.memory_gib = Decimal("12"), 100
    req.save()
    pool = queued_grant.pool
    pool.lending_percent, pool.reclaim_policy = 50, "LowerPriority"
    pool.save()
    q = grant_contract(Grant.objects.get(pk=queued_grant.pk)).queue
    assert q is not None
    # The request asked for 8 GPUs with 12 cores and 100 GiB: 1.5 cores and 12.5 GiB per GPU.
    assert (q.cpu, q.memory) == ("12", "100Gi")
    assert (q.borrow_cpu, q.borrow_memory) == ("6", "50Gi")
    assert (q.lend_gpus, q.lend_cpu, q.lend_memory) == (4, "6", "50Gi")
    assert q.reclaim_policy == "LowerPriority"


def test_an_ended_queued_grant_keeps_no_gpus_nor_anything_to_borrow(queued_grant: Grant) -> None:
    CapacityRequest.objects.filter(pk=queued_grant.request_id).update(state=RequestState.REVOKED)
    c = grant_contract(Grant.objects.get(pk=queued_grant.pk))
    assert c.queue is not None
    assert (c.queue.gpus, c.queue.borrow_gpus, c.queue.quota_gpus) == (0, 0, 0)
    gpu = resources(qm.cluster_queue(c))["nvidia.com/gpu"]
    assert (gpu["nominalQuota"], gpu["borrowingLimit"]) == ("0", "0")
    # CPU-only work may go on, as under a ResourceQuota grant that ended.
    assert c.queue.cpu == "64"


def test_a_quota_grant_has_no_queue_contract(world) -> None:
    assert grant_contract(batch_grant(world, 4, "vision-batch-r2")).queue is None


@pytest.mark.parametrize(
    ("pool_class", "policy", "kueue", "mode"),
    [
        (PoolClass.BATCH, AdmissionPolicy.AUTO, "v1beta2", AdmissionMode.KUEUE),
        (PoolClass.EXPERIMENTATION, AdmissionPolicy.AUTO, "v1beta2", AdmissionMode.KUEUE),
        (PoolClass.BATCH, AdmissionPolicy.AUTO, "", AdmissionMode.QUOTA),
        (PoolClass.BATCH, AdmissionPolicy.QUOTA, "v1beta2", AdmissionMode.QUOTA),
        (PoolClass.INTERACTIVE, AdmissionPolicy.AUTO, "v1beta2", AdmissionMode.QUOTA),
        (PoolClass.EMBEDDING, AdmissionPolicy.AUTO, "v1beta2", AdmissionMode.QUOTA),
    ],
)
def test_admission_mode_of_a_pool(world, pool_class: str, policy: str, kueue: str, mode: str) -> None:
    pool = factories.pool(f"p-{pool_class[:5]}-{policy}", pool_class, world.h100)
    pool.admission = policy
    pool.cluster.kueue_version = kueue
    assert pool.admission_mode == mode
