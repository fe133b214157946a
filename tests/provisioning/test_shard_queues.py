"""One slow cluster does not stall the others: with PORTAL_CLUSTER_QUEUE_SHARDS=2 the reconciles of
two clusters go to two shard queues, each consumed by a real worker of its own. The first cluster
hangs every request (an HTTP proxy holds them); the second cluster's grant becomes active all the
same, and the first completes once its cluster answers again."""

import secrets

import pytest

from pools.models import Cluster
from pools.queues import cluster_queue
from quotas.models import Grant
from quotas.states import RequestState
from tests.provisioning.conftest import Org, Workers
from tests.provisioning.support import HoldingProxy, Worker, settled, worker_env
from tests.provisioning.test_faults import move_interactive_pool, quota_gpus

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_a_hanging_cluster_stalls_only_its_own_shard(org: Org, workers: Workers, wait_for, settings) -> None:
    settings.PORTAL_CLUSTER_QUEUE_SHARDS = 2  # how this process (the approvals) routes
    settings.PORTAL_PREFLIGHT = False  # the pre-flight would ask the hanging cluster too
    proxy = HoldingProxy(org.testbed.kubeconfig)
    shard_workers: list[Worker] = []
    workers.default.stop()  # only the shard workers run anything here (and no sweeper re-queues)
    try:
        # The slow cluster (behind the proxy) on the other shard than the org's own cluster.
        while True:
            slow = Cluster.objects.create(
                name=f"prov-slow-{secrets.token_hex(3)}", api_url=proxy.url, token="the-proxy-authenticates"
            )
            if cluster_queue(cluster_id=slow.pk) != cluster_queue(cluster_id=org.cluster.pk):
                break
            slow.delete()
        move_interactive_pool(org, slow)  # A100 requests land on the slow cluster, H100 on the org's
        for cluster in (slow, org.cluster):
            queue = cluster_queue(cluster_id=cluster.pk)
            worker = Worker(
                env=worker_env(
                    database_url=workers.database_url,
                    broker_url=settings.CELERY_BROKER_URL,
                    PORTAL_CLUSTER_QUEUE_SHARDS="2",
                ),
                workdir=workers.workdir,
                name=f"prov-{queue}-{secrets.token_hex(3)}",
                queues=queue,
                beat=False,
            )
            workers._all.append(worker)  # their logs join the diagnostics
            worker.start()
            shard_workers.append(worker)
        slow_worker = shard_workers[0]

        proxy.hold(r".")  # every request to the slow cluster hangs
        stuck = org.approve(gpus=2)
        wait_for("the slow cluster's reconcile to hang in its shard's worker", lambda: proxy.held)
        fast = org.approve(gpus=2, accelerator=org.h100, pool_class="batch-inference")
        assert fast.pool.cluster_id == org.cluster.pk and stuck.pool.cluster_id == slow.pk

        fast = wait_for("the other cluster's grant to become active meanwhile", lambda: settled(fast))
        assert quota_gpus(org.k8s, fast.namespace) == "2"
        assert Grant.objects.get(pk=stuck.pk).observed_generation == 0
        assert Grant.objects.get(pk=stuck.pk).request.state == RequestState.PROVISIONING
        # The slow shard's only worker is still stuck in the first reconcile, so the second ran on
        # the other shard's worker: each received its own cluster's task.
        assert proxy.held and slow_worker.running
        for worker in shard_workers:
            assert "grants_provision[" in worker.log_path.read_text(errors="replace"), worker.tail()

        proxy.release()
        wait_for("the slow cluster's grant to complete once it answers", lambda: settled(stuck), timeout=90)
    finally:
        proxy.close()
        for worker in shard_workers:
            worker.stop()
