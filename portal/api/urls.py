"""/api/: the versioned API under v1/, its OpenAPI schema and the Swagger UI page (local assets)."""

from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from pools.api.views import AcceleratorViewSet, ClusterViewSet, NodePoolViewSet
from portal.api.views import MeView, api_not_found
from quotas.api.views import (
    AuditEventViewSet,
    CapacityRequestViewSet,
    GrantViewSet,
    PoolCapacityAliasViewSet,
    PoolCapacityViewSet,
    ServingDeploymentViewSet,
    TeamCapacityAliasViewSet,
    TeamCapacityViewSet,
    TeamViewSet,
)

router = SimpleRouter()
router.register("accelerators", AcceleratorViewSet, basename="accelerator")
router.register("clusters", ClusterViewSet, basename="cluster")
router.register("pools", NodePoolViewSet, basename="pool")
router.register("teams", TeamViewSet, basename="team")
router.register("capacity-requests", CapacityRequestViewSet, basename="capacity-request")
router.register("grants", GrantViewSet, basename="grant")
router.register("serving-deployments", ServingDeploymentViewSet, basename="serving-deployment")
router.register("capacity/pools", PoolCapacityViewSet, basename="pool-capacity")
router.register("capacity/teams", TeamCapacityViewSet, basename="team-capacity")
# The paths before "capacity" meant granted capacity under the word "utilisation", which the rest of
# the portal keeps for observed usage; they stay as deprecated aliases (docs/api.md).
router.register("utilisation/pools", PoolCapacityAliasViewSet, basename="pool-capacity-alias")
router.register("utilisation/teams", TeamCapacityAliasViewSet, basename="team-capacity-alias")
router.register("audit-events", AuditEventViewSet, basename="audit-event")

v1 = [path("me/", MeView.as_view(), name="me"), *router.urls]

urlpatterns = [
    path("v1/", include((v1, "api"), namespace="api")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file of its own: no inline script.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="api/swagger_ui.html"),
        name="api-docs",
    ),
    # Redoc was retired: its bundle writes inline styles and loads its logo from a CDN at run time, neither of
    # which the Content-Security-Policy allows. Old links land on Swagger UI.
    path("redoc/", RedirectView.as_view(pattern_name="api-docs"), name="api-redoc"),
    re_path(r"^", api_not_found),
]
