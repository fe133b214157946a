from django.urls import path

from pools import views

app_name = "pools"

urlpatterns = [
    path("pools/", views.pool_list, name="pool_list"),
    path("clusters/", views.cluster_list, name="cluster_list"),
    path("clusters/new/", views.cluster_register, name="cluster_register"),
    path("clusters/<int:pk>/", views.cluster_detail, name="cluster_detail"),
    path("clusters/<int:pk>/test/", views.cluster_test, name="cluster_test"),
    path("clusters/<int:pk>/sync/", views.cluster_sync, name="cluster_sync"),
    path("clusters/<int:pk>/conformance/", views.cluster_conformance, name="cluster_conformance"),
]
