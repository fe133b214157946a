"""Batch grants that queue through the real Kueue on the testbed (issue 15's acceptance): two teams
in one cohort borrow and reclaim, the queue contract refuses Jobs that name no queue, revoking
closes a queue while its pending Jobs stay pending, and a stopped Kueue breaks nothing in the portal.

A real Celery worker reconciles; the collector (its queue watch) runs in this process: the one the
`org` fixture runs for approvals, and no second one, since two collectors of one cluster would each
write its Kueue status from their own webhook probes, as no production cluster has (leases). Kueue's
ClusterQueues are cluster-scoped and outlive a grant's namespace, so every test deletes those of its
grants, and those whose namespace is gone (a crashed run's), before and after it runs.
"""

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from pools.kube import ops
from pools.kube.errors import Invalid, TemporaryKubeError
from pools.kube.objects import KUEUE_API_VERSION, QUEUE_NAME_LABEL, managed_selector
from pools.manifests import QUEUE_POLICY_NAME
from pools.models import AdmissionMode, Cluster, KueueStatus, PoolClass, QueueStatus
from pools.services import kueue_detect
from portal.models import AuditEvent, User
from quotas import services
from quotas.manifests import LOCAL_QUEUE_NAME
from quotas.models import Grant, Team
from tests import factories
from tests.provisioning.conftest import SESSION_PREFIX, Org
from tests.provisioning.support import conditions, settled
from tests.testbed import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

# Generous: the machine is shared, and Kueue, the collector and the worker each take their turn.
FOLLOW = 60.0


def batch_job(
    namespace: str, name: str, gpus: int, *, queue: str | None = LOCAL_QUEUE_NAME
) -> dict[str, Any]:
    """A Job as a team writes it for its batch grant: the queue label, the grant's PriorityClass and
    its GPUs; Kueue adds the pool's placement (the ResourceFlavor) when it admits it."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {QUEUE_NAME_LABEL: queue} if queue else {},
        },
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": False,
                    "priorityClassName": "gpu-batch-inference",
                    "containers": [
                        {
                            "name": "infer",
                            "image": "registry.example.com/batch/infer:1",
                            "resources": {
                                "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)}
                            },
                        }
                    ],
                }
            },
        },
    }


def gpu_quota(cluster_queue: dict[str, Any]) -> dict[str, Any]:
    resources = cluster_queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    return next(r for r in resources if r["name"] == "nvidia.com/gpu")


def _delete_queues(admin: Cluster, names: set[str] | None) -> None:
    """Delete the portal's ClusterQueues named (or, with None, those whose namespace is gone)."""
    namespaces = {n["metadata"]["name"] for n in ops.list_objects(admin, "v1", "Namespace")}
    for queue in ops.list_objects(
        admin, KUEUE_API_VERSION, "ClusterQueue", label_selector=managed_selector()
    ):
        name = queue["metadata"]["name"]
        if (names is None and name not in namespaces) or (names is not None and name in names):
            ops.delete(admin, KUEUE_API_VERSION, "ClusterQueue", name)


@dataclass
class Queued:
    org: Org
    other: Team
    other_member: User

    def approve(self, team: Team, member: User, gpus: int, borrow: int = 0) -> Grant:
        req = factories.request(
            member, team, self.org.h100, gpus=gpus, pool_class=PoolClass.BATCH, borrow_gpus=borrow
        )
        grant = factories.approved_grant(req, self.org.admin)
        self.org.grants.append(grant)
        return grant

    def queue(self, grant: Grant) -> QueueStatus | None:
        return QueueStatus.objects.filter(grant=grant).first()

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        return ops.list_objects(self.org.k8s, KUEUE_API_VERSION, "Workload", namespace=namespace)


@pytest.fixture
def queued(org: Org, testbed) -> Iterator[Queued]:
    admin = testbed.admin
    _delete_queues(admin, None)
    # What registration and every inventory sync do: find out that the cluster serves Kueue.
    org.cluster.kueue_version, note = kueue_detect(org.cluster)
    assert (org.cluster.kueue_version, note) == ("v1beta2", "")
    org.cluster.save(update_fields=["kueue_version"])
    org.batch.refresh_from_db()
    assert org.batch.admission_mode == AdmissionMode.KUEUE
    assert org.interactive.admission_mode == AdmissionMode.QUOTA
    other = factories.team(f"{SESSION_PREFIX}{secrets.token_hex(3)}")
    state = Queued(org=org, other=other, other_member=factories.member(other, f"{other.slug}-member"))
    yield state
    # Before the namespaces go: nothing may re-create the ClusterQueues after they are deleted.
    Cluster.objects.update(enabled=False)
    _delete_queues(admin, {g.namespace for g in Grant.objects.all()})


def _figures(q: QueueStatus | None) -> dict[str, Any] | None:
    if q is None:
        return None
    pending = [w for w in q.detail["workloads"] if w["state"] == "pending"]
    return {
        "admitted": q.admitted_workloads,
        "pending": q.pending_workloads,
        "used": q.used_gpus,
        "borrowed": q.borrowed_gpus,
        "lent": q.lent_gpus,
        "positions": [w["position"] for w in pending],
    }


def _follow(
    queued: Queued, grant: Grant, expected: dict[str, Any], wait_for: Callable[..., Any]
) -> QueueStatus:
    def matches() -> QueueStatus | None:
        q = queued.queue(grant)
        got = _figures(q)
        return q if got is not None and all(got[k] == v for k, v in expected.items()) else None

    return wait_for(f"the portal's figures of {grant.namespace} to be {expected}", matches, timeout=FOLLOW)


def test_two_teams_in_one_cohort_borrow_and_reclaim_and_the_portal_follows(
    queued: Queued, worker, wait_for
) -> None:
    org = queued.org
    a = queued.approve(org.team, org.member, gpus=8, borrow=8)
    b = queued.approve(queued.other, queued.other_member, gpus=8)
    a, b = (wait_for(f"grant {g.namespace} to become active", lambda g=g: settled(g)) for g in (a, b))
    assert (a.admission, b.admission) == (AdmissionMode.KUEUE, AdmissionMode.KUEUE)
    assert conditions(a)["Queued"] == ("True", "QueueActive")

    # The objects: one flavour and cohort for the pool, a ClusterQueue per grant.
    cq_a = org.read("ClusterQueue", a.namespace, api_version=KUEUE_API_VERSION)
    cq_b = org.read("ClusterQueue", b.namespace, api_version=KUEUE_API_VERSION)
    assert cq_a["spec"]["cohortName"] == cq_b["spec"]["cohortName"] == "gpu-pool-batch-h100"
    gpu_a, gpu_b = (gpu_quota(cq) for cq in (cq_a, cq_b))
    assert (gpu_a["nominalQuota"], gpu_a["borrowingLimit"]) == ("8", "8")
    assert (gpu_b["nominalQuota"], gpu_b["borrowingLimit"]) == ("8", "0")
    assert cq_a["spec"]["preemption"]["reclaimWithinCohort"] == "Any"
    local = org.read("LocalQueue", LOCAL_QUEUE_NAME, a.namespace, api_version=KUEUE_API_VERSION)
    assert local["spec"]["clusterQueue"] == a.namespace
    flavor = org.read("ResourceFlavor", "gpu-pool-batch-h100", api_version=KUEUE_API_VERSION)
    assert flavor["spec"]["nodeLabels"] == {"accelerator.platform.example.com/pool": "batch-h100"}
    # The namespace quota is the ceiling: nominal plus borrowing.
    quota = org.read("ResourceQuota", "gpu-grant", a.namespace)
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "16"

    # Team A asks for 24 GPUs while B is idle: 16 run (8 of them B's, lent), 8 wait.
    for index in range(3):
        ops.create(org.k8s, batch_job(a.namespace, f"a-{index}", 8))
        if index < 2:
            # Distinct creation seconds: Kueue orders equal priorities by creation time.
            wait_until("a new second", lambda: True, timeout=1.1, interval=1.05)
    _follow(queued, a, {"admitted": 2, "pending": 1, "used": 16, "borrowed": 8, "positions": [1]}, wait_for)
    _follow(queued, b, {"admitted": 0, "used": 0, "lent": 8}, wait_for)
    waiting = next(w for w in queued.queue(a).detail["workloads"] if w["state"] == "pending")
    assert waiting["job"] == "a-2"
    assert "insufficient unused quota for nvidia.com/gpu" in waiting["message"]

    # Team B submits 8: Kueue reclaims B's lent quota by preempting one of A's borrowed Jobs.
    ops.create(org.k8s, batch_job(b.namespace, "b-0", 8))
    _follow(queued, b, {"admitted": 1, "used": 8, "borrowed": 0, "lent": 0}, wait_for)
    q_a = _follow(
        queued, a, {"admitted": 1, "pending": 2, "used": 8, "borrowed": 0, "positions": [1, 2]}, wait_for
    )
    preempted = [
        w
        for w in queued.workloads(a.namespace)
        if any(
            c["type"] == "Preempted" and c["status"] == "True" and c["reason"] == "InCohortReclamation"
            for c in w["status"].get("conditions", [])
        )
    ]
    assert len(preempted) == 1
    # The preempted Job keeps its place before a-2: Kueue orders by creation, not by eviction.
    pending = [w for w in q_a.detail["workloads"] if w["state"] == "pending"]
    assert [w["job"] for w in pending][1] == "a-2"
    assert pending[0]["job"] in {"a-0", "a-1"}

    # B's admitted Job runs on the pool: its pod got the flavour's placement.
    def b_running() -> dict[str, Any] | None:
        pods = ops.list_objects(org.k8s, "v1", "Pod", namespace=b.namespace, label_selector="job-name=b-0")
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None

    pod = wait_for("B's Job pod to run", b_running, timeout=FOLLOW)
    assert pod["spec"]["nodeSelector"] == {"accelerator.platform.example.com/pool": "batch-h100"}

    # The API shows A's pending Jobs with their positions (to A's member; B's member gets a 404).
    api = APIClient()
    api.force_authenticate(org.member)
    answer = api.get(f"/api/v1/grants/{a.pk}/queue/")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert [w["position"] for w in body["workloads"] if w["state"] == "pending"] == [1, 2]
    assert (body["nominal_gpus"], body["borrowing_limit_gpus"], body["local_queue"]) == (
        8,
        8,
        LOCAL_QUEUE_NAME,
    )
    outsider = APIClient()
    outsider.force_authenticate(queued.other_member)
    assert outsider.get(f"/api/v1/grants/{a.pk}/queue/").status_code == 404

    # And the grant and pool pages show it.
    page = Client()
    page.force_login(org.member)
    html = page.get(f"/requests/{a.request_id}/").content.decode()
    assert "a-2" in html and "Estimated start = now + position ÷ rate" in html
    pool_page = page.get(f"/utilisation/pools/{org.batch.pk}/").content.decode()
    assert "Kueue cohort of the pool" in pool_page and "2 queues: 16 GPUs nominal, 16 in use" in pool_page

    # A resync compares what it applied with what Kueue serves back: no drift where nobody changed a thing.
    resynced = a.reconciled_at

    def after_a_resync() -> Grant | None:
        fresh = Grant.objects.get(pk=a.pk)
        return fresh if fresh.reconciled_at > resynced else None

    wait_for("a resync of A's grant", after_a_resync, timeout=FOLLOW)
    assert "grant.drift_corrected" not in org.audit_actions(a)
    assert conditions(Grant.objects.get(pk=a.pk))["Ready"] == ("True", "Provisioned")


def test_a_job_without_the_queue_label_is_refused_naming_the_local_queue(
    queued: Queued, worker, wait_for
) -> None:
    org = queued.org
    grant = queued.approve(org.team, org.member, gpus=2)
    wait_for("the grant to become active", lambda: settled(grant))
    title = f"grant {grant.namespace} (grant {grant.pk})"
    for case, queue in (("no label", None), ("another queue", "somebody-elses")):
        with pytest.raises(Invalid) as refused:
            ops.create(
                org.k8s, batch_job(grant.namespace, f"unqueued-{secrets.token_hex(2)}", 1, queue=queue)
            )
        message = refused.value.message
        assert f"ValidatingAdmissionPolicy '{QUEUE_POLICY_NAME}'" in message, case
        assert title in message, case
        expected = (
            f"label the Job {QUEUE_NAME_LABEL}={LOCAL_QUEUE_NAME} "
            f"(LocalQueue {LOCAL_QUEUE_NAME} of namespace {grant.namespace})"
        )
        assert expected in message, case
    # The same Job naming the LocalQueue is accepted, and suspended by Kueue until admitted.
    created = ops.create(org.k8s, batch_job(grant.namespace, "queued", 1))
    assert created["spec"]["suspend"] is True
    # A ResourceQuota grant's namespace is not bound by the queue contract.
    plain = org.approve(gpus=1)
    wait_for("the quota grant to become active", lambda: settled(plain))
    assert plain.admission == AdmissionMode.QUOTA
    assert ops.create(org.k8s, batch_job(plain.namespace, "unqueued", 0, queue=None))


def test_revoking_removes_the_queue_quota_and_pending_jobs_stay_pending_saying_why(
    queued: Queued, worker, wait_for
) -> None:
    org = queued.org
    grant = queued.approve(org.team, org.member, gpus=8)
    grant = wait_for("the grant to become active", lambda: settled(grant))
    ops.create(org.k8s, batch_job(grant.namespace, "running", 8))
    wait_until("a new second", lambda: True, timeout=1.1, interval=1.05)
    ops.create(org.k8s, batch_job(grant.namespace, "waiting", 8))
    _follow(queued, grant, {"admitted": 1, "pending": 1, "used": 8}, wait_for)

    services.grant_revoke(grant=grant, actor=org.admin, reason="the experiment is over")
    revoked = wait_for("the revocation to be applied", lambda: settled(grant, "revoked"))
    cq = org.read("ClusterQueue", grant.namespace, api_version=KUEUE_API_VERSION)
    gpu = gpu_quota(cq)
    assert (gpu["nominalQuota"], gpu["borrowingLimit"]) == ("0", "0")
    assert conditions(revoked)["Queued"] == ("True", "QueueClosed")
    ready = next(c for c in revoked.conditions if c["type"] == "Ready")
    assert "its pending Jobs stay pending" in ready["message"]
    assert "grant.queue_quota_removed" in org.audit_actions(grant)
    removed = AuditEvent.objects.get(action="grant.queue_quota_removed", object_id=str(grant.pk))
    assert removed.before == {"nvidia.com/gpu": "8"} and removed.after == {"nvidia.com/gpu": "0"}

    # Kueue keeps the Job pending and says why; the portal shows that, and the running one runs on.
    def says_why() -> QueueStatus | None:
        q = queued.queue(grant)
        pending = [w for w in (q.detail["workloads"] if q else []) if w["state"] == "pending"]
        return q if pending and "maximum capacity (0)" in pending[0]["message"] else None

    q = wait_for("the pending Job to say why it waits", says_why, timeout=FOLLOW)
    assert (q.admitted_workloads, q.pending_workloads, q.nominal_gpus) == (1, 1, 0)
    job = org.read("Job", "waiting", grant.namespace, api_version="batch/v1")
    assert job["spec"]["suspend"] is True


def test_with_kueue_stopped_jobs_are_refused_the_portal_explains_and_recovers(
    queued: Queued, testbed, worker, wait_for
) -> None:
    org = queued.org
    grant = queued.approve(org.team, org.member, gpus=4)
    grant = wait_for("the grant to become active", lambda: settled(grant))
    wait_for(
        "the collector to find Kueue's webhook answering",
        lambda: KueueStatus.objects.filter(cluster=org.cluster, webhook_ok=True).exists(),
        timeout=FOLLOW,
    )
    page = Client()
    page.force_login(org.member)
    api = APIClient()
    api.force_authenticate(org.member)

    testbed.stop_kueue()
    try:
        with pytest.raises(TemporaryKubeError) as refused:
            ops.create(org.k8s, batch_job(grant.namespace, "while-down", 1))
        assert 'failed calling webhook "mjob.kueue.x-k8s.io"' in refused.value.message
        status = wait_for(
            "the collector to notice Kueue's webhook failing",
            lambda: KueueStatus.objects.filter(cluster=org.cluster, webhook_ok=False).first(),
            timeout=FOLLOW,
        )
        assert "failed calling webhook" in status.webhook_message

        # Nothing in the portal breaks: the pages and the API answer, and say what is going on.
        response = page.get(f"/requests/{grant.request_id}/")
        assert response.status_code == 200
        html = response.content.decode()
        assert f"Kueue on cluster {org.cluster.name} is not answering" in html
        assert "failed calling webhook" in html
        assert page.get(reverse("quotas:team_detail", args=[org.team.slug])).status_code == 200
        assert page.get(f"/utilisation/pools/{org.batch.pk}/").status_code == 200
        answer = api.get(f"/api/v1/grants/{grant.pk}/queue/")
        assert answer.status_code == 200 and answer.json()["kueue_webhook_ok"] is False
        assert api.get(f"/api/v1/grants/{grant.pk}/").status_code == 200

        # The resync cannot apply the ClusterQueue (Kueue's webhook refuses that too): the grant
        # stays active and says why.
        def explained() -> Grant | None:
            fresh = Grant.objects.select_related("request").get(pk=grant.pk)
            return fresh if conditions(fresh).get("Ready") == ("False", "KueueUnavailable") else None

        down = wait_for("the resync to explain Kueue's outage on the grant", explained, timeout=FOLLOW)
        assert down.request.state == "active"
        assert "fail closed" in next(c["message"] for c in down.conditions if c["type"] == "Ready")
    finally:
        testbed.start_kueue()

    wait_for(
        "the collector to find Kueue answering again",
        lambda: KueueStatus.objects.filter(cluster=org.cluster, webhook_ok=True).exists(),
        timeout=FOLLOW,
    )
    wait_for(
        "the grant to be Ready again",
        lambda: conditions(Grant.objects.get(pk=grant.pk)).get("Ready") == ("True", "Provisioned"),
        timeout=FOLLOW,
    )
    # The figures recover: a Job submitted now is admitted and shown.
    ops.create(org.k8s, batch_job(grant.namespace, "after", 4))
    _follow(queued, grant, {"admitted": 1, "used": 4}, wait_for)
    assert "is not answering" not in page.get(f"/requests/{grant.request_id}/").content.decode()
