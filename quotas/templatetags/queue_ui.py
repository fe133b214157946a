"""Presentation of queue figures: waits and estimated starts as people read them."""

from datetime import timedelta

from django import template

register = template.Library()


@register.filter
def duration_text(value: timedelta | float | None) -> str:
    """A duration as "45 s", "12 min", "3 h 5 min" or "2 d 4 h"."""
    if value is None:
        return ""
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    seconds = max(0, seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
