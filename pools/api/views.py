"""Read-only catalogue: accelerators, clusters and node pools, with each pool's grantable capacity."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.settings import api_settings

from pools import selectors, services
from pools.api import filtersets, serializers
from pools.models import Accelerator, Cluster, NodePool
from portal.api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent
from portal.api.permissions import IsPlatformAdminOrReadOnly
from quotas.selectors import pool_capacity_bulk

ID = r"[0-9]{1,18}"


@extend_schema_view(
    list=extend_schema(
        summary="List accelerators", description="The catalogue, with memory and hourly cost."
    ),
    retrieve=extend_schema(summary="Get an accelerator"),
)
class AcceleratorViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = serializers.AcceleratorSerializer
    filterset_class = filtersets.AcceleratorFilterSet
    ordering_fields = ["name", "slug", "memory_gib", "hourly_cost"]
    ordering = ["name", "id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[Accelerator]:
        return selectors.accelerator_list()


@extend_schema_view(
    list=extend_schema(
        summary="List clusters",
        description="Enabled clusters (all of them for admins and auditors). Credentials are never returned; "
        "the API URL and the last error are shown to admins and auditors only.",
    ),
    retrieve=extend_schema(summary="Get a cluster"),
)
class ClusterViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = serializers.ClusterSerializer
    filterset_class = filtersets.ClusterFilterSet
    permission_classes = [*api_settings.DEFAULT_PERMISSION_CLASSES, IsPlatformAdminOrReadOnly]
    ordering_fields = ["name", "created_at", "last_synced_at"]
    ordering = ["name", "id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[Cluster]:
        if getattr(self, "swagger_fake_view", False):
            return Cluster.objects.none()
        return selectors.cluster_list(user=self.request.user)

    @extend_schema(
        summary="Register a cluster",
        description="Platform admins only. The portal first checks that the cluster answers, accepts "
        "the credentials, grants the permissions the portal needs and has GPU nodes; each failure is a 400 "
        "naming the field at fault. Credentials are stored encrypted and never returned.",
        request=serializers.ClusterRegisterSerializer,
        responses={201: serializers.ClusterSerializer},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @idempotent
    def create(self, request: Request) -> Response:
        data = serializers.ClusterRegisterSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        cluster = services.cluster_register(actor=request.user, **data.validated_data)
        return Response(self.get_serializer(cluster).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Sync a cluster's inventory",
        description="Platform admins only: discover the cluster's GPU node pools from node labels and "
        "taints, create or update their records, disable pools that are gone.",
        request=None,
        responses=serializers.SyncSummarySerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def sync(self, request: Request, pk: str) -> Response:
        summary = services.cluster_sync_inventory(cluster=self.get_object(), actor=request.user)
        return Response(serializers.SyncSummarySerializer(summary).data)


@extend_schema_view(
    list=extend_schema(
        summary="List node pools",
        description="Pools on offer: `figures` are what the portal has granted and can still grant; "
        "`live` is what the cluster reports now (allocatable, requested, free, stranded GPUs, pending pods), "
        "null until the utilisation collector has seen the pool. Disabled pools are listed for admins and "
        "auditors only.",
    ),
    retrieve=extend_schema(summary="Get a node pool"),
)
class NodePoolViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = serializers.NodePoolSerializer
    filterset_class = filtersets.NodePoolFilterSet
    ordering_fields = ["name", "cluster__name", "pool_class", "capacity_gpus"]
    ordering = ["cluster__name", "name", "id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[NodePool]:
        if getattr(self, "swagger_fake_view", False):
            return NodePool.objects.none()
        return selectors.node_pool_list(user=self.request.user).select_related(
            "utilisation", "cluster__utilisation"
        )

    def _serializer(self, pools: list[NodePool], **kwargs: Any) -> BaseSerializer:
        # The figures of a whole page come from one query, so the list costs the same for 5 or 500 pools.
        figures = pool_capacity_bulk(pairs=[(pool, None) for pool in pools])
        return self.get_serializer(
            pools if kwargs.get("many") else pools[0],
            context={**self.get_serializer_context(), "figures": figures},
            **kwargs,
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(self._serializer(page, many=True).data)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self._serializer([self.get_object()]).data)
