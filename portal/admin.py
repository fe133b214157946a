from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from portal.models import AuditEvent, User


@admin.register(User)
class PortalUserAdmin(UserAdmin):
    list_display = ["username", "email", "is_platform_admin", "is_auditor", "is_staff", "is_active"]
    list_filter = ["is_platform_admin", "is_auditor", "is_staff", "is_active"]
    fieldsets = (*UserAdmin.fieldsets, ("Portal roles", {"fields": ("is_platform_admin", "is_auditor")}))


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "action", "object_repr", "actor", "team"]
    list_filter = ["action", "team"]
    search_fields = ["object_repr", "message", "actor__username"]
    date_hierarchy = "created_at"
    list_select_related = ["actor", "team"]

    # The audit log is append-only, even for superusers.
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False
