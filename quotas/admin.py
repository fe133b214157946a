from django.contrib import admin

from quotas.models import ApprovalDecision, CapacityRequest, Grant, Membership, ServingDeployment, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "group_name"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__slug"]


class DecisionInline(admin.TabularInline):
    model = ApprovalDecision
    extra = 0
    can_delete = False
    readonly_fields = ["stage", "approver", "decision", "comment", "decided_at"]

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(CapacityRequest)
class CapacityRequestAdmin(admin.ModelAdmin):
    # State changes go through the services (approvals, audit, capacity checks): read-only here.
    list_display = [
        "id",
        "team",
        "requester",
        "pool_class",
        "accelerator",
        "gpus",
        "state",
        "ends_at",
        "created_at",
    ]
    list_filter = ["state", "pool_class", "accelerator", "team"]
    search_fields = ["purpose", "team__slug", "requester__username"]
    date_hierarchy = "created_at"
    list_select_related = ["team", "requester", "accelerator"]
    inlines = [DecisionInline]

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(ApprovalDecision)
class ApprovalDecisionAdmin(admin.ModelAdmin):
    list_display = ["request", "stage", "decision", "approver", "decided_at"]
    list_filter = ["stage", "decision"]

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Grant)
class GrantAdmin(admin.ModelAdmin):
    list_display = [
        "namespace",
        "team",
        "pool",
        "gpus",
        "state",
        "generation",
        "observed_generation",
        "ends_at",
    ]
    list_filter = ["pool", "team", "request__state"]
    search_fields = ["namespace", "team__slug"]
    list_select_related = ["team", "pool", "pool__cluster", "request"]
    readonly_fields = ["conditions", "generation", "observed_generation", "reconciled_at"]

    # Grants change only through the services (revoke, shrink, namespace deletion): they audit the
    # change, bump the generation and queue the reconcile, which a saved admin form would skip.
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(ServingDeployment)
class ServingDeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "grant", "model_name", "replicas", "ready_replicas", "load_seconds"]
    list_filter = ["team"]
    search_fields = ["name", "model_name", "image"]
    list_select_related = ["team", "grant", "grant__pool", "grant__pool__accelerator"]

    # Serving deployments change only through the services (budget check, audit, reconcile).
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
