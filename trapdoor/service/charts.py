"""Line charts as inline SVG, drawn on the server for the operator's console.

A console page needs a handful of small charts (release latency per round, a node's
accuracy per round). Drawing them here keeps the console free of script and of a
front-end build, and lets the Content-Security-Policy forbid script altogether. Every
label goes through :func:`markupsafe.escape`, so a series named by a user cannot inject
markup. An empty chart says so instead of drawing empty axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

__all__ = ["SERIES_COLOURS", "line_chart", "nice_ticks"]

#: Colours of successive series (colour-blind safe, Okabe–Ito).
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")

_WIDTH, _HEIGHT = 640, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 16, 44

Point = tuple[float, float]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]`` (1, 2, 5 × 10^k steps)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.6g}"


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    x_label: str,
    y_label: str,
) -> Markup:
    """An SVG line chart of named series of ``(x, y)`` points (non-finite points dropped)."""
    clean = {
        name: [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
        for name, points in series.items()
    }
    clean = {name: points for name, points in clean.items() if points}
    head = (
        f'<figure class="chart" data-series="{len(clean)}">'
        f"<figcaption>{escape(title)}</figcaption>"
    )
    if not clean:
        return Markup(head + '<p class="empty">No data yet.</p></figure>')
    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(min(ys), 0.0), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / ((x1 - x0) or 1.0) * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - (y - y0) / ((y1 - y0) or 1.0) * plot_h

    parts = [
        f'<svg viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for tick in y_ticks:
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" '
            f'y1="{py(tick):.1f}" y2="{py(tick):.1f}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{py(tick) + 4:.1f}" '
            f'text-anchor="end">{escape(_label(tick))}</text>'
        )
    for tick in x_ticks:
        parts.append(
            f'<text class="tick" x="{px(tick):.1f}" y="{_HEIGHT - _BOTTOM + 16}" '
            f'text-anchor="middle">{escape(_label(tick))}</text>'
        )
    parts.append(
        f'<text class="axis" x="{_LEFT + plot_w / 2:.1f}" y="{_HEIGHT - 6}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="axis" transform="translate(14 {_TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for index, (name, points) in enumerate(sorted(clean.items())):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(points))
        parts.append(
            f'<polyline class="series" data-name="{escape(name)}" fill="none" '
            f'stroke="{colour}" stroke-width="2" points="{coords}"/>'
        )
        for x, y in points:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)}: {escape(_label(x))}, {escape(_label(y))}</title></circle>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg class="swatch" width="12" height="12" aria-hidden="true">'
        f'<rect width="12" height="12" fill="{SERIES_COLOURS[i % len(SERIES_COLOURS)]}"/></svg>'
        f"{escape(name)}</li>"
        for i, name in enumerate(sorted(clean))
    )
    return Markup(head + "".join(parts) + f'<ul class="legend">{legend}</ul></figure>')
