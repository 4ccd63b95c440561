"""Charts as server-rendered SVG: no script, no library, nothing from the network.

A series of (time, value) points becomes a polyline with a dot per point, two y-axis labels
and the time range below. Long series are thinned first (``downsample``): per bucket of
consecutive points the lowest and the highest are kept, so a spike among a thousand
snapshots still shows. Every text goes through markupsafe's escape; colours come from
classes in static/style.css (the Content-Security-Policy allows no inline styles).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from markupsafe import Markup, escape

MAX_POINTS = 240
WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 12, 26


def downsample(
    points: list[tuple[float, float]], limit: int = MAX_POINTS
) -> list[tuple[float, float]]:
    """At most about ``limit`` points: for each of ``limit // 2`` buckets of consecutive
    points, its lowest and its highest (in time order); the last point is always kept."""
    if len(points) <= limit:
        return list(points)
    buckets = max(limit // 2, 1)
    size = len(points) / buckets
    kept: list[tuple[float, float]] = []
    for bucket in range(buckets):
        chunk = points[int(bucket * size) : int((bucket + 1) * size)]
        if not chunk:
            continue
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        kept += sorted({low, high}, key=lambda p: p[0])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _day(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M")


def line_chart(
    title: str,
    points: list[tuple[float, float]],
    label: Callable[[float], str],
    *,
    css: str = "series",
) -> Markup:
    """An SVG chart of ``points`` (time, value) with ``label`` formatting values; a short
    note instead when there are no points."""
    if not points:
        return Markup('<p class="muted">{}: no data yet</p>').format(title)
    shown = downsample(sorted(points))
    xs = [p[0] for p in shown]
    ys = [p[1] for p in shown]
    x0, x1 = xs[0], xs[-1]
    top = max(max(ys), 0.0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(x: float) -> float:
        return LEFT + (plot_w / 2 if x1 == x0 else (x - x0) / (x1 - x0) * plot_w)

    def y_of(y: float) -> float:
        return TOP + plot_h - max(y, 0.0) / top * plot_h

    coordinates = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in shown)
    dots = "".join(
        f'<circle class="point" cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="2">'
        f"<title>{escape(_day(x))}: {escape(label(y))}</title></circle>"
        for x, y in shown
    )
    parts = [
        f'<svg class="chart {escape(css)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" data-points="{len(shown)}" data-total="{len(points)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" '
        f'y2="{TOP + plot_h}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + 9}" text-anchor="end">'
        f"{escape(label(top))}</text>",
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">'
        f"{escape(label(0.0))}</text>",
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 6}">{escape(_day(x0))}</text>',
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
        f"{escape(_day(x1))}</text>",
        f'<polyline class="line" points="{coordinates}"/>' if len(shown) > 1 else "",
        dots,
        "</svg>",
    ]
    return Markup("".join(parts))
