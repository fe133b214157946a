from django import forms
from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest

from pools.forms import SecretTextarea
from pools.models import Accelerator, Cluster, NodePool


@admin.register(Accelerator)
class AcceleratorAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "product", "memory_gib", "mig_profile", "resource_name", "hourly_cost"]
    search_fields = ["name", "slug", "product"]


class ClusterForm(forms.ModelForm):
    # Secrets are write-only: the widgets never render the stored value back into the page.
    api_url = forms.URLField(assume_scheme="https", required=False, max_length=300)
    prometheus_url = forms.URLField(
        assume_scheme="http",
        required=False,
        max_length=300,
        help_text=Cluster._meta.get_field("prometheus_url").help_text,
    )
    autoscaler_health_url = forms.URLField(
        assume_scheme="http",
        required=False,
        max_length=300,
        help_text=Cluster._meta.get_field("autoscaler_health_url").help_text,
    )
    kubeconfig = forms.CharField(
        widget=SecretTextarea(attrs={"rows": 6, "autocomplete": "off", "spellcheck": "false"}),
        required=False,
        help_text="Write-only.",
    )
    token = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False, help_text="Write-only."
    )

    class Meta:
        model = Cluster
        fields = [
            "name",
            "api_url",
            "kubeconfig",
            "token",
            "ca_data",
            "zones",
            "enabled",
            "prometheus_url",
            "prometheus_node_label",
            "autoscaler_health_url",
            "autoscaler_node_groups",
        ]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.initial["kubeconfig"] = ""
        self.initial["token"] = ""

    def clean(self) -> dict:
        data = super().clean()
        # Leaving a write-only field empty on edit keeps the stored secret.
        for field in Cluster.CREDENTIALS:
            if not data.get(field) and self.instance.pk:
                data[field] = getattr(self.instance, field)
        return data


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    form = ClusterForm
    list_display = ["name", "api_url", "server_version", "enabled", "last_synced_at"]
    list_filter = ["enabled"]
    search_fields = ["name", "api_url"]
    readonly_fields = ["in_cluster", "server_version", "kueue_version", "last_synced_at", "last_error"]


@admin.register(NodePool)
class NodePoolAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "cluster",
        "pool_class",
        "accelerator",
        "capacity_gpus",
        "headroom_gpus",
        "batch_fraction",
        "max_gpus_per_team",
        "admission",
        "priority_class_name",
        "enabled",
    ]
    list_filter = ["pool_class", "cluster", "accelerator", "enabled"]
    search_fields = ["name"]
    list_select_related = ["cluster", "accelerator"]
    readonly_fields = ["node_groups"]

    def save_model(self, request: HttpRequest, obj: NodePool, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # A new headroom (or class, or an enabled flag) moves the placeholders on the cluster at once.
        from pools.tasks import warm_headroom_reconcile

        transaction.on_commit(lambda: warm_headroom_reconcile.delay(obj.pk), robust=True)
