"""/api/: the versioned API under v1/, its OpenAPI schema and the Swagger UI / Redoc pages (local assets)."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from pools.api.views import AcceleratorViewSet, ClusterViewSet, NodePoolViewSet
from portal.api.views import MeView, api_not_found
from quotas.api.views import (
    AuditEventViewSet,
    CapacityRequestViewSet,
    GrantViewSet,
    PoolUtilisationViewSet,
    ServingDeploymentViewSet,
    TeamUtilisationViewSet,
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
router.register("utilisation/pools", PoolUtilisationViewSet, basename="pool-utilisation")
router.register("utilisation/teams", TeamUtilisationViewSet, basename="team-utilisation")
router.register("audit-events", AuditEventViewSet, basename="audit-event")

v1 = [path("me/", MeView.as_view(), name="me"), *router.urls]

urlpatterns = [
    path("v1/", include((v1, "api"), namespace="api")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path(
        "redoc/",
        SpectacularRedocView.as_view(url_name="api-schema", template_name="api/redoc.html"),
        name="api-redoc",
    ),
    re_path(r"^", api_not_found),
]
