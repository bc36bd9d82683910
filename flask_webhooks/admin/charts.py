"""Server-rendered inline SVG charts for the admin screens.

Pure functions: numbers in, markup out (no Flask, no database, no script,
no style attributes, so a strict Content-Security-Policy leaves them be and
the screens work offline). Each chart is readable without colour:

* every bar and point has a ``<title>`` (the browser's tooltip) giving its
  time and numbers, and the chart a ``<title>``/``<desc>`` summary for
  screen readers (``role="img"``);
* the statuses of a stacked bar differ by pattern as well as colour
  (stripes, dots, hatching), and the legend names each with its total;
* in sparklines successes rise above the baseline and failures hang below
  it; of the two latency lines one is solid with round markers, the other
  dashed with square ones.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import typing as t

from markupsafe import escape
from markupsafe import Markup

__all__ = [
    "STATUS_STYLES",
    "line_chart",
    "nice_ceiling",
    "rate_bar",
    "sparkline",
    "stacked_bars",
]

#: status -> (colour, pattern): the pattern tells statuses apart without colour.
STATUS_STYLES: dict[str, tuple[str, str]] = {
    "succeeded": ("#2f9e44", "solid"),
    "failed": ("#c92a2a", "hatch"),
    "retrying": ("#f59f00", "dots"),
    "pending": ("#868e96", "rows"),
    "delivering": ("#1c7ed6", "columns"),
    "cancelled": ("#343a40", "cross"),
}
_FALLBACK_STYLE = ("#adb5bd", "solid")
_FONT = 'font-family="system-ui, sans-serif" font-size="11" fill="#495057"'
_LINE_STYLES = (("#1c7ed6", "", "circle"), ("#c92a2a", "6 3", "square"))


def _safe_id(chart_id: str) -> str:
    """``chart_id`` as an XML id that also works inside ``url(#...)``."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", chart_id) or "chart"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    # power <= value < 10 * power, so the last step always matches.
    return float(next(s * power for s in (1, 2, 2.5, 5, 10) if s * power >= value))


def _num(value: float) -> str:
    """A coordinate: one decimal at most."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def _ms(value: float | None) -> str:
    if value is None:
        return "no attempts"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


_HOUR = dt.timedelta(hours=1)


def _hour_label(start: dt.datetime, step: dt.timedelta = _HOUR) -> str:
    end = start + step
    return f"{start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC"


def _pattern(pid: str, colour: str, kind: str) -> str:
    head = f'<pattern id="{pid}" width="6" height="6" patternUnits="userSpaceOnUse"'
    fill = f'<rect width="6" height="6" fill="{colour}"/>'
    marks = {
        "solid": "",
        "hatch": '<path d="M0 6L6 0M-1 1L1 -1M5 7L7 5" stroke="#fff" stroke-width="1.5"/>',
        "dots": '<circle cx="3" cy="3" r="1.3" fill="#fff"/>',
        "rows": '<path d="M0 3H6" stroke="#fff" stroke-width="1.3"/>',
        "columns": '<path d="M3 0V6" stroke="#fff" stroke-width="1.3"/>',
        "cross": '<path d="M0 0L6 6M6 0L0 6" stroke="#fff" stroke-width="1"/>',
    }.get(kind, "")
    return f"{head}>{fill}{marks}</pattern>"


def _x_labels(buckets: t.Sequence[dt.datetime]) -> list[tuple[int, str]]:
    """(bucket number, label) of the buckets that get an axis label."""
    if len(buckets) <= 48:
        step = max(1, len(buckets) // 8)
        return [(i, f"{b:%H:%M}") for i, b in enumerate(buckets) if i % step == 0]
    return [(i, f"{b:%a %d}") for i, b in enumerate(buckets) if b.hour == 0]


def _svg_open(
    chart_id: str, width: int, height: int, title: str, desc: str, css: str
) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" id="{escape(chart_id)}" '
        f'viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMidYMid meet" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc">'
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>'
    )


def _y_axis(
    left: int,
    top: int,
    plot_w: float,
    plot_h: float,
    ymax: float,
    fmt: t.Callable[[float], str],
) -> list[str]:
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{left}" x2="{_num(left + plot_w)}" y1="{_num(y)}" y2="{_num(y)}" '
            f'stroke="#dee2e6" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{_num(y + 4)}" text-anchor="end" {_FONT}>'
            f"{escape(fmt(ymax * fraction))}</text>"
        )
    return parts


def stacked_bars(
    buckets: t.Sequence[dt.datetime],
    series: t.Mapping[str, t.Sequence[int]],
    *,
    chart_id: str,
    title: str,
    width: int = 960,
    height: int = 260,
) -> Markup:
    """Deliveries per hour bucket, one stacked bar per bucket, one segment
    per status (in the order of ``series``).

    :param buckets: the start of each hour (aware, UTC).
    :param series: status -> count per bucket (same length as ``buckets``).
    :param chart_id: unique on the page (pattern ids derive from it).
    """
    chart_id = _safe_id(chart_id)
    n = len(buckets)
    left, right, top, legend_h, axis_h = 48, 12, 12, 26, 22
    plot_w = width - left - right
    plot_h = height - top - axis_h - legend_h
    totals = [sum(values[i] for values in series.values()) for i in range(n)]
    ymax = nice_ceiling(max(totals, default=0))
    sums = {status: sum(values) for status, values in series.items()}
    summary = ", ".join(f"{_count(v)} {s}" for s, v in sums.items() if v) or "none"
    desc = (
        f"Deliveries per hour from {buckets[0]:%Y-%m-%d %H:%M} UTC: {summary}."
        if n
        else ""
    )
    parts = [
        _svg_open(chart_id, width, height, title, desc, "wh-chart wh-bars"),
        "<defs>",
    ]
    for status in series:
        colour, kind = STATUS_STYLES.get(status, _FALLBACK_STYLE)
        parts.append(_pattern(f"{chart_id}-{status}", colour, kind))
    parts.append("</defs>")
    parts += _y_axis(left, top, plot_w, plot_h, ymax, _count)
    slot = plot_w / max(n, 1)
    bar_w = max(slot * 0.8, 1.0)
    for i, start in enumerate(buckets):
        x = left + slot * i + (slot - bar_w) / 2
        counts = [(s, values[i]) for s, values in series.items() if values[i]]
        label = ", ".join(f"{_count(c)} {s}" for s, c in counts) or "no deliveries"
        parts.append(
            f'<g class="wh-bar" data-total="{totals[i]}"><title>{escape(_hour_label(start))}: '
            f"{escape(label)}</title>"
            f'<rect x="{_num(left + slot * i)}" y="{top}" width="{_num(slot)}" '
            f'height="{_num(plot_h)}" fill="transparent"/>'
        )
        y = float(top + plot_h)
        for status, count in counts:
            h = plot_h * count / ymax
            y -= h
            parts.append(
                f'<rect class="wh-seg wh-seg-{escape(status)}" x="{_num(x)}" y="{_num(y)}" '
                f'width="{_num(bar_w)}" height="{_num(max(h, 0.5))}" '
                f'fill="url(#{escape(chart_id)}-{escape(status)})"/>'
            )
        parts.append("</g>")
    for i, text in _x_labels(buckets):
        x = left + slot * i + slot / 2
        parts.append(
            f'<text x="{_num(x)}" y="{top + plot_h + 15}" text-anchor="middle" {_FONT}>'
            f"{escape(text)}</text>"
        )
    if not any(totals):
        parts.append(
            f'<text x="{_num(left + plot_w / 2)}" y="{_num(top + plot_h / 2)}" '
            f'text-anchor="middle" {_FONT}>No deliveries in this window</text>'
        )
    x = float(left)
    legend_y = height - 9
    for status, total in sums.items():
        text = f"{status} {_count(total)}"
        parts.append(
            f'<g class="wh-legend-item"><rect x="{_num(x)}" y="{legend_y - 10}" width="14" '
            f'height="12" fill="url(#{escape(chart_id)}-{escape(status)})" stroke="#495057" '
            f'stroke-width="0.5"/><text x="{_num(x + 19)}" y="{legend_y}" {_FONT}>'
            f"{escape(text)}</text></g>"
        )
        x += 30 + 6.5 * len(text)
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(
    buckets: t.Sequence[dt.datetime],
    series: t.Mapping[str, t.Sequence[float | None]],
    *,
    chart_id: str,
    title: str,
    width: int = 960,
    height: int = 220,
) -> Markup:
    """Milliseconds per hour bucket, one line per series (``p50``, ``p95``).

    Hours without a value leave a gap. The first series is drawn solid with
    round markers, the second dashed with square markers.
    """
    chart_id = _safe_id(chart_id)
    n = len(buckets)
    left, right, top, legend_h, axis_h = 56, 12, 12, 26, 22
    plot_w = width - left - right
    plot_h = height - top - axis_h - legend_h
    values = [v for line in series.values() for v in line if v is not None]
    ymax = nice_ceiling(max(values, default=0.0))
    slot = plot_w / max(n, 1)
    desc = "; ".join(
        f"{name}: highest {_ms(max((v for v in line if v is not None), default=None))}"
        for name, line in series.items()
    )
    parts = [_svg_open(chart_id, width, height, title, desc, "wh-chart wh-lines")]
    parts += _y_axis(left, top, plot_w, plot_h, ymax, lambda v: _ms(v) if v else "0")
    for k, (name, line) in enumerate(series.items()):
        colour, dash, marker = _LINE_STYLES[k % len(_LINE_STYLES)]
        path: list[str] = []
        marks: list[str] = []
        pen_down = False
        for i, value in enumerate(line):
            if value is None:
                pen_down = False
                continue
            x = left + slot * i + slot / 2
            y = top + plot_h * (1 - value / ymax)
            path.append(f"{'L' if pen_down else 'M'}{_num(x)} {_num(y)}")
            pen_down = True
            tip = f"{_hour_label(buckets[i])}: {name} {_ms(value)}"
            shape = (
                f'<circle cx="{_num(x)}" cy="{_num(y)}" r="3" fill="{colour}"/>'
                if marker == "circle"
                else f'<rect x="{_num(x - 3)}" y="{_num(y - 3)}" width="6" height="6" fill="{colour}"/>'
            )
            marks.append(
                f'<g class="wh-point wh-point-{escape(name)}"><title>{escape(tip)}</title>{shape}</g>'
            )
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if path:
            parts.append(
                f'<path class="wh-line wh-line-{escape(name)}" d="{" ".join(path)}" fill="none" '
                f'stroke="{colour}" stroke-width="2"{dash_attr}/>'
            )
        parts += marks
    for i, text in _x_labels(buckets):
        x = left + slot * i + slot / 2
        parts.append(
            f'<text x="{_num(x)}" y="{top + plot_h + 15}" text-anchor="middle" {_FONT}>'
            f"{escape(text)}</text>"
        )
    if not values:
        parts.append(
            f'<text x="{_num(left + plot_w / 2)}" y="{_num(top + plot_h / 2)}" '
            f'text-anchor="middle" {_FONT}>No attempts in this window</text>'
        )
    x = float(left)
    legend_y = height - 9
    for k, name in enumerate(series):
        colour, dash, _ = _LINE_STYLES[k % len(_LINE_STYLES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<g class="wh-legend-item"><line x1="{_num(x)}" x2="{_num(x + 24)}" '
            f'y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"{dash_attr}/>'
            f'<text x="{_num(x + 30)}" y="{legend_y}" {_FONT}>{escape(name)}</text></g>'
        )
        x += 60 + 7 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


def sparkline(
    buckets: t.Sequence[dt.datetime],
    succeeded: t.Sequence[int],
    failed: t.Sequence[int],
    *,
    chart_id: str,
    label: str = "last 24 hours",
    width: int = 120,
    height: int = 30,
    step: dt.timedelta = _HOUR,
) -> Markup:
    """Succeeded (bars above the baseline) and failed deliveries (bars below
    it, hatched) per bucket: a small chart for a table cell.

    :param step: the length of a bucket (default one hour).
    """
    chart_id = _safe_id(chart_id)
    n = len(buckets)
    ok_total, failed_total = sum(succeeded), sum(failed)
    summary = f"{label}: {_count(ok_total)} succeeded, {_count(failed_total)} failed"
    parts = [
        _svg_open(chart_id, width, height, summary, summary, "wh-spark"),
        "<defs>",
        _pattern(f"{chart_id}-failed", *STATUS_STYLES["failed"]),
        "</defs>",
    ]
    middle = height / 2
    top = max(max(succeeded, default=0), max(failed, default=0), 1)
    slot = width / max(n, 1)
    bar_w = max(slot * 0.75, 1.0)
    half = middle - 1
    parts.append(
        f'<line x1="0" x2="{width}" y1="{_num(middle)}" y2="{_num(middle)}" '
        f'stroke="#adb5bd" stroke-width="1"/>'
    )
    for i, start in enumerate(buckets):
        ok, bad = succeeded[i], failed[i]
        if not (ok or bad):
            continue
        x = slot * i + (slot - bar_w) / 2
        parts.append(
            f'<g class="wh-spark-bar"><title>{escape(_hour_label(start, step))}: {ok} succeeded, '
            f"{bad} failed</title>"
        )
        if ok:
            h = max(half * ok / top, 1.0)
            parts.append(
                f'<rect class="wh-spark-ok" x="{_num(x)}" y="{_num(middle - h)}" width="{_num(bar_w)}" '
                f'height="{_num(h)}" fill="{STATUS_STYLES["succeeded"][0]}"/>'
            )
        if bad:
            h = max(half * bad / top, 1.0)
            parts.append(
                f'<rect class="wh-spark-failed" x="{_num(x)}" y="{_num(middle)}" width="{_num(bar_w)}" '
                f'height="{_num(h)}" fill="url(#{escape(chart_id)}-failed)"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def rate_bar(
    succeeded: int, failed: int, *, chart_id: str, width: int = 120, height: int = 12
) -> Markup:
    """A horizontal bar split into the succeeded and (hatched) failed share."""
    chart_id = _safe_id(chart_id)
    done = succeeded + failed
    summary = (
        f"{succeeded / done:.1%} succeeded ({succeeded} of {done})"
        if done
        else "no finished deliveries"
    )
    parts = [
        _svg_open(chart_id, width, height, summary, summary, "wh-rate"),
        "<defs>",
        _pattern(f"{chart_id}-failed", *STATUS_STYLES["failed"]),
        "</defs>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f1f3f5"/>',
    ]
    if done:
        ok_w = width * succeeded / done
        parts.append(
            f'<rect x="0" y="0" width="{_num(ok_w)}" height="{height}" '
            f'fill="{STATUS_STYLES["succeeded"][0]}"/>'
            f'<rect x="{_num(ok_w)}" y="0" width="{_num(width - ok_w)}" height="{height}" '
            f'fill="url(#{escape(chart_id)}-failed)"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
