from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "quotas"
    verbose_name = "Teams, requests and grants"

    def ready(self) -> None:
        # Grants hold pool capacity; the pools app asks through its registry, never importing quotas.
        from pools.holders import holders_register
        from quotas.selectors import holding_grant_count

        holders_register(name="grants", count=lambda pool_id: holding_grant_count(pool_id=pool_id))
