"""The manager's page's two charts, as inline SVG rendered by the server. Pure: values in, markup
out; every text and attribute value escaped here.

* :func:`balance_chart`: a location's balance over time in recorded order (dashed) and in
  occurrence order (solid) around one depletion: an ``ordering`` negative shows as the dashed
  line dipping below zero while the solid one never does;
* :func:`daily_chart`: incidents opened per day by class, stacked, each bar a link.

Plain SVG keeps the page light, printable and readable without script; a charting library
would add a script of its own for these two small charts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, tzinfo
from html import escape

from ledger.history import BalanceHistory, Point

__all__ = ["CLASS_COLOURS", "balance_chart", "daily_chart"]

CLASS_COLOURS = {"item": "#b3261e", "location": "#e8891a", "ordering": "#8a94a6"}
_RECORDED = "#d9480f"
_OCCURRENCE = "#1f6feb"
_W, _H = 760, 260
_ML, _MR, _MT, _MB = 56, 16, 28, 40


def _a(v: object) -> str:
    return escape(str(v), quote=True)


def _local(t: int, zone: tzinfo, fmt: str) -> str:
    return datetime.fromtimestamp(t / 1e6, UTC).astimezone(zone).strftime(fmt)


def _clip(points: Sequence[Point], lo: int, hi: int) -> list[tuple[int, int]]:
    """The step series seen in [lo, hi]: the value at lo, the changes inside."""
    start = 0
    inside: list[tuple[int, int]] = []
    for p in points:
        if p.t <= lo:
            start = p.balance
        elif p.t <= hi:
            inside.append((p.t, p.balance))
    return [(lo, start), *inside]


def balance_chart(history: BalanceHistory, *, lo: int, hi: int, marks: Sequence[tuple[int, str]],
                  zone: tzinfo, title: str) -> str:
    """The two series between times lo and hi (µs); ``marks`` are (time, label) verticals
    (the depletion, what resolved it)."""
    if hi <= lo:
        hi = lo + 60_000_000
    pad = (hi - lo) // 20
    x0, x1 = lo - pad, hi + pad
    series = {"recorded": _clip(history.recorded, lo, hi),
              "occurrence": _clip(history.occurrence, lo, hi)}
    values = [b for pts in series.values() for _, b in pts] + [0]
    low, high = min(values), max(values)
    if low == high:
        high += 1
    span_v = high - low
    vmin = low - span_v * 0.08
    vmax = high + span_v * 0.08

    def x(t: int) -> float:
        return _ML + (t - x0) / (x1 - x0) * (_W - _ML - _MR)

    def y(v: float) -> float:
        return _MT + (vmax - v) / (vmax - vmin) * (_H - _MT - _MB)

    days = (x1 - x0) > 20 * 3600 * 1_000_000
    tick_fmt = "%m-%d %H:%M" if days else "%H:%M:%S"
    out = [f'<svg class="chart balance-chart" viewBox="0 0 {_W} {_H}" width="100%" '
           f'role="img" aria-label="{_a(title)}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{_a(title)}</title>",
           f'<rect x="{_ML}" y="{y(0):.1f}" width="{_W - _ML - _MR}" '
           f'height="{max(0.0, y(vmin) - y(0)):.1f}" fill="#fbe9e7"/>',
           f'<line x1="{_ML}" x2="{_W - _MR}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
           'stroke="#6b7380" stroke-width="1"/>']
    for v in sorted({low, 0, high}):
        out.append(f'<text x="{_ML - 6}" y="{y(v) + 4:.1f}" text-anchor="end" '
                   f'font-size="11" fill="#1d2430">{v}</text>')
    for i in range(5):
        t = lo + (hi - lo) * i // 4
        out.append(f'<text x="{x(t):.1f}" y="{_H - _MB + 16}" text-anchor="middle" '
                   f'font-size="11" fill="#1d2430">{_a(_local(t, zone, tick_fmt))}</text>')
    for k, (t, label) in enumerate(marks):
        if lo <= t <= hi:
            out.append(f'<line class="mark" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_MT}" '
                       f'y2="{_H - _MB}" stroke="#1d2430" stroke-dasharray="2 3"/>'
                       f'<text x="{x(t) + 3:.1f}" y="{_MT + 10 + 13 * k}" font-size="11" '
                       f'fill="#1d2430">{_a(label)}</text>')
    for name, colour, dash, width in (("recorded", _RECORDED, ' stroke-dasharray="7 4"', 2),
                                      ("occurrence", _OCCURRENCE, "", 2.5)):
        pts = series[name]
        d = [f"M{x(pts[0][0]):.1f},{y(pts[0][1]):.1f}"]
        for t, b in pts[1:]:
            d.append(f"H{x(t):.1f}V{y(b):.1f}")
        d.append(f"H{x(hi):.1f}")
        balances = ",".join(str(b) for _, b in pts)
        lowest = min(b for _, b in pts)
        out.append(f'<path class="series {name}" data-balances="{balances}" '
                   f'data-min="{lowest}" d="{"".join(d)}" fill="none" stroke="{colour}" '
                   f'stroke-width="{width}"{dash}/>')
        for t, b in pts[1:]:
            when = _local(t, zone, "%Y-%m-%d %H:%M:%S")
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(b):.1f}" r="3" fill="{colour}">'
                       f"<title>{name} order: {b} at {_a(when)}</title></circle>")
    legend = (("recorded order (as posted, when it arrived)", _RECORDED, "7 4"),
              ("occurrence order (when it happened)", _OCCURRENCE, ""))
    lx = _ML
    for text, colour, dash in legend:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{lx}" x2="{lx + 24}" y1="12" y2="12" stroke="{colour}" '
                   f'stroke-width="2.5"{dash_attr}/><text x="{lx + 30}" y="16" font-size="12" '
                   f'fill="#1d2430">{_a(text)}</text>')
        lx += 330
    out.append("</svg>")
    return "".join(out)


def daily_chart(counts: Mapping[date, Mapping[str, int]], days: Sequence[date],
                link: Callable[[date], str], labels: Mapping[str, str]) -> str:
    """Stacked bars of incidents opened per day and class; ``link(day)`` is each bar's
    href (already a URL; escaped here), ``labels`` the classes' names for people."""
    h = 200
    top = max([sum(counts.get(d, {}).values()) for d in days] + [1])
    slot = (_W - _ML - _MR) / max(1, len(days))
    bar = max(2.0, slot * 0.7)

    def y(v: float) -> float:
        return _MT + (top - v) / top * (h - _MT - _MB)

    out = [f'<svg class="chart daily-chart" viewBox="0 0 {_W} {h}" width="100%" role="img" '
           'aria-label="incidents opened per day by class" '
           'xmlns="http://www.w3.org/2000/svg"><title>incidents opened per day by class</title>',
           f'<line x1="{_ML}" x2="{_W - _MR}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#6b7380"/>',
           f'<text x="{_ML - 6}" y="{y(top) + 4:.1f}" text-anchor="end" font-size="11" '
           f'fill="#1d2430">{top}</text>',
           f'<text x="{_ML - 6}" y="{y(0) + 4:.1f}" text-anchor="end" font-size="11" '
           'fill="#1d2430">0</text>']
    for i, day in enumerate(days):
        bx = _ML + i * slot + (slot - bar) / 2
        base = 0
        per = counts.get(day, {})
        segs = []
        for cls in ("item", "location", "ordering"):
            n = per.get(cls, 0)
            if not n:
                continue
            segs.append(f'<rect class="bar" data-day="{day.isoformat()}" data-class="{cls}" '
                        f'data-count="{n}" x="{bx:.1f}" y="{y(base + n):.1f}" '
                        f'width="{bar:.1f}" height="{y(base) - y(base + n):.1f}" '
                        f'fill="{CLASS_COLOURS[cls]}"><title>{day.isoformat()}: {n} '
                        f"{_a(labels[cls])}</title></rect>")
            base += n
        if segs:
            out.append(f'<a href="{_a(link(day))}">{"".join(segs)}</a>')
        if i % 5 == (len(days) - 1) % 5:
            out.append(f'<text x="{bx + bar / 2:.1f}" y="{h - _MB + 16}" text-anchor="middle" '
                       f'font-size="11" fill="#1d2430">{day.strftime("%m-%d")}</text>')
    lx = _ML
    for cls in ("item", "location", "ordering"):
        out.append(f'<rect x="{lx}" y="6" width="12" height="12" fill="{CLASS_COLOURS[cls]}"/>'
                   f'<text x="{lx + 16}" y="16" font-size="12" fill="#1d2430">'
                   f"{_a(labels[cls])}</text>")
        lx += 190
    out.append("</svg>")
    return "".join(out)
