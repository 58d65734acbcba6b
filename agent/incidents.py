"""Which of the ledger's warnings about this station's movements still hold.

The ledger answers each movement with warnings (DESIGN section 6), and the journal keeps them
with the movement. Some are facts about the movement that stay true (``before_horizon``, a
release time). Two speak of negatives, and those change after the fact: a receipt at another
dock, a count or a void can resolve the incident behind them at any time (section 8).

- ``negative balance at LOC: ...`` — this movement's depletion opened an incident; it holds
  while the ledger's incident whose ``depletion_event_id`` is this movement is open.
- ``made N depletion(s) at LOC negative`` — this movement made other depletions negative (a
  late pick, a void of a receipt, a lower count); it holds while an incident of the same item
  at LOC is open.

The station cannot see what other stations send, so sync asks the ledger, with the station's
own token, for the site's open incidents (:func:`query`), keeps those behind its warnings in
the journal (:func:`relevant`), and ``scan-agent status`` shows what is still true
(:func:`still_true`). The journal's own knowledge applies at once, asked or not: an undo at a
scanner of this station ends every warning of the movement, and a later count of its item in
the bin it was taken from settles its negative. Until the ledger has answered once, or for a
movement whose result came after its last answer, that is all there is to go by.

Pure: warned movements and the ledger's last answer in, what to show out.

>>> from agent.journal import LedgerView, Warned
>>> pick = Warned(7, "e7", "pick", "0400", "A-07", None,
...               ("negative balance at A-07: -1 (class item)",), False, False)
>>> open_one = {"id": 3, "depletion_event_id": "e7", "item": "0400", "location": "A-07",
...             "class": "location", "balance": -1, "confirmed": True}
>>> [w["incidents"] for w in still_true([pick], LedgerView(150.0, 7, (open_one,), None, None))]
[[{'id': 3, 'class': 'location', 'location': 'A-07', 'balance': -1, 'confirmed': True}]]
>>> still_true([pick], LedgerView(150.0, 7, (), None, None))  # resolved since
[]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from agent.journal import LedgerView, Warned

__all__ = ["NEGATIVE", "SHOWN", "WINDOW", "about_incidents", "made_negative_at", "query",
           "relevant", "still_true", "to_ask"]

NEGATIVE = "negative balance at "  # the ledger's warning on a depletion it found negative
_MADE = re.compile(r"made \d+ depletion\(s\) at (.*) negative\Z", re.DOTALL)
SHOWN = 10  # movements ``status`` lists at most
WINDOW = 50  # the newest warned movements looked at (some drop out as stale)


def made_negative_at(warning: str) -> str | None:
    """The location of a ``made N depletion(s) at LOC negative`` warning, else None."""
    m = _MADE.match(warning)
    return m.group(1) if m else None


def about_incidents(warning: str) -> bool:
    """Whether a warning speaks of an incident, which the ledger may resolve later."""
    return warning.startswith(NEGATIVE) or made_negative_at(warning) is not None


def to_ask(warned: Iterable[Warned]) -> list[Warned]:
    """The movements whose warnings only the ledger can tell are still true: not undone
    here, with a warning about an incident."""
    return [w for w in warned if not w.voided and any(map(about_incidents, w.warnings))]


def query(station: str, site: str, asked: Sequence[Warned]) -> dict[str, str]:
    """The ``GET /v1/negatives`` filter that finds the incidents behind ``asked``'s warnings:
    the site's open incidents of this station's depletions, or of every station's when one
    of the warnings is about depletions this movement made negative (those may be anyone's).
    """
    params = {"site": site, "status": "open"}
    if not any(made_negative_at(x) for w in asked for x in w.warnings):
        params["station"] = station
    return params


def relevant(incidents: Iterable[dict[str, Any]],
             asked: Sequence[Warned]) -> list[dict[str, Any]]:
    """The incidents of the ledger's answer that stand behind one of ``asked``'s warnings
    (the rest of the site's incidents are not this station's to keep)."""
    ids = {w.event_id for w in asked}
    places = {(w.item, loc) for w in asked for x in w.warnings
              if (loc := made_negative_at(x)) is not None}
    return [i for i in incidents
            if i["depletion_event_id"] in ids or (i["item"], i["location"]) in places]


def still_true(warned: Iterable[Warned], view: LedgerView,
               limit: int = SHOWN) -> list[dict[str, Any]]:
    """What ``status`` shows of ``warned`` (newest first): each movement's warnings that
    still hold, with the open incidents behind them, and whether the ledger was asked
    since its result came (``checked``); movements left with no warning are left out."""
    by_depletion: dict[str, list[dict[str, Any]]] = {}
    by_place: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for inc in view.incidents:
        by_depletion.setdefault(inc["depletion_event_id"], []).append(inc)
        by_place.setdefault((inc["item"], inc["location"]), []).append(inc)
    out: list[dict[str, Any]] = []
    for w in warned:
        if w.voided:  # an undo ends every warning on the movement
            continue
        checked = view.through_seq is not None and w.seq <= view.through_seq
        kept: list[str] = []
        behind: dict[int, dict[str, Any]] = {}
        for text in w.warnings:
            loc = made_negative_at(text)
            if text.startswith(NEGATIVE):
                # a count here since settles it even before the ledger is asked again
                found = by_depletion.get(w.event_id, []) if checked else []
                holds = (bool(found) or not checked) and not w.recounted
            elif loc is not None:
                found = by_place.get((w.item, loc), []) if checked else []
                holds = bool(found) if checked else True
            else:  # a fact about the movement: it stays true
                found, holds = [], True
            if holds:
                kept.append(text)
                behind.update((i["id"], i) for i in found)
        if kept:
            out.append({"seq": w.seq, "warnings": kept, "checked": checked,
                        "incidents": [_shown(i) for _, i in sorted(behind.items())]})
    return out[:limit]


def _shown(inc: dict[str, Any]) -> dict[str, Any]:
    return {k: inc[k] for k in ("id", "class", "location", "balance", "confirmed")}
