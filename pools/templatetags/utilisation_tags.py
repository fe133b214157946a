"""Formatting for the utilisation dashboard."""

from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """12 -> '12s', 95 -> '1m 35s', 7260 -> '2h 01m', 2 days -> '2d 0h'."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60:02d}m"
    return f"{total // 86400}d {total % 86400 // 3600}h"


@register.filter
def percent(part: float | None, whole: float | None) -> int:
    if not whole:
        return 0
    return round(100 * (part or 0) / whole)
