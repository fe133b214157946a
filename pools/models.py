from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from portal.fields import EncryptedTextField

LABEL_PREFIX = "accelerator.platform.example.com"


class PoolClass(models.TextChoices):
    """The seed's node pool taxonomy: each class has its own design concern."""

    INTERACTIVE = "interactive-inference", "Interactive inference"
    BATCH = "batch-inference", "Batch inference"
    EMBEDDING = "embedding-reranking", "Embedding and reranking"
    EXPERIMENTATION = "experimentation", "Experimentation"


class Accelerator(models.Model):
    """A schedulable accelerator unit: a whole GPU model, or one MIG profile of it."""

    slug = models.SlugField(unique=True, help_text="e.g. a100-80gb, a100-mig-1g.10gb")
    name = models.CharField(max_length=100, help_text="Display name, e.g. NVIDIA A100 80GB")
    product = models.CharField(
        max_length=100,
        help_text="Value of the nvidia.com/gpu.product node label set by GPU Feature Discovery",
    )
    type_label = models.CharField(
        max_length=50, help_text=f"Value of the {LABEL_PREFIX}/type node label, e.g. nvidia-a100"
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
        return f"nvidia.com/mig-{self.mig_profile}" if self.mig_profile else "nvidia.com/gpu"


class Cluster(models.Model):
    name = models.SlugField(unique=True)
    api_url = models.URLField(max_length=300, blank=True, help_text="Filled from the kubeconfig when empty")
    # A whole kubeconfig, or a bearer token with the CA bundle: encrypted, never rendered or logged.
    kubeconfig = EncryptedTextField(blank=True)
    token = EncryptedTextField(blank=True)
    ca_data = models.TextField(blank=True, help_text="PEM CA bundle for api_url (public, not a secret)")
    zones = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    server_version = models.CharField(max_length=40, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
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
    name = models.SlugField(help_text=f"Value of the {LABEL_PREFIX}/pool node label")
    pool_class = models.CharField(max_length=32, choices=PoolClass.choices)
    accelerator = models.ForeignKey(Accelerator, on_delete=models.PROTECT, related_name="pools")
    node_selector = models.JSONField(default=dict, help_text="Labels every node of the pool carries")
    taint_key = models.CharField(max_length=253, default=f"{LABEL_PREFIX}/pool")
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

    def accepts(self, pool_class: str) -> bool:
        """Batch work may borrow another class's pool up to its batch fraction; other classes may not."""
        if pool_class == self.pool_class:
            return True
        return pool_class == PoolClass.BATCH and self.batch_fraction > 0
