from datetime import datetime, timedelta
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from pools.kube.objects import POOL_LABEL, TYPE_LABEL, gpu_resource_name
from pools.utilisation.figures import HISTORY_FIGURES, POOL_FIGURES, Rollup
from portal.fields import EncryptedTextField
from portal.querysets import TeamScopedQuerySet


class PoolClass(models.TextChoices):
    """The seed's node pool taxonomy: each class has its own design concern."""

    INTERACTIVE = "interactive-inference", "Interactive inference"
    BATCH = "batch-inference", "Batch inference"
    EMBEDDING = "embedding-reranking", "Embedding and reranking"
    EXPERIMENTATION = "experimentation", "Experimentation"


# Pool classes whose grants queue through Kueue when the cluster has it: throughput work that can
# wait its turn. Interactive and embedding serving must never wait in a queue nor join a batch cohort.
QUEUEING_CLASSES = frozenset({PoolClass.BATCH, PoolClass.EXPERIMENTATION})


class AdmissionMode(models.TextChoices):
    """How a grant's GPU work is admitted (docs/queueing.md)."""

    QUOTA = "quota", "ResourceQuota (pods beyond the grant are refused)"
    KUEUE = "kueue", "Kueue (Jobs wait in a queue, idle quota is borrowed and reclaimed)"


class AdmissionPolicy(models.TextChoices):
    AUTO = "auto", "Kueue for batch and experimentation pools when the cluster has it"
    QUOTA = "quota", "Always ResourceQuota"


class ReclaimPolicy(models.TextChoices):
    """Kueue's reclaimWithinCohort: how a ClusterQueue takes back quota it lent."""

    ANY = "Any", "Preempt any borrowing workload"
    LOWER_PRIORITY = "LowerPriority", "Preempt only lower-priority borrowing workloads"
    NEVER = "Never", "Never preempt; wait until borrowers finish"


class Accelerator(models.Model):
    """A schedulable accelerator unit: a whole GPU model, or one MIG profile of it."""

    slug = models.SlugField(unique=True, help_text="e.g. a100-80gb, a100-mig-1g.10gb")
    name = models.CharField(max_length=100, help_text="Display name, e.g. NVIDIA A100 80GB")
    product = models.CharField(
        max_length=100,
        help_text="Value of the nvidia.com/gpu.product node label set by GPU Feature Discovery",
    )
    type_label = models.CharField(
        max_length=50, help_text=f"Value of the {TYPE_LABEL} node label, e.g. nvidia-a100"
    )
    memory_gib = models.PositiveIntegerField(help_text="GPU memory of one unit (one GPU or one MIG slice)")
    mig_profile = models.CharField(max_length=20, blank=True, help_text="e.g. 1g.10gb; empty for a whole GPU")
    hourly_cost = models.DecimalField(
        max_digits=8, decimal_places=3, default=Decimal("0"), help_text="Cost of one unit for one hour"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def resource_name(self) -> str:
        """The extended resource the device plugin advertises for this unit."""
        return gpu_resource_name(self.mig_profile)


class Cluster(models.Model):
    # The encrypted fields: decrypted whenever a row is read, so reads that only name the cluster
    # defer them (`.defer(*Cluster.CREDENTIALS)`).
    CREDENTIALS = ("kubeconfig", "token")

    name = models.SlugField(unique=True)
    api_url = models.URLField(max_length=300, blank=True, help_text="Filled from the kubeconfig when empty")
    # A whole kubeconfig, or a bearer token with the CA bundle: encrypted, never rendered or logged.
    kubeconfig = EncryptedTextField(blank=True)
    token = EncryptedTextField(blank=True)
    in_cluster = models.BooleanField(
        default=False,
        help_text="The cluster the portal runs in, reached with the portal pod's own ServiceAccount "
        "(nothing stored)",
    )
    ca_data = models.TextField(blank=True, help_text="PEM CA bundle for api_url (public, not a secret)")
    zones = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    server_version = models.CharField(max_length=40, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    prometheus_url = models.URLField(
        max_length=300,
        blank=True,
        help_text="Optional Prometheus scraping DCGM and vLLM in this cluster, e.g. http://prometheus:9090",
    )
    kueue_version = models.CharField(
        max_length=20,
        blank=True,
        help_text="Kueue API version the cluster serves (v1beta2), found by registration and inventory "
        "sync; empty when it has no Kueue",
    )
    prometheus_node_label = models.CharField(
        max_length=100,
        default="Hostname",
        validators=[RegexValidator(r"^[a-zA-Z_][a-zA-Z0-9_]*$", "Not a Prometheus label name.")],
        help_text="Label of the DCGM series holding the Kubernetes node name",
    )
    autoscaler_health_url = models.URLField(
        max_length=300,
        blank=True,
        help_text=(
            "Optional health endpoint of the cluster's autoscaler, e.g. "
            "http://karpenter.kube-system:8081/readyz (Karpenter) or "
            "http://cluster-autoscaler.kube-system:8085/health-check; without it, autoscaling counts as "
            "unavailable only when pending pods get no node"
        ),
    )
    autoscaler_node_groups = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "Cluster-autoscaler node groups, by name, as their cloud node groups are tagged for scale from "
            'zero: {"gpu-h100": {"minSize": 0, "maxSize": 4, "instanceType": "p5.48xlarge", '
            '"zones": [...], "tags": {"k8s.io/cluster-autoscaler/node-template/label/<key>": "<value>", '
            '"k8s.io/cluster-autoscaler/node-template/taint/<key>": "<value>:NoSchedule", '
            '"k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu": "8"}}}. Karpenter '
            "NodePools are read from the cluster and need no entry here."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        # The default repr is fine today, but this guarantees credentials never reach a log via repr().
        return f"<Cluster {self.name}>"


class NodePool(models.Model):
    """A group of GPU nodes in one cluster that shares one accelerator, one taint and one pool class."""

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="pools")
    name = models.SlugField(help_text=f"Value of the {POOL_LABEL} node label")
    pool_class = models.CharField(max_length=32, choices=PoolClass.choices)
    accelerator = models.ForeignKey(Accelerator, on_delete=models.PROTECT, related_name="pools")
    node_selector = models.JSONField(default=dict, help_text="Labels every node of the pool carries")
    taint_key = models.CharField(max_length=253, default=POOL_LABEL)
    taint_value = models.CharField(max_length=63, blank=True)
    taint_effect = models.CharField(max_length=20, default="NoSchedule")
    priority_class_name = models.CharField(max_length=253)
    zones = models.JSONField(default=list, blank=True)
    capacity_gpus = models.PositiveIntegerField(help_text="Accelerator units in the pool")
    headroom_gpus = models.PositiveIntegerField(
        default=0, help_text="Warm units never granted, kept free for interactive traffic"
    )
    batch_fraction = models.DecimalField(
        max_digits=3,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
        help_text="Share of capacity batch-inference grants may hold (1 for a batch pool, 0 to refuse batch)",
    )
    max_gpus_per_team = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    # Elastic pools: the autoscaler node groups (Karpenter NodePools, cluster-autoscaler groups) that
    # make the pool's nodes, as the last inventory sync found them. Empty for a static pool.
    node_groups = models.JSONField(
        default=list, blank=True, help_text="Node groups that make this pool's nodes (set by inventory sync)"
    )
    queue_wait_target_seconds = models.PositiveIntegerField(
        default=60,
        help_text="Longest an interactive pod should wait for a GPU; the warm-pool advice sizes to it",
    )
    # Queueing policy (docs/queueing.md): used by grants of pools in AdmissionMode.KUEUE.
    admission = models.CharField(
        max_length=10,
        choices=AdmissionPolicy.choices,
        default=AdmissionPolicy.AUTO,
        help_text="How new grants admit work; interactive and embedding pools always use ResourceQuota",
    )
    lending_percent = models.PositiveSmallIntegerField(
        default=100,
        validators=[MaxValueValidator(100)],
        help_text="Share of each grant's idle GPUs its ClusterQueue lends to the pool's cohort",
    )
    max_borrow_gpus = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most GPUs one grant may ask to borrow from the cohort; empty: up to the batch cap",
    )
    reclaim_policy = models.CharField(
        max_length=20,
        choices=ReclaimPolicy.choices,
        default=ReclaimPolicy.ANY,
        help_text="How a grant takes back GPUs it lent (Kueue's reclaimWithinCohort)",
    )

    class Meta:
        ordering = ["cluster__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="pool_name_unique_per_cluster"),
            models.CheckConstraint(
                condition=models.Q(headroom_gpus__lte=models.F("capacity_gpus")),
                name="pool_headroom_within_capacity",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cluster.name}/{self.name}"

    @property
    def grantable_gpus(self) -> int:
        return self.capacity_gpus - self.headroom_gpus

    @property
    def taint(self) -> dict[str, str]:
        return {"key": self.taint_key, "value": self.taint_value, "effect": self.taint_effect}

    @property
    def elastic(self) -> bool:
        return bool(self.node_groups)

    @property
    def keeps_warm_headroom(self) -> bool:
        """Placeholder pods hold this pool's headroom on the cluster: an interactive pool that scales,
        so the autoscaler keeps nodes for them (on a static pool the GPUs exist anyway and the
        approval rule keeps them ungranted)."""
        return (
            self.enabled
            and self.cluster.enabled
            and self.pool_class == PoolClass.INTERACTIVE
            and self.elastic
            and self.headroom_gpus > 0
        )

    @property
    def admission_mode(self) -> str:
        """How a grant approved now would admit work: Kueue for a batch or experimentation pool of a
        cluster that serves Kueue's API, unless an admin chose ResourceQuota; ResourceQuota otherwise."""
        if (
            self.pool_class in QUEUEING_CLASSES
            and self.admission == AdmissionPolicy.AUTO
            and self.cluster.kueue_version
        ):
            return AdmissionMode.KUEUE
        return AdmissionMode.QUOTA


# ----------------------------------------------------------------------------------------------
# Live utilisation, written by the collector (pools/utilisation/collector.py), and its history.


# The collector writes at least every 5 s; silence for longer than this means it is not running.
COLLECTOR_SILENT_AFTER = timedelta(seconds=20)


class CollectorState(models.TextChoices):
    SYNCING = "syncing", "Syncing"
    LIVE = "live", "Live"
    STALE = "stale", "Stale"


class ClusterUtilisation(models.Model):
    """The collector's view of one cluster: is what the portal shows about it current?"""

    cluster = models.OneToOneField(Cluster, on_delete=models.CASCADE, related_name="utilisation")
    state = models.CharField(max_length=10, choices=CollectorState.choices, default=CollectorState.SYNCING)
    heartbeat_at = models.DateTimeField(
        help_text="Last write by the collector; an old one means it is not running"
    )
    observed_at = models.DateTimeField(
        null=True, blank=True, help_text="Last successful contact with the apiserver"
    )
    stale_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    lists = models.PositiveIntegerField(
        default=0,
        help_text="Full lists since the collector started: the first ones, then relists after 410 Gone",
    )
    unpooled_gpu_nodes = models.JSONField(default=list, blank=True)
    unmatched_pending = models.PositiveIntegerField(
        default=0, help_text="Pending GPU pods that target no pool"
    )

    def __str__(self) -> str:
        return f"{self.cluster.name}: {self.state}"


class AutoscalerState(models.TextChoices):
    AVAILABLE = "available", "Available"
    UNAVAILABLE = "unavailable", "Unavailable"
    UNKNOWN = "unknown", "Unknown"
    NONE = "none", "No autoscaler"


class ClusterInventory(models.Model):
    """The collector's live inventory of a cluster's nodes and node groups, for the approval pre-flight:
    it reads this row (and the staleness mark of ClusterUtilisation) instead of asking the cluster.
    Written only when the content changes (`digest`); ClusterUtilisation.heartbeat_at says it is current."""

    cluster = models.OneToOneField(Cluster, on_delete=models.CASCADE, related_name="inventory")
    # pools.kube.nodegroups.inventory_document: {"nodes": [summaries], "node_groups": [groups]}
    document = models.JSONField(default=dict)
    digest = models.CharField(max_length=64, blank=True)
    changed_at = models.DateTimeField(help_text="When the content last changed")
    node_groups_served = models.BooleanField(
        default=False, help_text="The cluster serves Karpenter's NodePool API"
    )
    node_groups_error = models.TextField(
        blank=True, help_text="Why node groups could not be read (last known kept)"
    )
    autoscaler_state = models.CharField(
        max_length=12, choices=AutoscalerState.choices, default=AutoscalerState.UNKNOWN
    )
    autoscaler_message = models.TextField(blank=True)
    autoscaler_since = models.DateTimeField(null=True, blank=True, help_text="Since when the state holds")

    def __str__(self) -> str:
        return f"{self.cluster.name}: {len(self.document.get('node_groups') or [])} node groups"


class NodeBringUp(models.Model):
    """One node an autoscaler brought up, and how long it took: from the request for it (Karpenter's
    NodeClaim) until it was initialized (Ready, GPUs registered). Kept after the node is gone: the
    bring-up times and the warm-pool advice are computed from these rows."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="bringups")
    node_group = models.CharField(max_length=253)
    name = models.CharField(max_length=253, help_text="The NodeClaim")
    instance_type = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField()
    ready_at = models.DateTimeField()
    seconds = models.FloatField()

    class Meta:
        ordering = ["-ready_at"]
        constraints = [models.UniqueConstraint(fields=["cluster", "name"], name="bringup_unique_per_cluster")]
        indexes = [models.Index(fields=["cluster", "node_group", "-ready_at"])]

    def __str__(self) -> str:
        return f"{self.cluster_id}/{self.node_group}/{self.name}: {self.seconds:.0f}s"


class WarmHeadroom(models.Model):
    """The placeholder pods that hold an interactive pool's warm headroom on its cluster: what the
    reconciler last applied and observed (pools.headroom)."""

    pool = models.OneToOneField(NodePool, on_delete=models.CASCADE, related_name="warm")
    gpus_wanted = models.PositiveIntegerField(default=0)
    gpus_held = models.PositiveIntegerField(default=0, help_text="Units of placeholders running")
    pods_pending = models.PositiveIntegerField(default=0, help_text="Placeholders waiting for a node")
    # [{"name": Deployment, "gpus": per pod, "replicas": n, "ready": n}]
    placeholders = models.JSONField(default=list, blank=True)
    conditions = models.JSONField(default=list, blank=True)
    reconciled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.pool}: {self.gpus_held}/{self.gpus_wanted} warm"


class PoolUtilisation(models.Model):
    """The current figures of one pool: a column per entry of POOL_FIGURES (added below the class)."""

    pool = models.OneToOneField(NodePool, on_delete=models.CASCADE, related_name="utilisation")
    computed_at = models.DateTimeField()
    # {"nodes": [...], "pending": [...], "namespaces": [...], "non_gpu_pods": [...]}
    detail = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.pool}: {self.gpus_requested}/{self.gpus_allocatable} GPUs"

    @property
    def headroom_short(self) -> bool:
        # Placeholder GPUs are warm headroom: an interactive pod takes them by preemption at once.
        return (
            self.pool.pool_class == PoolClass.INTERACTIVE
            and self.gpus_free + self.placeholder_gpus < self.pool.headroom_gpus
        )


class SnapshotResolution(models.IntegerChoices):
    """History tiers: raw samples at the collector's interval, then 5-minute and 1-hour averages."""

    RAW = 0, "Samples"
    FIVE_MINUTES = 300, "5-minute averages"
    HOUR = 3600, "1-hour averages"


class PoolSnapshot(models.Model):
    """A point of a pool's history: a column per figure of HISTORY_FIGURES (added below the class).
    Averages are weighted by `seconds`, the time the row stands for, so rolling rows up and
    integrating GPU-hours stay exact across tiers."""

    pool = models.ForeignKey(NodePool, on_delete=models.CASCADE, related_name="snapshots")
    resolution = models.PositiveIntegerField(choices=SnapshotResolution.choices)
    at = models.DateTimeField(help_text="Sample time, or the start of the averaged bucket")
    seconds = models.FloatField()

    class Meta:
        ordering = ["pool", "at"]
        indexes = [
            models.Index(fields=["pool", "resolution", "at"]),
            models.Index(fields=["resolution", "at"]),
        ]

    def __str__(self) -> str:
        return f"{self.pool_id} @ {self.at:%Y-%m-%d %H:%M:%S} ({self.get_resolution_display()})"


# One column per figure, from the one table (pools.utilisation.figures.POOL_FIGURES).
for _figure in POOL_FIGURES:
    PoolUtilisation.add_to_class(
        _figure.name,
        models.PositiveIntegerField(default=0, help_text=_figure.help)
        if _figure.integer
        else models.FloatField(default=0, help_text=_figure.help),
    )
for _figure in HISTORY_FIGURES:
    _how = "maximum over the bucket" if _figure.rollup == Rollup.MAXIMUM else "average over the bucket"
    PoolSnapshot.add_to_class(
        _figure.name, models.FloatField(default=0, help_text=f"{_figure.help} ({_how})")
    )


class TeamUsageSnapshot(models.Model):
    """GPU-seconds a team's pods held in a pool during one sample or bucket; `team` is empty for
    namespaces that belong to no grant. Rows exist only for non-zero use."""

    pool = models.ForeignKey(NodePool, on_delete=models.CASCADE, related_name="team_snapshots")
    team = models.ForeignKey(
        "quotas.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="usage_snapshots"
    )
    resolution = models.PositiveIntegerField(choices=SnapshotResolution.choices)
    at = models.DateTimeField()
    seconds = models.FloatField()
    gpu_seconds = models.FloatField()

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["pool", "at"]
        indexes = [models.Index(fields=["resolution", "at"])]

    def __str__(self) -> str:
        return f"{self.team_id} in {self.pool_id} @ {self.at:%Y-%m-%d %H:%M:%S}: {self.gpu_seconds:.0f} GPU-s"


# ----------------------------------------------------------------------------------------------
# Workloads of portal namespaces and why those not running are not, written by the collector's
# workload watches (pools/utilisation/workloads.py). Their own tables: the figures above are
# written on another beat and by other code.


class WorkloadWatchState(models.Model):
    """Whether the collector's view of a cluster's workloads is current."""

    cluster = models.OneToOneField(Cluster, on_delete=models.CASCADE, related_name="workload_watch")
    state = models.CharField(max_length=10, choices=CollectorState.choices, default=CollectorState.SYNCING)
    heartbeat_at = models.DateTimeField(help_text="Last write; an old one means the collector is not running")
    observed_at = models.DateTimeField(
        null=True, blank=True, help_text="Last time every workload watch was current"
    )
    stale_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    # The watches write at least every 5 s (pools.utilisation.workloads.HEARTBEAT).
    SILENT_AFTER = timedelta(seconds=20)

    def __str__(self) -> str:
        return f"{self.cluster.name} workloads: {self.state}"

    def freshness(self, now: datetime) -> str:
        """live, syncing, stale (the cluster does not answer) or silent (the collector stopped)."""
        if now - self.heartbeat_at > self.SILENT_AFTER:
            return "silent"
        return str(self.state)


class NamespaceWorkloads(models.Model):
    """The workloads of one portal namespace as the collector last saw them (pools.utilisation.
    diagnosis: kind, name, state, pods, GPUs and the cluster's reasons for what is not running).
    Keyed by namespace, not grant: the cluster knows namespaces; the grant page looks its own up."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="namespace_workloads")
    namespace = models.CharField(max_length=63)
    workloads = models.JSONField(default=list, blank=True)
    troubled = models.PositiveIntegerField(default=0, help_text="Workloads not (fully) running")
    changed_at = models.DateTimeField(help_text="When the collector last saw something change here")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cluster", "namespace"], name="namespace_workloads_unique")
        ]

    def __str__(self) -> str:
        return (
            f"{self.cluster_id}/{self.namespace}: {len(self.workloads)} workloads, {self.troubled} troubled"
        )


# ----------------------------------------------------------------------------------------------
# Scaling the collector out: which replica watches which cluster (pools/utilisation/leases.py).


class CollectorLease(models.Model):
    """The right to watch one cluster and write its figures and history. Taken, renewed and given
    up with single atomic UPDATEs against the database's clock; `epoch` grows with every
    acquisition and is the fencing token: a write carries (holder, epoch) and is refused, in its own
    transaction, once either has moved on."""

    cluster = models.OneToOneField(
        Cluster, on_delete=models.CASCADE, primary_key=True, related_name="collector_lease"
    )
    holder = models.CharField(max_length=200, blank=True, help_text="The replica holding it; empty: free")
    epoch = models.PositiveBigIntegerField(default=0, help_text="Acquisitions so far: the fencing token")
    acquired_at = models.DateTimeField(null=True, blank=True)
    renewed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_sample_at = models.DateTimeField(
        null=True, blank=True, help_text="Time of the cluster's last history sample, by whichever holder"
    )

    def __str__(self) -> str:
        return f"{self.cluster_id}: {self.holder or '(free)'} #{self.epoch}"


class CollectorReplica(models.Model):
    """A running collector process that shares the clusters with the others (one not started with
    --cluster): the replicas count each other to take a fair share each."""

    holder = models.CharField(max_length=200, unique=True)
    started_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.holder


# ----------------------------------------------------------------------------------------------
# Kueue queues of grants in AdmissionMode.KUEUE, written by the collector's queue watch
# (pools/utilisation/queue_watch.py) from its watches of Workloads and ClusterQueues. Like the
# utilisation rows these are observations of a cluster, not decisions: no audit events.


class KueueStatus(models.Model):
    """Whether a cluster's Kueue answers, as the collector's queue watch last found out."""

    cluster = models.OneToOneField(Cluster, on_delete=models.CASCADE, related_name="kueue_status")
    heartbeat_at = models.DateTimeField(help_text="Last write by the queue watch")
    watching = models.BooleanField(
        default=False, help_text="The Workload and ClusterQueue watches are listed and current"
    )
    observed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    webhook_ok = models.BooleanField(
        null=True,
        blank=True,
        help_text="Whether a dry-run Job in a queued grant namespace passed Kueue's webhook; "
        "empty until there is such a namespace to probe",
    )
    webhook_message = models.TextField(blank=True, help_text="The apiserver's refusal of the probe")
    webhook_checked_at = models.DateTimeField(null=True, blank=True)
    webhook_failing_since = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Kueue of {self.cluster_id}: webhook {self.webhook_ok}"


class QueueStatus(models.Model):
    """One portal ClusterQueue (one per queued grant) as the collector last saw it, with its
    admitted and pending Workloads in `detail` (positions and estimated starts, docs/queueing.md)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="queues")
    pool = models.ForeignKey(
        NodePool, null=True, blank=True, on_delete=models.SET_NULL, related_name="queues"
    )
    grant = models.OneToOneField(
        "quotas.Grant", null=True, blank=True, on_delete=models.SET_NULL, related_name="queue_status"
    )
    team = models.ForeignKey(
        "quotas.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="queues"
    )
    name = models.CharField(max_length=253, help_text="The ClusterQueue")
    namespace = models.CharField(max_length=63, blank=True)
    computed_at = models.DateTimeField()
    active = models.BooleanField(default=False, help_text="Kueue's Active condition")
    active_reason = models.CharField(max_length=100, blank=True)
    active_message = models.TextField(blank=True)
    nominal_gpus = models.PositiveIntegerField(default=0)
    borrowing_limit_gpus = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: no limit")
    lending_limit_gpus = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: all")
    used_gpus = models.PositiveIntegerField(default=0, help_text="GPUs of admitted Workloads")
    borrowed_gpus = models.PositiveIntegerField(default=0, help_text="Used beyond the nominal quota")
    lent_gpus = models.PositiveIntegerField(
        default=0, help_text="Idle nominal GPUs other queues of the cohort use now (apportioned)"
    )
    admitted_workloads = models.PositiveIntegerField(default=0)
    pending_workloads = models.PositiveIntegerField(default=0)
    oldest_pending_seconds = models.FloatField(default=0)
    recent_admissions = models.PositiveIntegerField(default=0, help_text="Admissions in the rate window")
    admission_rate_per_hour = models.FloatField(null=True, blank=True, help_text="Empty: no recent admission")
    # {"workloads": [...]}: see pools.utilisation.queues.WorkloadRow
    detail = models.JSONField(default=dict, blank=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["cluster", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="queue_status_unique_per_cluster")
        ]

    def __str__(self) -> str:
        return f"{self.name}: {self.admitted_workloads} admitted, {self.pending_workloads} pending"


class WorkloadAdmission(models.Model):
    """One admission of a Kueue Workload into a portal ClusterQueue: the recent admission rate (the
    estimated start) and the admission wait come from these rows. A Workload preempted and admitted
    again has one row per admission."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="admissions")
    uid = models.CharField(max_length=64)
    admitted_at = models.DateTimeField()
    queued_at = models.DateTimeField(help_text="Creation, or the eviction it was queued again after")
    namespace = models.CharField(max_length=63)
    name = models.CharField(max_length=253)
    cluster_queue = models.CharField(max_length=253)
    pool = models.ForeignKey(NodePool, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    team = models.ForeignKey(
        "quotas.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="admissions"
    )
    gpus = models.PositiveIntegerField(default=0)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-admitted_at"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "uid", "admitted_at"], name="admission_unique")
        ]
        indexes = [models.Index(fields=["cluster", "cluster_queue", "admitted_at"])]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} admitted {self.admitted_at:%H:%M:%S}"

    @property
    def wait_seconds(self) -> float:
        return max(0.0, (self.admitted_at - self.queued_at).total_seconds())


class QueueSnapshot(models.Model):
    """A point of a pool's queue history per team (team empty: queues of no grant), in the tiers
    of the utilisation history. Gauges are averages weighted by `seconds` (the wait a maximum);
    `admissions` and `admission_wait_seconds` are sums, so the mean admission wait of any span is
    their quotient, exact across tiers."""

    pool = models.ForeignKey(NodePool, on_delete=models.CASCADE, related_name="queue_snapshots")
    team = models.ForeignKey(
        "quotas.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="queue_snapshots"
    )
    resolution = models.PositiveIntegerField(choices=SnapshotResolution.choices)
    at = models.DateTimeField()
    seconds = models.FloatField()
    pending_workloads = models.FloatField(default=0)
    admitted_workloads = models.FloatField(default=0)
    nominal_gpus = models.FloatField(default=0)
    used_gpus = models.FloatField(default=0)
    borrowed_gpus = models.FloatField(default=0)
    lent_gpus = models.FloatField(default=0)
    pending_wait_max_seconds = models.FloatField(default=0, help_text="Longest wait of a pending Workload")
    admissions = models.FloatField(default=0, help_text="Admissions during the time the row stands for")
    admission_wait_seconds = models.FloatField(default=0, help_text="Sum of those admissions' waits")

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["pool", "at"]
        indexes = [
            models.Index(fields=["pool", "resolution", "at"]),
            models.Index(fields=["resolution", "at"]),
        ]

    def __str__(self) -> str:
        return f"queues of {self.pool_id}/{self.team_id} @ {self.at:%Y-%m-%d %H:%M:%S}"
