"""Per-scanner sessions (DESIGN section 4): what each scan does to a scanner's state, and the
movement it makes. Pure: tokens come from the real grammar, no journal."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import GrammarConfig, Mode
from agent.grammar import interpret
from agent.session import (
    Defaults,
    Draft,
    Instant,
    SessionState,
    Step,
    UndoEntry,
    apply,
    initial_state,
)

G = GrammarConfig(sku_patterns=(r"SKU-(?P<sku>[A-Z0-9]+)",))
EAN = "4006381333931"
ITEM = "04006381333931"
EAN2 = "96385074"
ITEM2 = "00000096385074"
DOCK = Defaults(mode="receipt", location="DOCK-3")


class Scanner:
    """One scanner's session driven by barcode texts, keeping every step."""

    def __init__(self, defaults: Defaults = DOCK, state: SessionState | None = None) -> None:
        self.defaults = defaults
        self.state = state or initial_state(defaults)
        self.ids = (f"ev-{n}" for n in itertools.count(1))
        self.steps: list[Step] = []
        self.at: Instant | None = None  # when the next scans are read (None: no clock)

    def scan(self, *texts: str) -> Step:
        step = Step(self.state)
        for text in texts:
            step = apply(self.state, interpret(text, G), self.defaults, text,
                         event_id=next(self.ids), at=self.at)
            self.state = step.state
            self.steps.append(step)
        return step

    def movements(self) -> list[Draft]:
        return [s.movement for s in self.steps if s.movement is not None]


def moved(step: Step) -> Draft:
    assert step.rejected is None, step.rejected
    assert step.movement is not None
    return step.movement


def test_initial_state_puts_the_default_location_in_the_modes_slot() -> None:
    assert initial_state(DOCK) == SessionState(mode="receipt", to_location="DOCK-3")
    assert initial_state(Defaults("count", "CC-1")) == SessionState(mode="count",
                                                                      to_location="CC-1")
    assert initial_state(Defaults("pick", "DOCK-3")) == SessionState(mode="pick",
                                                                       from_location="DOCK-3")
    assert initial_state(Defaults("move", None)) == SessionState(mode="move")


# -- location rules per mode ---------------------------------------------------------------


def test_receipt_lands_on_default_location_until_a_loc_scan() -> None:
    sc = Scanner()
    m = moved(sc.scan(EAN))
    assert (m.type, m.item, m.qty, m.from_location, m.to_location) == (
        "receipt", ITEM, 1, None, "DOCK-3")
    m = moved(sc.scan("LOC-A-01", EAN2))
    assert (m.type, m.item, m.from_location, m.to_location) == ("receipt", ITEM2, None, "A-01")
    assert m.raw == ("LOC-A-01", EAN2), "the LOC scan is part of the movement's context"


def test_receipt_without_any_location_is_rejected() -> None:
    sc = Scanner(Defaults("receipt", None))
    step = sc.scan(EAN)
    assert step.rejected == "no location yet: scan LOC-<code> first"
    assert step.movement is None


def test_pick_takes_from_the_scanned_location() -> None:
    sc = Scanner(Defaults("receipt", None))
    sc.scan("MODE-PICK")
    assert sc.state.from_location is None and sc.state.to_location is None
    step = sc.scan(EAN)
    assert step.rejected == "no location yet: scan LOC-<code> first"
    m = moved(sc.scan("LOC-B-07", EAN))
    assert (m.type, m.from_location, m.to_location) == ("pick", "B-07", None)
    m = moved(sc.scan("LOC-B-08", EAN))
    assert (m.from_location, m.to_location) == ("B-08", None)


def test_move_first_loc_is_from_second_is_to_third_starts_a_new_pair() -> None:
    sc = Scanner()
    sc.scan("MODE-MOVE", "LOC-A-01")
    assert (sc.state.from_location, sc.state.to_location) == ("A-01", None)
    sc.scan("LOC-B-02")
    assert (sc.state.from_location, sc.state.to_location) == ("A-01", "B-02")
    m = moved(sc.scan(EAN))
    assert (m.type, m.from_location, m.to_location) == ("move", "A-01", "B-02")
    m = moved(sc.scan(EAN2))
    assert (m.from_location, m.to_location) == ("A-01", "B-02"), "the pair stays for more items"
    sc.scan("LOC-C-03")
    assert (sc.state.from_location, sc.state.to_location) == ("C-03", None)
    step = sc.scan(EAN)
    assert step.rejected == "move without a to-location: scan LOC-<to> first"
    m = moved(sc.scan("LOC-D-04", EAN))
    assert (m.from_location, m.to_location) == ("C-03", "D-04")


def test_move_without_any_location_is_rejected() -> None:
    sc = Scanner()
    sc.scan("MODE-MOVE")
    assert sc.scan(EAN).rejected == "no location yet: scan LOC-<from> then LOC-<to> first"


def test_move_to_the_same_location_is_rejected_and_keeps_the_from() -> None:
    sc = Scanner()
    sc.scan("MODE-MOVE", "LOC-A-01")
    before = sc.state
    step = sc.scan("LOC-A-01")
    assert step.rejected == "move to the same location A-01: scan a different to-location"
    assert sc.state == before


def test_count_counts_in_the_scanned_bin() -> None:
    sc = Scanner(Defaults("receipt", None))
    sc.scan("MODE-COUNT")
    assert sc.scan(EAN).rejected == "no bin yet: scan LOC-<bin> before counting"
    m = moved(sc.scan("LOC-C-01", EAN))
    assert (m.type, m.from_location, m.to_location, m.qty) == ("count", None, "C-01", 1)


def test_mode_switch_restores_the_default_location_and_keeps_reference_and_operator() -> None:
    """After MODE-PICK then MODE-RECEIPT, receipts were refused with "no location yet" until a
    LOC- scan: a mode switch must put the default location back in the slot that mode uses,
    as at start."""
    sc = Scanner()
    sc.scan("REF-PO-1", "USER-u17", "LOC-A-01", "QTY-4", "MODE-PICK")
    assert sc.state == SessionState(mode="pick", from_location="DOCK-3", reference="PO-1",
                                    operator="u17")
    sc.scan("MODE-RECEIPT")
    assert sc.state == SessionState(mode="receipt", to_location="DOCK-3", reference="PO-1",
                                    operator="u17")
    m = moved(sc.scan(EAN))
    assert (m.type, m.to_location, m.qty) == ("receipt", "DOCK-3", 1)
    sc.scan("MODE-COUNT")
    assert (sc.state.to_location, sc.state.from_location) == ("DOCK-3", None)
    sc.scan("MODE-MOVE")
    assert (sc.state.from_location, sc.state.to_location) == (None, None)


def test_mode_switch_uses_the_scanners_own_default_location() -> None:
    sc = Scanner(Defaults("pick", "PICK-FACE-2"))
    sc.scan("MODE-RECEIPT", "LOC-X", "MODE-PICK")
    assert moved(sc.scan(EAN)).from_location == "PICK-FACE-2"


# -- defaults and per-scanner overrides ---------------------------------------------------


@pytest.mark.parametrize(("mode", "location", "expect"), [
    pytest.param("receipt", "DOCK-3", ("receipt", None, "DOCK-3"), id="receipt-dock"),
    pytest.param("pick", "PICK-FACE", ("pick", "PICK-FACE", None), id="pick-face"),
    pytest.param("count", "CC-1", ("count", None, "CC-1"), id="count-bin"),
])
def test_scanner_defaults_decide_the_first_movement(mode: Mode, location: str,
                                                    expect: tuple[str, str | None, str | None]
                                                    ) -> None:
    """A scanner's own mode/location (config overrides) apply with no setup scans."""
    m = moved(Scanner(Defaults(mode, location)).scan(EAN))
    assert (m.type, m.from_location, m.to_location) == expect


def test_a_move_dock_starts_with_no_location_so_the_first_loc_is_the_from_side() -> None:
    """DESIGN section 4: "move: first scan sets from, second sets to". A default location
    pre-filled as the from-location made the first LOC- scan the to-location."""
    sc = Scanner(Defaults("move", "DOCK-3"))
    assert sc.scan(EAN).rejected == "no location yet: scan LOC-<from> then LOC-<to> first"
    assert sc.scan("LOC-A-01", EAN).rejected == (
        "move without a to-location: scan LOC-<to> first")
    m = moved(sc.scan("LOC-B-02", EAN))
    assert (m.from_location, m.to_location) == ("A-01", "B-02")
    sc.scan("CMD-RESET")
    assert sc.scan(EAN).rejected == "no location yet: scan LOC-<from> then LOC-<to> first"


def test_sessions_are_per_scanner() -> None:
    """One scanner's LOC/QTY never leaks into another's movements."""
    a, b = Scanner(), Scanner()
    a.scan("MODE-PICK", "LOC-B-07", "QTY-5")
    m = moved(b.scan(EAN))
    assert (m.type, m.to_location, m.qty) == ("receipt", "DOCK-3", 1)
    m = moved(a.scan(EAN))
    assert (m.type, m.from_location, m.qty) == ("pick", "B-07", 5)


# -- QTY, REF, USER --------------------------------------------------------------------------


def test_qty_applies_to_the_next_item_only() -> None:
    sc = Scanner()
    assert moved(sc.scan("QTY-12", EAN)).qty == 12
    assert sc.state.qty is None
    assert moved(sc.scan(EAN)).qty == 1


def test_qty_survives_a_rejected_item_scan() -> None:
    """The operator fixes the location and rescans; the quantity they set still applies."""
    sc = Scanner(Defaults("pick", None))
    assert sc.scan("QTY-4", EAN).rejected == "no location yet: scan LOC-<code> first"
    assert moved(sc.scan("LOC-B-07", EAN)).qty == 4


def test_gs1_count_multiplies_the_quantity() -> None:
    sc = Scanner()
    assert moved(sc.scan("]C10100614141999996" + "3012")).qty == 12
    assert moved(sc.scan("QTY-3", "]C10100614141999996" + "3012")).qty == 36


def test_gs1_lot_serial_and_expiry_reach_the_movement() -> None:
    m = moved(Scanner().scan("]C10100614141999996" + "17261130" + "10L7\x1d21S9"))
    assert (m.item, m.lot, m.serial, m.expiry) == ("00614141999996", "L7", "S9", "2026-11-30")


def test_site_sku_becomes_the_item() -> None:
    assert moved(Scanner().scan("SKU-AB12")).item == "AB12"


def test_reference_and_operator_stick_until_changed() -> None:
    sc = Scanner()
    sc.scan("REF-PO-1", "USER-u17")
    first, second = moved(sc.scan(EAN)), moved(sc.scan(EAN2))
    assert (first.reference, first.operator) == ("PO-1", "u17")
    assert (second.reference, second.operator) == ("PO-1", "u17")
    m = moved(sc.scan("REF-PO-2", "USER-u18", EAN))
    assert (m.reference, m.operator) == ("PO-2", "u18")


def test_require_operator_rejects_items_until_a_badge_scan() -> None:
    sc = Scanner(Defaults("receipt", "DOCK-3", require_operator=True))
    before = sc.state
    step = sc.scan(EAN)
    assert step.rejected == "operator badge required: scan USER-<id> first"
    assert sc.state == before
    assert moved(sc.scan("USER-u17", EAN)).operator == "u17"


# -- CMD-UNDO -----------------------------------------------------------------------------


def test_undo_voids_the_last_movement_then_walks_back() -> None:
    sc = Scanner()
    first = moved(sc.scan("REF-PO-1", "USER-u17", EAN))
    second = moved(sc.scan("LOC-A-01", "QTY-3", EAN2))
    void = moved(sc.scan("CMD-UNDO"))
    assert void.type == "void" and void.voids == second.event_id
    assert (void.item, void.qty, void.to_location) == (ITEM2, 3, "A-01")
    assert (void.reference, void.operator) == ("PO-1", "u17")
    assert void.event_id not in (first.event_id, second.event_id)
    void2 = moved(sc.scan("CMD-UNDO"))
    assert void2.voids == first.event_id
    assert (void2.item, void2.qty, void2.to_location) == (ITEM, 1, "DOCK-3")
    step = sc.scan("CMD-UNDO")
    assert step.rejected == "nothing to undo on this scanner"
    assert step.movement is None


@pytest.mark.parametrize("barrier", ["MODE-PICK", "MODE-RECEIPT", "USER-u18", "USER-u17",
                                     "CMD-RESET"])
def test_undo_never_walks_back_past_a_mode_operator_or_reset_scan(barrier: str) -> None:
    """Three CMD-UNDO scans walked back across a reset and mode changes and voided a pick
    made minutes earlier, silently: MODE-, USER- and CMD-RESET end what undo can reach."""
    sc = Scanner()
    moved(sc.scan("USER-u17", EAN))
    sc.scan(barrier)
    last = moved(sc.scan(EAN2))
    assert moved(sc.scan("CMD-UNDO")).voids == last.event_id
    step = sc.scan("CMD-UNDO")
    assert step.rejected == "nothing to undo on this scanner"
    assert step.movement is None


def test_undo_never_reaches_past_its_age_limit() -> None:
    sc = Scanner(Defaults("receipt", "DOCK-3", undo_max_age_s=600))
    sc.at = Instant("boot-1", 0)
    old = moved(sc.scan(EAN))
    sc.at = Instant("boot-1", 590 * 10**9)
    recent = moved(sc.scan(EAN2))
    sc.at = Instant("boot-1", 601 * 10**9)
    assert moved(sc.scan("CMD-UNDO")).voids == recent.event_id, "11 s old"
    before = sc.state
    step = sc.scan("CMD-UNDO")
    assert step.rejected == ("nothing to undo: the last movement on this scanner is older "
                             "than 10 minutes")
    assert sc.state == before and old.event_id in [h.event_id for h in before.history]
    sc.at = Instant("boot-1", 600 * 10**9)
    assert moved(sc.scan("CMD-UNDO")).voids == old.event_id, "exactly 10 minutes: still in"


def test_undo_after_a_reboot_is_too_old() -> None:
    """CLOCK_BOOTTIME readings of two boots cannot be compared: an earlier boot's movement
    is never undone (a reboot takes its time, and the limit must hold)."""
    sc = Scanner()
    sc.at = Instant("boot-1", 10**9)
    moved(sc.scan(EAN))
    sc.at = Instant("boot-2", 2 * 10**9)
    assert (sc.scan("CMD-UNDO").rejected or "").startswith("nothing to undo: ")


def test_undo_with_nothing_to_undo_changes_nothing() -> None:
    sc = Scanner()
    before = sc.state
    assert sc.scan("CMD-UNDO").rejected == "nothing to undo on this scanner"
    assert sc.state == before


def test_undo_is_per_scanner() -> None:
    a, b = Scanner(), Scanner()
    moved(a.scan(EAN))
    assert b.scan("CMD-UNDO").rejected == "nothing to undo on this scanner"


def test_undo_keeps_the_current_locations() -> None:
    sc = Scanner()
    sc.scan("MODE-MOVE", "LOC-A-01", "LOC-B-02", EAN)
    void = moved(sc.scan("CMD-UNDO"))
    assert (void.from_location, void.to_location) == ("A-01", "B-02")
    assert (sc.state.from_location, sc.state.to_location) == ("A-01", "B-02")


# -- count semantics ------------------------------------------------------------------------


def test_count_sends_the_running_total_per_item_and_bin() -> None:
    """DESIGN section 5: each count event carries the counted on-hand so far, absolute."""
    sc = Scanner()
    sc.scan("MODE-COUNT", "LOC-C-01")
    assert [moved(sc.scan(EAN)).qty for _ in range(3)] == [1, 2, 3]
    assert moved(sc.scan("QTY-10", EAN)).qty == 13
    assert moved(sc.scan(EAN2)).qty == 1, "another item has its own total"
    assert moved(sc.scan("LOC-C-02", EAN)).qty == 1, "another bin has its own total"
    assert moved(sc.scan("LOC-C-01", EAN)).qty == 1, "scanning the bin again starts a new count"


def test_scanning_the_bin_again_restarts_its_count() -> None:
    """A-07 counted 2, then a recount of A-07 reported 5 (2 + 3): a LOC- scan of a bin starts
    a new count of it, so the running totals restart from zero."""
    sc = Scanner()
    sc.scan("MODE-COUNT", "LOC-A-07")
    assert [moved(sc.scan(EAN)).qty for _ in range(2)] == [1, 2]
    sc.scan("LOC-A-08", EAN2, "LOC-A-07")
    assert [moved(sc.scan(EAN)).qty for _ in range(3)] == [1, 2, 3]
    assert moved(sc.scan("LOC-A-08", EAN2)).qty == 1


def test_qty_zero_in_count_mode_records_an_empty_bin() -> None:
    sc = Scanner()
    sc.scan("MODE-COUNT", "LOC-A-07", EAN, EAN)
    step = sc.scan("QTY-0")
    assert step.rejected is None and step.state.qty == 0
    m = moved(sc.scan(EAN))
    assert (m.type, m.item, m.qty, m.to_location) == ("count", ITEM, 0, "A-07")
    assert moved(sc.scan(EAN)).qty == 1, "the next one found counts from the empty bin"
    assert moved(sc.scan("QTY-0", EAN2)).qty == 0, "an item never counted here: 0 as well"


@pytest.mark.parametrize("mode", ["MODE-RECEIPT", "MODE-PICK", "MODE-MOVE"])
def test_qty_zero_outside_count_mode_is_refused(mode: str) -> None:
    sc = Scanner()
    sc.scan(mode)
    assert sc.scan("QTY-0").rejected == ("quantity must be at least 1 (QTY-0 is for counting "
                                         "an empty bin, in count mode)")


def test_a_pending_qty_zero_does_not_survive_a_mode_switch() -> None:
    sc = Scanner()
    sc.scan("MODE-COUNT", "QTY-0", "MODE-PICK")
    assert moved(sc.scan(EAN)).qty == 1


def test_count_totals_are_per_item_and_bin_whatever_the_lot() -> None:
    """DESIGN section 5: the latest count event is the on-hand of the item in the bin, which
    the ledger keeps per item and bin; a total per lot made the last lot's total the bin's
    on-hand (3 counted, 1 on hand)."""
    sc = Scanner()
    sc.scan("MODE-COUNT", "LOC-C-01")
    lot_a = "]C10100614141999996" + "10A"
    lot_b = "]C10100614141999996" + "10B"
    counted = [moved(sc.scan(t)) for t in (lot_a, lot_a, lot_b)]
    assert [(m.qty, m.lot) for m in counted] == [(1, "A"), (2, "A"), (3, "B")]


def test_mode_switch_starts_a_new_count() -> None:
    sc = Scanner()
    sc.scan("MODE-COUNT", "LOC-C-01", EAN, EAN)
    sc.scan("MODE-COUNT", "LOC-C-01")
    assert moved(sc.scan(EAN)).qty == 1


def test_undo_of_a_count_restores_the_running_total() -> None:
    sc = Scanner()
    sc.scan("MODE-COUNT", "LOC-C-01", EAN, "QTY-5")
    third = moved(sc.scan(EAN))
    assert third.qty == 6
    void = moved(sc.scan("CMD-UNDO"))
    assert (void.type, void.voids, void.qty) == ("void", third.event_id, 6)
    assert moved(sc.scan(EAN)).qty == 2, "counting resumes from 1, not from 6"
    sc.scan("CMD-UNDO", "CMD-UNDO")
    assert moved(sc.scan(EAN)).qty == 1, "undoing the first count leaves nothing counted"


# -- CMD-RESET ------------------------------------------------------------------------------


def test_reset_returns_to_defaults_and_clears_qty_and_reference() -> None:
    sc = Scanner()
    sc.scan("REF-PO-1", "USER-u17", "MODE-COUNT", "LOC-C-01", EAN, "QTY-7")
    step = sc.scan("CMD-RESET")
    assert step.rejected is None and step.movement is None
    s = sc.state
    assert (s.mode, s.from_location, s.to_location, s.qty, s.reference, s.counts) == (
        "receipt", None, "DOCK-3", None, None, ())
    m = moved(sc.scan(EAN))
    assert (m.type, m.to_location, m.qty, m.reference) == ("receipt", "DOCK-3", 1, None)


def test_reset_keeps_the_operator_but_is_an_undo_barrier() -> None:
    """The badge stays logged in; a reset ends what CMD-UNDO can reach (three undos once walked
    back across a reset and mode changes and voided a pick made minutes earlier)."""
    sc = Scanner()
    moved(sc.scan("USER-u17", EAN))
    sc.scan("CMD-RESET")
    assert sc.state.operator == "u17"
    assert sc.scan("CMD-UNDO").rejected == "nothing to undo on this scanner"


# -- rejections leave the state alone -------------------------------------------------------


@pytest.mark.parametrize("setup", [
    pytest.param(("MODE-PICK",), id="pick-without-location"),
    pytest.param(("MODE-MOVE",), id="move-without-any-location"),
    pytest.param(("MODE-MOVE", "LOC-A-01"), id="move-without-to-location"),
    pytest.param(("MODE-COUNT",), id="count-without-bin"),
])
@pytest.mark.parametrize("scan", [EAN, "4006381333932", "hello", "QTY-0", "LOC-"])
def test_rejections_leave_state_unchanged(setup: tuple[str, ...], scan: str) -> None:
    if scan == "QTY-0" and setup[0] == "MODE-COUNT":
        scan = "QTY-x"  # QTY-0 is a count of an empty bin there
    sc = Scanner(Defaults("receipt", None))
    sc.scan("REF-PO-1", "QTY-3", *setup)
    before = sc.state
    step = sc.scan(scan)
    assert step.rejected is not None
    assert step.movement is None
    assert step.state == before
    assert sc.state == before


# -- persistence -----------------------------------------------------------------------------


def states_after(texts: Iterable[str], defaults: Defaults) -> SessionState:
    sc = Scanner(defaults)
    sc.scan(*texts)
    return sc.state


def test_json_round_trip_of_a_busy_session() -> None:
    s = states_after(["USER-u1", "REF-R", "MODE-COUNT", "LOC-C", EAN, "]C10100614141999996"
                      "10L1", "QTY-3", "MODE-MOVE", "LOC-A", "LOC-B", EAN2], DOCK)
    assert s.history and s.context == () and s.operator == "u1"
    assert SessionState.from_json(s.to_json(), s.history) == s


_scans = st.sampled_from([
    "MODE-RECEIPT", "MODE-PICK", "MODE-MOVE", "MODE-COUNT", "LOC-A-01", "LOC-B-02", "LOC-C",
    "QTY-2", "QTY-9999", "REF-PO-1", "USER-u17", "CMD-UNDO", "CMD-RESET", EAN, EAN2,
    "]C10100614141999996" + "10LOT\x1d21SER", "SKU-X1", "hello", "4006381333932",
])
_defaults = st.builds(Defaults, st.sampled_from(["receipt", "pick", "move", "count"]),
                      st.sampled_from([None, "DOCK-3"]), st.booleans())


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(_scans, max_size=40), defaults=_defaults)
def test_any_session_survives_a_json_round_trip(texts: list[str], defaults: Defaults) -> None:
    """The journal stores each scanner's state as JSON; a restart must restore it exactly,
    including what CMD-UNDO can still reach and the running counts."""
    s = states_after(texts, defaults)
    assert SessionState.undo_depth(s.to_json()) == len(s.history)
    assert SessionState.from_json(s.to_json(), s.history) == s


def _generic_json(s: SessionState) -> str:
    """The state as the generic encoder writes it (what the journal has always stored)."""
    return json.dumps({
        "mode": s.mode, "from_location": s.from_location, "to_location": s.to_location,
        "qty": s.qty, "reference": s.reference, "operator": s.operator,
        "counts": [[list(k), v] for k, v in s.counts], "context": list(s.context),
        "undo": len(s.history)}, separators=(",", ":"))


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(_scans, max_size=40), defaults=_defaults)
def test_saved_state_is_what_the_generic_json_encoder_writes(texts: list[str],
                                                             defaults: Defaults) -> None:
    """The state is written out by hand (it is saved with every scan); byte for byte it is
    what ``json.dumps`` makes of it."""
    sc = Scanner(defaults)
    sc.at = Instant("b00t-\u00e9", 10**18)
    sc.scan(*texts)
    assert sc.state.to_json() == _generic_json(sc.state)


def test_saved_state_escapes_what_json_must() -> None:
    odd = "Q\"\\\u00e9\u2603\x1d\n"
    s = SessionState(mode="move", from_location=odd, reference=odd, qty=0,
                     counts=(((odd, ITEM, None), 3),), context=(odd,),
                     history=(UndoEntry(odd, {"item": odd, "qty": 2, "lot": None, "x": True,
                                              "y": 1.5, "z": [1, "a"]}, (odd, ITEM, None), 7,
                                        Instant(odd, 5)),))
    assert s.to_json() == _generic_json(s)
    assert SessionState.from_json(s.to_json(), s.history) == s


def test_the_saved_state_holds_the_depth_of_its_undo_history_not_its_entries() -> None:
    """The entries are the scanner's newest movements, in the journal already: the state
    saved with every scan stays small whatever the history, and takes back the newest
    entries it is given up to its depth."""
    sc = Scanner(DOCK)
    sc.scan(*["LOC-A-01"] + [EAN] * 30)
    s = sc.state
    assert len(s.history) == 20 and len(s.to_json()) < 300
    assert SessionState.undo_depth(s.to_json()) == 20
    older = states_after(["LOC-A-01", EAN2], DOCK).history
    assert SessionState.from_json(s.to_json(), older + s.history) == s  # the newest 20
    after_barrier = states_after(["LOC-A-01", EAN, "MODE-PICK"], DOCK)
    assert SessionState.undo_depth(after_barrier.to_json()) == 0
    assert SessionState.from_json(after_barrier.to_json(), s.history) == after_barrier


def test_a_state_saved_with_its_entries_inline_still_loads() -> None:
    """Journals written before the history was read back from the movements keep their
    entries in the session row: they are taken from there."""
    s = states_after(["MODE-COUNT", "LOC-C", EAN, EAN, "MODE-RECEIPT", "LOC-A", EAN2], DOCK)
    old = json.dumps({
        "mode": s.mode, "from_location": s.from_location, "to_location": s.to_location,
        "qty": s.qty, "reference": s.reference, "operator": s.operator,
        "counts": [[list(k), v] for k, v in s.counts], "context": list(s.context),
        "history": [{"event_id": h.event_id, "draft": h.draft,
                     "count_key": list(h.count_key) if h.count_key else None,
                     "previous_total": h.previous_total,
                     "at": [h.at.boot_id, h.at.boot_ns] if h.at else None}
                    for h in s.history]}, separators=(",", ":"))
    assert SessionState.undo_depth(old) == 0
    assert SessionState.from_json(old) == s
