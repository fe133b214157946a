"""The node grid's markup: squares per GPU state, escaping of names, and the cap on drawn nodes."""

import re

from pools.utilisation import charts


def node(name, *, allocatable=8, requested=0, ready=True, cordoned=False, zone="zone-a"):
    return {
        "name": name,
        "zone": zone,
        "allocatable": allocatable,
        "requested": requested,
        "ready": ready,
        "cordoned": cordoned,
    }


def classes(svg):
    return re.findall(r'class="gpu (\w+)"', svg)


def test_each_gpu_is_one_square_in_its_state() -> None:
    grid = charts.node_grid(
        [
            node("a", requested=3),
            node("b", requested=0, cordoned=True),
            node("c", allocatable=2, requested=3),  # more requested than the node offers
        ]
    )
    a, b, c = (classes(row.svg) for row in grid.rows)
    assert a == ["used"] * 3 + ["free"] * 5
    assert b == ["down"] * 8
    assert c == ["used", "used", "over"]
    assert grid.rows[1].label == "b (cordoned)"
    assert grid.hidden == 0


def test_names_are_escaped_and_long_labels_cut() -> None:
    name = "<script>alert(1)</script>-" + "x" * 40
    (row,) = charts.node_grid([node(name, zone='z"1')]).rows
    assert "<script>" not in row.svg
    assert "&lt;script&gt;" in row.svg
    assert "z&quot;1" in row.svg
    text = re.search(r'<text class="node-label"[^>]*>(.*?)</text>', row.svg).group(1)
    assert text.endswith("…")
    assert len(text.replace("&lt;", "<").replace("&gt;", ">")) == charts.LABEL_CHARS


def test_only_the_first_nodes_are_drawn_and_the_rest_counted() -> None:
    nodes = [node(f"n{i:04d}", requested=i % 9) for i in range(charts.GRID_MAX_NODES + 25)]
    grid = charts.node_grid(nodes)
    assert len(grid.rows) == charts.GRID_MAX_NODES
    assert grid.hidden == 25
    assert grid.rows[-1].name == f"n{charts.GRID_MAX_NODES - 1:04d}"
    assert grid.height == charts.GRID_MAX_NODES * 15


def test_rows_are_placed_one_below_another_and_alike_figures_share_their_squares() -> None:
    grid = charts.node_grid(
        [node("a", requested=2), node("b", requested=2), node("c", requested=2, ready=False)]
    )
    offsets = [re.search(r'transform="translate\(0 (\d+)\)"', row.svg).group(1) for row in grid.rows]
    assert offsets == ["0", "15", "30"]
    a, b, c = (classes(row.svg) for row in grid.rows)
    assert a == b == ["used"] * 2 + ["free"] * 6
    # Not Ready: the same figures, drawn unavailable.
    assert c == ["used"] * 2 + ["down"] * 6
