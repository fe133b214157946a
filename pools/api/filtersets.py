import django_filters
from django.db.models import QuerySet

from pools.models import Accelerator, Cluster, NodePool, PoolClass


class AcceleratorFilterSet(django_filters.FilterSet):
    mig = django_filters.BooleanFilter(
        method="filter_mig", label="true: MIG slices only; false: whole GPUs only"
    )
    min_memory_gib = django_filters.NumberFilter(
        field_name="memory_gib", lookup_expr="gte", min_value=0, max_value=100_000
    )

    class Meta:
        model = Accelerator
        fields = ["slug", "type_label"]

    def filter_mig(self, queryset: QuerySet, name: str, value: bool) -> QuerySet:
        return queryset.exclude(mig_profile="") if value else queryset.filter(mig_profile="")


class ClusterFilterSet(django_filters.FilterSet):
    class Meta:
        model = Cluster
        fields = ["name", "enabled"]


class NodePoolFilterSet(django_filters.FilterSet):
    cluster = django_filters.CharFilter(field_name="cluster__name", label="Cluster name")
    accelerator = django_filters.CharFilter(field_name="accelerator__slug", label="Accelerator slug")
    pool_class = django_filters.ChoiceFilter(choices=PoolClass.choices)

    class Meta:
        model = NodePool
        fields = ["name", "pool_class", "enabled"]
