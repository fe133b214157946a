from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from pools.utilisation import metrics
from portal import sso, views, views_tokens
from quotas import views as quotas_views

urlpatterns = [
    path("", quotas_views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("livez", views.livez, name="livez"),
    path("login/", views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", include("portal.api.urls")),
    path("account/tokens/", views_tokens.token_list, name="tokens"),
    path("account/tokens/<int:pk>/revoke/", views_tokens.token_revoke, name="token_revoke"),
    path("", include("quotas.urls")),
    path("", include("pools.urls")),
    path("utilisation/", include("pools.utilisation.urls")),
    path("metrics", metrics.metrics, name="metrics"),
    # Single sign-on's start and callback: 404 while PORTAL_OIDC_ENABLED is off.
    path("oidc/", include(sso.urlpatterns)),
]
