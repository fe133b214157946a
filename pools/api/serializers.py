from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from pools.models import Accelerator, Cluster, CollectorState, NodePool, PoolUtilisation
from pools.utilisation.figures import POOL_FIGURES
from quotas.rules import PoolCapacity


class AcceleratorSerializer(serializers.ModelSerializer):
    resource_name = serializers.CharField(read_only=True, help_text="Extended resource pods request")

    class Meta:
        model = Accelerator
        fields = [
            "id",
            "slug",
            "name",
            "product",
            "type_label",
            "memory_gib",
            "mig_profile",
            "hourly_cost",
            "resource_name",
        ]


class ClusterSerializer(serializers.ModelSerializer):
    """Never the credentials. The API URL and the last error are for platform admins and auditors."""

    class Meta:
        model = Cluster
        fields = [
            "id",
            "name",
            "api_url",
            "in_cluster",
            "zones",
            "enabled",
            "server_version",
            "last_synced_at",
            "last_error",
            "created_at",
        ]

    def to_representation(self, instance: Cluster) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not self.context["request"].user.sees_everything:
            data["api_url"] = ""
            data["last_error"] = ""
        return data


class ClusterRegisterSerializer(serializers.Serializer):
    """A kubeconfig with inline credentials, or the API URL with a bearer token (and the CA bundle)."""

    name = serializers.SlugField(max_length=50)
    kubeconfig = serializers.CharField(
        required=False, allow_blank=True, write_only=True, max_length=1_000_000, trim_whitespace=False
    )
    api_url = serializers.URLField(required=False, allow_blank=True, max_length=300)
    token = serializers.CharField(required=False, allow_blank=True, write_only=True, max_length=10_000)
    ca_data = serializers.CharField(required=False, allow_blank=True, max_length=100_000, help_text="PEM")
    in_cluster = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Register the cluster the portal runs in, reached with its own ServiceAccount "
        "(give no other credentials)",
    )


class SyncSummarySerializer(serializers.Serializer):
    """What an inventory sync changed: pool names, and sentences for an admin to read."""

    created = serializers.ListField(child=serializers.CharField())
    updated = serializers.ListField(child=serializers.CharField())
    unchanged = serializers.ListField(child=serializers.CharField())
    disabled = serializers.ListField(child=serializers.CharField())
    catalogue_created = serializers.ListField(child=serializers.CharField())
    notes = serializers.ListField(child=serializers.CharField())


class TaintSerializer(serializers.Serializer):
    key = serializers.CharField()
    value = serializers.CharField(allow_blank=True)
    effect = serializers.CharField()


class PoolCapacitySerializer(serializers.Serializer):
    """What the portal has granted from a pool (from grants, not from the cluster)."""

    capacity_gpus = serializers.IntegerField(source="capacity")
    headroom_gpus = serializers.IntegerField(source="headroom", help_text="Kept free, never granted")
    grantable_gpus = serializers.IntegerField(source="grantable")
    granted_gpus = serializers.IntegerField(source="granted", help_text="Held by approved/active grants")
    free_gpus = serializers.IntegerField(source="free", help_text="Still grantable")
    batch_granted_gpus = serializers.IntegerField(source="batch_granted")
    batch_cap_gpus = serializers.IntegerField(source="batch_cap")


class LiveFiguresSerializer(serializers.ModelSerializer):
    """What the cluster reports now, from the utilisation collector (docs/utilisation.md)."""

    collector_state = serializers.SerializerMethodField(
        help_text="live, syncing, or stale (the cluster stopped answering: figures are the last known)"
    )

    class Meta:
        model = PoolUtilisation
        fields = ["computed_at", "collector_state", *(figure.name for figure in POOL_FIGURES)]

    def get_collector_state(self, live: PoolUtilisation) -> str:
        cluster_state = getattr(live.pool.cluster, "utilisation", None)
        return cluster_state.state if cluster_state is not None else CollectorState.STALE


class NodePoolSerializer(serializers.ModelSerializer):
    cluster = serializers.SlugRelatedField(slug_field="name", read_only=True)
    accelerator = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    taint = TaintSerializer(read_only=True)
    figures = serializers.SerializerMethodField()
    live = serializers.SerializerMethodField()

    class Meta:
        model = NodePool
        fields = [
            "id",
            "cluster",
            "name",
            "pool_class",
            "accelerator",
            "node_selector",
            "taint",
            "priority_class_name",
            "zones",
            "capacity_gpus",
            "headroom_gpus",
            "batch_fraction",
            "max_gpus_per_team",
            "enabled",
            "figures",
            "live",
        ]

    @extend_schema_field(PoolCapacitySerializer)
    def get_figures(self, pool: NodePool) -> dict[str, Any]:
        figures: PoolCapacity = self.context["figures"][(pool.pk, None)]
        return PoolCapacitySerializer(figures).data

    @extend_schema_field(LiveFiguresSerializer(allow_null=True))
    def get_live(self, pool: NodePool) -> dict[str, Any] | None:
        # A reverse one-to-one raises an AttributeError subclass when the collector never reported.
        live = getattr(pool, "utilisation", None)
        return LiveFiguresSerializer(live).data if live is not None else None
