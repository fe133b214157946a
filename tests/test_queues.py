"""Worker queues (pools/queues.py): cluster-bound tasks go to their cluster's shard queue, the rest
(the beat's periodic tasks, the sweeper) to the default queue, through Celery's own router."""

from typing import Any

import pytest
from django.test import override_settings

from pools.queues import DEFAULT_QUEUE, cluster_tasks, route_task, shard_queues
from portal.celery import app
from quotas.models import Grant
from tests import factories

pytestmark = pytest.mark.django_db


def queue_of(name: str, *args: Any, **options: Any) -> str:
    """The queue Celery's router picks when `name` is queued with `args` (what .delay does)."""
    return app.amqp.router.route(options, name, args, {})["queue"].name


@pytest.fixture
def grant(world):
    return factories.active_grant(world.vision, world.interactive, 2, "vision-r1")


def test_the_setting_names_the_router():
    assert app.conf.task_routes == ("pools.queues.route_task",)
    assert cluster_tasks() == {
        "quotas.tasks.grant_reconcile",
        "quotas.tasks.grants_provision",
        "quotas.tasks.grants_reconcile",
        "quotas.tasks.serving_deployment_reconcile",
        "pools.tasks.cluster_sync_inventory",
        "pools.tasks.cluster_policies_apply",
    }


def test_without_shards_everything_goes_to_the_default_queue(grant):
    with override_settings(PORTAL_CLUSTER_QUEUE_SHARDS=0):
        assert shard_queues() == []
        assert queue_of("quotas.tasks.grant_reconcile", grant.pk) == DEFAULT_QUEUE
        assert queue_of("pools.tasks.cluster_sync_inventory", grant.pool.cluster_id) == DEFAULT_QUEUE


def test_cluster_bound_tasks_go_to_their_clusters_shard(world, grant):
    clusters = [factories.cluster(f"c{i}") for i in range(4)]
    pools = [
        factories.pool(f"p{i}", world.a100.pools.first().pool_class, world.a100, cluster=c)
        for i, c in enumerate(clusters)
    ]
    with override_settings(PORTAL_CLUSTER_QUEUE_SHARDS=3):
        assert shard_queues() == ["clusters-0", "clusters-1", "clusters-2"]
        for cluster, pool in zip(clusters, pools, strict=True):
            expected = f"clusters-{cluster.pk % 3}"
            assert queue_of("pools.tasks.cluster_sync_inventory", cluster.pk) == expected
            assert queue_of("pools.tasks.cluster_policies_apply", cluster.pk) == expected
            Grant.objects.filter(pk=grant.pk).update(pool=pool)
            assert queue_of("quotas.tasks.grant_reconcile", grant.pk) == expected
            # A pass's list of grants goes where its first grant's cluster is.
            assert queue_of("quotas.tasks.grants_provision", [grant.pk]) == expected
            assert queue_of("quotas.tasks.grants_reconcile", [grant.pk, 10**9]) == expected
        # Periodic tasks and the sweeper stay on the default queue, which the default workers consume.
        for periodic in (
            "quotas.tasks.provisioning_sweep",
            "quotas.tasks.grants_expire_due",
            "pools.tasks.clusters_sync_inventory",
            "pools.utilisation.tasks.utilisation_history_compact",
        ):
            assert queue_of(periodic) == DEFAULT_QUEUE
        # An object that is gone runs nowhere special; a queue chosen on purpose is kept.
        assert queue_of("quotas.tasks.grant_reconcile", 10**9) == DEFAULT_QUEUE
        assert queue_of("quotas.tasks.grant_reconcile", grant.pk, queue="clusters-2") == "clusters-2"
        assert route_task("quotas.tasks.grant_reconcile", (grant.pk,), {}, {"queue": "x"}) is None


def test_every_periodic_task_is_on_the_default_queue(settings):
    with override_settings(PORTAL_CLUSTER_QUEUE_SHARDS=4):
        for entry in settings.CELERY_BEAT_SCHEDULE.values():
            assert entry["task"] not in cluster_tasks(), entry
            assert queue_of(entry["task"]) == DEFAULT_QUEUE
