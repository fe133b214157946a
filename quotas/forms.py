"""Browser forms. They check shapes (numbers, dates, choices); every rule lives in quotas.services."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.urls import reverse
from django.utils import timezone

from pools.models import Accelerator, PoolClass
from portal.models import User
from portal.ui import PortalForm
from quotas import rules, selectors
from quotas.models import Precision

# The same bounds as the API's serializers: far above any real pool, low enough for every column.
MAX_UNITS = 100_000
MAX_REPLICAS = 10_000
DATETIME_WIDGET = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


@dataclass(frozen=True)
class Offer:
    accelerator: Accelerator
    free: int

    @property
    def label(self) -> str:
        acc = self.accelerator
        return f"{acc.name} · {acc.memory_gib} GiB · {self.free} free · {acc.hourly_cost} per GPU-hour"


@dataclass(frozen=True)
class MemoryFit:
    need_gib: Decimal
    offered_gib: int
    per_replica: int
    accelerator: Accelerator

    @property
    def fits(self) -> bool:
        return self.need_gib <= self.offered_gib

    @property
    def units_needed(self) -> int:
        return rules.units_needed(self.need_gib, self.accelerator.memory_gib)


@dataclass(frozen=True)
class Estimate:
    """What the wizard's summary shows while the user types: duration, cost and memory fit."""

    hours: Decimal | None
    cost: Decimal | None
    fit: MemoryFit | None


class CapacityRequestForm(PortalForm):
    team = forms.ModelChoiceField(queryset=None, empty_label=None)
    pool_class = forms.ChoiceField(
        choices=[("", "Choose a pool class…"), *PoolClass.choices],
        help_text="Interactive inference keeps warm headroom for latency; batch may borrow idle GPUs; "
        "embedding runs on small GPUs; experimentation gets MIG slices.",
    )
    accelerator = forms.TypedChoiceField(
        coerce=int,
        choices=[],
        error_messages={"invalid_choice": "Choose one of the accelerators offered for this pool class."},
    )
    model_parameters_billion = forms.DecimalField(
        label="Model size (billions of parameters)",
        required=False,
        min_value=Decimal("0.01"),
        max_digits=7,
        decimal_places=2,
        help_text="Optional: with the precision, the portal checks the model fits the GPU memory.",
    )
    model_precision = forms.ChoiceField(choices=[("", "—"), *Precision.choices], required=False)
    gpus_per_replica = forms.IntegerField(
        label="GPUs per model replica",
        min_value=1,
        max_value=MAX_UNITS,
        initial=1,
        help_text="How many GPUs one replica spans.",
    )
    gpus = forms.IntegerField(
        label="GPUs", min_value=1, max_value=MAX_UNITS, initial=1, help_text="Accelerator units in total."
    )
    borrow_gpus = forms.IntegerField(
        label="May borrow up to (GPUs)",
        min_value=0,
        max_value=MAX_UNITS,
        initial=0,
        required=False,
        help_text="Batch and experimentation pools that queue Jobs through Kueue: idle GPUs of other teams "
        "your Jobs may use beyond your own. Never promised: they are taken back, by preempting your Jobs, "
        "when their owners need them. Leave 0 otherwise.",
    )
    starts_at = forms.DateTimeField(label="Start (UTC)", widget=DATETIME_WIDGET)
    ends_at = forms.DateTimeField(label="End (UTC)", widget=DATETIME_WIDGET)
    purpose = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), help_text="What the GPUs are for; approvers read it."
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = selectors.teams_of(user=user)
        pool_class = self.data.get("pool_class") if self.is_bound else self.initial.get("pool_class")
        self.offers: dict[int, Offer] = {}
        if pool_class in PoolClass.values:
            self.offers = {
                acc.pk: Offer(acc, free)
                for acc, free in selectors.accelerators_for_class(pool_class=pool_class)
            }
        # The accelerators on offer depend on the class: changing it re-renders that field.
        self.fields["pool_class"].widget.attrs.update(
            {
                "hx-get": reverse("quotas:request_create"),
                "hx-target": "#accelerator-field",
                "hx-swap": "outerHTML",
                "hx-include": "#wizard-form",
            }
        )
        placeholder = "Choose an accelerator…" if pool_class else "Choose a pool class first"
        self.fields["accelerator"].choices = [
            ("", placeholder),
            *((pk, offer.label) for pk, offer in self.offers.items()),
        ]

    @classmethod
    def initial_values(cls) -> dict[str, Any]:
        start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return {"starts_at": start, "ends_at": start + timedelta(days=7)}

    def clean_accelerator(self) -> Accelerator:
        return self.offers[self.cleaned_data["accelerator"]].accelerator

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "team": data["team"],
            "pool_class": data["pool_class"],
            "accelerator": data["accelerator"],
            "gpus": data["gpus"],
            "borrow_gpus": data.get("borrow_gpus") or 0,
            "gpus_per_replica": data["gpus_per_replica"],
            "starts_at": data["starts_at"],
            "ends_at": data["ends_at"],
            "purpose": data["purpose"],
            "model_parameters_billion": data["model_parameters_billion"],
            "model_precision": data["model_precision"],
        }

    def estimate(self) -> Estimate:
        """Best-effort figures from whatever parses so far; never raises, never shows errors."""
        starts, ends = self._parsed("starts_at"), self._parsed("ends_at")
        gpus, per_replica = self._parsed("gpus"), self._parsed("gpus_per_replica") or 1
        params, precision = self._parsed("model_parameters_billion"), self._parsed("model_precision")
        try:
            offer = self.offers.get(int(self._parsed("accelerator") or 0))
        except ValueError:
            offer = None
        hours = cost = fit = None
        if isinstance(starts, datetime) and isinstance(ends, datetime) and ends > starts:
            hours = (Decimal((ends - starts).total_seconds()) / 3600).quantize(Decimal("0.1"))
            if offer and gpus:
                cost = (gpus * hours * offer.accelerator.hourly_cost).quantize(Decimal("0.01"))
        if offer and params and precision in Precision.values:
            fit = MemoryFit(
                need_gib=rules.model_memory_gib(params, precision),
                offered_gib=offer.accelerator.memory_gib * per_replica,
                per_replica=per_replica,
                accelerator=offer.accelerator,
            )
        return Estimate(hours=hours, cost=cost, fit=fit)

    def _parsed(self, name: str) -> Any:
        field = self.fields[name]
        source = self.data if self.is_bound else self.initial
        raw = field.widget.value_from_datadict(source, self.files, self.add_prefix(name))
        try:
            # clean(), not to_python(): the bounds keep absurd numbers out of the cost arithmetic.
            value = field.clean(raw)
        except forms.ValidationError:
            return None
        if isinstance(value, Decimal | int) and value <= 0:
            return None
        return value


class ServingDeploymentForm(PortalForm):
    name = forms.CharField(
        max_length=50, help_text="A DNS label, unique in the grant, e.g. chat-8b. Names the Deployment."
    )
    model_name = forms.CharField(
        label="Model", max_length=200, help_text="e.g. meta-llama/Llama-3.1-8B-Instruct"
    )
    image = forms.CharField(max_length=300)
    replicas = forms.IntegerField(
        min_value=1, max_value=MAX_REPLICAS, initial=1, help_text="Spread across zones when more than one."
    )
    gpus_per_replica = forms.IntegerField(
        label="GPUs per replica", min_value=1, max_value=MAX_REPLICAS, initial=1
    )
    args = forms.CharField(
        label="Arguments",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line, passed to the model server as they are.",
    )
    env = forms.CharField(
        label="Environment",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One NAME=value per line.",
    )

    def __init__(self, *args: Any, registries: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["image"].help_text = f"From an allowlisted registry: {', '.join(registries)}; with a tag."
        if registries:
            self.fields["image"].widget.attrs["placeholder"] = f"{registries[0]}vllm:v0.6.3"

    def clean_args(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["args"].splitlines() if line.strip()]

    def clean_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["env"].splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            if not sep:
                raise forms.ValidationError(f"Line {number} has no '=': write NAME=value.")
            env[name.strip()] = value.strip()
        return env


class DecisionForm(PortalForm):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class BulkDecisionForm(PortalForm):
    """One decision and one comment for every request selected in the inbox."""

    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    comment = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 2}))


class ReasonForm(PortalForm):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
