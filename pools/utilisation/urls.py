from django.urls import path

from pools.utilisation import views

app_name = "utilisation"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("pools/<int:pk>/", views.pool_detail, name="pool"),
    path("cost/", views.cost, name="cost"),
]
