"""Browser forms for cluster administration. Credentials are write-only: never echoed into a page."""

from typing import Any

from django import forms

from portal.ui import PortalForm


class SecretTextarea(forms.Textarea):
    def format_value(self, value: Any) -> None:
        # A form re-rendered with errors must not put the submitted credential back into the HTML.
        return None


class ClusterRegisterForm(PortalForm):
    name = forms.SlugField(max_length=50, help_text="A short slug, e.g. gpu-eu-west-1.")
    kubeconfig = forms.CharField(
        required=False,
        widget=SecretTextarea(attrs={"rows": 6, "autocomplete": "off", "spellcheck": "false"}),
        help_text="Paste a kubeconfig with inline credentials, or upload it below.",
    )
    kubeconfig_file = forms.FileField(label="Kubeconfig file", required=False)
    api_url = forms.URLField(
        label="API server URL",
        assume_scheme="https",
        required=False,
        help_text="Without a kubeconfig: the URL, a token and the CA.",
    )
    token = forms.CharField(
        label="Bearer token",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    ca_data = forms.CharField(
        label="CA bundle (PEM)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
    )
    in_cluster = forms.BooleanField(
        label="The cluster this portal runs in",
        required=False,
        help_text="Reached with the portal pod's own ServiceAccount: no credentials to give or store.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.pop("kubeconfig_file", None)
        if upload:
            try:
                data["kubeconfig"] = upload.read().decode()
            except UnicodeDecodeError:
                self.add_error("kubeconfig_file", "The file is not a text kubeconfig.")
        return data

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {key: data.get(key) or None for key in ("kubeconfig", "api_url", "token", "ca_data")} | {
            "name": data["name"],
            "in_cluster": bool(data.get("in_cluster")),
        }
