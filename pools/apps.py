from django.apps import AppConfig


class PoolsConfig(AppConfig):
    name = "pools"
    verbose_name = "Clusters and GPU pools"

    def ready(self) -> None:
        # These tasks take the cluster's id itself: each runs on its cluster's shard queue.
        from pools.queues import cluster_task_register

        for task in ("pools.tasks.cluster_sync_inventory", "pools.tasks.cluster_policies_apply"):
            cluster_task_register(task=task, cluster_of=lambda cluster_id: cluster_id)
