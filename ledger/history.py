"""A location's balance over time, in recorded order and in occurrence order (DESIGN section 8),
for the incident page's chart. Pure: movements and their arrival in, two step series out.

* recorded order: the balance after each posting, in the order postings reached the ledger,
  at the time each reached it (what a conventional ERP shows, and when it showed it); a
  count posts the difference it found, a void the reverse of its target;
* occurrence order: the balance after each group of movements sharing an ``occurred_at``, at
  that time, with everything received so far (a count resets, a voided movement is gone).

The last point of each is the engine's own balance for the location, which the tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ledger.engine import legs_of
from ledger.events import Movement

__all__ = ["Arrival", "BalanceHistory", "Point", "balance_history", "touches"]


@dataclass(frozen=True, slots=True)
class Point:
    """The balance right after ``event_id`` (the last of its group), at time ``t`` (µs)."""

    t: int
    balance: int
    event_id: str


@dataclass(frozen=True, slots=True)
class Arrival:
    """Where a movement took effect in recorded order: its position and its time (µs)."""

    applied_seq: int
    applied_at: int


@dataclass(frozen=True, slots=True)
class BalanceHistory:
    recorded: list[Point]
    occurrence: list[Point]


def touches(m: Movement, site: str, item: str, location: str,
            target: Callable[[str], Movement | None]) -> bool:
    """Whether m moves (or voids a movement of) the item at the location."""
    if m.site != site:
        return False
    if m.type == "void":
        t = target(m.voids or "")
        return t is not None and t.type != "void" and touches(t, site, item, location, target)
    return m.item == item and location in (m.from_location, m.to_location)


def balance_history(movements: Iterable[Movement], arrivals: dict[str, Arrival],
                    location: str, target: Callable[[str], Movement | None]) -> BalanceHistory:
    """Both series for one location, from the movements that :func:`touches` it.

    ``arrivals`` has every applied movement's place in recorded order (a held one that was
    never released has none and counts in neither); ``target(event_id)`` finds a void's
    target."""
    ms = list(movements)
    posted: list[tuple[Arrival, Movement, int]] = []
    for m in ms:
        arrival = arrivals.get(m.event_id)
        if arrival is None:
            continue
        if m.type == "void":
            t = target(m.voids or "")
            # Only the void that took the target back undoes its recorded postings.
            delta = 0 if t is None or t.voided_by != m.event_id else -_at(t, location)
        else:
            delta = _at(m, location)
        posted.append((arrival, m, delta))
    posted.sort(key=lambda p: p[0].applied_seq)
    recorded: list[Point] = []
    bal = 0
    for arrival, m, delta in posted:
        bal += delta
        recorded.append(Point(arrival.applied_at, bal, m.event_id))

    legs = []
    for m in ms:
        if not m.applied or m.type == "void":
            continue
        for i, (loc, reset, value, _dep) in enumerate(legs_of(m)):
            if loc == location:
                legs.append(((m.t, reset, m.station, m.seq, m.event_id, i), reset, value, m))
    legs.sort(key=lambda leg: leg[0])
    occurrence: list[Point] = []
    bal = 0
    for order, reset, value, m in legs:
        bal = value if reset else bal + value
        if occurrence and occurrence[-1].t == order[0]:
            occurrence[-1] = Point(order[0], bal, m.event_id)
        else:
            occurrence.append(Point(order[0], bal, m.event_id))
    return BalanceHistory(recorded, occurrence)


def _at(m: Movement, location: str) -> int:
    return sum(d for loc, d in m.rec_deltas if loc == location)
