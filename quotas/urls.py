from django.urls import path

from quotas import views

app_name = "quotas"

urlpatterns = [
    path("requests/<int:pk>/", views.request_detail, name="request_detail"),
]
