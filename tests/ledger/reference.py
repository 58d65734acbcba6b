"""A brute-force restatement of DESIGN section 8, for tests and benchmarks. Pure, O(n^2).

It recomputes everything from scratch after every arrival, walking every event again; it is
what :mod:`ledger.engine` must agree with, written as plainly as possible and sharing none of
its code. Only for sites that allow negative stock (holds depend on arrival order by design).
Used by tests/ledger/test_properties.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ledger.events import Movement

__all__ = ["Expected", "expected_state", "occurrence_balances"]

Key3 = tuple[str, str, str]


def _legs(m: Movement) -> list[tuple[str, str, int]]:
    """(location, "add" | "reset", value) of a live movement."""
    if m.type == "receipt":
        return [(m.to_location or "", "add", m.qty)]
    if m.type == "pick":
        return [(m.from_location or "", "add", -m.qty)]
    if m.type == "move":
        return [(m.from_location or "", "add", -m.qty), (m.to_location or "", "add", m.qty)]
    if m.type == "count":
        return [(m.to_location or "", "reset", m.qty)]
    return []


def _voided(events: Sequence[Movement]) -> dict[str, str]:
    """target id -> id of the first-arrived effective void."""
    by_id = {m.event_id: m for m in events}
    out: dict[str, str] = {}
    for v in events:
        if v.type != "void" or v.voids is None:
            continue
        target = by_id.get(v.voids)
        if target is None or target.type == "void" or target.site != v.site:
            continue
        out.setdefault(v.voids, v.event_id)
    return out


def occurrence_balances(events: Sequence[Movement]) -> tuple[dict[Key3, int],
                                                               dict[str, int],
                                                               dict[Key3, list[tuple[int, str]]]]:
    """Final balance per (site, item, location), the balance right after each live
    depletion's tie group, and the live counts per location; by walking every event."""
    voided = _voided(events)
    live = [m for m in events if m.type != "void" and m.event_id not in voided]
    groups: dict[Key3, dict[int, list[tuple[tuple[bool, str, int, str, int], str, int]]]] = \
        defaultdict(lambda: defaultdict(list))
    counts: dict[Key3, list[tuple[int, str]]] = defaultdict(list)
    for m in live:
        for i, (loc, op, value) in enumerate(_legs(m)):
            key = (m.site, m.item or "", loc)
            # In a tie, counts last: a count says what was there at that moment.
            groups[key][m.t].append(((op == "reset", m.station, m.seq, m.event_id, i), op,
                                     value))
            if op == "reset":
                counts[key].append((m.t, m.event_id))
    final: dict[Key3, int] = {}
    after_group: dict[Key3, dict[int, int]] = {}
    for key, by_time in groups.items():
        bal = 0
        after_group[key] = {}
        for t in sorted(by_time):
            for _order, op, value in sorted(by_time[t]):
                bal = value if op == "reset" else bal + value
            after_group[key][t] = bal
        final[key] = bal
    post: dict[str, int] = {}
    for m in live:
        if m.type in ("pick", "move"):
            post[m.event_id] = after_group[(m.site, m.item or "", m.from_location or "")][m.t]
    for lst in counts.values():
        lst.sort()
    return final, post, counts


@dataclass
class Expected:
    """What the ledger must show after the events arrived in the given order."""

    on_hand: dict[Key3, int]
    recorded: dict[Key3, int]
    incidents: set[str]  # depletion event ids that must have an incident
    classes: dict[str, str] = field(default_factory=dict)  # live depletions with an incident
    statuses: dict[str, str] = field(default_factory=dict)


def expected_state(arrivals: Sequence[Movement]) -> Expected:
    """Everything the engine must agree with, recomputed from scratch at every arrival.

    ``arrivals`` are valid, distinct events in the order they reached the ledger.
    """
    recorded: dict[Key3, int] = defaultdict(int)
    rec_deltas: dict[str, list[tuple[Key3, int]]] = {}
    incidents: set[str] = set()
    seen: list[Movement] = []
    for m in arrivals:
        voided_before = _voided(seen)
        seen.append(m)
        if m.type == "void":
            target = next((e for e in seen if e.event_id == m.voids), None)
            if (target is not None and target.type != "void" and target.site == m.site
                    and m.voids not in voided_before and target.event_id in rec_deltas):
                for key, delta in rec_deltas.pop(target.event_id):
                    recorded[key] -= delta
        elif m.event_id not in _voided(seen):
            deltas = []
            for loc, op, value in _legs(m):
                key = (m.site, m.item or "", loc)
                delta = value - recorded[key] if op == "reset" else value
                recorded[key] += delta
                deltas.append((key, delta))
            rec_deltas[m.event_id] = deltas
            if m.type in ("pick", "move") and recorded[(m.site, m.item or "",
                                                        m.from_location or "")] < 0:
                incidents.add(m.event_id)
        _, post, _ = occurrence_balances(seen)
        incidents.update(eid for eid, bal in post.items() if bal < 0)

    final, post, counts = occurrence_balances(arrivals)
    voided = _voided(arrivals)
    classes: dict[str, str] = {}
    statuses: dict[str, str] = {}
    by_id = {m.event_id: m for m in arrivals}
    for eid in incidents:
        if eid in voided:
            statuses[eid] = "resolved"
            continue
        m = by_id[eid]
        key = (m.site, m.item or "", m.from_location or "")
        bal = post[eid]
        if bal >= 0:
            cls = "ordering"
        else:
            upto = [e for e in arrivals if e.t <= m.t or e.type == "void"]
            at_t, _, _ = occurrence_balances(upto)
            total = sum(v for k, v in at_t.items() if k[0] == m.site and k[1] == m.item)
            cls = "item" if total < 0 else "location"
        classes[eid] = cls
        settled = any(t >= m.t for t, _ in counts.get(key, []))
        statuses[eid] = "resolved" if cls == "ordering" or settled else "open"
    return Expected(on_hand=final, recorded=dict(recorded), incidents=incidents,
                    classes=classes, statuses=statuses)
