import functools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from pools.models import PoolClass
from pools.selectors import accelerator_list
from pools.utilisation.diagnosis import STATE_LABELS, TITLES
from portal.api.filters import MAX_ID
from portal.api.serializers import BoundedDateTimeField, ErrorSerializer
from portal.models import AuditEvent
from portal.statements import bound_instances, user_key
from quotas import selectors
from quotas.manifests import LOCAL_QUEUE_NAME
from quotas.models import ApprovalDecision, CapacityRequest, Grant, Precision, ServingDeployment, Team
from quotas.services.decisions import MAX_BATCH
from quotas.states import RequestState

# --- teams ---------------------------------------------------------------------------------------


class MemberSerializer(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.CharField()


class TeamSerializer(serializers.ModelSerializer):
    members = MemberSerializer(source="memberships", many=True, read_only=True)

    class Meta:
        model = Team
        fields = ["id", "slug", "name", "k8s_group", "members"]


# --- capacity requests ---------------------------------------------------------------------------


class DecisionSerializer(serializers.ModelSerializer):
    approver = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = ApprovalDecision
        fields = ["stage", "approver", "decision", "comment", "decided_at"]


class CapacityRequestSerializer(serializers.ModelSerializer):
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    requester = serializers.SlugRelatedField(slug_field="username", read_only=True)
    accelerator = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    pool = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True, help_text="Chosen by the portal"
    )
    pool_name = serializers.SerializerMethodField()
    grant = serializers.SerializerMethodField(help_text="Id of the grant once approved")
    decisions = DecisionSerializer(many=True, read_only=True)

    class Meta:
        model = CapacityRequest
        fields = [
            "id",
            "team",
            "requester",
            "pool_class",
            "accelerator",
            "pool",
            "pool_name",
            "gpus",
            "cpu",
            "memory_gib",
            "starts_at",
            "ends_at",
            "purpose",
            "model_parameters_billion",
            "model_precision",
            "gpus_per_replica",
            "borrow_gpus",
            "state",
            "created_at",
            "updated_at",
            "grant",
            "decisions",
        ]

    def get_pool_name(self, req: CapacityRequest) -> str | None:
        return str(req.pool) if req.pool is not None else None

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_grant(self, req: CapacityRequest) -> int | None:
        grant = getattr(req, "grant", None)
        return grant.pk if grant is not None else None

    def to_representation(self, instance: CapacityRequest) -> dict[str, Any]:
        # The API's hottest read (automation polls the list): the same JSON as DRF's field-by-field
        # rendering of the declarations above (tests/api/test_representation.py holds the two equal),
        # built by the list endpoints' row builder, because that machinery was a fifth of the cost of
        # a 50-row page.
        grant = getattr(instance, "grant", None)
        pool = instance.pool
        row = {
            **{name: getattr(instance, name) for name in _OWN_VALUES},
            "pk": instance.pk,
            "team__slug": instance.team.slug,
            "requester__username": instance.requester.username,
            "accelerator__slug": instance.accelerator.slug,
            "pool__name": pool.name if pool is not None else None,
            "pool__cluster__name": pool.cluster.name if pool is not None else None,
            "grant__id": grant.pk if grant is not None else None,
        }
        decisions = [
            {
                "stage": d.stage,
                "approver__username": d.approver.username if d.approver_id is not None else None,
                "decision": d.decision,
                "comment": d.comment,
                "decided_at": d.decided_at,
            }
            for d in instance.decisions.all()
        ]
        return capacity_request_rows([row], {instance.pk: decisions})[0]


# The request's own columns among the list's values (the rest are joins).
_OWN_VALUES = tuple(v for v in selectors.REQUEST_VALUES if "__" not in v and v != "pk")


class SlugInputField(serializers.SlugRelatedField):
    """A writable slug reference that answers a NUL character as unknown: PostgreSQL text cannot hold
    one, and looking it up would be a database error (a 500) instead of a 400.

    With `compiled`, the lookup is compiled once per serializer field and caller (portal.statements):
    for fields on the hot paths, whose queryset depends on nothing but the request's user."""

    def __init__(self, *, compiled: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.compiled = compiled

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and "\x00" in data:
            self.fail("does_not_exist", slug_name=self.slug_field, value=data.replace("\x00", ""))
        request = self.context.get("request")
        if not self.compiled or not isinstance(data, str) or request is None:
            return super().to_internal_value(data)
        queryset = self.get_queryset()
        parent = type(self.parent)
        key = ("slug input", parent.__module__, parent.__qualname__, self.field_name, user_key(request.user))
        found = bound_instances(key, lambda slug: queryset.filter(**{self.slug_field: slug}), slug=data)
        if len(found) != 1:
            self.fail("does_not_exist", slug_name=self.slug_field, value=data)
        return found[0]


def _utc_moment(field: serializers.DateTimeField) -> Any:
    """DateTimeField.to_representation without its per-value machinery, for the common case of this
    deployment (TIME_ZONE UTC, no custom format): the same text, Z for UTC. Anything else falls back."""
    output_format = getattr(field, "format", api_settings.DATETIME_FORMAT)
    if output_format is None or output_format.lower() != ISO_8601:
        return field.to_representation
    if str(timezone.get_current_timezone()) != "UTC":
        return field.to_representation

    def moment(value: datetime | None) -> str | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            return field.to_representation(value)
        text = value.astimezone(UTC).isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return moment


@functools.cache
def _row_converters(tz_name: str, datetime_format: str) -> tuple[Any, Any, Any]:
    """The field converters of a request's representation, built once per time zone and format (a
    serializer's fields are deep-copied on every instantiation)."""
    fields = CapacityRequestSerializer().fields
    return (
        _utc_moment(fields["created_at"]),
        fields["cpu"].to_representation,
        fields["model_parameters_billion"].to_representation,
    )


def capacity_request_rows(
    rows: list[dict[str, Any]], decisions: dict[int, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The list endpoints' representation of requests read as values (quotas.selectors.REQUEST_VALUES):
    the same JSON as CapacityRequestSerializer (tests/api/test_representation.py holds them equal), built
    from plain values because model instances, prefetches and field-by-field rendering were most of the
    cost of a 50-row page."""
    moment, cpu, params = _row_converters(str(timezone.get_current_timezone()), api_settings.DATETIME_FORMAT)
    out = []
    for r in rows:
        pk = r["pk"]
        out.append(
            {
                "id": pk,
                "team": r["team__slug"],
                "requester": r["requester__username"],
                "pool_class": r["pool_class"],
                "accelerator": r["accelerator__slug"],
                "pool": r["pool_id"],
                "pool_name": f"{r['pool__cluster__name']}/{r['pool__name']}"
                if r["pool_id"] is not None
                else None,
                "gpus": r["gpus"],
                "cpu": None if r["cpu"] is None else cpu(r["cpu"]),
                "memory_gib": r["memory_gib"],
                "starts_at": moment(r["starts_at"]),
                "ends_at": moment(r["ends_at"]),
                "purpose": r["purpose"],
                "model_parameters_billion": None
                if r["model_parameters_billion"] is None
                else params(r["model_parameters_billion"]),
                "model_precision": r["model_precision"],
                "gpus_per_replica": r["gpus_per_replica"],
                "borrow_gpus": r["borrow_gpus"],
                "state": r["state"],
                "created_at": moment(r["created_at"]),
                "updated_at": moment(r["updated_at"]),
                "grant": r["grant__id"],
                "decisions": [
                    {
                        "stage": d["stage"],
                        "approver": d["approver__username"],
                        "decision": d["decision"],
                        "comment": d["comment"],
                        "decided_at": moment(d["decided_at"]),
                    }
                    for d in decisions.get(pk, ())
                ],
            }
        )
    return out


class CapacityRequestCreateSerializer(serializers.Serializer):
    team = SlugInputField(
        slug_field="slug", queryset=Team.objects.none(), compiled=True, help_text="Slug of one of your teams"
    )
    pool_class = serializers.ChoiceField(choices=PoolClass.choices)
    accelerator = SlugInputField(
        slug_field="slug",
        queryset=accelerator_list(),
        compiled=True,
        help_text="Accelerator slug, see /api/v1/accelerators/",
    )
    gpus = serializers.IntegerField(min_value=1, max_value=100_000, help_text="Accelerator units")
    starts_at = BoundedDateTimeField(required=False, help_text="Defaults to now")
    ends_at = BoundedDateTimeField()
    purpose = serializers.CharField(max_length=5000, help_text="What the GPUs are for; approvers read it")
    cpu = serializers.DecimalField(
        max_digits=7,
        decimal_places=2,
        min_value=Decimal("0.01"),
        required=False,
        allow_null=True,
        help_text="CPU cores",
    )
    memory_gib = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False, allow_null=True)
    model_parameters_billion = serializers.DecimalField(
        max_digits=7, decimal_places=2, min_value=Decimal("0.01"), required=False, allow_null=True
    )
    model_precision = serializers.ChoiceField(choices=Precision.choices, required=False, allow_blank=True)
    gpus_per_replica = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    borrow_gpus = serializers.IntegerField(
        min_value=0,
        max_value=100_000,
        required=False,
        help_text="Batch and experimentation pools that queue through Kueue: idle GPUs of the pool's "
        "cohort the team's Jobs may borrow beyond `gpus` (nominal); reclaimed by preemption when their "
        "owners need them",
    )
    submit = serializers.BooleanField(
        default=True, help_text="Submit for approval now (default), or keep as a draft to submit later"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:  # absent only while the OpenAPI schema is generated
            # Only the caller's visible teams resolve: another team's slug reads as unknown, not forbidden.
            self.fields["team"].queryset = selectors.teams_visible_to(user=request.user)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.setdefault("starts_at", timezone.now())
        attrs["model_precision"] = attrs.get("model_precision") or ""
        return attrs


class DecisionInputSerializer(serializers.Serializer):
    comment = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")


class RejectInputSerializer(serializers.Serializer):
    comment = serializers.CharField(max_length=5000, help_text="Why; the requester reads it")


class BulkDecisionInputSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=ApprovalDecision.Decision.choices)
    comment = serializers.CharField(
        max_length=5000,
        required=False,
        allow_blank=True,
        default="",
        help_text="One comment for every decision of the batch; required to reject",
    )
    requests = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        min_length=1,
        max_length=MAX_BATCH,
        help_text=f"Ids of the requests to decide, each once, at most {MAX_BATCH}",
    )

    def validate_requests(self, ids: list[int]) -> list[int]:
        repeated = sorted({pk for pk in ids if ids.count(pk) > 1})
        if repeated:
            raise serializers.ValidationError(f"Each request once: {', '.join(map(str, repeated))} repeated.")
        return ids

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["decision"] == ApprovalDecision.Decision.REJECT and not attrs.get("comment", "").strip():
            raise serializers.ValidationError(
                {"comment": ["Say why the requests are rejected; each requester reads it."]}
            )
        return attrs


class DecisionItemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.IntegerField(help_text="What a single decision of this request would have answered")
    outcome = serializers.ChoiceField(
        choices=["approved", "lead_approved", "rejected", "refused"],
        help_text="approved: granted; lead_approved: now awaiting a platform admin; refused: see error",
    )
    state = serializers.ChoiceField(
        choices=RequestState.choices, allow_null=True, help_text="After the batch"
    )
    grant = serializers.IntegerField(allow_null=True, help_text="The grant an approval created")
    error = ErrorSerializer(allow_null=True)


class BulkDecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=ApprovalDecision.Decision.choices)
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Results per outcome")
    results = DecisionItemSerializer(many=True, help_text="One per request, in the order given")


# --- grants ---------------------------------------------------------------------------------------


class ConditionSerializer(serializers.Serializer):
    """A Kubernetes-style status condition, as the reconciler records it."""

    type = serializers.CharField(required=False)
    status = serializers.CharField(required=False)
    reason = serializers.CharField(required=False)
    message = serializers.CharField(required=False)
    lastTransitionTime = serializers.CharField(required=False)
    observedGeneration = serializers.IntegerField(required=False)


class GrantSerializer(serializers.ModelSerializer):
    request = serializers.PrimaryKeyRelatedField(read_only=True)
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    pool = serializers.PrimaryKeyRelatedField(read_only=True)
    pool_name = serializers.CharField(source="pool.__str__", read_only=True)
    accelerator = serializers.CharField(source="pool.accelerator.slug", read_only=True)
    state = serializers.ChoiceField(choices=RequestState.choices, source="request.state", read_only=True)
    conditions = ConditionSerializer(many=True, read_only=True)
    local_queue = serializers.SerializerMethodField(
        help_text="The LocalQueue Jobs must name (label kueue.x-k8s.io/queue-name) when `admission` is kueue"
    )

    class Meta:
        model = Grant
        fields = [
            "id",
            "request",
            "team",
            "pool",
            "pool_name",
            "accelerator",
            "gpus",
            "admission",
            "borrow_gpus",
            "local_queue",
            "namespace",
            "starts_at",
            "ends_at",
            "state",
            "generation",
            "observed_generation",
            "conditions",
            "reconciled_at",
            "namespace_deleted_at",
            "created_at",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_local_queue(self, grant: Grant) -> str | None:
        return LOCAL_QUEUE_NAME if grant.queued else None


class QueuedWorkloadSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The Kueue Workload")
    job = serializers.CharField(help_text="The Job it stands for")
    state = serializers.ChoiceField(choices=["admitted", "pending", "finished", "inactive"])
    gpus = serializers.IntegerField()
    priority = serializers.IntegerField()
    position = serializers.IntegerField(
        allow_null=True, help_text="Place in the ClusterQueue, 1 first; pending only"
    )
    queued_at = serializers.DateTimeField(allow_null=True, help_text="Creation, or its last eviction")
    waited_seconds = serializers.FloatField(help_text="As of computed_at; until admission for admitted ones")
    eta = serializers.DateTimeField(
        allow_null=True, help_text="Estimated start (docs/queueing.md); pending only"
    )
    admitted_at = serializers.DateTimeField(allow_null=True)
    message = serializers.CharField(help_text="Kueue's reason: why it waits, or why it was evicted")


class GrantQueueSerializer(serializers.Serializer):
    """A queued grant's ClusterQueue as the collector last saw it."""

    grant = serializers.IntegerField(source="grant_id")
    cluster_queue = serializers.CharField(source="name")
    local_queue = serializers.SerializerMethodField()
    computed_at = serializers.DateTimeField()
    active = serializers.BooleanField()
    nominal_gpus = serializers.IntegerField()
    borrowing_limit_gpus = serializers.IntegerField(allow_null=True)
    lending_limit_gpus = serializers.IntegerField(allow_null=True, help_text="null: lends all its idle quota")
    used_gpus = serializers.IntegerField()
    borrowed_gpus = serializers.IntegerField()
    lent_gpus = serializers.IntegerField()
    admitted_workloads = serializers.IntegerField()
    pending_workloads = serializers.IntegerField()
    oldest_pending_seconds = serializers.FloatField()
    admission_rate_per_hour = serializers.FloatField(allow_null=True)
    kueue_webhook_ok = serializers.SerializerMethodField(
        help_text="Whether Kueue's webhook answered the collector's last dry-run Job; null: not known"
    )
    kueue_webhook_message = serializers.SerializerMethodField()
    workloads = serializers.SerializerMethodField()

    def get_local_queue(self, queue: Any) -> str:
        return LOCAL_QUEUE_NAME

    @extend_schema_field(serializers.BooleanField(allow_null=True))
    def get_kueue_webhook_ok(self, queue: Any) -> bool | None:
        health = self.context.get("kueue")
        return health.status.webhook_ok if health is not None and health.status is not None else None

    def get_kueue_webhook_message(self, queue: Any) -> str:
        health = self.context.get("kueue")
        return health.message if health is not None else ""

    @extend_schema_field(QueuedWorkloadSerializer(many=True))
    def get_workloads(self, queue: Any) -> list[dict[str, Any]]:
        return QueuedWorkloadSerializer(queue.detail.get("workloads", []), many=True).data


class RevokeInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=5000, help_text="Why; the team reads it")


class ShrinkInputSerializer(serializers.Serializer):
    # Bounds against the grant's current size are the service's to check (field error on "gpus").
    gpus = serializers.IntegerField(
        min_value=1, max_value=100_000, help_text="The grant's new, lower GPU count"
    )


# --- what runs in a grant's namespace, and how to reach it ----------------------------------------


class WorkloadProblemSerializer(serializers.Serializer):
    reason = serializers.ChoiceField(
        choices=sorted(TITLES), help_text="Why, as a code: see docs/utilisation.md (Why isn't it running?)"
    )
    title = serializers.CharField()
    message = serializers.CharField(help_text="The cluster's own words (the apiserver, scheduler or kubelet)")
    count = serializers.IntegerField(help_text="Pods affected, or times a pod create was refused")
    pods = serializers.ListField(child=serializers.CharField(), help_text="A few of the pods affected")


class WorkloadSerializer(serializers.Serializer):
    kind = serializers.CharField(
        help_text="Deployment, StatefulSet, Job, ReplicaSet, Pod, or the pods' controller"
    )
    name = serializers.CharField()
    state = serializers.ChoiceField(choices=sorted(STATE_LABELS))
    state_label = serializers.CharField()
    desired = serializers.IntegerField(help_text="Pods it should have now")
    pods = serializers.IntegerField(help_text="Pods it has")
    ready = serializers.IntegerField()
    gpus_per_pod = serializers.DictField(child=serializers.IntegerField(), help_text="GPU resource -> units")
    gpus_held = serializers.IntegerField(help_text="GPU units its pods on nodes hold")
    created = serializers.DateTimeField(allow_null=True)
    problems = WorkloadProblemSerializer(many=True)


class GrantWorkloadsSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    freshness = serializers.ChoiceField(
        choices=["live", "syncing", "stale", "silent", "none"],
        help_text="live: current; stale: the cluster does not answer; silent: the collector stopped; "
        "none: no collector watches the cluster",
    )
    observed_at = serializers.DateTimeField(allow_null=True)
    stale_since = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(help_text="The collector's error (admins and auditors only)")
    changed_at = serializers.DateTimeField(allow_null=True, help_text="When something last changed here")
    troubled = serializers.IntegerField(help_text="Workloads not (fully) running")
    workloads = WorkloadSerializer(many=True)


class GrantAccessSerializer(serializers.Serializer):
    cluster = serializers.CharField()
    api_server = serializers.CharField(help_text="The cluster's API endpoint")
    namespace = serializers.CharField()
    group = serializers.CharField(help_text="The group the namespace's RoleBinding binds")
    cluster_role = serializers.CharField()
    kubeconfig = serializers.CharField(help_text="YAML without any secret: add your own cluster identity")
    example_manifest = serializers.CharField(help_text="YAML: a model server built like serving deployments")
    example = serializers.JSONField(help_text="The same manifest as JSON")


# --- serving deployments --------------------------------------------------------------------------


class ServingDeploymentSerializer(serializers.ModelSerializer):
    grant = serializers.PrimaryKeyRelatedField(read_only=True)
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    namespace = serializers.CharField(source="grant.namespace", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    conditions = ConditionSerializer(many=True, read_only=True)

    class Meta:
        model = ServingDeployment
        fields = [
            "id",
            "grant",
            "team",
            "namespace",
            "name",
            "model_name",
            "image",
            "replicas",
            "gpus_per_replica",
            "args",
            "env",
            "created_by",
            "generation",
            "observed_generation",
            "conditions",
            "reconciled_at",
            "ready_replicas",
            "created_at",
            "ready_at",
            "load_seconds",
            "deleted_at",
        ]


class ServingDeploymentCreateSerializer(serializers.Serializer):
    grant = serializers.PrimaryKeyRelatedField(
        queryset=Grant.objects.none(), help_text="Id of an approved or active grant of your team"
    )
    name = serializers.CharField(max_length=50, help_text="A DNS label, unique within the grant")
    model_name = serializers.CharField(max_length=200)
    image = serializers.CharField(max_length=300, help_text="From an allowlisted registry")
    replicas = serializers.IntegerField(min_value=1, max_value=10_000, default=1)
    gpus_per_replica = serializers.IntegerField(min_value=1, max_value=10_000, default=1)
    args = serializers.ListField(
        child=serializers.CharField(max_length=1000, allow_blank=True), max_length=100, default=list
    )
    env = serializers.DictField(child=serializers.CharField(max_length=5000, allow_blank=True), default=dict)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:  # absent only while the OpenAPI schema is generated
            self.fields["grant"].queryset = selectors.grant_list(user=request.user)


class ScaleInputSerializer(serializers.Serializer):
    replicas = serializers.IntegerField(min_value=0, max_value=10_000, help_text="0 stops the model server")


# --- granted capacity (from grants; observed usage is pools.utilisation) ---------------------------


class TeamShareSerializer(serializers.Serializer):
    team = serializers.CharField()
    gpus = serializers.IntegerField()
    grants = serializers.IntegerField()


class PoolCapacityRowSerializer(serializers.Serializer):
    pool = serializers.IntegerField()
    name = serializers.CharField()
    pool_class = serializers.ChoiceField(choices=PoolClass.choices)
    accelerator = serializers.CharField()
    capacity_gpus = serializers.IntegerField()
    headroom_gpus = serializers.IntegerField()
    grantable_gpus = serializers.IntegerField()
    granted_gpus = serializers.IntegerField()
    free_gpus = serializers.IntegerField()
    batch_granted_gpus = serializers.IntegerField()
    batch_cap_gpus = serializers.IntegerField()
    granted_percent = serializers.FloatField(help_text="Granted share of the capacity")
    teams = TeamShareSerializer(many=True, help_text="Per team; only the teams you can see")


class PoolShareSerializer(serializers.Serializer):
    pool = serializers.IntegerField()
    name = serializers.CharField()
    accelerator = serializers.CharField()
    gpus = serializers.IntegerField()
    grants = serializers.IntegerField()
    hourly_cost = serializers.DecimalField(max_digits=14, decimal_places=3)


class TeamCapacityRowSerializer(serializers.Serializer):
    team = serializers.CharField()
    name = serializers.CharField()
    granted_gpus = serializers.IntegerField()
    grants = serializers.IntegerField()
    hourly_cost = serializers.DecimalField(max_digits=14, decimal_places=3, help_text="Of the granted GPUs")
    pools = PoolShareSerializer(many=True)


# --- audit -----------------------------------------------------------------------------------------


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "team",
            "before",
            "after",
            "message",
        ]
