"""What one movement becomes in an ERP: the pure core of the connectors.

No ERP, clock or database here: :func:`main_op` turns a movement into the operation an
adapter posts, and :func:`corrections` says which adjustments keep the ERP's bins equal to
the ledger's balances when a movement arrives after a count that it precedes.

Why corrections exist. The ledger applies a ``count`` as a reset at its ``occurred_at``: a
receipt that happened before the count but reached the ledger after it changes nothing after
the count. An ERP that takes a count as "post the difference to what I hold now" (Tryton's
inventory, Odoo's quant inventory) keeps that difference fixed; a movement dated before the
count and posted after it would then shift every quantity after the count. So for such ERPs,
each movement that lands before an already forwarded count is followed by an adjustment at
that count, of the opposite sign, keyed ``<event_id>><count_event_id>`` (exactly once, like
everything else). ERPNext re-evaluates a Stock Reconciliation when an earlier-dated entry
arrives, so it needs none.

>>> from ledger.events import validate_event
>>> m = validate_event({"event_id": "e1", "station": "d1", "site": "WH1", "scanner": "h",
...     "seq": 1, "type": "move", "item": "A", "qty": 2, "from_location": "X",
...     "to_location": "Y", "occurred_at": "2026-11-22T10:15:30Z"}, "d1", "WH1")
>>> op = main_op(m, history=[], reevaluates_counts=False, sees=lambda a, b: True)
>>> (op.purpose, op.from_location, op.to_location, op.qty, effects(op))
('move', 'X', 'Y', 2, {'X': -2, 'Y': 2})
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ledger.errors import Unmapped
from ledger.events import Movement

__all__ = ["Adjust", "Forwarded", "Op", "Posted", "Purpose", "Reverse", "Transfer",
           "corrections", "effects", "main_op", "order_key"]

Purpose = Literal["receipt", "pick", "move", "adjustment"]
_PURPOSES: dict[str, Purpose] = {"receipt": "receipt", "pick": "pick", "move": "move"}


@dataclass(frozen=True, slots=True)
class Transfer:
    """A done stock move of ``qty`` from one place to another.

    ``None`` is outside the warehouse's bins: for a receipt the place goods come from (the
    ERP's input zone or supplier), for a pick where they go, for an adjustment the ERP's
    inventory-loss location."""

    key: str
    site: str
    item: str
    from_location: str | None
    to_location: str | None
    qty: int
    at: int
    purpose: Purpose


@dataclass(frozen=True, slots=True)
class Adjust:
    """Set the bin's quantity of the item to ``counted`` at ``at`` (an inventory)."""

    key: str
    site: str
    item: str
    location: str
    counted: int
    at: int


@dataclass(frozen=True, slots=True)
class Reverse:
    """Undo a forwarded movement (a ``void``). ``transfer`` is the opposite movement, for
    ERPs that reverse by posting one; ``target_ref`` is the ERP record, for ERPs that cancel."""

    key: str
    target: str
    target_ref: str
    transfer: Transfer | None


Op = Transfer | Adjust | Reverse


@dataclass(frozen=True, slots=True)
class Posted:
    """What the ERP holds for one operation: its record, and for an adjustment the change it
    made to the bin (``delta``)."""

    ref: str
    delta: int | None = None


@dataclass(slots=True)
class Forwarded:
    """A movement already in the ERP, with what the connector recorded about it."""

    movement: Movement
    result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, m: Movement, result: str | None) -> Forwarded:
        return cls(m, json.loads(result) if result else {})

    @property
    def voided(self) -> bool:
        return bool(self.result.get("voided_by"))

    def effects(self) -> dict[str, int]:
        """Location -> change this movement made in the ERP (adjustments included)."""
        eff = self.result.get("effects")
        return {str(k): int(v) for k, v in eff.items()} if isinstance(eff, dict) else {}


def order_key(m: Movement) -> tuple[int, int, str, int]:
    """Occurrence order as the ledger applies it: by time, a count last among ties."""
    return (m.t, 1 if m.type == "count" else 0, m.station, m.seq)


def effects(op: Transfer) -> dict[str, int]:
    out: dict[str, int] = {}
    if op.from_location is not None:
        out[op.from_location] = out.get(op.from_location, 0) - op.qty
    if op.to_location is not None:
        out[op.to_location] = out.get(op.to_location, 0) + op.qty
    return out


def _need(value: str | None, what: str, m: Movement) -> str:
    if value is None:
        raise Unmapped(f"{m.type} {m.event_id} has no {what}")
    return value


def main_op(m: Movement, history: Sequence[Forwarded], *, reevaluates_counts: bool,
            sees: Callable[[int, int], bool]) -> Transfer | Adjust:
    """The operation for a receipt, pick, move or count (a void is :func:`reverse_op`).

    ``history``: the item's movements already forwarded; ``sees(later_t, count_t)``: whether
    the ERP's count at ``count_t`` includes a movement it already holds dated ``later_t``."""
    item = _need(m.item, "item", m)
    if m.type == "receipt":
        return Transfer(m.event_id, m.site, item, None, _need(m.to_location, "to_location", m),
                        m.qty, m.t, "receipt")
    if m.type == "pick":
        return Transfer(m.event_id, m.site, item, _need(m.from_location, "from_location", m),
                        None, m.qty, m.t, "pick")
    if m.type == "move":
        return Transfer(m.event_id, m.site, item, _need(m.from_location, "from_location", m),
                        _need(m.to_location, "to_location", m), m.qty, m.t, "move")
    if m.type == "count":
        loc = _need(m.to_location, "to_location", m)
        counted = m.qty
        if not reevaluates_counts:
            # What the ERP already holds after this count (forwarded earlier, happened later)
            # and that it will see when it counts: keep it, so that the count's difference is
            # the one it makes at its own moment. That includes later counts' differences and
            # the corrections made at them (``history`` must then be the item's whole
            # history): a later count still standing gets this count's difference back as a
            # correction (:func:`corrections`), and if it is voided, its reverse takes away
            # exactly what it changed, leaving this count in force as in the ledger.
            k = order_key(m)
            later_counts: set[str] = set()
            for f in history:
                fm = f.movement
                if (order_key(fm) <= k or f.voided or fm.type == "void"
                        or fm.event_id == m.event_id or not sees(fm.t, m.t)):
                    continue
                if fm.type == "count" and fm.to_location == loc:
                    later_counts.add(fm.event_id)
                counted += f.effects().get(loc, 0)
            for f in history:
                for count_id, corr in f.result.get("corrections", {}).items():
                    if count_id in later_counts and isinstance(corr, int | float):
                        counted += int(corr)
        return Adjust(m.event_id, m.site, item, loc, counted, m.t)
    raise ValueError(f"no operation for a {m.type}")


def reverse_op(void: Movement, target: Forwarded, history: Sequence[Forwarded]) -> Reverse:
    """The reverse of a forwarded movement, dated as the movement it cancels (the ledger
    removes a voided movement's effect as though it never happened)."""
    t = target.movement
    item = _need(t.item, "item", t)
    total = dict(target.effects())
    if t.type == "count":
        # the count's own adjustment and every correction made at it since
        loc = _need(t.to_location, "to_location", t)
        for f in history:
            corr = f.result.get("corrections", {}).get(t.event_id)
            if isinstance(corr, int | float):
                total[loc] = total.get(loc, 0) + int(corr)
    transfer = None
    moves = [(loc, d) for loc, d in total.items() if d]
    if moves:
        purpose = _PURPOSES.get(t.type)
        if purpose is not None:
            transfer = Transfer(void.event_id, t.site, item, t.to_location, t.from_location,
                                t.qty, t.t, purpose)
        else:
            ((loc, d),) = moves
            transfer = Transfer(void.event_id, t.site, item, loc if d > 0 else None,
                                None if d > 0 else loc, abs(d), t.t, "adjustment")
    return Reverse(void.event_id, t.event_id, str(target.result.get("ref", "")), transfer)


def corrections(key: str, at_key: tuple[int, int, str, int], changes: dict[str, int],
                site: str, item: str, history: Sequence[Forwarded],
                skip: set[str]) -> list[tuple[str, Transfer]]:
    """Adjustments that cancel ``changes`` (location -> qty, made at occurrence ``at_key``)
    after the earliest forwarded count of each location that comes later: ``(count id,
    transfer)`` pairs. Counts in ``skip`` (voided, or the operation's own) do not count."""
    out: list[tuple[str, Transfer]] = []
    for loc, d in sorted(changes.items()):
        if not d:
            continue
        later = [f.movement for f in history
                 if f.movement.type == "count" and f.movement.to_location == loc
                 and not f.voided and f.movement.event_id not in skip
                 and order_key(f.movement) > at_key]
        if not later:
            continue
        c = min(later, key=order_key)
        out.append((c.event_id, Transfer(f"{key}>{c.event_id}", site, item,
                                         loc if d > 0 else None, None if d > 0 else loc,
                                         abs(d), c.t, "adjustment")))
    return out
