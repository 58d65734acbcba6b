"""Each class of negative, with hand-built sequences posted over HTTP to a real server.

Times are minutes after 10:00 on the test day; the arrival order is the order of ``post`` calls.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ledger.factory import at, count, move, pick, receipt, void


def test_late_receipt_turns_a_shortage_into_an_ordering_incident(ledger: Any) -> None:
    """The pick (10:05) reaches the ledger before the receipt (10:01) that fed it."""
    dock = ledger.dock()
    p = pick(3, "A-01", 5)
    (res,) = dock.post(p)
    assert res["status"] == "accepted"
    assert res["warnings"] == ["negative balance at A-01: -3 (class item)"]
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["balance"]) == ("item", "open", -3)

    r = receipt(5, "A-01", 1)
    dock.post(r)
    inc = ledger.incident_of(p)
    assert inc["class"] == "ordering"
    assert inc["status"] == "resolved"
    assert inc["resolved_by_event_id"] == r["event_id"]
    assert inc["balance"] == 2
    assert ledger.on_hand("A-01") == 2
    assert ledger.incidents(status="open") == []


def test_late_bin_to_bin_move_explains_a_negative_bin(ledger: Any) -> None:
    dock = ledger.dock()
    dock.post(receipt(5, "A-01", 0))
    p = pick(3, "B-02", 10)
    (res,) = dock.post(p)
    assert res["warnings"] == ["negative balance at B-02: -3 (class location)"]
    assert ledger.incident_of(p)["class"] == "location"

    m = move(5, "A-01", "B-02", 5)
    (res,) = dock.post(m)
    assert res["status"] == "accepted" and res["warnings"] == []
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["resolved_by_event_id"]) == (
        "ordering", "resolved", m["event_id"])
    assert (ledger.on_hand("A-01"), ledger.on_hand("B-02")) == (0, 2)


def test_wrong_bin_pick_stays_open_as_location(ledger: Any) -> None:
    dock = ledger.dock()
    dock.post(receipt(5, "A-01", 0))
    p = pick(2, "C-03", 1)
    dock.post(p)
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["location"]) == ("location", "open", "C-03")
    totals = ledger.get("/v1/balances", by="item")["balances"]
    assert totals == [{"site": "WH1", "item": "04006381333931", "location": None,
                       "on_hand": 3, "recorded": 3}]


def test_true_shortage_is_item_class_and_a_second_pick_opens_a_second_incident(
        ledger: Any) -> None:
    dock = ledger.dock()
    first, second = pick(2, "A-01", 1), pick(1, "A-01", 2)
    dock.post(first)
    dock.post(second)
    incs = ledger.incidents(status="open")
    assert [(i["depletion_event_id"], i["class"], i["balance"]) for i in incs] == [
        (first["event_id"], "item", -2), (second["event_id"], "item", -3)]


def test_a_tie_never_manufactures_a_negative(ledger: Any) -> None:
    """Receipt and pick at the same instant from two stations: the pick's station sorts
    first, so applied one by one it would dip to -3; as one group it does not."""
    receiving, picking = ledger.dock("dock-9"), ledger.dock("dock-0")
    r = receipt(3, "A-01", 7, station="dock-9")
    p = pick(3, "A-01", 7, station="dock-0")
    receiving.post(r)
    (res,) = picking.post(p)
    assert res["warnings"] == []
    assert ledger.incidents() == []
    assert ledger.on_hand("A-01") == 0


@pytest.mark.parametrize("count_station,pick_station", [("dock-a", "dock-z"),
                                                        ("dock-z", "dock-a")])
def test_a_count_tied_with_a_pick_is_what_the_bin_held_at_that_moment(
        ledger: Any, count_station: str, pick_station: str) -> None:
    """A count and a pick at the same instant: the count says what was there, whichever
    station's name sorts first; the tie must not manufacture a negative (it once did when
    the count's station sorted first: reset to 0, then the pick, -5)."""
    counting, picking = ledger.dock(count_station), ledger.dock(pick_station)
    counting.post(receipt(5, "A-01", 0, station=count_station))
    (res,) = picking.post(pick(5, "A-01", 7, station=pick_station))
    assert res["warnings"] == []
    (res,) = counting.post(count(0, "A-01", 7, station=count_station))
    assert res["warnings"] == []
    assert ledger.incidents() == []
    assert ledger.on_hand("A-01") == 0


def test_a_count_settles_a_negative_location(ledger: Any) -> None:
    dock = ledger.dock()
    p = pick(4, "A-01", 1)
    dock.post(p)
    c = count(6, "A-01", 30)
    dock.post(c)
    inc = ledger.incident_of(p)
    assert inc["status"] == "resolved"
    assert inc["resolved_by_event_id"] == c["event_id"]
    assert inc["class"] == "item"  # still what it was at 10:01; the count settled it
    assert ledger.on_hand("A-01") == 6


def test_a_late_count_below_later_picks_opens_incidents_for_them(ledger: Any) -> None:
    dock = ledger.dock()
    dock.post(receipt(10, "A-01", 0))
    p = pick(4, "A-01", 20)
    dock.post(p)
    (res,) = dock.post(count(2, "A-01", 10))
    assert res["warnings"] == ["made 1 depletion(s) at A-01 negative"]
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["balance"]) == ("item", "open", -2)


def test_resolved_by_names_the_count_once_the_late_receipt_no_longer_explains_it(
        ledger: Any) -> None:
    """Resolved by a late receipt (ordering), then a later pick takes that stock away: the
    incident is a shortage again, still resolved, now by the count after it, and
    resolved_by_event_id must say so (it kept naming the receipt)."""
    dock = ledger.dock()
    p = pick(3, "A-01", 10)
    r = receipt(5, "A-01", 0)
    dock.post(p, r)
    assert ledger.incident_of(p)["resolved_by_event_id"] == r["event_id"]
    c = count(0, "A-01", 30)
    dock.post(c)
    dock.post(pick(4, "A-01", 5))  # late: 10:05, before p
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["balance"]) == ("item", "resolved", -2)
    assert inc["resolved_by_event_id"] == c["event_id"]


def test_resolved_by_names_the_count_when_a_recorded_order_negative_loses_its_receipt(
        ledger: Any) -> None:
    dock = ledger.dock()
    r, c, p = receipt(5, "A-01", 0), count(0, "A-01", 30), pick(3, "A-01", 10)
    dock.post(r)
    dock.post(c)
    dock.post(p)  # negative in recorded order only (the count came first): ordering
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["resolved_by_event_id"]) == (
        "ordering", "resolved", None)
    dock.post(void(r, 31))
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["resolved_by_event_id"]) == (
        "item", "resolved", c["event_id"])


def test_resolved_by_never_names_an_undone_event(ledger: Any) -> None:
    """Two late receipts each explain the pick; undoing the one it names leaves it ordering
    (the other still explains it), and it must not keep naming the undone receipt."""
    dock = ledger.dock()
    p, r1, r2 = pick(3, "A-01", 10), receipt(5, "A-01", 0), receipt(4, "A-01", 1)
    dock.post(p, r1, r2)
    assert ledger.incident_of(p)["resolved_by_event_id"] == r1["event_id"]
    dock.post(void(r1, 11))
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["resolved_by_event_id"]) == (
        "ordering", "resolved", None)


def test_voiding_a_resolved_depletion_names_the_void(ledger: Any) -> None:
    dock = ledger.dock()
    p, r = pick(3, "A-01", 10), receipt(5, "A-01", 0)
    dock.post(p, r)
    v = void(p, 11)
    dock.post(v)
    inc = ledger.incident_of(p)
    assert (inc["status"], inc["resolved_by_event_id"]) == ("resolved", v["event_id"])


def test_a_void_resolves_its_depletion_and_removes_it_from_balances(ledger: Any) -> None:
    dock = ledger.dock()
    p = pick(2, "A-01", 1)
    dock.post(p)
    v = void(p, 2)
    (res,) = dock.post(v)
    assert res["status"] == "accepted"
    inc = ledger.incident_of(p)
    assert (inc["status"], inc["resolved_by_event_id"]) == ("resolved", v["event_id"])
    assert ledger.on_hand("A-01") == 0


def test_a_void_that_arrives_before_its_target_still_cancels_it(ledger: Any) -> None:
    dock = ledger.dock()
    p = pick(2, "A-01", 1)
    v = void(p, 2)
    (res,) = dock.post(v)
    assert res["warnings"] == [f"{p['event_id']} not received yet; it is voided when it arrives"]
    (res,) = dock.post(p)
    assert res["status"] == "accepted"
    assert res["warnings"] == [f"already voided by {v['event_id']}"]
    assert ledger.incidents() == []
    assert ledger.on_hand("A-01") == 0


def test_voiding_a_receipt_reopens_what_it_explained(ledger: Any) -> None:
    dock = ledger.dock()
    p = pick(3, "A-01", 5)
    dock.post(p)
    r = receipt(5, "A-01", 1)
    dock.post(r)
    assert ledger.incident_of(p)["status"] == "resolved"
    dock.post(void(r, 6))
    inc = ledger.incident_of(p)
    assert (inc["class"], inc["status"], inc["resolved_by_event_id"]) == ("item", "open", None)


def test_a_replayed_batch_is_never_counted_twice(ledger: Any) -> None:
    dock = ledger.dock()
    events = [receipt(5, "A-01", 0), pick(2, "A-01", 1), move(1, "A-01", "B-01", 2)]
    assert [r["status"] for r in dock.post(*events)] == ["accepted"] * 3
    again = dock.post(*events)
    assert [r["status"] for r in again] == ["duplicate"] * 3
    assert [r["event_id"] for r in again] == [e["event_id"] for e in events]
    assert (ledger.on_hand("A-01"), ledger.on_hand("B-01")) == (2, 1)
    assert len(ledger.get("/v1/events")["events"]) == 3


def test_a_conflicting_replay_is_rejected_with_a_reason(ledger: Any) -> None:
    dock = ledger.dock()
    r = receipt(5, "A-01", 0)
    dock.post(r)
    (res,) = dock.post({**r, "qty": 50})
    assert res == {"event_id": r["event_id"], "status": "rejected", "reason":
                   "event_id: already used by a different event (same id, different content)",
                   "warnings": []}
    assert ledger.on_hand("A-01") == 5


def test_a_station_posts_only_its_own_events(ledger: Any) -> None:
    one, two = ledger.dock("dock-1"), ledger.dock("dock-2")
    r = one.post_raw({"station": "dock-2", "events": []})
    assert r.status_code == 403
    assert r.json() == {"error": "this token belongs to station 'dock-1', not 'dock-2'"}
    (res,) = one.post(receipt(1, "A-01", 0, station="dock-2"))
    assert res["status"] == "rejected"
    assert res["reason"] == "station: 'dock-2' is not the batch's station 'dock-1'"
    assert two.post_raw({"station": "dock-2", "events": []}).status_code == 200


def test_a_held_depletion_is_released_when_stock_arrives(make_ledger: Any) -> None:
    ledger = make_ledger("[sites.WH1]\nallow_negative = false\n")
    dock = ledger.dock()
    p = pick(3, "A-01", 5)
    (res,) = dock.post(p)
    assert res["status"] == "held"
    assert res["reason"] == ("held: A-01 has 0 at 2026-11-22T10:05:00.000000Z, 3 to take; "
                             "site WH1 does not allow negative stock")
    held = ledger.get("/v1/held")["held"]
    assert [h["event_id"] for h in held] == [p["event_id"]]
    assert ledger.on_hand("A-01") == 0

    dock.post(receipt(2, "A-01", 1))
    assert len(ledger.get("/v1/held")["held"]) == 1  # 2 do not cover 3
    dock.post(receipt(2, "A-01", 2))
    assert ledger.get("/v1/held")["held"] == []
    assert ledger.on_hand("A-01") == 1
    assert ledger.incidents() == []
    (stored,) = [e for e in ledger.get("/v1/events")["events"] if e["event_id"] == p["event_id"]]
    assert stored["status"] == "accepted"


def test_held_depletions_are_released_in_occurrence_order(make_ledger: Any) -> None:
    ledger = make_ledger("[sites.WH1]\nallow_negative = false\n")
    dock = ledger.dock()
    late, early = pick(2, "A-01", 9), pick(2, "A-01", 4)
    assert [r["status"] for r in dock.post(late, early)] == ["held", "held"]
    dock.post(receipt(3, "A-01", 1))
    (still,) = ledger.get("/v1/held")["held"]
    assert still["event_id"] == late["event_id"]
    assert ledger.on_hand("A-01") == 1


def test_a_held_depletion_goes_when_stock_that_came_later_covers_it(make_ledger: Any) -> None:
    """DESIGN section 8: a pick held at 10:00 is released by a receipt of 10:05 (the goods
    were physically there when it was scanned late, or the receipt was), taking effect at
    10:05 and keeping its occurred_at; the 10:10 pick goes at its own time. Before, the
    10:00 pick waited for ever for stock that was already on hand."""
    ledger = make_ledger("[sites.WH1]\nallow_negative = false\n")
    dock = ledger.dock()
    early, late = pick(5, "A-01", 0), pick(2, "A-01", 10)
    assert [r["status"] for r in dock.post(early, late)] == ["held", "held"]
    dock.post(receipt(10, "A-01", 5))
    assert ledger.get("/v1/held")["held"] == []
    assert ledger.on_hand("A-01") == 3
    assert ledger.incidents() == []
    events = {e["event_id"]: e for e in ledger.get("/v1/events")["events"]}
    assert events[early["event_id"]]["occurred_at"] == early["occurred_at"]
    assert events[early["event_id"]]["effective_at"] == "2026-11-22T10:05:00.000000Z"
    assert events[late["event_id"]]["effective_at"] is None


def test_a_held_depletion_is_not_released_into_a_later_negative(make_ledger: Any) -> None:
    """Stock that was there at the pick's time but taken by a later pick does not release
    it at its own time: it takes effect after the event from which the stock is there for
    good, so a site that forbids negatives never shows one."""
    ledger = make_ledger("[sites.WH1]\nallow_negative = false\n")
    dock = ledger.dock()
    dock.post(receipt(3, "A-01", 0), pick(3, "A-01", 20))
    (held,) = dock.post(pick(2, "A-01", 10))  # 10:10 has 3, but 10:20 would go to -2
    assert held["status"] == "held"
    dock.post(receipt(1, "A-01", 25))  # on hand 1: not enough
    assert len(ledger.get("/v1/held")["held"]) == 1
    dock.post(receipt(1, "A-01", 30))  # on hand 2, from 10:30 on
    assert ledger.get("/v1/held")["held"] == []
    assert ledger.on_hand("A-01") == 0
    assert ledger.incidents() == []
    (ev,) = [e for e in ledger.get("/v1/events")["events"]
             if e["event_id"] == held["event_id"]]
    assert ev["effective_at"] == "2026-11-22T10:30:00.000000Z"
    assert ev["occurred_at"] == "2026-11-22T10:10:00.000000Z"


def test_other_sites_still_allow_negative(make_ledger: Any) -> None:
    ledger = make_ledger("[sites.WH2]\nallow_negative = false\n")
    (res,) = ledger.dock().post(pick(1, "A-01", 1))
    assert res["status"] == "accepted"


def test_confirmed_once_every_station_of_the_site_has_synced_past_it(ledger: Any) -> None:
    one, two = ledger.dock("dock-1"), ledger.dock("dock-2")
    p = pick(1, "A-01", 5)
    one.post(p, watermark=at(10))
    assert ledger.incident_of(p)["confirmed"] is False  # dock-2 never synced
    two.post(watermark=at(4))
    assert ledger.incident_of(p)["confirmed"] is False  # dock-2 may still send 10:04..10:05
    two.post(watermark=at(6))
    assert ledger.incident_of(p)["confirmed"] is True
    ledger.dock("dock-3", site="WH2")  # another site's station does not matter
    assert ledger.incident_of(p)["confirmed"] is True


def test_a_repeated_scan_is_flagged_as_suspected_duplicate(ledger: Any) -> None:
    dock = ledger.dock()
    a = pick(1, "A-01", 1.0)
    b = pick(1, "A-01", 1.05)  # 3 seconds later, same scanner
    c = pick(1, "A-01", 3.0)  # two minutes later: a real second pick
    dock.post(b, a, c)  # the repeat may arrive first: occurrence order says which repeats
    flags = {i["depletion_event_id"]: i["suspected_duplicate"] for i in ledger.incidents()}
    # a is the original scan, b its repeat (the one to undo), c a real second pick
    assert flags == {a["event_id"]: False, b["event_id"]: True, c["event_id"]: False}
    dock.post(void(a, 4))
    assert ledger.incident_of(b)["suspected_duplicate"] is False  # no original left to repeat


def test_a_watermark_never_goes_back(ledger: Any) -> None:
    """A batch replayed after a lost answer carries its old watermark: a confirmed incident
    must not turn provisional again."""
    dock = ledger.dock()
    p = pick(1, "A-01", 5)
    dock.post(p, watermark=at(10))
    assert ledger.incident_of(p)["confirmed"] is True
    dock.post(p, watermark=at(4))  # the replay
    assert ledger.incident_of(p)["confirmed"] is True
    (station,) = ledger.get("/v1/stations")["stations"]
    assert station["watermark"] == at(10)
    dock.post(watermark=at(12))
    (station,) = ledger.get("/v1/stations")["stations"]
    assert station["watermark"] == at(12)


def test_everything_survives_a_restart(make_ledger: Any, tmp_path: Any) -> None:
    first = make_ledger("[sites.WH1]\nallow_negative = true\n")
    dock = first.dock()
    p = pick(3, "A-01", 5)
    dock.post(p, receipt(1, "A-01", 1), move(1, "A-01", "B-01", 2))
    before = (first.incidents(), first.get("/v1/balances"))
    first.close()
    first.server.stop()
    second = make_ledger(db=tmp_path / "ledger.db")
    assert (second.incidents(), second.get("/v1/balances")) == before
    (res,) = post_with_token(second, dock.token, p)
    assert res["status"] == "duplicate"


def post_with_token(ledger: Any, token: str, *events: dict[str, Any]) -> list[dict[str, Any]]:
    from tests.ledger.factory import batch

    r = ledger.http.post("/v1/events", json=batch(list(events)),
                         headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["results"]
    return out


def test_an_incident_opened_after_a_restart_for_a_depletion_from_before_it(
        make_ledger: Any) -> None:
    """The pick is applied (no negative), the ledger restarts from its snapshot, then a late
    count below it opens the pick's incident: the restored pick still knows its place in
    recorded order (with several processes, that place is the incident's id)."""
    first = make_ledger()
    dock = first.dock()
    p = pick(3, "A-01", 5)
    dock.post(receipt(5, "A-01", 0), p)
    first.close()
    first.server.stop()
    second = make_ledger()
    (res,) = post_with_token(second, dock.token, count(0, "A-01", 1))
    assert res["status"] == "accepted"
    inc = second.incident_of(p)
    assert (inc["class"], inc["status"], inc["balance"]) == ("item", "open", -3)
    assert isinstance(inc["id"], int)
    assert second.incidents() == make_ledger().incidents()  # and a third start agrees
