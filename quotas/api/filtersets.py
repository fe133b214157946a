import django_filters

from pools.models import PoolClass
from portal.api.filters import DateTimeFilter, IdFilter
from portal.models import AuditEvent
from quotas.models import CapacityRequest, Grant, ServingDeployment, Team
from quotas.states import RequestState


class TeamFilterSet(django_filters.FilterSet):
    class Meta:
        model = Team
        fields = ["slug"]


class CapacityRequestFilterSet(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=RequestState.choices)
    team = django_filters.CharFilter(field_name="team__slug", label="Team slug")
    pool_class = django_filters.ChoiceFilter(choices=PoolClass.choices)
    accelerator = django_filters.CharFilter(field_name="accelerator__slug", label="Accelerator slug")
    requester = django_filters.CharFilter(field_name="requester__username", label="Requester's username")
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = CapacityRequest
        fields = ["state", "team", "pool_class", "accelerator", "requester"]


class GrantFilterSet(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(field_name="request__state", choices=RequestState.choices)
    team = django_filters.CharFilter(field_name="team__slug", label="Team slug")
    pool = IdFilter(field_name="pool_id", label="Pool id")
    accelerator = django_filters.CharFilter(field_name="pool__accelerator__slug", label="Accelerator slug")
    request = IdFilter(field_name="request_id", label="Capacity request id")

    class Meta:
        model = Grant
        fields = ["state", "team", "pool", "namespace"]


class ServingDeploymentFilterSet(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug", label="Team slug")
    grant = IdFilter(field_name="grant_id", label="Grant id")
    deleted = django_filters.BooleanFilter(field_name="deleted_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = ServingDeployment
        fields = ["team", "grant", "name"]


class AuditEventFilterSet(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug", label="Team slug")
    actor = django_filters.CharFilter(field_name="actor__username", label="Actor's username")
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "object_type", "object_id", "team", "actor"]
