"""Small SVG charts drawn on the server, so the dashboard loads nothing from anywhere. Pure.

Each function returns a ``Markup`` string of one ``<svg>`` element sized by its ``viewBox`` (it
scales with the page). Labels are escaped; numbers are rounded for the eye, with exact values
in ``<title>`` tooltips.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
BLUE = "#2563eb"
GREEN = "#16a34a"
GREY = "#cbd5e1"
RED = "#dc2626"
AMBER = "#d97706"


def human(n: float) -> str:
    """12,345 -> ``12.3k``; 3 -> ``3``."""
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def _nice_max(value: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def bars(
    values: Sequence[float],
    labels: Sequence[str],
    *,
    series: Sequence[tuple[str, Sequence[float], str]] | None = None,
    width: int = 640,
    height: int = 200,
    label_every: int = 1,
    title: str = "",
    empty: str = "",
) -> Markup:
    """A column chart; with ``series`` (name, values, colour) the columns are grouped side by
    side and a legend is drawn. ``values`` is used when ``series`` is not given. Every
    ``label_every``-th label is drawn, counting back from the newest (last) one; ``empty`` is
    written across a chart whose values are all zero."""
    groups = list(series) if series else [("", list(values), BLUE)]
    n = max((len(v) for _, v, _ in groups), default=0)
    left, right, top, bottom = 44, 22, 22 if series else 8, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_max(max((max(v, default=0) for _, v, _ in groups), default=0))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID}"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="{MUTED}">{human(peak * frac)}</text>'
        )
    if n:
        slot = plot_w / n
        bar_w = max(slot * 0.8 / len(groups), 1.0)
        for i in range(n):
            for j, (name, vals, colour) in enumerate(groups):
                v = vals[i] if i < len(vals) else 0
                h = plot_h * v / peak
                x = left + i * slot + slot * 0.1 + j * bar_w
                tip = f"{labels[i] if i < len(labels) else i}: {name + ' ' if name else ''}{v:g}"
                parts.append(
                    f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{escape(tip)}</title></rect>'
                )
            if (n - 1 - i) % label_every == 0 and i < len(labels):
                parts.append(
                    f'<text x="{left + i * slot + slot / 2:.1f}" y="{height - 6}" '
                    f'text-anchor="middle" font-size="11" fill="{MUTED}">'
                    f"{escape(labels[i])}</text>"
                )
    if empty and not any(v for _, vals, _ in groups for v in vals):
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'font-size="14" fill="{MUTED}">{escape(empty)}</text>'
        )
    if series:
        x = left
        for name, _, colour in groups:
            parts.append(
                f'<rect x="{x}" y="4" width="10" height="10" fill="{colour}"/>'
                f'<text x="{x + 14}" y="13" font-size="12" fill="{INK}">{escape(name)}</text>'
            )
            x += 24 + 7 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(
    items: Sequence[tuple[str, float]],
    *,
    width: int = 640,
    row: int = 22,
    colour: str = RED,
    title: str = "",
    empty: str = "nothing to show",
) -> Markup:
    """Horizontal bars, one per (label, value), longest first as given."""
    if not items:
        return Markup(
            f'<svg class="chart" viewBox="0 0 {width} {row + 8}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
            f'<text x="0" y="{row - 4}" font-size="13" fill="{MUTED}">{escape(empty)}</text></svg>'
        )
    label_w = 200
    peak = max(v for _, v in items) or 1
    height = row * len(items) + 4
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        w = (width - label_w - 70) * value / peak
        parts.append(
            f'<text x="{label_w - 8}" y="{y + row * 0.68:.1f}" text-anchor="end" font-size="12" '
            f'fill="{INK}">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 8}" '
            f'fill="{colour}"><title>{escape(label)}: {value:g}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + row * 0.68:.1f}" font-size="12" '
            f'fill="{INK}">{human(value)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
