"""Draw small standalone SVG charts: a line chart and a stacked bar chart, no script.

The functions are pure: they take numbers and return one ``<svg>`` string that a page can
inline or a file can hold as it is. Every drawn mark carries ``data-series``, ``data-x``
and ``data-value``, so a test (or a reader with the inspector open) can read the figures
back from the drawing; every text is escaped. The charts are accessible images:
``role="img"``, an ``aria-label`` and a ``<title>`` first, as SVG-AAM asks
(https://www.w3.org/TR/svg-aam-1.0/#mapping_additional_nd).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from types import MappingProxyType

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 36, 64
MAX_X_LABELS = 12
CHAR_WIDTH = 6.5  # px per character at 12px, near enough to decide whether labels fit
LEGEND_ROW = 16
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
NO_LINES: Mapping[str, float] = MappingProxyType({})
EMPTY_TEXT = "No data in this window"
FONT = 'font-family="system-ui,sans-serif" font-size="12"'
HEADING = 'font-family="system-ui,sans-serif" font-size="14" font-weight="600"'


@dataclass(frozen=True)
class Frame:
    """Map values to the plot area: x bands for labels, a linear y scale from low to high."""

    labels: tuple[str, ...]
    low: float
    high: float

    @property
    def band(self) -> float:
        """Return the width of one x label's band."""
        return (WIDTH - LEFT - RIGHT) / max(len(self.labels), 1)

    @property
    def slanted(self) -> bool:
        """Tell whether the x labels are too wide for their bands and must slant."""
        widest = max((len(label) for label in self.labels), default=0)
        return widest * CHAR_WIDTH > self.band * 0.95

    @property
    def drop(self) -> int:
        """Return the extra height slanted labels need below the plot (sin 30° of their width)."""
        widest = max((len(label) for label in self.labels), default=0)
        return math.ceil(widest * CHAR_WIDTH / 2) if self.slanted else 0

    def x(self, index: int) -> float:
        """Return the centre of the band of the ``index``-th label."""
        return LEFT + self.band * (index + 0.5)

    def y(self, value: float) -> float:
        """Return the vertical position of ``value``."""
        span = self.high - self.low or 1.0
        return TOP + (HEIGHT - TOP - BOTTOM) * (self.high - value) / span


def line_chart(
    series: Mapping[str, Sequence[tuple[str, float]]],
    *,
    title: str,
    y_label: str,
    lines: Mapping[str, float] = NO_LINES,
) -> str:
    """Return an SVG line chart: one line per series over string x labels, plus reference lines.

    ``lines`` are labelled horizontal lines, such as a break-even level.
    """
    labels = _labels(x for points in series.values() for x, _ in points)
    values = [v for points in series.values() for _, v in points]
    if not values:
        return _empty(title)
    frame = _frame(labels, [*values, *lines.values()])
    parts = _axes(frame, title, y_label)
    for colour, (name, points) in zip(_colours(), series.items(), strict=False):
        parts.extend(_line(frame, name, points, colour))
    for name, value in lines.items():
        parts.extend(_reference(frame, name, value))
    legend, rows = _legend(list(series), ref=list(lines), drop=frame.drop)
    return _svg(title, [*parts, *legend], rows=rows, drop=frame.drop)


def bar_chart(groups: Mapping[str, Mapping[str, float]], *, title: str, y_label: str) -> str:
    """Return an SVG stacked bar chart: one bar per group (x label), one segment per series."""
    labels = tuple(groups)
    names = _labels(name for parts in groups.values() for name in parts)
    totals = [sum(max(v, 0.0) for v in parts.values()) for parts in groups.values()]
    if not any(totals):
        return _empty(title)
    frame = _frame(labels, totals)
    colour = dict(zip(names, _colours(), strict=False))
    parts = _axes(frame, title, y_label)
    for index, (x, stack) in enumerate(groups.items()):
        parts.extend(_stack(frame, index, x, stack, colour))
    legend, rows = _legend(list(names), drop=frame.drop)
    return _svg(title, [*parts, *legend], rows=rows, drop=frame.drop)


# ---- pieces ----------------------------------------------------------------------------------


def _labels(items: Iterable[str]) -> tuple[str, ...]:
    """Return the distinct items in the order they first appear."""
    return tuple(dict.fromkeys(items))


def _colours() -> Iterable[str]:
    """Yield the palette's colours, over and over."""
    while True:
        yield from PALETTE


def _frame(labels: tuple[str, ...], values: Sequence[float]) -> Frame:
    """Return the frame whose y range holds every value and zero, up to a round number."""
    low = min(0.0, *values)
    high = max(0.0, *values)
    return Frame(labels, -_round_up(-low) if low < 0 else 0.0, _round_up(high) or 1.0)


def _round_up(value: float) -> float:
    """Return the smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 0.0
    power = math.pow(10.0, math.floor(math.log10(value)))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def _number(value: float) -> str:
    """Return a value exactly enough to read back (ten significant digits)."""
    return format(value, ".10g")


def _tick(value: float) -> str:
    """Return a short axis label: 1.5k, 2M, 0.25."""
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:.3g}"


def _axes(frame: Frame, title: str, y_label: str) -> list[str]:
    """Return the title, grid, y ticks, axis label and x labels."""
    bottom = HEIGHT - BOTTOM
    parts = [
        f'<text x="{LEFT}" y="20" {HEADING}>{escape(title)}</text>',
        f'<text transform="translate(14 {(TOP + bottom) / 2:.1f}) rotate(-90)" {FONT} '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    for step in range(5):
        value = frame.low + (frame.high - frame.low) * step / 4
        y = frame.y(value)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e1e4e8"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" {FONT} text-anchor="end">{_tick(value)}</text>'
        )
    every = math.ceil(len(frame.labels) / MAX_X_LABELS)
    for index, label in enumerate(frame.labels):
        if index % every == 0:
            parts.append(_x_label(frame, index, label, bottom + 18))
    return parts


def _x_label(frame: Frame, index: int, label: str, y: int) -> str:
    """Return one x label: centred under its band, or slanted up to it when too wide."""
    x = frame.x(index)
    if not frame.slanted:
        return f'<text x="{x:.1f}" y="{y}" {FONT} text-anchor="middle">{escape(label)}</text>'
    return (
        f'<text x="{x:.1f}" y="{y - 6}" {FONT} text-anchor="end" '
        f'transform="rotate(-30 {x:.1f} {y - 6})">{escape(label)}</text>'
    )


def _mark(name: str, x: str, value: float) -> str:
    """Return the data attributes every mark carries."""
    return (
        f'data-series="{escape(name)}" data-x="{escape(x)}" data-value="{_number(value)}"'
        f"><title>{escape(name)}, {escape(x)}: {_number(round(value, 4))}</title>"
    )


def _line(frame: Frame, name: str, points: Sequence[tuple[str, float]], colour: str) -> list[str]:
    """Return one series: a polyline through its points, and a dot on each."""
    index = {label: i for i, label in enumerate(frame.labels)}
    xy = [(frame.x(index[x]), frame.y(v), x, v) for x, v in points]
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in xy)
    out = [
        f'<polyline class="series" data-series="{escape(name)}" points="{path}" fill="none" '
        f'stroke="{colour}" stroke-width="2"/>'
    ]
    out.extend(
        f'<circle class="mark" cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{colour}" '
        f"{_mark(name, x, v)}</circle>"
        for px, py, x, v in xy
    )
    return out


def _reference(frame: Frame, name: str, value: float) -> list[str]:
    """Return a dashed horizontal reference line with its label at the right end."""
    y = frame.y(value)
    return [
        f'<line class="reference" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
        f'stroke="#d62728" stroke-dasharray="6 4" data-series="{escape(name)}" data-x="" '
        f'data-value="{_number(value)}"><title>{escape(name)}: {_number(round(value, 4))}'
        "</title></line>",
        f'<text x="{WIDTH - RIGHT - 4}" y="{y - 5:.1f}" {FONT} text-anchor="end" '
        f'fill="#d62728">{escape(name)}</text>',
    ]


def _stack(
    frame: Frame, index: int, x: str, stack: Mapping[str, float], colour: Mapping[str, str]
) -> list[str]:
    """Return one bar: its positive segments stacked from zero, in series order."""
    width = frame.band * 0.7
    left = frame.x(index) - width / 2
    base = 0.0
    out = []
    for name, value in stack.items():
        if value <= 0:
            continue
        top, bottom = frame.y(base + value), frame.y(base)
        out.append(
            f'<rect class="mark" x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" '
            f'height="{bottom - top:.1f}" fill="{colour[name]}" {_mark(name, x, value)}</rect>'
        )
        base += value
    return out


def _legend(
    names: Sequence[str], *, ref: Sequence[str] = (), drop: int = 0
) -> tuple[list[str], int]:
    """Return the legend under the plot (a swatch and a name per series) and its row count."""
    out = []
    rows = 1
    x, y = LEFT, HEIGHT - 18 + drop
    styles = [(n, c, False) for n, c in zip(names, _colours(), strict=False)]
    for name, colour, dashed in [*styles, *((n, "#d62728", True) for n in ref)]:
        width = 30 + 7 * len(name)
        if x > LEFT and x + width > WIDTH - RIGHT:
            x, y, rows = LEFT, y + LEGEND_ROW, rows + 1
        swatch = (
            f'<line x1="{x}" x2="{x + 14}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" '
            'stroke-dasharray="4 2" stroke-width="2"/>'
            if dashed
            else f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colour}"/>'
        )
        out.append(f'{swatch}<text x="{x + 18}" y="{y}" {FONT}>{escape(name)}</text>')
        x += width
    return out, rows


def _svg(title: str, parts: Sequence[str], *, rows: int = 1, drop: int = 0) -> str:
    """Wrap the parts in the outer element, titled for screen readers, tall enough for them."""
    height = HEIGHT + LEGEND_ROW * (rows - 1) + drop
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}"><title>{escape(title)}</title>' + "".join(parts) + "</svg>"
    )


def _empty(title: str) -> str:
    """Return a chart that says it has nothing to draw."""
    return _svg(
        title,
        [
            f'<text x="{LEFT}" y="20" {HEADING}>{escape(title)}</text>',
            f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" {FONT} text-anchor="middle" '
            f'fill="#586069">{EMPTY_TEXT}</text>',
        ],
    )
