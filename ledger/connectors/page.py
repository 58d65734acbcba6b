"""The connectors' section of the manager's page: a small HTML fragment, every value escaped.

>>> "erp" in render_connectors([{"name": "erp", "kind": "tryton", "sites": ["WH1"],
...     "forwarded": 3, "pending": 0, "unmapped": 0, "last_error": None,
...     "last_forwarded_at": None, "unmapped_events": []}])
True
>>> render_connectors([])
''
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["render_connectors"]


def _e(v: Any) -> str:
    return "—" if v is None or v == "" else escape(str(v), quote=True)


def render_connectors(connectors: list[dict[str, Any]]) -> str:
    """``<section id="connectors">`` with one row per connector and the unmapped movements;
    empty when no connector is configured."""
    if not connectors:
        return ""
    rows = []
    waiting: list[str] = []
    for c in connectors:
        rows.append(
            f"<tr><td>{_e(c['name'])}</td><td>{_e(c['kind'])}</td>"
            f"<td>{_e(', '.join(c['sites']))}</td><td class=\"num\">{_e(c['forwarded'])}</td>"
            f"<td class=\"num\">{_e(c['pending'])}</td>"
            f"<td class=\"num{' neg' if c['unmapped'] else ''}\">{_e(c['unmapped'])}</td>"
            f"<td>{_e(c['last_forwarded_at'])}</td><td>{_e(c['last_error'])}</td></tr>")
        waiting.extend(f"<li>{_e(c['name'])}: {_e(u['event_id'])} — {_e(u['reason'])}</li>"
                       for u in c["unmapped_events"])
    head = "".join(f"<th>{h}</th>" for h in (
        "Connector", "ERP", "Sites", "Forwarded", "Pending", "Unmapped", "Last forwarded",
        "Last error"))
    out = ('<section id="connectors"><h2>ERP connectors</h2>'
           f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    if waiting:
        out += ('<p class="muted">Unmapped: waiting for the ERP\'s master data (retried, '
                f"never dropped)</p><ul>{''.join(waiting)}</ul>")
    return out + "</section>"
