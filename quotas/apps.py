from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "quotas"
    verbose_name = "Teams, requests and grants"

    def ready(self) -> None:
        # Grants hold pool capacity; the pools app asks through its registry, never importing quotas.
        from pools.holders import holders_register
        from pools.queues import cluster_task_register
        from quotas.selectors import grant_cluster_id, holding_grant_count, serving_deployment_cluster_id

        holders_register(name="grants", count=lambda pool_id: holding_grant_count(pool_id=pool_id))
        # Reconciles run on their cluster's shard queue (PORTAL_CLUSTER_QUEUE_SHARDS).
        cluster_task_register(
            task="quotas.tasks.grant_reconcile",
            cluster_of=lambda grant_id: grant_cluster_id(grant_id=grant_id),
        )
        # A pass's grants are of one cluster (a single approval's, a pool's bulk decision, a pass's polls).
        for task in ("quotas.tasks.grants_provision", "quotas.tasks.grants_reconcile"):
            cluster_task_register(
                task=task,
                cluster_of=lambda grant_ids: grant_cluster_id(grant_id=grant_ids[0]) if grant_ids else None,
            )
        cluster_task_register(
            task="quotas.tasks.serving_deployment_reconcile",
            cluster_of=lambda deployment_id: serving_deployment_cluster_id(deployment_id=deployment_id),
        )
