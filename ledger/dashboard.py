"""The manager's page (DESIGN section 11): server-rendered HTML and inline SVG, no build step.

Two pages: the overview ``/`` (filters, counts, incidents opened per day, open incidents by
class, recently resolved, held depletions, stations with their flags) and one page per incident
(``/incidents/{id}``: its story and the chart of its location's balance in both orders).

Every value is escaped here (``html.escape``), in one place, and every link is built from
:meth:`PageContext.link`, so the filters (and the ``token`` and ``refresh`` of the page) stay
in every link. Times are shown in the site's time zone, to the second, with the UTC instant
in the ``title`` (on hover).

The overview is a list of sections (:data:`SECTIONS`): each is a function of the
:class:`Overview` and the :class:`PageContext`, so another section is one more function.

The page refreshes itself: a few lines of inline script fetch the same URL with
``X-Ledger-Fragment: 1`` every few seconds and swap in the freshly rendered ``<main>``;
without script a ``<noscript>`` meta refresh does it. The filter form is outside ``<main>``, so
a refresh never resets what someone is choosing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from html import escape
from typing import Any
from urllib.parse import urlencode

from ledger.charts import balance_chart, daily_chart
from ledger.events import parse_time
from ledger.filters import IncidentFilter
from ledger.history import BalanceHistory, Point

__all__ = ["SECTIONS", "Overview", "PageContext", "render_error", "render_incident",
           "render_main", "render_page"]

_CLASS_TEXT = {
    "item": ("Real shortage", "the item is short across the whole site"),
    "location": ("Wrong location", "stock exists at the site, but not in this bin"),
    "ordering": ("Posting order only", "an earlier movement was recorded late"),
}
_LABELS = {cls: text[0] for cls, text in _CLASS_TEXT.items()}

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{background:#1d2430;color:#fff;padding:.8rem 1.2rem;display:flex;gap:1rem;
align-items:baseline;flex-wrap:wrap}
header h1{font-size:1.2rem;margin:0}header small{opacity:.7}header a{color:#fff}
main{padding:1rem 1.2rem}section{margin-bottom:1.6rem}
h2{font-size:1.05rem;margin:.2rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
.neg{color:#b3261e;font-weight:600}
.badge{display:inline-block;padding:0 .4rem;border-radius:.6rem;font-size:.8rem}
.confirmed{background:#b3261e;color:#fff}.provisional{background:#f2c94c;color:#1d2430}
.flag{background:#b3261e;color:#fff;margin-right:.2rem}
.cards{display:flex;gap:.8rem;flex-wrap:wrap;margin-bottom:1rem}
.card{background:#fff;border-radius:.4rem;padding:.6rem .9rem;min-width:10rem;
box-shadow:0 1px 2px #0002}
.card b{font-size:1.5rem;display:block}.muted{color:#6b7380}
.code{font-family:ui-monospace,monospace;font-size:.85em;color:#6b7380}
form.filters{display:flex;gap:.6rem;flex-wrap:wrap;align-items:end;padding:.7rem 1.2rem;
background:#fff;border-bottom:1px solid #e3e6ea;font-size:.85rem}
form.filters label{display:flex;flex-direction:column;gap:.15rem}
.chips a{margin-right:.6rem}.chips a.on{font-weight:700;text-decoration:none;color:#1d2430}
.chart{background:#fff;border-radius:.4rem;max-width:60rem;display:block}
.story{background:#fff;border-radius:.4rem;padding:.8rem 1rem;max-width:60rem}
.story dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
.story dt{color:#6b7380}.story dd{margin:0}
.note{background:#fff;border-left:3px solid #1f6feb;padding:.4rem .8rem;margin:.4rem 0;
max-width:60rem;white-space:pre-wrap}
.error{background:#fbe9e7;border:1px solid #b3261e;padding:.6rem 1rem;border-radius:.4rem}
tr.flagged td{background:#fff4f2}
"""

_SCRIPT = """
(function(){
  var every = %d * 1000;
  document.body.dataset.refreshes = "0";
  function tick(){
    fetch(window.location.href, {headers: {"X-Ledger-Fragment": "1"}, cache: "no-store"})
      .then(function(r){ if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function(html){
        document.querySelector("main").innerHTML = html;
        document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
      })
      .catch(function(){ document.body.dataset.stale = "1"; })
      .finally(function(){ setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
"""


def _e(v: Any) -> str:
    return "—" if v is None or v == "" else escape(str(v), quote=True)


@dataclass(frozen=True, slots=True)
class PageContext:
    """What every link and every time on a page depends on."""

    filt: IncidentFilter
    zone: Callable[[str], tzinfo]  # a site's time zone
    now: int  # µs
    keep: tuple[tuple[str, str], ...] = ()  # other parameters kept in links (token, refresh)
    page_zone: tzinfo = UTC  # for what has no site of its own (the daily chart, "updated")

    def link(self, path: str = "/", **change: Any) -> str:
        """``path`` with the filter (changed by ``change``) and the kept parameters."""
        query = [*self.filt.query(**change), *self.keep]
        return path + ("?" + urlencode(query) if query else "")

    def time(self, iso: str | None, site: str | None) -> str:
        """A time in the site's zone, to the second, with the UTC instant on hover."""
        if not iso:
            return "—"
        return _time(iso, self.page_zone if site is None else self.zone(site))


def _time(iso: str, zone: tzinfo) -> str:
    utc = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    local = utc.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    hover = utc.strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    return (f'<time datetime="{_e(iso)}" title="{_e(hover)}">{_e(local)}</time>')


def _item(code: str | None, name: str | None) -> str:
    if not name:
        return f'<span class="code">{_e(code)}</span>'
    return f'<span class="item-name">{_e(name)}</span> <span class="code">{_e(code)}</span>'


@dataclass(frozen=True, slots=True)
class Overview:
    """What the overview shows, already filtered."""

    incidents: list[dict[str, Any]]
    recent: list[dict[str, Any]]  # for the daily chart: IncidentFilter.opened_per_day
    held: list[dict[str, Any]]
    stations: list[dict[str, Any]]
    names: Mapping[str, str] = field(default_factory=dict)  # item names (held events)
    resolvers: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> event
    sites: Sequence[str] = ()
    station_names: Sequence[str] = ()


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str,
           numeric: Sequence[int] = (), row_class: Sequence[str] | None = None) -> str:
    body = []
    for n, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        cls = f' class="{row_class[n]}"' if row_class and row_class[n] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _badge(inc: Mapping[str, Any]) -> str:
    if inc["confirmed"]:
        return '<span class="badge confirmed" title="every station has synced past it">' \
               "confirmed</span>"
    return ('<span class="badge provisional" title="a station has not synced past it yet; '
            'do not adjust stock">provisional</span>')


def _describe(ev: Mapping[str, Any] | None, ctx: PageContext, site: str) -> str:
    """What an event was, for people: type, quantity, bins, station and time."""
    if ev is None:
        return "—"
    typ = ev.get("type")
    where = {"receipt": f"into {_e(ev.get('to_location'))}",
             "pick": f"from {_e(ev.get('from_location'))}",
             "move": f"from {_e(ev.get('from_location'))} to {_e(ev.get('to_location'))}",
             "count": f"at {_e(ev.get('to_location'))}",
             "void": "(an undo)"}.get(str(typ), "")
    qty = "" if typ == "void" else f" of {_e(ev.get('qty'))}"
    return (f"{_e(typ)}{qty} {where} by {_e(ev.get('station'))} at "
            f"{ctx.time(ev.get('occurred_at'), site)}")


# ------------------------------------------------------------------ overview sections


def _incident_link(inc: Mapping[str, Any], ctx: PageContext) -> str:
    href = ctx.link("/incidents/" + str(int(inc["id"])))
    return f'<a class="incident" href="{_e(href)}">#{_e(inc["id"])}</a>'


def _cards(o: Overview, ctx: PageContext) -> str:
    open_ = [i for i in o.incidents if i["status"] == "open"]
    parts = ['<div class="cards">']
    for cls in ("item", "location"):
        of = [i for i in open_ if i["class"] == cls]
        conf = sum(1 for i in of if i["confirmed"])
        parts.append(f'<div class="card" id="card-{cls}"><span>{escape(_LABELS[cls])}</span>'
                     f"<b>{len(of)}</b><span class=\"muted\">{conf} confirmed, "
                     f"{len(of) - conf} provisional</span></div>")
    # posting-order negatives resolve by themselves: counted whatever the status filter
    # (``/?status=open`` would always show 0), within the filter's days
    days = IncidentFilter(start=ctx.filt.start, end=ctx.filt.end)
    auto = sum(1 for i in o.recent if i["class"] == "ordering" and days.matches(
        site=i["site"], cls=i["class"], status=i["status"], station=i["station"],
        opened_at=parse_time(i["opened_at"]), zone=ctx.zone))
    parts.append(f'<div class="card" id="card-ordering"><span>Posting order only</span>'
                 f'<b>{auto}</b><span class="muted">resolved by themselves</span></div>')
    parts.append(f'<div class="card" id="card-held"><span>Held depletions</span>'
                 f'<b>{len(o.held)}</b><span class="muted">waiting for stock</span></div>')
    flagged = sum(1 for s in o.stations if s.get("flags"))
    parts.append(f'<div class="card" id="card-flagged"><span>Stations flagged</span>'
                 f'<b>{flagged}</b><span class="muted">clock off or silent</span></div></div>')
    return "".join(parts)


def _daily(o: Overview, ctx: PageContext) -> str:
    today = datetime.fromtimestamp(ctx.now / 1e6, UTC).astimezone(ctx.page_zone).date()
    days = [today - timedelta(days=29 - i) for i in range(30)]
    first = days[0]
    counts: dict[date, dict[str, int]] = {}
    for inc in o.recent:
        day = datetime.fromisoformat(inc["opened_at"].replace("Z", "+00:00")).astimezone(
            ctx.page_zone).date()
        if first <= day <= today:
            per = counts.setdefault(day, {})
            per[inc["class"]] = per.get(inc["class"], 0) + 1
    zone = getattr(ctx.page_zone, "key", None) or str(ctx.page_zone)
    svg = daily_chart(counts, days, lambda d: ctx.link(start=d, end=d), _LABELS)
    return (f'<section id="daily"><h2>Incidents opened per day <small class="muted">— last 30 '
            f"days, by class, whatever their status now; days in {_e(zone)}; a bar shows that "
            "day</small></h2>"
            f"{svg}</section>")


def _open_section(cls: str) -> Callable[[Overview, PageContext], str]:
    def section(o: Overview, ctx: PageContext) -> str:
        if ctx.filt.status == "resolved" or ctx.filt.cls not in (None, cls):
            return ""
        title, meaning = _CLASS_TEXT[cls]
        headers = ("", "#", "Site", "Item", "Location", "Balance", "Qty", "Type", "Station",
                   "Occurred", "Opened", "Note")
        rows = [
            (_badge(i), _incident_link(i, ctx),
             _e(i["site"]), _item(i["item"], i.get("item_name")), _e(i["location"]),
             f'<span class="neg">{_e(i["balance"])}</span>', _e(i["qty"]), _e(i["type"]),
             _e(i["station"]), ctx.time(i["occurred_at"], i["site"]),
             ctx.time(i["opened_at"], i["site"]),
             ("suspected duplicate scan" if i["suspected_duplicate"] else "")
             + (f" {len(i['notes'])} note(s)" if i.get("notes") else ""))
            for i in o.incidents if i["status"] == "open" and i["class"] == cls
        ]
        return (f'<section id="open-{cls}"><h2>{escape(title)} '
                f'<small class="muted">— {escape(meaning)}</small></h2>'
                f"{_table(headers, rows, 'None open.', numeric=(5, 6))}</section>")
    return section


def _resolved(o: Overview, ctx: PageContext) -> str:
    if ctx.filt.status == "open":
        return ""
    resolved = [i for i in o.incidents if i["status"] == "resolved"]
    shown = resolved[-50:][::-1]
    rows = [(_incident_link(i, ctx),
             _e(_LABELS.get(i["class"], i["class"])), _e(i["site"]),
             _item(i["item"], i.get("item_name")), _e(i["location"]),
             ctx.time(i["occurred_at"], i["site"]), ctx.time(i["resolved_at"], i["site"]),
             _describe(o.resolvers.get(i["resolved_by_event_id"] or ""), ctx, i["site"])
             if i["resolved_by_event_id"] else "itself: negative only in recorded order")
            for i in shown]
    more = (f'<p class="muted">and {len(resolved) - len(shown)} older: '
            f'<a href="{_e(ctx.link("/v1/negatives.csv"))}">download all as CSV</a></p>'
            if len(resolved) > len(shown) else "")
    return ('<section id="resolved"><h2>Recently resolved</h2>' + _table(
        ("#", "Class", "Site", "Item", "Location", "Occurred", "Resolved", "Resolved by"), rows,
        "Nothing resolved.") + more + "</section>")


def _held(o: Overview, ctx: PageContext) -> str:
    rows = [(_e(h.get("site")), _item(h.get("item"), o.names.get(str(h.get("item")))),
             _e(h.get("from_location")), _e(h.get("qty")), _e(h.get("type")),
             _e(h.get("station")), ctx.time(h.get("occurred_at"), h.get("site")),
             ctx.time(h.get("received_at"), h.get("site"))) for h in o.held]
    return ('<section id="held"><h2>Held depletions <small class="muted">— site does not '
            "allow negative stock; released when the bin covers them</small></h2>" + _table(
                ("Site", "Item", "From", "Qty", "Type", "Station", "Occurred", "Received"),
                rows, "Nothing held.", numeric=(3,)) + "</section>")


def _flag_text(s: Mapping[str, Any], flag: str, now: int) -> str:
    if flag == "clock_offset":
        off = float(s.get("clock_offset_ms") or 0.0) / 1000
        way = "behind" if off > 0 else "ahead of"
        return f"clock {abs(off):.1f} s {way} the ledger's"
    if flag == "no_contact":
        since = s.get("last_contact") or s.get("created_at")
        minutes = (now - parse_time(since)) // 60_000_000 if since else 0
        return f"no contact for {minutes} min while others of {s.get('site')} post"
    return flag


def _stations(o: Overview, ctx: PageContext) -> str:
    rows = []
    classes = []
    for s in o.stations:
        flags = "".join(f'<span class="badge flag" data-flag="{_e(f)}">'
                        f"{_e(_flag_text(s, f, ctx.now))}</span>" for f in s.get("flags", ()))
        off = s["clock_offset_ms"]
        rows.append((_e(s["name"]), _e(s["site"]), ctx.time(s["last_contact"], s["site"]),
                     ctx.time(s["watermark"], s["site"]),
                     "—" if off is None else f"{off / 1000:+.1f} s", _e(s["lag_s"]),
                     "revoked" if s["revoked"] else "active", flags))
        classes.append("flagged" if s.get("flags") else "")
    return ('<section id="stations"><h2>Stations <small class="muted">— flagged when the clock '
            "is more than 2 s off, or silent for 10 minutes while others of the site post"
            "</small></h2>" + _table(
                ("Station", "Site", "Last contact", "Watermark", "Clock offset", "Lag (s)",
                 "Token", "Flags"), rows, "No stations registered.", numeric=(4, 5),
                row_class=classes) + "</section>")


def _updated(o: Overview, ctx: PageContext) -> str:
    now = datetime.fromtimestamp(ctx.now / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f'<p class="muted" id="updated">Updated {_time(now, ctx.page_zone)}</p>'


#: the overview's sections, in page order
SECTIONS: list[Callable[[Overview, PageContext], str]] = [
    _cards, _daily, _open_section("item"), _open_section("location"), _resolved, _held,
    _stations, _updated]


def render_main(o: Overview, ctx: PageContext,
                sections: Sequence[Callable[[Overview, PageContext], str]] = SECTIONS) -> str:
    """The overview's ``<main>`` content: what the refresh swaps in."""
    return "".join(section(o, ctx) for section in sections)


def render_filters(o: Overview, ctx: PageContext) -> str:
    """The filter form and the quick links (outside ``<main>``: a refresh leaves them)."""
    f = ctx.filt

    def select(name: str, label: str, options: Sequence[tuple[str, str]],
               current: str | None) -> str:
        opts = ['<option value="">all</option>']
        for value, text in options:
            sel = " selected" if value == current else ""
            opts.append(f'<option value="{_e(value)}"{sel}>{_e(text)}</option>')
        return f'<label>{label}<select name="{name}">{"".join(opts)}</select></label>'

    spelled = dict(f.query())

    def day(name: str, label: str) -> str:
        current = spelled.get(name, "")
        kind = "date" if not current or len(current) == 10 else "text"
        return (f'<label>{label}<input type="{kind}" name="{name}" value="{_e(current)}">'
                "</label>")

    hidden = "".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">'
                     for k, v in ctx.keep)
    chips = ['<span class="chips">']
    for cls, text in (("item", "Real shortages"), ("location", "Wrong locations"),
                      ("ordering", "Posting order"), (None, "All classes")):
        on = ' class="on"' if f.cls == cls else ""
        chips.append(f'<a{on} href="{_e(ctx.link(cls=cls))}">{escape(text)}</a>')
    chips.append("</span>")
    return (
        '<form class="filters" method="get" action="/">'
        + select("site", "Site", [(s, s) for s in o.sites], f.site)
        + select("class", "Class", [(c, _LABELS[c]) for c in ("item", "location", "ordering")],
                 f.cls)
        + select("status", "Status", [("open", "open"), ("resolved", "resolved")], f.status)
        + select("station", "Station", [(s, s) for s in o.station_names], f.station)
        + day("from", "Opened from") + day("to", "to") + hidden
        + '<button type="submit">Apply</button>'
        + f'<a id="clear" href="{_e(PageContext(IncidentFilter(), ctx.zone, 0, ctx.keep).link())}">'
        "Clear</a>"
        + "".join(chips)
        + f'<a id="csv" href="{_e(ctx.link("/v1/negatives.csv"))}">CSV</a>'
        + f'<a id="json" href="{_e(ctx.link("/v1/negatives"))}">JSON</a></form>')


def render_page(main: str, refresh_s: int, *, title: str = "negatives", above: str = "",
                subtitle: str = "negative balances by cause, held depletions, stations") -> str:
    """The whole page around a ``<main>`` content; ``above`` goes between header and main."""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>scan-ledger: {escape(title)}</title>"
        f"<noscript><meta http-equiv=\"refresh\" content=\"{refresh_s}\"></noscript>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>scan-ledger</h1><small>{escape(subtitle)}</small></header>"
        f"{above}<main>{main}</main><script>{_SCRIPT % refresh_s}</script></body></html>"
    )


def render_error(message: str, ctx_link: str) -> str:
    """A page for a bad request (a wrong filter): the message, and a way back."""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>scan-ledger: bad request</title>"
            f"<style>{_CSS}</style></head><body><header><h1>scan-ledger</h1></header><main>"
            f'<p class="error" id="error">{_e(message)}</p>'
            f'<p><a href="{_e(ctx_link)}">Show everything</a></p></main></body></html>')


# ------------------------------------------------------------------ the incident page


def _history(raw: Mapping[str, list[dict[str, Any]]]) -> BalanceHistory:
    def pts(name: str) -> list[Point]:
        return [Point(parse_time(p["t"]), p["balance"], p["event_id"]) for p in raw[name]]
    return BalanceHistory(pts("recorded"), pts("occurrence"))


def _window(story: Mapping[str, Any], h: BalanceHistory) -> tuple[int, int]:
    """The chart's time span: the depletion and what resolved it (when they happened and
    when they arrived), with one step of each series before them for context."""
    times = []
    for ev in (story["depletion"], story["resolved_by"]):
        if ev is not None:
            times += [parse_time(ev["occurred_at"]), parse_time(ev["applied_at"]
                                                                or ev["received_at"])]
    if not times:
        times = [p.t for pts in (h.recorded, h.occurrence) for p in pts] or [0]
    lo, hi = min(times), max(times)
    for pts in (h.recorded, h.occurrence):
        before = [p.t for p in pts if p.t < lo]
        if before and lo - before[-1] < 7 * 86_400_000_000:
            lo = before[-1]
    margin = max(5_000_000, (hi - lo) // 8)
    return lo - margin, hi + margin


def render_incident(story: Mapping[str, Any], ctx: PageContext) -> str:
    """``/incidents/{id}``'s ``<main>``: the incident explained (``story`` is the JSON of
    ``GET /v1/negatives/{id}``)."""
    inc = story["incident"]
    dep = story["depletion"] or {}
    by = story["resolved_by"]
    site, loc, cls = inc["site"], inc["location"], inc["class"]
    item = _item(inc["item"], inc.get("item_name"))
    what = dep.get("type", inc["type"])
    title, meaning = _CLASS_TEXT[cls]
    h = _history(story["history"])
    t = ctx.time

    parts = [f'<p><a id="back" href="{_e(ctx.link("/"))}">← all incidents</a></p>',
             f'<section id="summary"><h2>Incident #{_e(inc["id"])}: {escape(title)} '
             f'<small class="muted">— {escape(meaning)}</small></h2>'
             f'<p>{item} at <b>{_e(loc)}</b> ({_e(site)}): <b>{_e(inc["status"])}</b> '
             f"{_badge(inc)}</p></section>"]

    rows = [("Item", item), ("Location", f"{_e(loc)} at site {_e(site)}"),
            ("Depletion", f"{_e(what)} of {_e(dep.get('qty'))} from {_e(dep.get('from_location'))}"
             + (f" to {_e(dep.get('to_location'))}" if what == "move" else "")),
            ("Station", _e(dep.get("station"))), ("Scanner", _e(dep.get("scanner"))),
            ("Operator", _e(dep.get("operator"))), ("Reference", _e(dep.get("reference"))),
            ("Happened at", t(dep.get("occurred_at"), site)),
            ("Reached the ledger", t(dep.get("received_at"), site)),
            ("Balance right after", f"{_e(inc['balance'])} in occurrence order; "
             f"{_e(story.get('recorded_balance_when_posted'))} in recorded order when posted"),
            ("Opened", t(inc["opened_at"], site))]
    parts.append('<section id="depletion"><h2>What happened</h2><div class="story"><dl>'
                 + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl></div></section>")

    # why: the class in words
    rec = story.get("recorded_balance_when_posted")
    if cls == "ordering":
        if by is not None and by.get("type") != "void" and by.get("type") != "count":
            why = (f"On the floor {_e(loc)} never went below zero at this {_e(what)}: in "
                   f"occurrence order it held {_e(inc['balance'])} right after it. The "
                   f"{_e(by.get('type'))} of {_e(by.get('qty'))} that happened at "
                   f"{t(by.get('occurred_at'), site)} reached the ledger only at "
                   f"{t(by.get('received_at'), site)}, after this {_e(what)}; posted in "
                   f"arrival order (as an ERP posts) the bin showed {_e(rec)}. It was only a "
                   "timing artefact: <b>no stock adjustment is needed</b>.")
        else:
            why = (f"When this {_e(what)} arrived, {_e(loc)} was below zero only in recorded "
                   f"order ({_e(rec)}); in occurrence order it held {_e(inc['balance'])}. A "
                   "timing artefact: <b>no stock adjustment is needed</b>.")
    elif cls == "location":
        why = (f"In occurrence order {_e(loc)} was at {_e(inc['balance'])} right after this "
               f"{_e(what)}, but the site as a whole had enough of the item: the stock is in "
               "another bin, or a move was not scanned. Look in the other bins; a count of "
               f"{_e(loc)} settles it.")
    else:
        why = (f"In occurrence order {_e(loc)} was at {_e(inc['balance'])} right after this "
               f"{_e(what)}, and the site as a whole did not have enough of the item: a real "
               "shortage. Count the bin and find out where the stock went.")
    if dep.get("voided_by"):
        why = (f"This {_e(what)} was undone (voided), so it no longer takes anything from "
               f"{_e(loc)}. Before it was undone it left {_e(loc)} at {_e(inc['balance'])} "
               f"in occurrence order ({escape(title.lower())}). No stock adjustment is needed "
               "for it.")
    if inc["suspected_duplicate"]:
        why += (" <b>Suspected duplicate:</b> the same scanner read the same item, quantity and "
                "bins a few seconds before it: probably a double read; undo it (CMD-UNDO) "
                "rather than adjust stock.")
    parts.append(f'<section id="why"><h2>Why</h2><p class="story">{why}</p></section>')

    # what resolved it
    if inc["status"] == "open":
        res = (f"Not resolved. It stays open until a late scan explains it, a count of this item "
               f"in {_e(loc)} at or after the {_e(what)} settles the bin, or the {_e(what)} "
               "is undone.")
    elif by is None:
        res = ("Resolved by itself when it arrived: it was negative only in recorded order, "
               f"at {t(inc['resolved_at'], site)}.")
    else:
        if by.get("type") == "void":
            done = (f"Undone: the {_e(what)} was voided (an undo scan) by "
                    f"{_e(by.get('station'))} at {t(by.get('occurred_at'), site)}")
        else:
            kind = "Settled by a count" if by.get("type") == "count" else \
                "Explained by a late scan"
            done = f"{kind}: {_describe(by, ctx, site)}"
        res = (f"{done}, which reached the ledger at {t(by.get('received_at'), site)}. "
               f"Resolved at {t(inc['resolved_at'], site)}.")
    parts.append(f'<section id="resolution"><h2>What resolved it</h2><p class="story">{res}'
                 "</p></section>")

    # provisional or confirmed
    if inc["confirmed"]:
        conf = (f"<b>Confirmed</b>: every station of {_e(site)} has sent everything up to "
                f"{t(story.get('site_watermark'), site)}, past this {_e(what)}: nothing older "
                "can still arrive to change it.")
    else:
        names = [_e(s) for s in story.get("waiting_for", ())]
        waiting = ", ".join(names) or "a station"
        has = "have" if len(names) > 1 else "has"
        conf = (f"<b>Provisional</b>: {waiting} {has} not yet sent everything up to the time of "
                f"this {_e(what)} ({t(dep.get('occurred_at'), site)}); a scan still on its way "
                "may explain it. Do not adjust stock for it yet.")
    parts.append(f'<section id="confirmation"><h2>Provisional or confirmed</h2>'
                 f'<p class="story">{conf}</p></section>')

    lo, hi = _window(story, h)
    marks = [(parse_time(dep["occurred_at"]), f"{what} happened")] if dep else []
    if dep and dep.get("received_at"):
        marks.append((parse_time(dep["received_at"]), f"{what} arrived"))
    if by is not None and by.get("received_at"):
        marks.append((parse_time(by["received_at"]), f"{by.get('type')} arrived"))
    chart = balance_chart(h, lo=lo, hi=hi, marks=marks, zone=ctx.zone(site),
                          title=f"balance of {inc['item']} at {loc} over time")
    parts.append('<section id="chart"><h2>Balance of the bin over time <small class="muted">'
                 "— dashed: as posted in arrival order (what an ERP shows); solid: in the order "
                 "things happened</small></h2>" + chart + "</section>")

    notes = inc.get("notes") or []
    shown = "".join(f'<div class="note" data-note-id="{_e(n["id"])}"><b>{_e(n["author"])}</b> '
                    f'<small class="muted">{t(n["created_at"], site)}</small>\n{_e(n["text"])}'
                    "</div>" for n in notes)
    parts.append(f'<section id="notes"><h2>Notes <small class="muted">— kept as written, never '
                 f"edited or deleted; a manager adds one with POST /v1/negatives/"
                 f"{_e(inc['id'])}/notes</small></h2>"
                 + (shown or '<p class="muted">No notes yet.</p>') + "</section>")
    return "".join(parts)
