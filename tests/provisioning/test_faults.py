"""Faults on the way from approval to cluster: a worker SIGKILLed mid-apply, an apiserver that stops,
a Redis that restarts empty. In each case the grant completes by itself once the fault is gone."""

import os
import secrets
from collections.abc import Iterator

import pytest

from pools.kube import ops
from pools.models import Cluster, NodePool, PoolClass
from pools.services import cluster_policies_apply
from quotas import services
from quotas.models import Grant
from quotas.states import RequestState
from tests import factories
from tests import testbed as shared_testbed
from tests.provisioning.conftest import Org, Workers
from tests.provisioning.support import HoldingProxy, RedisServer, celery_publishing_to, conditions, settled

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def move_interactive_pool(org: Org, cluster: Cluster) -> NodePool:
    """Requests for A100s land on `cluster` from now on: the org's own pool is switched off."""
    org.interactive.enabled = False
    org.interactive.save()
    return factories.pool("interactive-a100", PoolClass.INTERACTIVE, org.a100, capacity=32, cluster=cluster)


def quota_gpus(cluster: Cluster, namespace: str) -> str | None:
    quota = ops.get(cluster, "v1", "ResourceQuota", "gpu-grant", namespace)
    return quota["spec"]["hard"]["requests.nvidia.com/gpu"] if quota else None


def test_worker_killed_mid_apply_completes_the_grant_after_restart(
    org: Org, workers: Workers, wait_for, settings
) -> None:
    # No collector watches the proxied cluster (whose inventory the pre-flight reads): this test is
    # about the worker, so its approval skips the pre-flight.
    settings.PORTAL_PREFLIGHT = False
    worker = workers.running_default()
    proxy = HoldingProxy(org.testbed.kubeconfig)
    try:
        proxied = Cluster.objects.create(
            name=f"prov-proxied-{secrets.token_hex(3)}", api_url=proxy.url, token="the-proxy-authenticates"
        )
        move_interactive_pool(org, proxied)
        # The worker applies the namespace, then blocks on the quota: kill it right there.
        proxy.hold(r"^PATCH .*/resourcequotas/gpu-grant")
        grant = org.approve(gpus=2)
        wait_for("the worker to be in the middle of applying the grant", lambda: proxy.held)
        fresh = Grant.objects.select_related("request").get(pk=grant.pk)
        assert (fresh.request.state, fresh.observed_generation) == (RequestState.PROVISIONING, 0)
        assert org.read("Namespace", grant.namespace) is not None
        assert org.read("ResourceQuota", "gpu-grant", grant.namespace) is None

        worker.kill()
        proxy.release()
        worker.start()

        grant = wait_for("the restarted worker to complete the grant", lambda: settled(grant), timeout=60)
        assert quota_gpus(org.k8s, grant.namespace) == "2"
        assert conditions(grant)["Ready"] == ("True", "Provisioned")
        assert org.audit_actions(grant) == ["grant.created", "grant.provisioning", "grant.active"]
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def private_testbed() -> Iterator[shared_testbed.Testbed]:
    """A testbed cluster of this module alone: its apiserver is stopped, which nobody else may see."""
    tb = shared_testbed.load_testbed_module()
    name = f"gpu-portal-prov-{os.getpid()}"
    kubeconfig = tb.up(name)
    try:
        yield shared_testbed.Testbed(name, kubeconfig, kubeconfig.read_text(), tb.load_topology())
    finally:
        tb.down(name)


def test_stopped_apiserver_shows_as_unreachable_and_the_grant_completes_when_it_is_back(
    org: Org, worker, wait_for, private_testbed: shared_testbed.Testbed, settings
) -> None:
    tb = shared_testbed.load_testbed_module()
    cluster = private_testbed.cluster(f"prov-private-{secrets.token_hex(3)}")
    move_interactive_pool(org, cluster)
    cluster_policies_apply(cluster=cluster)
    # The approval went through just before the outage; its pre-flight cannot run during it.
    settings.PORTAL_PREFLIGHT = False

    tb.stop_apiserver(private_testbed.name)
    try:
        grant = org.approve(gpus=2)

        def unreachable() -> Grant | None:
            fresh = Grant.objects.select_related("request").get(pk=grant.pk)
            return fresh if conditions(fresh).get("Ready") == ("False", "Unreachable") else None

        fresh = wait_for("the Ready condition to say the cluster is unreachable", unreachable)
        ready = next(c for c in fresh.conditions if c["type"] == "Ready")
        assert ready["message"].startswith(f"Cluster {cluster.name} ")
        assert "is unreachable" in ready["message"]
        assert fresh.request.state == RequestState.PROVISIONING
        assert fresh.observed_generation == 0
    finally:
        tb.start_apiserver(private_testbed.name)

    grant = wait_for("the grant to complete by itself", lambda: settled(grant), timeout=60)
    assert quota_gpus(private_testbed.admin, grant.namespace) == "2"
    assert conditions(grant)["Ready"] == ("True", "Provisioned")


def test_redis_restart_leaves_no_grant_behind(org: Org, workers: Workers, wait_for) -> None:
    redis = RedisServer()
    redis.start()
    workers.default.stop()  # only the worker on the private Redis may pick anything up
    worker = workers.make(redis.url, "redis")
    try:
        worker.start()
        with celery_publishing_to(redis.url):
            revoked = org.approve(gpus=1)
            wait_for("the first grant to become active", lambda: settled(revoked))

            redis.kill()  # no persistence: every queued message is gone
            approved = org.approve(gpus=1)  # its task cannot be queued, yet the approval stands
            services.grant_revoke(grant=revoked, actor=org.admin, reason="moved to another pool")
            assert Grant.objects.get(pk=approved.pk).request.state == RequestState.APPROVED
            redis.start()

            wait_for(
                "the grant approved during the outage to become active", lambda: settled(approved), timeout=60
            )
            wait_for(
                "the revocation made during the outage to be applied",
                lambda: settled(revoked, RequestState.REVOKED),
                timeout=60,
            )
        assert quota_gpus(org.k8s, approved.namespace) == "1"
        assert quota_gpus(org.k8s, revoked.namespace) == "0"
        assert not [g.pk for g in Grant.objects.all() if g.observed_generation != g.generation]
    finally:
        worker.stop()
        redis.kill()
