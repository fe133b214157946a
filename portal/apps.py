from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        # The lockout audit receiver and the group-mapping system check register themselves on import.
        from portal import security, sso  # noqa: F401
