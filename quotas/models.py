from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from pools.models import Accelerator, AdmissionMode, NodePool, PoolClass
from portal.querysets import TeamQuerySet, TeamScopedQuerySet
from quotas.states import RequestState

dns_label = RegexValidator(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    "Use lower-case letters, digits and '-', starting and ending alphanumeric.",
)

CLASS_SHORT_NAMES = {
    PoolClass.INTERACTIVE: "interactive",
    PoolClass.BATCH: "batch",
    PoolClass.EMBEDDING: "embedding",
    PoolClass.EXPERIMENTATION: "experiment",
}


class Team(models.Model):
    slug = models.CharField(
        max_length=30, unique=True, validators=[dns_label], help_text="Used in namespace names; a DNS label"
    )
    name = models.CharField(max_length=100)
    k8s_group = models.CharField(
        max_length=200, blank=True, help_text="Identity-provider group bound to the team's namespaces"
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")

    objects = TeamQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def group_name(self) -> str:
        return self.k8s_group or f"team:{self.slug}"


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member", "Member"
        LEAD = "lead", "Team lead"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class Precision(models.TextChoices):
    FP32 = "fp32", "FP32"
    BF16 = "bf16", "BF16"
    FP16 = "fp16", "FP16"
    FP8 = "fp8", "FP8"
    INT8 = "int8", "INT8"
    INT4 = "int4", "INT4"


class CapacityRequest(models.Model):
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="requests")
    pool_class = models.CharField(max_length=32, choices=PoolClass.choices)
    accelerator = models.ForeignKey(Accelerator, on_delete=models.PROTECT, related_name="requests")
    # Chosen by the portal at submission (the pool with that accelerator and the most room) and
    # re-checked under a row lock at the final approval.
    pool = models.ForeignKey(
        NodePool, null=True, blank=True, on_delete=models.PROTECT, related_name="requests"
    )
    gpus = models.PositiveIntegerField(validators=[MinValueValidator(1)], help_text="Accelerator units")
    cpu = models.DecimalField(max_digits=7, decimal_places=2, null=True, blank=True, help_text="CPU cores")
    memory_gib = models.PositiveIntegerField(null=True, blank=True)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    purpose = models.TextField()
    model_parameters_billion = models.DecimalField(
        max_digits=7, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(Decimal("0.01"))]
    )
    model_precision = models.CharField(max_length=8, choices=Precision.choices, blank=True)
    gpus_per_replica = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Units one model replica spans"
    )
    borrow_gpus = models.PositiveIntegerField(
        default=0,
        help_text="Units the team's Jobs may borrow beyond `gpus` from idle quota of the pool's cohort "
        "(pools that queue through Kueue only); never promised: owners take them back",
    )
    state = models.CharField(max_length=20, choices=RequestState.choices, default=RequestState.DRAFT)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # Lists page newest first: the index lets a page stop after its rows instead of sorting them all.
        indexes = [
            models.Index(fields=["state"]),
            models.Index(fields=["team", "state"]),
            models.Index(fields=["-created_at", "-id"], name="request_newest_first"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")), name="request_window"
            ),
            models.CheckConstraint(condition=models.Q(gpus__gte=1), name="request_gpus_positive"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.team} {self.gpus}x {self.accelerator.slug} ({self.pool_class})"


class ApprovalDecision(models.Model):
    class Stage(models.TextChoices):
        AUTO = "auto", "Automatic"
        LEAD = "lead", "Team lead"
        PLATFORM = "platform", "Platform admin"

    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"

    request = models.ForeignKey(CapacityRequest, on_delete=models.CASCADE, related_name="decisions")
    stage = models.CharField(max_length=10, choices=Stage.choices)
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["decided_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_stage_display()} {self.decision} of request #{self.request_id}"


class Grant(models.Model):
    """What an approved request becomes: GPUs of one pool for one team, enforced in one namespace."""

    request = models.OneToOneField(CapacityRequest, on_delete=models.PROTECT, related_name="grant")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="grants")
    pool = models.ForeignKey(NodePool, on_delete=models.PROTECT, related_name="grants")
    gpus = models.PositiveIntegerField()
    # Fixed at approval from the pool's policy and the cluster: a grant never changes how it admits.
    admission = models.CharField(max_length=10, choices=AdmissionMode.choices, default=AdmissionMode.QUOTA)
    borrow_gpus = models.PositiveIntegerField(
        default=0, help_text="Kueue borrowing limit: units beyond `gpus` its Jobs may borrow"
    )
    namespace = models.CharField(max_length=63, unique=True)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    # Level-based reconcile bookkeeping: every change to the desired state bumps `generation`; the
    # reconciler records the generation it last made true in `observed_generation`.
    generation = models.PositiveBigIntegerField(default=1)
    observed_generation = models.PositiveBigIntegerField(default=0)
    conditions = models.JSONField(default=list, blank=True)
    reconciled_at = models.DateTimeField(null=True, blank=True)
    # An ended grant keeps its namespace (the team's data and objects stay) until a platform admin
    # deletes it through the portal; from then on the reconciler keeps it deleted.
    namespace_deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["-created_at", "-id"], name="grant_newest_first")]

    def __str__(self) -> str:
        return f"grant {self.namespace} ({self.gpus}x {self.pool.accelerator.slug})"

    @staticmethod
    def namespace_for(request: CapacityRequest) -> str:
        return f"{request.team.slug}-{CLASS_SHORT_NAMES[PoolClass(request.pool_class)]}-r{request.pk}"

    @property
    def state(self) -> str:
        return self.request.state

    @property
    def queued(self) -> bool:
        """Its Jobs queue through Kueue (docs/queueing.md)."""
        return self.admission == AdmissionMode.KUEUE


class ServingDeployment(models.Model):
    """A model server the portal runs inside a grant's namespace, carrying the scheduling contract."""

    grant = models.ForeignKey(Grant, on_delete=models.PROTECT, related_name="deployments")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=50, validators=[dns_label])
    model_name = models.CharField(max_length=200)
    image = models.CharField(max_length=300)
    replicas = models.PositiveIntegerField(default=1)
    gpus_per_replica = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    args = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    generation = models.PositiveBigIntegerField(default=1)
    observed_generation = models.PositiveBigIntegerField(default=0)
    conditions = models.JSONField(default=list, blank=True)
    reconciled_at = models.DateTimeField(null=True, blank=True)
    ready_replicas = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    load_seconds = models.FloatField(null=True, blank=True, help_text="Creation to all replicas Ready")
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["-created_at", "-id"], name="deployment_newest_first")]
        constraints = [
            models.UniqueConstraint(fields=["grant", "name"], name="deployment_name_unique_per_grant")
        ]

    def __str__(self) -> str:
        return f"{self.grant.namespace}/{self.name}"
