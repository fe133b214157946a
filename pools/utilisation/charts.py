"""Geometry for the dashboard's charts, drawn as inline SVG by templates/utilisation/charts/.

Pure functions: figures in, coordinates and labels out (and, for the node grid's hundreds of
squares, the markup itself). No JavaScript chart library and nothing
fetched from elsewhere; the browser only renders what the server sends.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils.safestring import SafeString, mark_safe

from pools.utilisation.figures import DRAWN_NODES

# Wide history ranges are averaged into at most this many columns.
MAX_COLUMNS = 240
# Nodes drawn in a pool's GPU grid; the rest are counted.
GRID_MAX_NODES = DRAWN_NODES
# Node names longer than this are cut in the grid's label column (the full name is in the tooltip).
LABEL_CHARS = 28


@dataclass(frozen=True)
class Sample:
    at: datetime
    seconds: float
    values: dict[str, float]


@dataclass
class Series:
    name: str
    css: str
    kind: str  # "line" or "area"
    paths: list[str] = field(default_factory=list)  # one SVG path per run of columns with data
    last: float | None = None


@dataclass
class Tick:
    position: float
    label: str


@dataclass
class TimeChart:
    width: int
    height: int
    left: int
    bottom: int
    y_max: float
    series: list[Series]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    empty: bool
    title: str

    @property
    def plot_right(self) -> int:
        return self.width - 8

    @property
    def plot_top(self) -> int:
        return 8

    @property
    def center(self) -> tuple[int, int]:
        return self.left + (self.plot_right - self.left) // 2, self.height // 2

    @property
    def x_label_y(self) -> int:
        return self.height - 6

    @property
    def y_label_x(self) -> int:
        return self.left - 4


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _format_time(moment: datetime, span: timedelta) -> str:
    if span <= timedelta(days=1):
        return moment.strftime("%H:%M")
    if span <= timedelta(days=14):
        return moment.strftime("%d %b %H:%M")
    return moment.strftime("%d %b")


def time_chart(
    samples: Sequence[Sample],
    series: Sequence[tuple[str, str, str, str]],
    *,
    start: datetime,
    end: datetime,
    title: str,
    width: int = 720,
    height: int = 180,
    columns: int = MAX_COLUMNS,
    format_value: Callable[[float], str] = lambda v: f"{v:g}",
) -> TimeChart:
    """Lines and areas over [start, end). `series` holds (key in Sample.values, display name, css
    class, "line"|"area"). Samples are averaged per column, weighted by the time they stand for;
    columns without samples leave a gap instead of a made-up line."""
    left, bottom = 44, 22
    plot_w, plot_h = width - left - 8, height - bottom - 8
    span = max((end - start).total_seconds(), 1.0)
    # A column spans at least two samples of the finest tier shown, so the jitter of sample times
    # never leaves false gaps between columns.
    finest = min((s.seconds for s in samples if s.seconds > 0), default=span)
    columns = max(1, min(columns, int(span // (2 * finest))))
    buckets: list[dict[str, float] | None] = [None] * columns
    weights = [0.0] * columns
    for sample in samples:
        offset = (sample.at - start).total_seconds()
        if not 0 <= offset < span:
            continue
        index = min(columns - 1, int(offset / span * columns))
        bucket = buckets[index] or {}
        weight = sample.seconds or 1.0
        for key, value in sample.values.items():
            bucket[key] = bucket.get(key, 0.0) + value * weight
        buckets[index] = bucket
        weights[index] += weight
    averaged = [
        {k: v / weights[i] for k, v in bucket.items()} if bucket is not None else None
        for i, bucket in enumerate(buckets)
    ]
    peak = max((row[key] for row in averaged if row for key, *_ in series if key in row), default=0.0)
    y_max = _nice_ceiling(peak)

    def x(index: int) -> float:
        return round(left + (index + 0.5) / columns * plot_w, 1)

    def y(value: float) -> float:
        return round(8 + plot_h - value / y_max * plot_h, 1)

    drawn = []
    for key, name, css, kind in series:
        out = Series(name=name, css=css, kind=kind)
        run: list[tuple[float, float]] = []
        for index, row in enumerate([*averaged, None]):
            if row is not None and key in row:
                run.append((x(index), y(row[key])))
                out.last = row[key]
                continue
            if run:
                if len(run) == 1:  # a lone column still shows as a short segment
                    run = [(run[0][0] - 1.5, run[0][1]), (run[0][0] + 1.5, run[0][1])]
                line = " L ".join(f"{px},{py}" for px, py in run)
                if kind == "area":
                    base = y(0)
                    out.paths.append(f"M {run[0][0]},{base} L {line} L {run[-1][0]},{base} Z")
                else:
                    out.paths.append(f"M {line}")
                run = []
        drawn.append(out)
    x_ticks = [
        Tick(round(left + i / 4 * plot_w, 1), _format_time(start + (end - start) * i / 4, end - start))
        for i in range(5)
    ]
    y_ticks = [Tick(y(y_max * i / 2), format_value(y_max * i / 2)) for i in range(3)]
    return TimeChart(
        width=width,
        height=height,
        left=left,
        bottom=bottom,
        y_max=y_max,
        series=drawn,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        empty=not any(averaged),
        title=title,
    )


# ----------------------------------------------------------------------------------------------


@dataclass
class GridRow:
    name: str
    label: str
    # The row as SVG markup, built here rather than in the template: a 100-node grid has 800
    # squares, which the template engine takes ~45 ms to loop over and Python joins in ~1 ms (the
    # grid is polled every few seconds).
    svg: SafeString


@dataclass
class NodeGrid:
    width: int
    height: int
    cell: int
    rows: list[GridRow]
    hidden: int

    @property
    def svg(self) -> SafeString:
        # One string for the template: its loop over a thousand rows cost more than the rows.
        return mark_safe("".join(row.svg for row in self.rows))  # noqa: S308 - each row is safe (node_grid)


def node_grid(
    nodes: Sequence[dict[str, Any]], *, total: int | None = None, cell: int = 12, label_width: int = 190
) -> NodeGrid:
    """One row per node, one square per GPU unit: used, free, or unavailable (node not Ready or
    cordoned). Free squares scattered over many partly used rows are fragmentation made visible.
    The first GRID_MAX_NODES nodes by name are drawn; `hidden` counts the rest, of `total` nodes when
    `nodes` are only the first ones."""
    shown = sorted(nodes, key=lambda n: n.get("name", ""))[:GRID_MAX_NODES]
    widest = max((n.get("allocatable", 0) for n in shown), default=0)
    rows = []
    pitch = cell + 3
    # Each row is placed by its group's transform, so its squares depend only on the node's figures:
    # a pool of a thousand alike nodes draws a handful of distinct rows, each built once.
    squares_of: dict[tuple[int, int, bool], str] = {}
    for index, node in enumerate(shown):
        allocatable, requested = node.get("allocatable", 0), node.get("requested", 0)
        schedulable = bool(node.get("ready") and not node.get("cordoned"))
        squares = squares_of.get((allocatable, requested, schedulable))
        if squares is None:
            units = []
            for unit in range(max(allocatable, requested)):
                if unit < requested:
                    css = "used" if unit < allocatable else "over"
                else:
                    css = "free" if schedulable else "down"
                # Safe without escaping: every value is an int or one of the four literal class names.
                x = label_width + unit * pitch
                units.append(f'<rect class="gpu {css}" x="{x}" y="0" width="{cell}" height="{cell}" rx="2"/>')
            squares = squares_of[(allocatable, requested, schedulable)] = "".join(units)
        state = "" if schedulable else (" (cordoned)" if node.get("cordoned") else " (not ready)")
        name, zone = node.get("name", ""), node.get("zone", "")
        label = f"{name}{state}"
        # The standard library's escape, as Django's own (which wraps it for lazy strings): a few
        # hundred rows per poll.
        title = html.escape(f"{label} ({zone})" if zone else label)
        short = html.escape(label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…")
        svg = mark_safe(  # noqa: S308 - the texts are escaped above, the rest are ints and literals
            f'<g data-node="{html.escape(name)}" transform="translate(0 {index * pitch})">'
            f"<title>{title}</title>"
            f'<text class="node-label" x="0" y="{cell - 2}">{short}</text>{squares}</g>\n'
        )
        rows.append(GridRow(name=name, label=label, svg=svg))
    return NodeGrid(
        width=label_width + max(widest, 1) * pitch,
        height=max(len(shown), 1) * pitch,
        cell=cell,
        rows=rows,
        hidden=max(0, (len(nodes) if total is None else total) - len(shown)),
    )


# ----------------------------------------------------------------------------------------------


@dataclass
class Bar:
    label: str
    y: int
    text_y: int
    width: float
    value_x: float
    limit_x: float | None
    limit_y: tuple[int, int]
    value_label: str
    css: str


@dataclass
class BarChart:
    width: int
    height: int
    left: int
    bars: list[Bar]
    bar_height: int


def bar_chart(
    rows: Sequence[tuple[str, float, float | None, str]],
    *,
    width: int = 640,
    left: int = 200,
    bar_height: int = 16,
    format_value: Callable[[float], str] = lambda v: f"{v:g}",
) -> BarChart:
    """Horizontal bars: (label, value, limit or None, css). A limit (a grant, a quota) is drawn as a
    marker; a bar past its limit gets the css class "over"."""
    scale_max = max([v for _, v, _, _ in rows] + [lim for _, _, lim, _ in rows if lim is not None] + [0]) or 1
    plot = width - left - 70
    bars = []
    pitch = bar_height + 8
    for index, (label, value, limit, css) in enumerate(rows):
        over = limit is not None and value > limit
        bar_width = round(value / scale_max * plot, 1)
        limit_x = round(left + limit / scale_max * plot, 1) if limit is not None else None
        bars.append(
            Bar(
                label=label,
                y=index * pitch + 4,
                text_y=index * pitch + 4 + bar_height - 4,
                width=bar_width,
                value_x=max(left + bar_width, limit_x or 0) + 6,
                limit_x=limit_x,
                limit_y=(index * pitch + 1, index * pitch + bar_height + 7),
                value_label=format_value(value) + (f" / {format_value(limit)}" if limit is not None else ""),
                css="over" if over else css,
            )
        )
    return BarChart(
        width=width, height=max(1, len(rows)) * pitch, left=left, bars=bars, bar_height=bar_height
    )
