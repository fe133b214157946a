from django.urls import path

from pools import views_dashboard

app_name = "utilisation"

urlpatterns = [
    path("", views_dashboard.dashboard, name="dashboard"),
    path("pools/<int:pk>/", views_dashboard.pool_detail, name="pool"),
    path("cost/", views_dashboard.cost, name="cost"),
]
