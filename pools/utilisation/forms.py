"""Forms of the utilisation pages: the history range of a pool, the period of the cost report."""

from datetime import timedelta
from typing import Any

from django import forms
from django.utils import timezone

HISTORY_RANGES = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
}
# Hourly history is kept 90 days (pools.utilisation.services.RETENTION).
COST_MAX_DAYS = 90


class HistoryRangeForm(forms.Form):
    range = forms.ChoiceField(choices=[(key, key) for key in HISTORY_RANGES], required=False)

    def clean_range(self) -> str:
        return self.cleaned_data["range"] or "6h"


class CostPeriodForm(forms.Form):
    # A date input only takes ISO dates, whatever the site's display format.
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    end = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"), help_text="Included"
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end:
            today = timezone.now().date()
            if end < start:
                self.add_error("end", "The end must not be before the start.")
            elif (end - start).days + 1 > COST_MAX_DAYS:
                self.add_error("end", f"Choose at most {COST_MAX_DAYS} days: older history is not kept.")
            if start > today:
                self.add_error("start", "The start is in the future: there is no usage yet.")
        return data
