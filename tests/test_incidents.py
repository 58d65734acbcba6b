"""Which of the ledger's warnings still hold (agent.incidents): pure, warned movements and the
ledger's last answer in, what ``scan-agent status`` shows out."""

from __future__ import annotations

import doctest
from typing import Any

import agent.incidents
from agent.incidents import made_negative_at, query, relevant, still_true, to_ask
from agent.journal import LedgerView, Warned

NEG = "negative balance at A-07: -1 (class item)"
MADE = "made 2 depletion(s) at B-01 negative"
HORIZON = "before_horizon"


def warned(seq: int, *warnings: str, voided: bool = False, recounted: bool = False,
           item: str = "I1") -> Warned:
    return Warned(seq, f"e{seq}", "pick", item, "A-07", None, warnings, voided, recounted)


def incident(id: int, depletion: str, location: str = "A-07", item: str = "I1",
             cls: str = "item") -> dict[str, Any]:
    return {"id": id, "depletion_event_id": depletion, "item": item, "location": location,
            "class": cls, "balance": -1, "confirmed": False, "opened_at": None}


def asked(through_seq: int | None, *incidents: dict[str, Any]) -> LedgerView:
    """The ledger's answer about the movements up to ``through_seq`` (None: never asked)."""
    return LedgerView(None if through_seq is None else 150.0, through_seq, incidents, None,
                      None)


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(agent.incidents).failed == 0


def test_warnings_about_incidents_are_told_apart() -> None:
    assert made_negative_at(MADE) == "B-01"
    assert made_negative_at("made 1 depletion(s) at LOC: with colon negative") == (
        "LOC: with colon")
    assert made_negative_at(NEG) is None
    assert [w.seq for w in to_ask([warned(1, NEG), warned(2, HORIZON), warned(3, MADE),
                                   warned(4, NEG, voided=True)])] == [1, 3]


def test_the_question_names_the_station_unless_anyones_depletions_are_concerned() -> None:
    """A negative of this station's own pick is behind an incident of its own depletion; a
    movement that made depletions negative may have made anyone's."""
    assert query("dock-1", "WH1", [warned(1, NEG)]) == {
        "site": "WH1", "status": "open", "station": "dock-1"}
    assert query("dock-1", "WH1", [warned(1, NEG), warned(2, MADE)]) == {
        "site": "WH1", "status": "open"}


def test_only_the_incidents_behind_a_warning_are_kept() -> None:
    mine, theirs, elsewhere = incident(1, "e1"), incident(2, "x", "B-01"), incident(3, "y")
    assert relevant([mine, theirs, elsewhere], [warned(1, NEG), warned(2, MADE)]) == [
        mine, theirs]


def test_an_open_incident_keeps_its_warning_with_what_the_ledger_says_now() -> None:
    """The class may have changed since the warning: the incident as last read says so."""
    (shown,) = still_true([warned(1, NEG)], asked(5, incident(7, "e1", cls="location")))
    assert shown == {"seq": 1, "warnings": [NEG], "checked": True, "incidents": [
        {"id": 7, "class": "location", "location": "A-07", "balance": -1,
         "confirmed": False}]}


def test_a_resolved_incident_drops_its_warning_and_facts_stay() -> None:
    """A negative the ledger no longer holds open goes; a warning that is a fact about the
    movement (it arrived before the horizon) stays."""
    assert still_true([warned(1, NEG, HORIZON)], asked(5)) == [
        {"seq": 1, "warnings": [HORIZON], "checked": True, "incidents": []}]
    assert still_true([warned(1, NEG)], asked(5)) == []


def test_made_negative_holds_while_an_incident_of_the_item_is_open_there() -> None:
    there = incident(4, "other-dock", "B-01")
    assert still_true([warned(1, MADE)], asked(5, there))[0]["incidents"][0]["id"] == 4
    other_item = incident(5, "other-dock", "B-01", item="I2")
    assert still_true([warned(1, MADE)], asked(5, other_item)) == []


def test_a_result_newer_than_the_answer_goes_by_the_journal() -> None:
    """The ledger's answer predates this movement's result: it says nothing of it either way
    (the journal's view until the next answer)."""
    (shown,) = still_true([warned(2, NEG)], asked(1))
    assert (shown["warnings"], shown["checked"]) == ([NEG], False)
    assert still_true([warned(2, NEG, recounted=True)], asked(1)) == []


def test_never_asked_is_the_journals_view() -> None:
    """An undo ends every warning; a recount here settles the negative; nothing else is known
    (another dock's receipt is not seen)."""
    never = asked(None)
    assert still_true([warned(1, NEG, HORIZON, voided=True)], never) == []
    assert still_true([warned(1, NEG, HORIZON, recounted=True)], never) == [
        {"seq": 1, "warnings": [HORIZON], "checked": False, "incidents": []}]
    assert still_true([warned(1, MADE)], never)[0]["warnings"] == [MADE]


def test_a_recount_here_settles_an_open_incident_before_the_ledger_is_asked_again() -> None:
    assert still_true([warned(1, NEG, recounted=True)], asked(5, incident(7, "e1"))) == []


def test_at_most_the_newest_few() -> None:
    shown = still_true([warned(n, HORIZON) for n in range(30, 0, -1)], asked(None), limit=10)
    assert [s["seq"] for s in shown] == list(range(30, 20, -1))
