"""The ledger's core: balances in two orders, negatives, their classes, holds. Pure, no I/O.

:class:`Ledger` takes validated :class:`~ledger.events.Movement` objects one at a time, in the
order they reach the ledger (recorded order), together with the time of arrival, and keeps:

* recorded-order balances per (site, item, location): running sums, a count posting the
  difference to the balance it found, a void posting the reverse of its target;
* occurrence-order balances per (site, item, location) in a :class:`~ledger.balances.Track`,
  where a count is a reset at its ``occurred_at`` and a void removes its target's legs;
* incidents (DESIGN section 8): one per depletion that was ever below zero in either order,
  classified ``ordering`` / ``location`` / ``item`` from the occurrence-order balances and
  re-evaluated when anything arrives at or before the depletion's time for that item;
* held depletions for sites that do not allow negative stock, released earliest first as
  soon as the location's on-hand covers them, taking effect when the stock was there;
* per site, the horizon (DESIGN section 10): an event older than it takes effect at it
  (``before_horizon``), a void of an event before it reverses that event at it; so nothing
  before the horizon ever changes, and :meth:`Ledger.settle` can fold that history into one
  balance per location and drop it from memory, keeping only what can still change.
  :meth:`Ledger.snapshot` and :meth:`Ledger.restore` carry the memory across a restart.

Nothing here reads a clock, a socket or a database: times come in as arguments, and what has
to be persisted or announced comes back in :class:`Outcome` and :attr:`Ledger.changes`.
"""

from __future__ import annotations

import pickle
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ledger.balances import Leg, Track
from ledger.events import DEPLETIONS, Movement, format_time

__all__ = ["BEFORE_HORIZON", "CLASSES", "Change", "Incident", "Ledger", "Outcome", "Settlement",
           "legs_of"]

#: the warning on an event that arrived older than its site's horizon (DESIGN section 10)
BEFORE_HORIZON = "before_horizon"
#: what :meth:`Ledger.snapshot` writes; a snapshot of another format is not read
SNAPSHOT_FORMAT = 2

Class = Literal["ordering", "location", "item"]
CLASSES: tuple[Class, ...] = ("ordering", "location", "item")
Status = Literal["accepted", "duplicate", "held", "rejected"]
Key3 = tuple[str, str, str]
Key2 = tuple[str, str]


class Incident:
    """A depletion that left its location below zero, in either order, at some point."""

    __slots__ = ("balance", "cls", "id", "movement", "opened_at", "resolved_at", "resolved_by",
                 "status", "total")

    def __init__(self, id: int, movement: Movement, opened_at: int) -> None:
        self.id = id
        self.movement = movement
        self.opened_at = opened_at
        self.cls: Class = "location"
        self.status: Literal["open", "resolved"] = "open"
        self.resolved_at: int | None = None
        self.resolved_by: str | None = None
        self.balance = 0
        # The item's total over the site at the depletion's time, while the class is
        # location or item (None when unknown): kept up to date as events arrive.
        self.total: int | None = None

    @property
    def location(self) -> str:
        loc = self.movement.from_location
        assert loc is not None
        return loc

    def to_json(self, *, confirmed: bool, suspected_duplicate: bool,
                item_name: str | None = None) -> dict[str, Any]:
        m = self.movement
        return {
            "id": self.id, "site": m.site, "item": m.item, "item_name": item_name,
            "location": self.location,
            "class": self.cls, "status": self.status, "confirmed": confirmed,
            "depletion_event_id": m.event_id, "balance": self.balance,
            "opened_at": format_time(self.opened_at),
            "resolved_at": None if self.resolved_at is None else format_time(self.resolved_at),
            "resolved_by_event_id": self.resolved_by,
            "suspected_duplicate": suspected_duplicate,
            # not in the contract, but what a manager asks next:
            "occurred_at": m.occurred_at, "station": m.station, "type": m.type, "qty": m.qty,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """Something a webhook should hear about: ``opened``, ``class_changed``, ``resolved`` or
    ``reopened`` (an ordering incident that a later event made negative again)."""

    kind: str
    incident: Incident
    previous_class: str | None = None


@dataclass(slots=True)
class Outcome:
    """The result for one submitted event, and what the caller must persist."""

    status: Status
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    applied_seq: int | None = None  # position in recorded order, when applied now
    released: list[tuple[Movement, int]] = field(default_factory=list)  # (event, applied_seq)
    voided_settled: str | None = None  # a settled event this void reversed


@dataclass(slots=True)
class Settlement:
    """What :meth:`Ledger.settle` took out of memory and the store must keep: incidents that
    can no longer change, and settled events whose effect cannot be told from the event alone
    (voided ones, counts)."""

    incidents: list[tuple[Incident, bool]] = field(default_factory=list)  # (it, suspected dup)
    events: list[Movement] = field(default_factory=list)
    dropped: int = 0  # events taken out of memory


def legs_of(m: Movement) -> list[tuple[str, bool, int, bool]]:
    """A movement's legs as (location, is_reset, value, is_depletion).

    Inside a tie group (legs at one location with the same ``occurred_at``) the legs are
    ordered (is_reset, station, seq, event id, leg index): a count comes after the group's
    other movements, because it states what was in the bin at that moment; so a tie never
    manufactures a negative, a count's included."""
    if m.type == "receipt":
        return [(m.to_location or "", False, m.qty, False)]
    if m.type == "pick":
        return [(m.from_location or "", False, -m.qty, True)]
    if m.type == "move":
        return [(m.from_location or "", False, -m.qty, True),
                (m.to_location or "", False, m.qty, False)]
    if m.type == "count":
        return [(m.to_location or "", True, m.qty, False)]
    return []


def _dup_key(m: Movement) -> tuple[Any, ...]:
    return (m.site, m.station, m.scanner, m.item, m.qty, m.type, m.from_location, m.to_location)


class Ledger:
    """The in-memory ledger. Feed it with :meth:`submit`; read it with the query methods.

    ``allow_negative(site)`` is the per-site policy; ``duplicate_window_us`` the window for
    ``suspected_duplicate``.
    """

    def __init__(self, allow_negative: Callable[[str], bool] = lambda site: True,
                 duplicate_window_us: int = 10_000_000) -> None:
        self.allow_negative = allow_negative
        self.duplicate_window_us = duplicate_window_us
        self.events: dict[str, Movement] = {}
        self.tracks: dict[Key3, Track] = {}
        self.locations: dict[Key2, list[str]] = {}
        self.recorded: dict[Key3, int] = {}
        self.counts: dict[Key3, list[tuple[int, str]]] = {}
        self.incidents: dict[int, Incident] = {}
        self.next_incident = 1
        # Several processes, one engine per site (ledger.pgstore): an incident is numbered by
        # its depletion's position in recorded order, unique across sites and processes.
        self.ids_by_position = False
        # DESIGN section 10, per site: the horizon (nothing older can arrive by the protocol;
        # what does is applied at it), and the time before which memory holds no history
        # (at or before the horizon: every answer is the same wherever it lies).
        self.horizon: dict[str, int] = {}
        self.settled: dict[str, int] = {}
        # Incidents in occurrence order per (site, item) and per (site, item, location):
        # (depletion key, incident id), with the depletion times alongside for bisection.
        self._by_item: dict[Key2, _IncidentIndex] = {}
        self._by_loc: dict[Key3, _IncidentIndex] = {}
        self.held: dict[Key2, list[Movement]] = {}
        self._pending_voids: dict[str, Movement] = {}
        self._dups: dict[tuple[Any, ...], list[tuple[int, str, int, str]]] = {}
        self.applied_seq = 0
        self.changes: list[Change] = []

    # ---------------------------------------------------------------- ingest

    def submit(self, m: Movement, now: int, *, replay: bool = False,
               settled_target: Movement | None = None) -> Outcome:
        """Take one event in recorded order. ``now`` is its arrival time (µs).

        An event older than its site's horizon takes effect at the horizon (``m.t`` moves
        there, with the warning ``before_horizon``). For a void whose target is no longer in
        memory, ``settled_target`` is that target as the store has it.

        With ``replay`` the event is re-applied from the log at start: ``m.t`` and
        ``m.before_horizon`` are already what the log says; no hold decision (the log
        already knows it), no automatic release.
        """
        old = self.events.get(m.event_id)
        if old is not None:
            if old.digest == m.digest:
                return Outcome("duplicate", "already received with the same content")
            return Outcome("rejected", "event_id: already used by a different event "
                                       "(same id, different content)")
        if m.type == "void":
            target = self.events.get(m.voids or "")
            if target is None and settled_target is not None:
                target = settled_target
            if target is not None:
                if target.type == "void":
                    return Outcome("rejected", f"voids: {target.event_id} is itself a void; "
                                               "a void cannot be voided")
                if target.site != m.site:
                    return Outcome("rejected", f"voids: {target.event_id} belongs to site "
                                               f"{target.site!r}, not {m.site!r}")
            self.events[m.event_id] = m
            out = Outcome("accepted", applied_seq=self._next_seq())
            self._void(m, now, out, target, replay=replay)
            if target is not None and target.item is not None and not replay:
                self._release(target.site, target.item, now, out)
            return out

        warnings = []
        if not replay:
            horizon = self.horizon.get(m.site)
            if horizon is not None and m.t < horizon:
                m.t = horizon
                m.before_horizon = True
        if m.before_horizon:
            warnings.append(BEFORE_HORIZON)
        self.events[m.event_id] = m
        if self._pending_voids:
            void = self._pending_voids.pop(m.event_id, None)
            if void is not None and void.site == m.site:
                m.voided_by = void.event_id
                warnings.append(f"already voided by {void.event_id}")
                return Outcome("accepted", applied_seq=self._next_seq(), warnings=warnings)
        assert m.item is not None
        depletion = m.type in DEPLETIONS
        if depletion:
            self._index_dup(m, add=True)
        if depletion and not replay and not self.allow_negative(m.site):
            at = self._release_time(m)
            if at is None:
                loc = m.from_location or ""
                tr = self.tracks.get((m.site, m.item, loc))
                have = 0 if tr is None else tr.balance_after(m.t)
                m.held = True
                insort(self.held.setdefault((m.site, m.item), []), m, key=_key_of)
                return Outcome("held", f"held: {loc} has {have} at {m.occurred_at}, {m.qty} "
                                       f"to take; site {m.site} does not allow negative stock",
                               warnings)
            if at != m.t:
                self._index_dup(m, add=False)
                m.t = at
                self._index_dup(m, add=True)
                warnings.append(f"takes effect at {format_time(at)}, when the stock that "
                                "covers it was there")
        self.applied_seq += 1
        out = Outcome("accepted", applied_seq=self.applied_seq, warnings=warnings)
        self._apply(m, now, out.warnings)
        if not replay and self.held:
            self._release(m.site, m.item, now, out)
        return out

    def replay_release(self, event_id: str, t: int, now: int, applied_seq: int) -> bool:
        """At start: the log says held event ``event_id`` was released, taking effect at
        ``t``, as the ``applied_seq``-th in recorded order. False if it is not held here."""
        m = self.events.get(event_id)
        if m is None or not m.held:
            return False
        self.held[(m.site, m.item or "")].remove(m)
        m.held = False
        self._index_dup(m, add=False)
        m.t = t
        self._index_dup(m, add=True)
        self.applied_seq = applied_seq
        self._apply(m, now, [])
        return True

    def set_horizon(self, site: str, horizon: int) -> bool:
        """Move the site's horizon forward to ``horizon`` (never back); True if it moved."""
        if horizon <= self.horizon.get(site, -1):
            return False
        self.horizon[site] = horizon
        return True

    def restore_held(self, m: Movement) -> None:
        """At start: put back an event the log says is still held."""
        self.events[m.event_id] = m
        void = self._pending_voids.pop(m.event_id, None)
        if void is not None and void.site == m.site:
            m.voided_by = void.event_id
            return
        assert m.item is not None
        self._index_dup(m, add=True)
        m.held = True
        insort(self.held.setdefault((m.site, m.item), []), m, key=_key_of)

    def release_all(self, now: int) -> Outcome:
        """Release every held depletion that is covered now (after a start or a policy change)."""
        out = Outcome("accepted")
        for site, item in list(self.held):
            self._release(site, item, now, out)
        return out

    # ------------------------------------------------------------ settling

    def settle(self, site: str, upto: int) -> Settlement:
        """Forget the site's history before ``upto`` (at most its horizon): each location
        keeps its balance there; what can still change stays (open incidents and their
        depletions, held depletions, voids waiting for their target). What the store must
        keep comes back. Memory then holds only the history from ``upto`` on. O(memory)."""
        out = Settlement()
        upto = min(upto, self.horizon.get(site, -1))
        if upto <= self.settled.get(site, -1):
            return out
        self.settled[site] = upto
        # Incidents behind it that are resolved can no longer change: to the store.
        gone: set[int] = set()
        for inc in list(self.incidents.values()):
            m = inc.movement
            if m.site == site and m.t < upto and inc.status == "resolved":
                out.incidents.append((inc, self.suspected_duplicate(m)))
                del self.incidents[inc.id]
                gone.add(inc.id)
        if gone:
            _drop_incidents(self._by_item, site, gone)
            _drop_incidents(self._by_loc, site, gone)
        events = self.events
        incidents = self.incidents
        for eid in [eid for eid, m in events.items() if m.t < upto and m.site == site]:
            m = events[eid]
            if m.held or (m.incident is not None and m.incident.id in incidents):
                continue
            if m.type == "count" and m.applied:
                # its effect, for a later void, while its history is still here
                m.reversal = tuple(
                    (loc, self._count_effect(m, leg), d)
                    for leg, (loc, d) in zip(m.legs, m.rec_deltas, strict=True))
            if m.voided_by is not None or m.reversal is not None:
                out.events.append(m)
            del events[eid]
            out.dropped += 1
        for key, tr in self.tracks.items():
            if key[0] == site:
                tr.settle(upto)
        for key, counts in self.counts.items():
            if key[0] == site and counts and counts[0][0] < upto:
                del counts[:bisect_left(counts, (upto, ""))]
        # A depletion just after upto may still repeat one just before it.
        w = max(1, self.duplicate_window_us)
        oldest = (upto - w) // w - 1
        for k in [k for k in self._dups if k[0][0] == site and k[1] < oldest]:
            del self._dups[k]
        return out

    def snapshot(self) -> bytes:
        """Everything in memory, for :meth:`restore` (with the policy left out)."""
        return pickle.dumps((SNAPSHOT_FORMAT, _layout(), self),
                            protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes, allow_negative: Callable[[str], bool] = lambda site: True,
                duplicate_window_us: int = 10_000_000) -> Ledger | None:
        """The ledger a :meth:`snapshot` holds, or None if another version of the ledger
        wrote it (its objects are not laid out as these: the caller replays the log).

        Only for snapshots this ledger wrote into its own store: unpickling runs code."""
        fmt, layout, engine = pickle.loads(data)
        if fmt != SNAPSHOT_FORMAT or layout != _layout() or not isinstance(engine, Ledger):
            return None
        engine.allow_negative = allow_negative
        engine.duplicate_window_us = duplicate_window_us
        return engine

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("allow_negative", None)
        state["changes"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.allow_negative = lambda site: True

    def _next_seq(self) -> int:
        self.applied_seq += 1
        return self.applied_seq

    def _track(self, key: Key3) -> Track:
        tr = self.tracks.get(key)
        if tr is None:
            tr = self.tracks[key] = Track()
            self.locations.setdefault((key[0], key[1]), []).append(key[2])
        return tr

    def _index_dup(self, m: Movement, *, add: bool) -> None:
        """Depletions by (what, who, where) and window-sized time bucket: O(1) per event."""
        if m.type not in DEPLETIONS:
            return
        k = (_dup_key(m), m.t // max(1, self.duplicate_window_us))
        if add:
            self._dups.setdefault(k, []).append(m.key)
        else:
            keys = self._dups.get(k)
            if keys is not None and m.key in keys:  # (settling drops old buckets)
                keys.remove(m.key)

    def _apply(self, m: Movement, now: int, warnings: list[str]) -> None:
        m.applied_seq = self.applied_seq  # (every caller has just numbered it)
        site, item, t = m.site, m.item or "", m.t
        tracks = self.tracks
        recorded = self.recorded
        typ = m.type
        if typ == "receipt" or typ == "pick":
            # One plain leg (most events): the loop below, unrolled.
            if typ == "receipt":
                loc, value, depletion = m.to_location or "", m.qty, False
            else:
                loc, value, depletion = m.from_location or "", -m.qty, True
            key = (site, item, loc)
            leg = Leg((False, m.station, m.seq, m.event_id, 0), False, value, depletion, m)
            tr = tracks.get(key)
            if tr is None:
                tr = self._track(key)
            late = tr.add(leg, t)
            rec = recorded[key] = recorded.get(key, 0) + value
            m.legs = (leg,)
            m.rec_deltas = ((loc, value),)
            m.applied = True
            if depletion:
                occ = tr.balance_after(t)
                if occ < 0 or rec < 0:
                    self._open_negative(m, loc, occ, rec, now, warnings)
            if late and value < 0:
                self._open_new_negatives(key, t, now, m, warnings)
            index = self._by_item.get((site, item))
            # Only the item's incidents at or after t can change (no count here to settle
            # earlier ones): for an event after the item's latest depletion, none.
            if index is not None and index.times[-1] >= t:
                self._reevaluate(site, item, t, now, m, None, m, value)
            return
        legs = []
        deltas = []
        net: int | None = 0  # what this does to the item total from t on (None: a count)
        lowered: list[Key3] = []
        dep_track: Track | None = None  # the track of a depletion's from-location
        order_of = (m.station, m.seq, m.event_id)  # after the reset flag: see legs_of
        for i, (loc, reset, value, depletion) in enumerate(legs_of(m)):
            key = (site, item, loc)
            leg = Leg((reset, *order_of, i), reset, value, depletion, m)
            tr = tracks.get(key)
            if tr is None:
                tr = self._track(key)
            if i == 0 and depletion:
                dep_track = tr
            late = tr.add(leg, t)
            legs.append(leg)
            rec = recorded.get(key, 0)
            delta = value - rec if reset else value
            recorded[key] = rec + delta
            deltas.append((loc, delta))
            if reset:
                net = None
                insort(self.counts.setdefault(key, []), (t, m.event_id))
            elif net is not None:
                net += value
            if late and (value < 0 or reset):
                lowered.append(key)
        m.legs = tuple(legs)
        m.rec_deltas = tuple(deltas)
        m.applied = True

        if dep_track is not None:
            occ = dep_track.balance_after(t)
            key = (site, item, m.from_location or "")
            rec = recorded[key]
            if occ < 0 or rec < 0:
                self._open_negative(m, key[2], occ, rec, now, warnings)
        for key in lowered:
            self._open_new_negatives(key, t, now, m, warnings)
        if (site, item) in self._by_item:  # else no incident of the item to re-evaluate
            count_at = m.to_location if typ == "count" else None
            self._reevaluate(site, item, t, now, m, count_at, m, net)

    def _open_new_negatives(self, key: Key3, t: int, now: int, trigger: Movement,
                            warnings: list[str]) -> None:
        found = self.tracks[key].find_negative(t)
        for leg in found:
            owner: Movement = leg.owner
            if owner.incident is None:
                self._open(owner, now, trigger=trigger)
        if found:
            warnings.append(f"made {len(found)} depletion(s) at {key[2]} negative")

    def _void(self, v: Movement, now: int, out: Outcome, target: Movement | None, *,
              replay: bool) -> None:
        warnings = out.warnings
        target_id = v.voids or ""
        if target is None:
            if target_id in self._pending_voids:
                warnings.append(f"{target_id} is already to be voided by "
                                f"{self._pending_voids[target_id].event_id}")
            else:
                self._pending_voids[target_id] = v
                warnings.append(f"{target_id} not received yet; it is voided when it arrives")
            return
        if target.voided_by is not None:
            warnings.append(f"{target_id} already voided by {target.voided_by}")
            return
        if replay:
            settled = v.before_horizon
        else:
            horizon = self.horizon.get(v.site)
            settled = (self.events.get(target_id) is not target
                       or (horizon is not None and target.t < horizon and not target.held))
            if settled:
                v.before_horizon = True
                v.t = horizon if horizon is not None else v.t
        target.voided_by = v.event_id
        if settled:
            warnings.append(BEFORE_HORIZON)
            if self.events.get(target_id) is not target:
                out.voided_settled = target_id
            self._reverse(v, target, now, warnings)
            return
        if target.held:
            target.held = False
            held = self.held[(target.site, target.item or "")]
            held.remove(target)
            self._index_dup(target, add=False)
            warnings.append(f"cancels held {target.type} {target_id}")
            return
        if not target.applied:
            return
        site, item = target.site, target.item or ""
        lowered: list[Key3] = []
        for leg, (loc, reset, value, _dep) in zip(target.legs, legs_of(target), strict=True):
            key = (site, item, loc)
            self.tracks[key].remove(leg, target.t)
            if reset:
                self.counts[key].remove((target.t, target.event_id))
            if value > 0 or reset:
                lowered.append(key)
        for loc, delta in target.rec_deltas:
            self.recorded[(site, item, loc)] -= delta
        target.applied = False
        self._index_dup(target, add=False)
        if target.incident is not None:
            self._evaluate(target.incident, now, v, born=False)
        for key in lowered:
            self._open_new_negatives(key, target.t, now, v, warnings)
        count_at = target.to_location if target.type == "count" else None
        self._reevaluate(site, item, target.t, now, v, count_at, target,
                         None if count_at is not None
                         else -sum(d for _loc, d in target.rec_deltas))

    def _reverse(self, v: Movement, target: Movement, now: int, warnings: list[str]) -> None:
        """Void ``target``, which lies before the horizon, at the horizon (``v.t``): its
        history stays as it is, and v posts the reverse of its effect from then on."""
        if not target.applied and target.reversal is None and target.legs:
            return  # already out of the balances
        site, item, t = v.site, target.item or "", v.t
        if target.reversal is not None:
            effect = [(loc, occ, rec) for loc, occ, rec in target.reversal]
        elif target.type == "count":
            effect = [(loc, self._count_effect(target, leg), d)
                      for leg, (loc, d) in zip(target.legs, target.rec_deltas, strict=True)]
        else:
            effect = [(loc, value, value) for loc, _r, value, _d in legs_of(target)]
        legs = []
        deltas = []
        for i, (loc, occ, rec) in enumerate(effect):
            key = (site, item, loc)
            leg = Leg((False, v.station, v.seq, v.event_id, i), False, -occ, False, v)
            tr = self.tracks.get(key)
            if tr is None:
                tr = self._track(key)
            tr.add(leg, t)
            legs.append(leg)
            self.recorded[key] = self.recorded.get(key, 0) - rec
            deltas.append((loc, -rec))
        v.legs = tuple(legs)
        v.rec_deltas = tuple(deltas)
        v.applied = True
        target.applied = False
        if target.incident is not None and target.incident.id in self.incidents:
            self._evaluate(target.incident, now, v, born=False)
        for (loc, occ, _rec) in effect:
            if occ > 0:
                self._open_new_negatives((site, item, loc), t, now, v, warnings)
        self._reevaluate(site, item, t, now, v)

    def _count_effect(self, count: Movement, leg: Leg) -> int:
        """What count ``count`` (still in memory) did to its location's occurrence-order
        balance: its value less the balance it found."""
        tr = self.tracks[(count.site, count.item or "", count.to_location or "")]
        bal = tr.balance_after(count.t - 1)
        for other in tr.group(count.t):
            if other is leg:
                return leg.value - bal
            bal = other.value if other.reset else bal + other.value
        return 0

    def _release_time(self, m: Movement) -> int | None:
        """When depletion m can take effect without any balance at its location going
        below zero from then on: its own time, or else the time of the event after which
        the stock was there for good (DESIGN section 8); None while the location's on-hand
        does not cover it."""
        tr = self.tracks.get((m.site, m.item or "", m.from_location or ""))
        need = m.qty
        if tr is None or tr.balance < need:
            return None
        at: int | None = None if tr.balance_after(m.t) < need else m.t
        for t, post in tr.posts_after(m.t):
            if post < need:
                at = None
            elif at is None:
                at = t
        horizon = self.horizon.get(m.site)
        if at is not None and horizon is not None and at < horizon:
            at = horizon  # what is before the horizon no longer changes (DESIGN section 10)
        return at

    def _release(self, site: str, item: str, now: int, out: Outcome) -> None:
        """Release the item's held depletions that are covered now, in occurrence order
        (the earliest first, so it is the first to take what arrived). One that is covered
        goes as soon as it is, even if an earlier one is not: that one may never be. A
        released move adds to its to-location, which may cover a depletion there: so round
        again until nothing more is released."""
        held = self.held.get((site, item))
        while held:
            released = False
            for m in list(held):
                at = self._release_time(m)
                if at is not None:
                    held.remove(m)
                    m.held = False
                    if at != m.t:
                        self._index_dup(m, add=False)
                        m.t = at
                        self._index_dup(m, add=True)
                    seq = self._next_seq()
                    self._apply(m, now, [])
                    out.released.append((m, seq))
                    released = True
            if not released:
                break

    # ------------------------------------------------------------ incidents

    def _open_negative(self, m: Movement, loc: str, occ: int, rec: int, now: int,
                       warnings: list[str]) -> None:
        """A depletion left ``loc`` below zero (in occurrence order ``occ``, or in recorded
        order ``rec``): open its incident and warn the station."""
        inc = self._open(m, now, trigger=m)
        shown = occ if occ < 0 else rec
        order = "" if occ < 0 else " in recorded order"
        warnings.append(f"negative balance at {loc}: {shown}{order} (class {inc.cls})")

    def _open(self, m: Movement, now: int, trigger: Movement) -> Incident:
        if self.ids_by_position:
            assert m.applied_seq is not None
            inc = Incident(m.applied_seq, m, now)
        else:
            inc = Incident(self.next_incident, m, now)
            self.next_incident += 1
        self.incidents[inc.id] = inc
        m.incident = inc
        leg = m.legs[0]
        leg.watched = False
        self.tracks[(m.site, m.item or "", m.from_location or "")].refresh(m.t)
        entry = (m.key, inc.id)
        self._by_item.setdefault((m.site, m.item or ""), _IncidentIndex()).add(m.t, entry)
        self._by_loc.setdefault((m.site, m.item or "", m.from_location or ""),
                                _IncidentIndex()).add(m.t, entry)
        self._evaluate(inc, now, trigger, born=True)
        self.changes.append(Change("opened", inc))
        return inc

    def _reevaluate(self, site: str, item: str, t: int, now: int, trigger: Movement,
                    count_at: str | None = None, changed: Movement | None = None,
                    delta: int | None = None) -> None:
        """Re-evaluate the item's incidents at or after t: nothing earlier can change them,
        except that a count (``count_at``, its location) settles the ones before it too.

        ``changed`` is the movement whose legs were just added at (or taken out of) time t,
        ``delta`` what that did to the item total from t on (None for a count). An incident
        at another location keeps its own balance and its settling count, so it can only
        change through the item total: never if it is ``ordering`` (its balance is >= 0
        whatever the total), and otherwise by exactly ``delta``, unless a count at one of
        the changed locations from t on keeps only part of it; then it is recomputed."""
        index = self._by_item.get((site, item))
        if index is None:
            return
        todo = index.from_time(t)
        if count_at is not None:
            at_loc = self._by_loc.get((site, item, count_at))
            if at_loc is not None:
                todo = at_loc.before_time(t) + todo
        if not todo:
            return
        frm = to = None
        if changed is not None:
            frm, to = changed.from_location, changed.to_location
            if delta is not None and (self._count_from(site, item, frm, t)
                                      or self._count_from(site, item, to, t)):
                delta = None
        incidents = self.incidents
        for _key, inc_id in todo:
            inc = incidents[inc_id]
            dep = inc.movement
            if dep.voided_by is not None:
                if inc.status == "open":
                    self._evaluate(inc, now, trigger, born=False)
                continue
            if changed is not None:
                loc = dep.from_location
                if loc != frm and loc != to:
                    if inc.cls == "ordering" or delta == 0:
                        continue  # nothing it depends on has changed
                    total = inc.total
                    if delta is not None and total is not None:
                        total += delta
                        inc.total = total
                        cls: Class = "item" if total < 0 else "location"
                        if cls != inc.cls:
                            self._evaluate(inc, now, trigger, born=False, known=cls)
                        continue
            self._evaluate(inc, now, trigger, born=False)

    def _count_from(self, site: str, item: str, loc: str | None, t: int) -> bool:
        """Is there a count at loc at or after time t?"""
        counts = self.counts.get((site, item, loc or ""))
        return counts is not None and len(counts) > 0 and counts[-1][0] >= t

    def classify(self, m: Movement) -> tuple[Class, int]:
        """Class of depletion m with everything received so far, and its location balance."""
        cls, bal, _total = self._classify(m)
        return cls, bal

    def _classify(self, m: Movement) -> tuple[Class, int, int | None]:
        """Class, location balance and (unless ``ordering``) item total of depletion m."""
        site, item, t = m.site, m.item or "", m.t
        tracks = self.tracks
        bal = tracks[(site, item, m.from_location or "")].balance_after(t)
        if bal >= 0:
            return "ordering", bal, None
        total = 0
        for loc in self.locations[(site, item)]:
            total += tracks[(site, item, loc)].balance_after(t)
        return ("item" if total < 0 else "location"), bal, total

    def settling_count(self, m: Movement) -> str | None:
        """The first count of m's item at m's location at or after m, if any."""
        counts = self.counts.get((m.site, m.item or "", m.from_location or ""))
        if not counts:
            return None
        i = bisect_left(counts, (m.t, ""))
        return counts[i][1] if i < len(counts) else None

    def _evaluate(self, inc: Incident, now: int, trigger: Movement, *, born: bool,
                  known: Class | None = None) -> None:
        """Classify inc again (``known``: its new class, when only the item total changed
        and the caller has it), resolve or reopen it, and note the change."""
        m = inc.movement
        before_cls, before_status = inc.cls, inc.status
        if m.voided_by is not None:
            if inc.status == "open":
                inc.status, inc.resolved_at = "resolved", now
            inc.resolved_by = m.voided_by  # whatever resolved it before, the void does now
        else:
            if known is None:
                if m.t < self.settled.get(m.site, -1):
                    # behind the settled history: its balances can no longer change, only
                    # a count or a void can still resolve it (DESIGN section 10)
                    cls = inc.cls
                else:
                    cls, inc.balance, inc.total = self._classify(m)
            else:
                cls = known
            inc.cls = cls
            count = self.settling_count(m)
            if cls == "ordering" or count is not None:
                # resolved_by names what resolves it now: the settling count, or the late
                # event that made it ordering (none when it was negative only in recorded
                # order when it arrived). It stays resolved since resolved_at.
                if inc.status == "open" or born:
                    inc.status, inc.resolved_at = "resolved", now
                    if cls != "ordering":
                        inc.resolved_by = count
                    else:
                        inc.resolved_by = None if trigger is m else trigger.event_id
                elif cls != "ordering":
                    inc.resolved_by = count
                elif before_cls != "ordering":
                    inc.resolved_by = None if trigger is m else trigger.event_id
                elif inc.resolved_by is not None:
                    # Still ordering, but the event that explained it may be undone (another
                    # late event explains it now): never name an undone event.
                    by = self.events.get(inc.resolved_by)
                    if by is not None and by.voided_by is not None:
                        inc.resolved_by = None
            elif inc.status == "resolved":
                inc.status, inc.resolved_at, inc.resolved_by = "open", None, None
        if born:
            return
        if before_status == "resolved" and inc.status == "open":
            self.changes.append(Change("reopened", inc, before_cls))
        elif before_status == "open" and inc.status == "resolved":
            self.changes.append(Change("resolved", inc, before_cls))
        elif before_cls != inc.cls:
            self.changes.append(Change("class_changed", inc, before_cls))

    def take_changes(self) -> list[Change]:
        changes, self.changes = self.changes, []
        return changes

    # --------------------------------------------------------------- queries

    def suspected_duplicate(self, m: Movement) -> bool:
        """m repeats another live event with the same station, scanner, item, qty, type and
        locations: one that occurred before it (in occurrence order), within the duplicate
        window. The first of two such scans is the original, not a repeat."""
        w = self.duplicate_window_us
        dup = _dup_key(m)
        key = m.key
        bucket = m.t // max(1, w)
        return any(k < key and m.t - k[0] <= w
                   for b in (bucket - 1, bucket) for k in self._dups.get((dup, b), ()))

    def iter_incidents(self, status: str | None = None) -> Iterator[Incident]:
        for inc in self.incidents.values():
            if status is None or inc.status == status:
                yield inc

    def balances(self, site: str | None = None, item: str | None = None,
                 location: str | None = None) -> list[tuple[str, str, str, int, int]]:
        """(site, item, location, on_hand in occurrence order, recorded-order balance)."""
        rows = []
        for key, tr in self.tracks.items():
            s, i, loc = key
            if ((site is None or s == site) and (item is None or i == item)
                    and (location is None or loc == location)):
                rows.append((s, i, loc, tr.balance, self.recorded.get(key, 0)))
        rows.sort()
        return rows

    def item_total(self, site: str, item: str, t: int | None = None) -> int:
        """The item's total over all locations of the site (at time t, or now)."""
        return sum(self.tracks[(site, item, loc)].balance if t is None
                   else self.tracks[(site, item, loc)].balance_after(t)
                   for loc in self.locations.get((site, item), ()))

    def held_events(self) -> list[Movement]:
        out = [m for lst in self.held.values() for m in lst]
        out.sort(key=_key_of)
        return out

    def live(self) -> Iterable[Movement]:
        return (m for m in self.events.values() if m.applied)


def _layout() -> tuple[Any, ...]:
    """What a snapshot's objects must look like to be read back: every attribute of the
    classes it holds (a ledger that adds or renames one cannot read an older snapshot)."""
    from ledger.balances import _Node

    return (tuple(sorted(Ledger().__dict__)), Incident.__slots__, Movement.__slots__,
            Leg.__slots__, Track.__slots__, _Node.__slots__, _IncidentIndex.__slots__)


def _drop_incidents(index: dict[Any, _IncidentIndex], site: str, ids: set[int]) -> None:
    for key in [k for k in index if k[0] == site]:
        index[key].drop(ids)
        if not index[key].entries:
            del index[key]


def _key_of(m: Movement) -> tuple[int, str, int, str]:
    return m.key


class _IncidentIndex:
    """Incidents in occurrence order of their depletions, with the times for bisection."""

    __slots__ = ("entries", "times")

    def __init__(self) -> None:
        self.entries: list[tuple[tuple[int, str, int, str], int]] = []
        self.times: list[int] = []

    def add(self, t: int, entry: tuple[tuple[int, str, int, str], int]) -> None:
        entries = self.entries
        if not entries or entry >= entries[-1]:
            entries.append(entry)
            self.times.append(t)
        else:
            i = bisect_right(entries, entry)
            entries.insert(i, entry)
            self.times.insert(i, t)

    def from_time(self, t: int) -> list[tuple[tuple[int, str, int, str], int]]:
        """The entries at or after time t (a copy)."""
        times = self.times
        if not times or times[-1] < t:
            return []
        return self.entries[bisect_left(times, t):]

    def drop(self, ids: set[int]) -> None:
        """Take out the entries of these incidents."""
        keep = [(e, t) for e, t in zip(self.entries, self.times, strict=True) if e[1] not in ids]
        self.entries = [e for e, _t in keep]
        self.times = [t for _e, t in keep]

    def before_time(self, t: int) -> list[tuple[tuple[int, str, int, str], int]]:
        """The entries before time t (a copy)."""
        return self.entries[:bisect_left(self.times, t)]
