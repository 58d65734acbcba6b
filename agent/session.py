"""Per-scanner session state and what each scan does to it (DESIGN section 4).

Pure: :func:`apply` takes a state, a token and the ids it may need, and returns the next state
plus at most one movement draft; it never changes the state it is given, so the caller can
keep the last committed state and fall back to it when a commit fails.

>>> d = Defaults(mode="receipt", location="DOCK-3")
>>> s = initial_state(d)
>>> step = apply(s, Item("04006381333931"), d, "raw", event_id="e1")
>>> step.movement.type, step.movement.to_location, step.movement.qty
('receipt', 'DOCK-3', 1)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, NamedTuple

from agent.config import Mode
from agent.grammar import (
    Item,
    Location,
    ModeSwitch,
    Operator,
    Quantity,
    Reference,
    Rejected,
    Reset,
    Token,
    Undo,
)

__all__ = ["Defaults", "Draft", "Instant", "SessionState", "Step", "UndoEntry", "apply",
           "initial_state", "undo_entry"]

_HISTORY = 20  # movements CMD-UNDO can reach back through, per scanner
_CONTEXT = 8  # raw scans kept as the context of the next movement
# what an undo entry keeps of its movement (all a void needs)
_UNDO_FIELDS = ("item", "qty", "lot", "serial", "expiry", "from_location", "to_location", "type")


@dataclass(frozen=True, slots=True)
class Defaults:
    """A scanner's starting point, from the dock config (and the scanner's overrides)."""

    mode: Mode
    location: str | None
    require_operator: bool = False
    undo_max_age_s: float = 600.0  # CMD-UNDO never voids a movement older than this


@dataclass(frozen=True, slots=True)
class Instant:
    """When a scan was read: the boot it was read in and ``CLOCK_BOOTTIME`` then.

    Ages are measured on this clock, which never jumps (a wall clock stepped by NTP would
    make a movement look older or younger than it is); two readings from different boots
    cannot be compared, so an older boot's movement counts as too old to undo."""

    boot_id: str
    boot_ns: int

    def age_s(self, since: Instant) -> float | None:
        """Seconds from ``since`` to this instant, or None across a reboot."""
        if since.boot_id != self.boot_id:
            return None
        return (self.boot_ns - since.boot_ns) / 1e9


def _json(v: object) -> str:
    """``v`` as ``json.dumps(v, separators=(",", ":"))`` gives it, quicker for the values a
    session holds (None, str, int); anything else goes to ``json.dumps`` itself."""
    if v is None:
        return "null"
    if type(v) is str:
        return _json_str(v)
    if type(v) is int:  # (not a bool)
        return int.__repr__(v)
    return json.dumps(v, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class UndoEntry:
    event_id: str
    draft: dict[str, Any]
    count_key: tuple[str, str, str | None] | None = None
    previous_total: int | None = None
    at: Instant | None = None  # when the movement was scanned (None: no clock given)


def undo_entry(row: Mapping[str, Any]) -> UndoEntry:
    """The undo entry of a journaled movement (a row of ``Journal.undo_history``)."""
    draft = {k: row[k] for k in _UNDO_FIELDS}
    key = (row["to_location"], row["item"], None) if row["type"] == "count" else None
    at = Instant(row["boot_id"], row["boot_ns"]) if row["boot_id"] is not None else None
    return UndoEntry(row["event_id"], draft, key, row["previous_total"], at)


@dataclass(frozen=True, slots=True)
class SessionState:
    mode: Mode
    from_location: str | None = None
    to_location: str | None = None
    qty: int | None = None
    reference: str | None = None
    operator: str | None = None
    # running count totals for the current count: ((bin, item, None), total); the
    # lot slot is always None (older saved states may hold a lot there)
    counts: tuple[tuple[tuple[str, str, str | None], int], ...] = ()
    history: tuple[UndoEntry, ...] = ()
    context: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The state as JSON, saved with every scan: what ``json.dumps`` with compact
        separators gives for its fields, written out (see :func:`_json`). The undo history
        is saved as its depth: its entries are the scanner's newest movements, which the
        journal holds already (see :meth:`from_json`), so the row stays a few hundred bytes
        (with the entries, kilobytes: a leaf and an overflow page per scanner per commit)."""
        counts = _json([[list(k), v] for k, v in self.counts]) if self.counts else "[]"
        return "".join((
            '{"mode":', _json(self.mode), ',"from_location":', _json(self.from_location),
            ',"to_location":', _json(self.to_location), ',"qty":', _json(self.qty),
            ',"reference":', _json(self.reference), ',"operator":', _json(self.operator),
            ',"counts":', counts,
            ',"context":[', ",".join([_json(c) for c in self.context]),
            '],"undo":', str(len(self.history)), "}"))

    @staticmethod
    def undo_depth(text: str) -> int:
        """How many undo entries the saved state ``text`` stands for (to read from the
        journal for :meth:`from_json`); 0 for a state saved with its entries inline."""
        depth = json.loads(text).get("undo", 0)
        return depth if type(depth) is int and depth > 0 else 0

    @classmethod
    def from_json(cls, text: str, history: Sequence[UndoEntry] = ()) -> SessionState:
        """The state saved as ``text``; ``history``: its undo entries as the journal gives
        them (:func:`undo_entry` of ``Journal.undo_history``), the newest
        :meth:`undo_depth`. A state saved by an earlier version holds its entries itself."""
        d = json.loads(text)
        d["counts"] = tuple((tuple(k), v) for k, v in d.get("counts", []))
        depth = d.pop("undo", 0)
        if "history" in d:  # saved with its entries
            d["history"] = tuple(
                UndoEntry(
                    event_id=h["event_id"], draft=h["draft"],
                    count_key=tuple(h["count_key"]) if h.get("count_key") else None,
                    previous_total=h.get("previous_total"),
                    at=Instant(*h["at"]) if h.get("at") else None,
                )
                for h in d["history"]
            )
        else:
            d["history"] = tuple(history)[-depth:] if depth else ()
        d["context"] = tuple(d.get("context", []))
        return cls(**d)

    def count_total(self, key: tuple[str, str, str | None]) -> int:
        for k, v in self.counts:
            if k == key:
                return v
        return 0


class Draft(NamedTuple):
    """A movement ready to be journaled; the journal adds seq, station and times.

    A named tuple, not a frozen dataclass: as immutable, and made for every movement in a
    third of the time (a frozen dataclass sets each field through ``object.__setattr__``)."""

    event_id: str
    type: str  # receipt | pick | move | count | void
    item: str
    qty: int
    lot: str | None = None
    serial: str | None = None
    expiry: str | None = None
    from_location: str | None = None
    to_location: str | None = None
    reference: str | None = None
    operator: str | None = None
    voids: str | None = None
    raw: tuple[str, ...] = ()
    # a count's running total of its item in its bin before it (what CMD-UNDO puts back);
    # kept by the journal, never sent
    previous_total: int | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one scan: the next state, and a movement or a rejection."""

    state: SessionState
    movement: Draft | None = None
    rejected: str | None = None
    note: str = ""


def initial_state(d: Defaults, mode: Mode | None = None) -> SessionState:
    """The state after start or CMD-RESET (or a ``MODE-`` scan to ``mode``): that mode, the
    default location in the slot the mode uses (receipt's to, pick's from, count's bin).

    A move has none: its first LOC- scan sets the from-location, the second the to-location,
    so a default from-location would make the first one the to-location."""
    m = d.mode if mode is None else mode
    if m == "pick":
        return SessionState(mode=m, from_location=d.location)
    if m == "move":
        return SessionState(mode=m)
    return SessionState(mode=m, to_location=d.location)


def apply(state: SessionState, token: Token, defaults: Defaults, raw: str,
          event_id: str, at: Instant | None = None) -> Step:
    """What ``token`` (scanned as ``raw``, read at ``at``) does to ``state``.

    ``event_id`` is used only when the scan makes a movement. ``at`` dates the movement for
    CMD-UNDO's age limit; without it (a test that does not care about time) no age applies.

    ``MODE-``, ``USER-`` and ``CMD-RESET`` scans are undo barriers: they forget the
    scanner's undo history, so CMD-UNDO never walks back across a change of mode, of
    operator or a reset into movements made for another purpose or by another person.
    """
    s = state
    match token:  # (the cases are disjoint: items, by far the most scanned, come first)
        case Item():
            return _item(s, token, defaults, raw, event_id, at)
        case Rejected(reason):
            return Step(s, rejected=reason)
        case ModeSwitch(mode):
            # as at start: the scanner's default location back in the slot the mode uses
            fresh = initial_state(defaults, mode)
            return Step(replace(fresh, reference=s.reference, operator=s.operator),
                        note=f"mode {mode}")
        case Location(code):
            return _location(s, code, raw)
        case Quantity(qty):
            if qty == 0 and s.mode != "count":
                return Step(s, rejected="quantity must be at least 1 (QTY-0 is for counting "
                                        "an empty bin, in count mode)")
            note = "quantity 0 (the next item is counted as none)" if qty == 0 else \
                f"quantity {qty}"
            return Step(replace(s, qty=qty, context=_ctx(s, raw)), note=note)
        case Reference(text):
            return Step(replace(s, reference=text, context=_ctx(s, raw)), note=f"reference {text}")
        case Operator(badge):
            return Step(replace(s, operator=badge, history=(), context=_ctx(s, raw)),
                        note=f"operator {badge}")
        case Reset():
            fresh = initial_state(defaults)
            return Step(replace(fresh, operator=s.operator), note="reset")
        case Undo():
            return _undo(s, raw, event_id, defaults, at)
    raise AssertionError(f"unhandled token {token!r}")  # pragma: no cover


def _ctx(s: SessionState, raw: str) -> tuple[str, ...]:
    return (*s.context, raw)[-_CONTEXT:]


def _location(s: SessionState, code: str, raw: str) -> Step:
    ctx = _ctx(s, raw)
    if s.mode == "receipt":
        return Step(replace(s, to_location=code, context=ctx), note=f"to {code}")
    if s.mode == "pick":
        return Step(replace(s, from_location=code, context=ctx), note=f"from {code}")
    if s.mode == "count":
        # A bin scanned (again) starts a new count of it: a recount never adds to the last.
        counts = tuple((k, v) for k, v in s.counts if k[0] != code)
        return Step(replace(s, to_location=code, counts=counts, context=ctx),
                    note=f"counting {code}")
    # move: first scan sets from, second sets to, a third starts a new pair
    if s.from_location is None or s.to_location is not None:
        return Step(replace(s, from_location=code, to_location=None, context=ctx),
                    note=f"move from {code}")
    if code == s.from_location:
        return Step(s, rejected=f"move to the same location {code}: scan a different "
                               "to-location")
    return Step(replace(s, to_location=code, context=ctx), note=f"move {s.from_location} -> {code}")


def _item(s: SessionState, it: Item, d: Defaults, raw: str, event_id: str,
          at: Instant | None) -> Step:
    if d.require_operator and s.operator is None:
        return Step(s, rejected="operator badge required: scan USER-<id> first")
    qty = (1 if s.qty is None else s.qty) * (it.count or 1)
    frm, to = None, None
    if s.mode == "receipt":
        to = s.to_location
        if to is None:
            return Step(s, rejected="no location yet: scan LOC-<code> first")
    elif s.mode == "pick":
        frm = s.from_location
        if frm is None:
            return Step(s, rejected="no location yet: scan LOC-<code> first")
    elif s.mode == "move":
        frm, to = s.from_location, s.to_location
        if frm is None:
            return Step(s, rejected="no location yet: scan LOC-<from> then LOC-<to> first")
        if to is None:
            return Step(s, rejected="move without a to-location: scan LOC-<to> first")
    else:  # count
        to = s.to_location
        if to is None:
            return Step(s, rejected="no bin yet: scan LOC-<bin> before counting")
    expiry = it.expiry.isoformat() if isinstance(it.expiry, date) else None
    key: tuple[str, str, str | None] | None = None
    previous: int | None = None
    counts = s.counts
    if s.mode == "count":
        assert to is not None
        # The total of the item in the bin, whatever the lots: the ledger's balance (which a
        # count resets) is per item and bin.
        key = (to, it.item, None)
        previous = s.count_total(key)
        # QTY-0 then the item: none of it in the bin, whatever was counted before
        qty = 0 if s.qty == 0 else previous + qty
        counts = (*((k, v) for k, v in s.counts if k != key), (key, qty))
    draft = Draft(
        event_id=event_id, type=s.mode, item=it.item, qty=qty, lot=it.lot, serial=it.serial,
        expiry=expiry, from_location=frm, to_location=to, reference=s.reference,
        operator=s.operator, raw=(*s.context, raw), previous_total=previous,
    )
    entry = UndoEntry(event_id, _undo_fields(draft), key, previous, at)
    # (built field by field: dataclasses.replace looks the fields up again on every call)
    nxt = SessionState(s.mode, s.from_location, s.to_location, None, s.reference, s.operator,
                       counts, (*s.history, entry)[-_HISTORY:], ())
    return Step(nxt, movement=draft, note=f"{s.mode} {it.item} x{qty}")


def _undo_fields(d: Draft) -> dict[str, Any]:
    return {k: getattr(d, k) for k in _UNDO_FIELDS}


def _undo(s: SessionState, raw: str, event_id: str, d: Defaults,
          at: Instant | None) -> Step:
    if not s.history:
        return Step(s, rejected="nothing to undo on this scanner")
    last = s.history[-1]
    if at is not None:
        age = None if last.at is None else at.age_s(last.at)
        if age is None or age > d.undo_max_age_s:
            limit = d.undo_max_age_s
            n, unit = (limit / 60, "minute") if limit >= 60 else (limit, "second")
            span = f"{n:g} {unit}" + ("" if n == 1 else "s")
            return Step(s, rejected=f"nothing to undo: the last movement on this scanner is "
                                    f"older than {span}")
    f = last.draft
    draft = Draft(
        event_id=event_id, type="void", item=f["item"], qty=f["qty"], lot=f["lot"],
        serial=f["serial"], expiry=f["expiry"], from_location=f["from_location"],
        to_location=f["to_location"], reference=s.reference, operator=s.operator,
        voids=last.event_id, raw=(*s.context, raw),
    )
    counts = s.counts
    if last.count_key is not None:
        key = last.count_key
        rest = tuple((k, v) for k, v in s.counts if k != key)
        counts = (*rest, (key, last.previous_total)) if last.previous_total else rest
    nxt = replace(s, history=s.history[:-1], counts=counts, context=())
    return Step(nxt, movement=draft, note=f"void {f['type']} {f['item']}")
