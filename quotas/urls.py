from django.urls import path

from quotas import queue_views, views

app_name = "quotas"

urlpatterns = [
    path("requests/", views.request_list, name="request_list"),
    path("requests/new/", views.request_create, name="request_create"),
    path("requests/<int:pk>/", views.request_detail, name="request_detail"),
    path("requests/<int:pk>/decide/", views.request_decide, name="request_decide"),
    path("requests/<int:pk>/cancel/", views.request_cancel, name="request_cancel"),
    path("grants/<int:pk>/", views.grant_detail, name="grant_detail"),
    path("grants/<int:pk>/kubeconfig.yaml", views.grant_kubeconfig, name="grant_kubeconfig"),
    path("grants/<int:pk>/example.yaml", views.grant_example_manifest, name="grant_example_manifest"),
    path("grants/<int:pk>/revoke/", views.grant_revoke, name="grant_revoke"),
    path("grants/<int:pk>/shrink/", views.grant_shrink, name="grant_shrink"),
    path("grants/<int:pk>/queue/", queue_views.grant_queue, name="grant_queue"),
    path("grants/<int:pk>/deployments/new/", views.deployment_create, name="deployment_create"),
    path("deployments/<int:pk>/scale/", views.deployment_scale, name="deployment_scale"),
    path("deployments/<int:pk>/delete/", views.deployment_delete, name="deployment_delete"),
    path("inbox/", views.inbox, name="inbox"),
    path("inbox/preview/", views.inbox_preview, name="inbox_preview"),
    path("inbox/decide/", views.inbox_decide, name="inbox_decide"),
    path("team/", views.team, name="team"),
    path("team/<slug:slug>/", views.team, name="team_detail"),
]
