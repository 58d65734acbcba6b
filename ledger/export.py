"""Incidents as CSV (``GET /v1/negatives.csv``). Pure: incident JSON in, CSV text out.

One header row, then one row per incident with the JSON's fields in the JSON's order (so
``item_name`` too): ``true``/``false`` for booleans, an empty cell for null, numbers as
numbers, and ``notes`` as its JSON text. A spreadsheet runs a cell that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return as a formula: every text cell that does gets a
leading apostrophe (numbers are numbers, never text, so ``-3`` stays ``-3``).

>>> to_csv([{"id": 1, "item": "=HYPERLINK(1)", "balance": -3, "confirmed": False}]).splitlines()
['id,item,balance,confirmed', "1,'=HYPERLINK(1),-3,false"]
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["COLUMNS", "cell", "to_csv"]

#: the columns when there is no incident to take them from (the incident JSON's keys)
COLUMNS = ("id", "site", "item", "item_name", "location", "class", "status", "confirmed",
           "depletion_event_id", "balance", "opened_at", "resolved_at", "resolved_by_event_id",
           "suspected_duplicate", "occurred_at", "station", "type", "qty", "notes")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """One value as a CSV cell, safe to open in a spreadsheet."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "'" + text if text.startswith(_FORMULA) else text


def to_csv(incidents: Sequence[dict[str, Any]]) -> str:
    columns = list(incidents[0]) if incidents else list(COLUMNS)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(columns)
    for inc in incidents:
        w.writerow([cell(inc.get(c)) for c in columns])
    return out.getvalue()
