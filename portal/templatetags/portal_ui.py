"""Small presentation filters shared by the portal's templates."""

from datetime import datetime

from django import template
from django.utils.dateparse import parse_datetime

register = template.Library()


@register.filter
def action_label(action: str) -> str:
    """'capacity_request.lead_approved' -> 'Capacity request lead approved'."""
    subject, _, verb = action.partition(".")
    return f"{subject} {verb}".replace("_", " ").strip().capitalize()


@register.filter
def as_datetime(value: str | datetime | None) -> datetime | str | None:
    """Kubernetes timestamps (RFC 3339 text in condition JSON) as datetimes, so `|date` can format them."""
    if isinstance(value, str):
        return parse_datetime(value) or value
    return value
