"""The inventory manager's dashboard: one server-rendered HTML page, no build step.

Every value is escaped here (``html.escape``), in one place. The page refreshes itself: a few
lines of inline script fetch the same URL with ``X-Ledger-Fragment: 1`` every few seconds and
swap in the freshly rendered ``<main>``; without script a ``<noscript>`` meta refresh does it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

__all__ = ["render_main", "render_page"]

_CLASS_TEXT = {
    "item": ("Real shortage", "the item is short across the whole site"),
    "location": ("Wrong location", "stock exists at the site, but not in this bin"),
    "ordering": ("Posting order only", "an earlier movement was recorded late"),
}

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{background:#1d2430;color:#fff;padding:.8rem 1.2rem;display:flex;gap:1rem;
align-items:baseline}
header h1{font-size:1.2rem;margin:0}header small{opacity:.7}
main{padding:1rem 1.2rem}section{margin-bottom:1.6rem}
h2{font-size:1.05rem;margin:.2rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e3e6ea}
th{background:#eef0f3;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
.neg{color:#b3261e;font-weight:600}
.badge{display:inline-block;padding:0 .4rem;border-radius:.6rem;font-size:.8rem}
.confirmed{background:#b3261e;color:#fff}.provisional{background:#f2c94c;color:#1d2430}
.cards{display:flex;gap:.8rem;flex-wrap:wrap;margin-bottom:1rem}
.card{background:#fff;border-radius:.4rem;padding:.6rem .9rem;min-width:10rem;
box-shadow:0 1px 2px #0002}
.card b{font-size:1.5rem;display:block}.muted{color:#6b7380}
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


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str,
           numeric: Sequence[int] = ()) -> str:
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _badge(inc: dict[str, Any]) -> str:
    if inc["confirmed"]:
        return '<span class="badge confirmed" title="every station has synced past it">' \
               "confirmed</span>"
    return ('<span class="badge provisional" title="a station has not synced past it yet; '
            'do not adjust stock">provisional</span>')


def render_main(incidents: list[dict[str, Any]], held: list[dict[str, Any]],
                stations: list[dict[str, Any]], now: str) -> str:
    """The page's ``<main>`` content: what the refresh swaps in."""
    open_ = [i for i in incidents if i["status"] == "open"]
    parts = ['<div class="cards">']
    for cls in ("item", "location"):
        of = [i for i in open_ if i["class"] == cls]
        conf = sum(1 for i in of if i["confirmed"])
        title, _ = _CLASS_TEXT[cls]
        parts.append(f'<div class="card" id="card-{cls}"><span>{escape(title)}</span>'
                     f"<b>{len(of)}</b><span class=\"muted\">{conf} confirmed, "
                     f"{len(of) - conf} provisional</span></div>")
    auto = sum(1 for i in incidents if i["class"] == "ordering")
    parts.append(f'<div class="card" id="card-ordering"><span>Posting order only</span>'
                 f'<b>{auto}</b><span class="muted">resolved by themselves</span></div>')
    parts.append(f'<div class="card" id="card-held"><span>Held depletions</span>'
                 f'<b>{len(held)}</b><span class="muted">waiting for stock</span></div></div>')

    headers = ("", "Site", "Item", "Location", "Balance", "Qty", "Type", "Station",
               "Occurred", "Opened", "Note")
    rows: list[tuple[str, ...]]
    for cls in ("item", "location"):
        title, meaning = _CLASS_TEXT[cls]
        rows = [
            (_badge(i), _e(i["site"]), _e(i["item"]), _e(i["location"]),
             f'<span class="neg">{_e(i["balance"])}</span>', _e(i["qty"]), _e(i["type"]),
             _e(i["station"]), _e(i["occurred_at"]), _e(i["opened_at"]),
             "suspected duplicate scan" if i["suspected_duplicate"] else "")
            for i in open_ if i["class"] == cls
        ]
        parts.append(f'<section id="open-{cls}"><h2>{escape(title)} '
                     f'<small class="muted">— {escape(meaning)}</small></h2>'
                     f"{_table(headers, rows, 'None open.', numeric=(4, 5))}</section>")

    resolved = [i for i in incidents if i["status"] == "resolved"][-20:][::-1]
    rows = [(_e(i["class"]), _e(i["site"]), _e(i["item"]), _e(i["location"]),
             _e(i["occurred_at"]), _e(i["resolved_at"]), _e(i["resolved_by_event_id"]))
            for i in resolved]
    parts.append('<section id="resolved"><h2>Recently resolved</h2>' + _table(
        ("Class", "Site", "Item", "Location", "Occurred", "Resolved", "By event"), rows,
        "Nothing resolved yet.") + "</section>")

    rows = [(_e(h.get("site")), _e(h.get("item")), _e(h.get("from_location")), _e(h.get("qty")),
             _e(h.get("type")), _e(h.get("station")), _e(h.get("occurred_at")),
             _e(h.get("received_at"))) for h in held]
    parts.append('<section id="held"><h2>Held depletions <small class="muted">— site does not '
                 "allow negative stock; released when the bin covers them</small></h2>" + _table(
                     ("Site", "Item", "From", "Qty", "Type", "Station", "Occurred", "Received"),
                     rows, "Nothing held.", numeric=(3,)) + "</section>")

    rows = [(_e(s["name"]), _e(s["site"]), _e(s["last_contact"]), _e(s["watermark"]),
             _e(s["clock_offset_ms"]), _e(s["lag_s"]),
             "revoked" if s["revoked"] else "active") for s in stations]
    parts.append('<section id="stations"><h2>Stations</h2>' + _table(
        ("Station", "Site", "Last contact", "Watermark", "Clock offset (ms)", "Lag (s)",
         "Token"), rows, "No stations registered.", numeric=(4, 5)) + "</section>")
    parts.append(f'<p class="muted" id="updated">Updated {escape(now)} (UTC)</p>')
    return "".join(parts)


def render_page(main: str, refresh_s: int) -> str:
    """The whole page around :func:`render_main`'s content."""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>scan-ledger: negatives</title>"
        f"<noscript><meta http-equiv=\"refresh\" content=\"{refresh_s}\"></noscript>"
        f"<style>{_CSS}</style></head><body>"
        "<header><h1>scan-ledger</h1><small>negative balances by cause, held depletions, "
        "stations</small></header>"
        f"<main>{main}</main><script>{_SCRIPT % refresh_s}</script></body></html>"
    )
