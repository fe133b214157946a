"""Formatting for the utilisation dashboard."""

from typing import Any

from django import template

from pools.utilisation.figures import FIGURES_BY_NAME, POOL_FIGURES, Figure

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


@register.simple_tag
def figure_rows(live: Any) -> list[tuple[Figure, Any]]:
    """Every figure of the table with its value on `live` (a PoolUtilisation), in table order."""
    return [(figure, getattr(live, figure.name)) for figure in POOL_FIGURES]


@register.simple_tag
def figure_help(name: str) -> str:
    return FIGURES_BY_NAME[name].help
