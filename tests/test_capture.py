"""The capture path: a raw scan in, audit row + movement + session state committed together,
then the outcome. A real Station over a real journal file."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.capture import Outcome, Station, debounced
from agent.config import Config, parse_config
from agent.journal import Journal, JournalWriter
from drivers.base import RawScan

EAN = "4006381333931"
ITEM = "04006381333931"
MS = 1_000_000


def dock_config(tmp_path: Path, **top: Any) -> Config:
    data: dict[str, Any] = {
        "station": "dock-3", "site": "WH1", "mode": "receipt", "location": "DOCK-3",
        "database": str(tmp_path / "journal.db"),
        "scanners": [
            {"name": "handheld", "driver": "serial", "port": "/dev/ttyACM0", "debounce_ms": 300},
            {"name": "fixed", "driver": "tcp", "host": "127.0.0.1", "port": 4001,
             "mode": "count", "location": "CC-1", "debounce_ms": 0},
        ],
        **top,
    }
    return parse_config(data, str(tmp_path / "dock-3.toml"))


class Dock:
    """A station with a clock the test controls (boottime in ns)."""

    def __init__(self, station: Station, writer: JournalWriter) -> None:
        self.station, self.writer = station, writer
        self.boot_ns = 10**12
        self.outcomes: list[Outcome] = []
        station.listeners.append(self.outcomes.append)

    async def scan(self, text: str, scanner: str = "handheld", *, after_ms: int = 1000,
                   error: str | None = None) -> Outcome:
        self.boot_ns += after_ms * MS
        return await self.station.handle(RawScan(scanner, text, text.encode(errors="replace"),
                                                 wall_time=time.time(), boot_ns=self.boot_ns,
                                                 error=error))

    async def fill_disk(self) -> None:
        def full(j: Journal) -> None:
            pages = j.conn.execute("PRAGMA page_count").fetchone()[0]
            j.conn.execute(f"PRAGMA max_page_count = {pages}")
        await self.writer.call(full)

    async def free_disk(self) -> None:
        await self.writer.call(lambda j: j.conn.execute("PRAGMA max_page_count = 1073741823"))


async def open_dock(cfg: Config) -> tuple[Station, JournalWriter]:
    writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
    station = Station(cfg, writer)
    await station.start()
    return station, writer


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return dock_config(tmp_path)


@pytest.fixture
async def dock(cfg: Config) -> AsyncIterator[Dock]:
    station, writer = await open_dock(cfg)
    yield Dock(station, writer)
    await writer.close()


def rows(cfg: Config, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(cfg.database)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def audit(cfg: Config) -> list[tuple[str, str, str | None]]:
    return [(r["text"], r["outcome"], r["reason"])
            for r in rows(cfg, "SELECT text, outcome, reason FROM scans ORDER BY id")]


def movements(cfg: Config) -> list[dict[str, Any]]:
    return rows(cfg, "SELECT * FROM movements ORDER BY seq")


# -- one scan, one atomic commit ----------------------------------------------------------


async def test_item_scan_commits_audit_movement_and_session_together(dock: Dock,
                                                                     cfg: Config) -> None:
    await dock.scan("LOC-A-01")
    out = await dock.scan(EAN)
    assert (out.status, out.seq, out.movement_type, out.ok) == ("accepted", 1, "receipt", True)
    assert out.note == f"receipt {ITEM} x1"
    assert audit(cfg) == [("LOC-A-01", "accepted", None), (EAN, "accepted", None)]
    (m,) = movements(cfg)
    assert (m["seq"], m["event_id"], m["type"], m["item"], m["qty"], m["to_location"]) == (
        1, out.event_id, "receipt", ITEM, 1, "A-01")
    scan = rows(cfg, "SELECT event_id FROM scans WHERE text = ?", EAN)[0]
    assert scan["event_id"] == out.event_id, "the audit row points at its movement"
    (session,) = rows(cfg, "SELECT scanner, state FROM sessions WHERE scanner = 'handheld'")
    assert json.loads(session["state"])["to_location"] == "A-01"


async def test_movement_row_has_the_event_fields_of_design_section_5(dock: Dock,
                                                                    cfg: Config) -> None:
    await dock.scan("REF-PO-1234")
    await dock.scan("USER-u17")
    await dock.scan("LOC-A-01-02")
    out = await dock.scan(EAN)
    (m,) = movements(cfg)
    event_id = uuid.UUID(m["event_id"])
    assert event_id.version == 7, "UUIDv7: time-ordered idempotency key"
    assert m["event_id"][14] == "7", "version nibble"
    assert str(event_id) == m["event_id"] == out.event_id
    assert m["seq"] == 1
    assert m["type"] == "receipt"
    assert len(m["item"]) == 14 and m["item"].isdigit()
    assert (m["lot"], m["serial"], m["qty"]) == (None, None, 1)
    assert (m["from_location"], m["to_location"]) == (None, "A-01-02")
    assert (m["reference"], m["operator"], m["voids"]) == ("PO-1234", "u17", None)
    assert m["scanner"] == "handheld"
    assert json.loads(m["raw"]) == ["REF-PO-1234", "USER-u17", "LOC-A-01-02", EAN]
    assert m["boot_id"] and m["boot_ns"] == dock.boot_ns and m["wall_time"] > 0
    assert m["state"] == "pending"
    assert {"occurred_at", "clock"} <= set(m), "stamped at first send"
    meta = {r["key"]: r["value"] for r in rows(cfg, "SELECT key, value FROM meta")}
    assert (meta["station"], meta["site"]) == ("dock-3", "WH1")


async def test_raw_holds_the_scans_as_read_with_a_gs1_strings_gs(dock: Dock,
                                                                  cfg: Config) -> None:
    """DESIGN section 5's ``raw`` is the scans themselves: a GS1 element string's GS used to
    become the four characters ``\\x1d`` there (an escape meant for terminals)."""
    gs1 = "]C1010061414199999610LOT42\x1d21SER9"
    await dock.scan("LOC-A-01")
    out = await dock.scan(gs1)
    assert out.status == "accepted", out
    (m,) = movements(cfg)
    assert json.loads(m["raw"]) == ["LOC-A-01", gs1]
    assert (m["lot"], m["serial"]) == ("LOT42", "SER9")


async def test_a_gs1_scans_log_line_shows_its_gs_escaped_once(
        dock: Dock, caplog: pytest.LogCaptureFixture) -> None:
    """The GS showed as ``\\\\x1d`` in the log (an escape, escaped again by repr)."""
    gs1 = "]C1010061414199999610LOT42\x1d21SER9"
    await dock.scan("LOC-A-01")
    with caplog.at_level(logging.INFO, logger="scan_agent.capture"):
        await dock.scan(gs1)
    (line,) = [r.getMessage() for r in caplog.records if "LOT42" in r.getMessage()]
    assert line.startswith("handheld: ']C1010061414199999610LOT42\\x1d21SER9' -> receipt "), line


async def test_event_ids_are_unique_and_time_ordered(dock: Dock, cfg: Config) -> None:
    for _ in range(5):
        await dock.scan(EAN)
    ids = [m["event_id"] for m in movements(cfg)]
    assert len(set(ids)) == 5
    assert ids == sorted(ids)


async def test_undo_commits_a_void_and_deletes_nothing(dock: Dock, cfg: Config) -> None:
    first = await dock.scan(EAN)
    void = await dock.scan("CMD-UNDO")
    assert (void.status, void.movement_type, void.seq) == ("accepted", "void", 2)
    ms = movements(cfg)
    assert [(m["seq"], m["type"], m["voids"]) for m in ms] == [
        (1, "receipt", None), (2, "void", first.event_id)]
    nothing = await dock.scan("CMD-UNDO")
    assert (nothing.status, nothing.reason) == ("rejected", "nothing to undo on this scanner")


# -- rejections -------------------------------------------------------------------------------


async def test_unknown_barcode_is_audited_with_its_reason_and_makes_no_movement(
        dock: Dock, cfg: Config) -> None:
    out = await dock.scan("hello")
    assert (out.status, out.reason, out.ok) == ("rejected", "unknown barcode 'hello'", False)
    assert out.describe() == "handheld: 'hello' rejected: unknown barcode 'hello'"
    assert audit(cfg) == [("hello", "rejected", "unknown barcode 'hello'")]
    assert movements(cfg) == []


async def test_session_rejection_is_audited_and_leaves_the_session(dock: Dock,
                                                                   cfg: Config) -> None:
    await dock.scan("MODE-MOVE")
    await dock.scan("LOC-A-01")
    before = dock.station.session("handheld")
    out = await dock.scan(EAN)
    assert (out.status, out.reason) == ("rejected",
                                        "move without a to-location: scan LOC-<to> first")
    assert dock.station.session("handheld") == before
    assert audit(cfg)[-1] == (EAN, "rejected", "move without a to-location: scan LOC-<to> first")
    assert movements(cfg) == []


async def test_driver_flagged_error_is_rejected_with_its_reason_and_audited(
        dock: Dock, cfg: Config) -> None:
    """Bytes the driver could not frame never reach the grammar, but are kept for audit."""
    out = await dock.scan("40063\ufffd81333931", error="non-text byte 0xff at position 6")
    assert (out.status, out.reason) == ("rejected", "non-text byte 0xff at position 6")
    assert audit(cfg) == [("40063\ufffd81333931", "rejected",
                           "non-text byte 0xff at position 6")]
    assert movements(cfg) == []
    ok = await dock.scan(EAN, after_ms=1)
    assert ok.status == "accepted", "a driver error is not a read to debounce against"


async def test_unknown_scanner_is_a_programming_error(dock: Dock) -> None:
    with pytest.raises(KeyError):
        await dock.scan(EAN, scanner="nobody")


# -- debounce -------------------------------------------------------------------------------


async def test_same_text_within_the_window_is_debounced_and_audited(dock: Dock,
                                                                    cfg: Config) -> None:
    first = await dock.scan(EAN)
    again = await dock.scan(EAN, after_ms=100)
    assert (again.status, again.seq, again.ok) == ("debounced", None, True)
    assert audit(cfg) == [(EAN, "accepted", None), (EAN, "debounced", None)]
    assert [m["event_id"] for m in movements(cfg)] == [first.event_id]


async def test_same_text_outside_the_window_counts(dock: Dock, cfg: Config) -> None:
    await dock.scan(EAN)
    later = await dock.scan(EAN, after_ms=301)
    assert (later.status, later.seq) == ("accepted", 2)
    assert len(movements(cfg)) == 2


async def test_a_different_text_in_between_is_not_debounced(dock: Dock, cfg: Config) -> None:
    await dock.scan(EAN)
    await dock.scan("QTY-2", after_ms=50)
    out = await dock.scan(EAN, after_ms=50)
    assert (out.status, out.seq) == ("accepted", 2)
    assert [m["qty"] for m in movements(cfg)] == [1, 2]


async def test_debounce_is_per_scanner_and_configurable(dock: Dock, cfg: Config) -> None:
    await dock.scan("LOC-C-1", scanner="fixed")
    a = await dock.scan(EAN, scanner="fixed")
    b = await dock.scan(EAN, scanner="fixed", after_ms=1)  # debounce_ms = 0 on this reader
    assert (a.status, b.status) == ("accepted", "accepted")
    c = await dock.scan(EAN, scanner="handheld", after_ms=1)
    assert c.status == "accepted", "another scanner's read is not a repeat"


@pytest.mark.parametrize(("last", "text", "now_ms", "window", "expected"), [
    pytest.param(None, "A", 0, 300, False, id="first-read"),
    pytest.param(("A", 0), "A", 299, 300, True, id="repeat-inside"),
    pytest.param(("A", 0), "A", 300, 300, False, id="repeat-at-edge"),
    pytest.param(("A", 0), "B", 10, 300, False, id="different-text"),
    pytest.param(("A", 0), "A", 10, 0, False, id="window-off"),
    pytest.param(("A", 500), "A", 10, 300, False, id="clock-went-back"),
])
def test_debounced(last: tuple[str, int] | None, text: str, now_ms: int, window: int,
                   expected: bool) -> None:
    if last is not None:
        last = (last[0], last[1] * MS)
    assert debounced(last, text, now_ms * MS, window) is expected


# -- journal failure --------------------------------------------------------------------------


async def until_failed(dock: Dock, cfg: Config, text: str) -> tuple[Outcome, bool]:
    """Scan ``text`` until the full journal refuses it (earlier copies may still fit in free
    space on existing pages); whether the refused scan left session and journal as they were."""
    for _ in range(200):
        before = dock.station.session("handheld")
        journaled = (audit(cfg), movements(cfg),
                     rows(cfg, "SELECT * FROM sessions ORDER BY scanner"))
        out = await dock.scan(text)
        if out.status == "failed":
            after = (audit(cfg), movements(cfg),
                     rows(cfg, "SELECT * FROM sessions ORDER BY scanner"))
            return out, dock.station.session("handheld") == before and after == journaled
    raise AssertionError(f"{text!r} never failed on a full journal")


async def test_full_disk_fails_the_scan_keeps_the_session_and_recovers(dock: Dock,
                                                                       cfg: Config) -> None:
    """A scan that is not on disk gets a NAK and changes nothing; once space returns the
    operator's rescan of the same barcode is captured, not swallowed as a repeat."""
    await dock.scan("MODE-PICK")
    await dock.scan("LOC-B-07")
    first = await dock.scan(EAN)
    await dock.fill_disk()
    for text in ("LOC-B-08", "QTY-3", "REF-PO-1", "CMD-UNDO", EAN):
        out, unchanged = await until_failed(dock, cfg, text)
        assert out.reason == ("not saved (disk full): [Errno 28] journal disk full while "
                              "committing a scan")
        assert (out.ok, out.seq, out.event_id) == (False, None, None)
        assert unchanged, f"failed {text!r} changed the session"
        assert dock.outcomes[-1] == out, "listeners hear about failures too"
    committed = movements(cfg)

    await dock.free_disk()
    retry = await dock.scan(EAN, after_ms=50)
    assert retry.status == "accepted", "the failed read must not debounce its retry"
    ms = movements(cfg)
    assert ms[:len(committed)] == committed, "nothing committed before the full disk is lost"
    assert ms[0]["event_id"] == first.event_id
    assert [m["seq"] for m in ms] == list(range(1, len(ms) + 1))
    assert ms[-1]["event_id"] == retry.event_id
    assert ms[-1]["from_location"] == dock.station.session("handheld").from_location


# -- scans in flight ---------------------------------------------------------------------------


def raw(dock: Dock, text: str, scanner: str = "handheld") -> RawScan:
    dock.boot_ns += 1000 * MS
    return RawScan(scanner, text, text.encode(), wall_time=time.time(), boot_ns=dock.boot_ns)


def transaction_sizes(dock: Dock) -> list[int]:
    """The number of scans in each capture transaction from now on (filled as they run)."""
    sizes: list[int] = []
    capture = dock.writer.journal.capture

    def spy(records: Any) -> Any:
        sizes.append(len(records))
        return capture(records)

    dock.writer.journal.capture = spy  # type: ignore[method-assign]
    return sizes


async def test_a_streaming_scanner_is_worked_out_scan_by_scan_and_committed_together(
        dock: Dock, cfg: Config) -> None:
    """Scans read before the previous one committed build on it, commit in one transaction
    and are answered in order."""
    groups = transaction_sizes(dock)
    texts = ["LOC-A-01", EAN, "QTY-3", EAN, "LOC-A-02", EAN]
    pending = [dock.station.submit(raw(dock, t)) for t in texts]
    outs = [await p for p in pending]
    assert groups == [len(texts)], "one transaction for the scans read together"
    assert [o.status for o in outs] == ["accepted"] * len(texts)
    assert [(m["seq"], m["qty"], m["to_location"]) for m in movements(cfg)] == [
        (1, 1, "A-01"), (2, 3, "A-01"), (3, 1, "A-02")]
    assert [o.seq for o in outs if o.seq] == [1, 2, 3]
    assert dock.outcomes == outs, "listeners hear of each scan in reading order"
    (session,) = rows(cfg, "SELECT state FROM sessions WHERE scanner = 'handheld'")
    assert json.loads(session["state"])["to_location"] == "A-02"


async def test_a_failed_commit_fails_what_was_read_after_it_and_falls_back(
        dock: Dock, cfg: Config) -> None:
    """A scan whose commit fails takes the same scanner's later scans with it, unwritten
    (they were worked out from it); other scanners' scans in the transaction are kept, and
    the scanner goes on from its last committed session."""
    await dock.writer.call(lambda j: j.conn.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON scans WHEN NEW.text = 'LOC-B-66' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
    texts = [("LOC-B-07", "handheld"), (EAN, "handheld"), ("LOC-B-66", "handheld"),
             (EAN, "handheld"), ("QTY-2", "handheld"), (EAN, "fixed")]
    pending = [dock.station.submit(raw(dock, t, s)) for t, s in texts]
    outs = [await p for p in pending]
    assert [o.status for o in outs] == [
        "accepted", "accepted", "failed", "failed", "failed", "accepted"]
    assert "refused by the test" in (outs[2].reason or "")
    assert outs[3].reason == outs[4].reason == (
        "not saved (journal error): an earlier scan from this scanner was not saved, and this "
        "one follows from it")
    assert audit(cfg) == [("LOC-B-07", "accepted", None), (EAN, "accepted", None),
                          (EAN, "accepted", None)]
    assert dock.station.session("handheld").to_location == "B-07"

    again = await dock.station.submit(raw(dock, EAN))
    assert again.status == "accepted", "the scanner's chain is whole again"
    assert [(m["scanner"], m["to_location"]) for m in movements(cfg)] == [
        ("handheld", "B-07"), ("fixed", "CC-1"), ("handheld", "B-07")]


# -- restart ---------------------------------------------------------------------------------


async def test_restart_restores_each_scanners_session(cfg: Config) -> None:
    station, writer = await open_dock(cfg)
    d = Dock(station, writer)
    await d.scan("REF-PO-9")
    await d.scan("MODE-MOVE")
    await d.scan("LOC-A-01")
    await d.scan("LOC-B-02")
    last = await d.scan(EAN)
    await d.scan("LOC-C-1", scanner="fixed")
    await d.scan(EAN, scanner="fixed")
    await writer.close()

    station, writer = await open_dock(cfg)
    try:
        d = Dock(station, writer)
        s = station.session("handheld")
        assert (s.mode, s.from_location, s.to_location, s.reference) == (
            "move", "A-01", "B-02", "PO-9")
        out = await d.scan(EAN)
        assert (out.movement_type, out.seq) == ("move", 3)
        assert station.session("fixed").count_total(("C-1", ITEM, None)) == 1
        assert (await d.scan(EAN, scanner="fixed")).status == "accepted"
        await d.scan("CMD-UNDO")
        undo_prev = await d.scan("CMD-UNDO")
        assert undo_prev.movement_type == "void"
        voids = [m["voids"] for m in movements(cfg) if m["type"] == "void"]
        assert voids[-1] == last.event_id, "CMD-UNDO reaches back across a restart"
    finally:
        await writer.close()
    counts = [m["qty"] for m in movements(cfg) if m["scanner"] == "fixed"]
    assert counts == [1, 2], "the running count survives a restart"


async def test_scanner_overrides_set_its_starting_mode_and_location(dock: Dock,
                                                                    cfg: Config) -> None:
    """The 'fixed' reader counts in CC-1 while the handheld receives at DOCK-3."""
    fixed = dock.station.session("fixed")
    assert (fixed.mode, fixed.to_location) == ("count", "CC-1")
    hand = dock.station.session("handheld")
    assert (hand.mode, hand.to_location) == ("receipt", "DOCK-3")
    await dock.scan(EAN, scanner="fixed")
    await dock.scan(EAN, scanner="handheld")
    assert [(m["scanner"], m["type"], m["to_location"]) for m in movements(cfg)] == [
        ("fixed", "count", "CC-1"), ("handheld", "receipt", "DOCK-3")]


async def test_unreadable_saved_session_starts_fresh(cfg: Config) -> None:
    station, writer = await open_dock(cfg)
    await writer.call(lambda j: j.conn.execute(
        "INSERT INTO sessions (scanner, state, updated) VALUES ('handheld', '{\"x\": 1}', 0)"))
    await writer.close()
    station, writer = await open_dock(cfg)
    try:
        s = station.session("handheld")
        assert (s.mode, s.to_location) == ("receipt", "DOCK-3")
    finally:
        await writer.close()


async def test_require_operator_from_the_dock_config(tmp_path: Path) -> None:
    cfg = dock_config(tmp_path, require_operator=True)
    station, writer = await open_dock(cfg)
    try:
        d = Dock(station, writer)
        out = await d.scan(EAN)
        assert (out.status, out.reason) == ("rejected",
                                            "operator badge required: scan USER-<id> first")
        await d.scan("USER-u17")
        assert (await d.scan(EAN)).status == "accepted"
    finally:
        await writer.close()


async def test_one_scanners_failed_burst_is_not_committed_twice(dock: Dock, cfg: Config) -> None:
    """When the whole failed transaction was one scanner's, it is not tried again as a
    whole: the scans before the bad one are kept one by one, the rest refused."""
    await dock.writer.call(lambda j: j.conn.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON scans WHEN NEW.text = 'LOC-B-66' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
    tries = transaction_sizes(dock)
    pending = [dock.station.submit(raw(dock, t)) for t in ("LOC-B-07", EAN, "LOC-B-66", EAN)]
    outs = [await p for p in pending]
    assert [o.status for o in outs] == ["accepted", "accepted", "failed", "failed"]
    assert tries == [4, 1, 1, 1], "the group once, then one by one up to the bad scan"
    assert audit(cfg) == [("LOC-B-07", "accepted", None), (EAN, "accepted", None)]


async def test_a_full_disk_fails_only_the_scanner_whose_scans_do_not_fit(
        dock: Dock, cfg: Config) -> None:
    """A streaming burst that no longer fits must not take another scanner's scan, which
    fits on its own, down with it."""
    await dock.station.submit(raw(dock, EAN, "fixed"))  # the fixed scanner's session saved

    def little_room(j: Journal) -> None:
        pages = j.conn.execute("PRAGMA page_count").fetchone()[0]
        j.conn.execute(f"PRAGMA max_page_count = {pages + 2}")

    await dock.writer.call(little_room)
    burst = [dock.station.submit(raw(dock, f"REF-{'X' * 200}{i}")) for i in range(40)]
    other = dock.station.submit(raw(dock, EAN, "fixed"))
    outs = [await p for p in burst]
    assert (await other).status == "accepted"
    assert "failed" in {o.status for o in outs}
    assert all(o.status == "failed" for o in outs[[o.status for o in outs].index("failed"):]), \
        "nothing after the first refused scan of the burst is kept"


async def test_failures_keep_one_entry_per_scanner_in_the_writer(dock: Dock) -> None:
    """However long a journal keeps failing, what the writer remembers stays small."""
    await dock.writer.call(lambda j: j.conn.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON scans "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
    for _ in range(50):
        assert (await dock.station.submit(raw(dock, EAN))).status == "failed"
    assert len(dock.writer._broken) == 1
    await dock.writer.call(lambda j: j.conn.execute("DROP TRIGGER refuse"))
    assert (await dock.station.submit(raw(dock, EAN))).status == "accepted"


async def test_a_scan_submitted_just_before_close_is_committed(cfg: Config) -> None:
    station, writer = await open_dock(cfg)
    pending = station.submit(RawScan("handheld", EAN, EAN.encode()))
    await writer.close()
    out = await asyncio.wait_for(pending, 5)
    assert out.status == "accepted"
    assert [m["event_id"] for m in movements(cfg)] == [out.event_id]


async def test_then_is_told_in_the_commits_own_turn_on_the_capture_thread(
        dock: Dock, cfg: Config) -> None:
    """The daemon answers a scanner from ``then``: on the capture thread it runs right after
    the scan's commit, its outcome settled, before any other turn of the loop."""
    turns = 0
    seen: list[tuple[str, int, str]] = []

    async def on_capture_thread() -> None:
        nonlocal turns
        loop = asyncio.get_running_loop()

        def tick() -> None:
            nonlocal turns
            turns += 1
            loop.call_soon(tick)

        loop.call_soon(tick)
        got = asyncio.Event()

        def then(f: asyncio.Future[Outcome]) -> None:
            seen.append((f.result().status, turns, f.result().text))
            got.set()

        start = turns
        dock.station.submit(RawScan("handheld", "LOC-A-01", b"LOC-A-01"), then)
        await got.wait()
        # read in this turn, committed at the end of the next: told there
        assert [t - start for _, t, _ in seen] == [1]

    await dock.writer.run(on_capture_thread())
    assert [(s, x) for s, _, x in seen] == [("accepted", "LOC-A-01")]


async def test_then_is_told_of_a_scan_the_closed_journal_refuses(dock: Dock) -> None:
    """A journal that refuses the scan at once (closed) still reaches ``then``, after
    ``submit`` returned (so the caller has the future in hand)."""
    await dock.writer.close()
    told: list[Outcome] = []
    fut = dock.station.submit(RawScan("handheld", EAN, EAN.encode()),
                              lambda f: told.append(f.result()))
    assert told == []
    out = await fut
    await asyncio.sleep(0)
    assert told == [out] and out.status == "failed"
    assert out.reason == "not saved (journal error): journal is closed"


async def test_undo_reaches_back_across_a_restart_from_the_journals_movements(
        cfg: Config) -> None:
    """The session saved with each scan holds its undo history's depth; a restart reads the
    entries back from the movements: CMD-UNDO then voids what it would have, counts included."""
    station, writer = await open_dock(cfg)
    dock = Dock(station, writer)
    await dock.scan("LOC-A-01")
    first = await dock.scan(EAN)
    second = await dock.scan(EAN, after_ms=2000)
    await dock.scan("LOC-CC-9", scanner="fixed")
    await dock.scan(EAN, scanner="fixed")
    counted = await dock.scan(EAN, scanner="fixed", after_ms=2000)
    assert counted.note == f"count {ITEM} x2"
    (row,) = rows(cfg, "SELECT state FROM sessions WHERE scanner = 'handheld'")
    assert len(row["state"]) < 300 and json.loads(row["state"])["undo"] == 2
    await writer.close()

    station, writer = await open_dock(cfg)
    dock = Dock(station, writer)
    dock.boot_ns = 10**12 + 20_000 * MS  # the same boot, a little later
    undone = await dock.scan("CMD-UNDO")
    assert undone.note == f"void receipt {ITEM}"
    assert movements(cfg)[-1]["voids"] == second.event_id
    undone = await dock.scan("CMD-UNDO", after_ms=2000)
    assert movements(cfg)[-1]["voids"] == first.event_id
    assert (await dock.scan("CMD-UNDO", after_ms=2000)).reason == "nothing to undo on this scanner"
    await dock.scan("CMD-UNDO", scanner="fixed")
    recount = await dock.scan(EAN, scanner="fixed", after_ms=2000)
    assert recount.note == f"count {ITEM} x2", "the undone count put its total back to 1"
    await writer.close()


def saved_session(cfg: Config, scanner: str = "handheld") -> str:
    (row,) = rows(cfg, "SELECT state FROM sessions WHERE scanner = ?", scanner)
    return str(row["state"])


async def test_a_scan_that_leaves_the_session_as_it_was_does_not_write_it_again(
        dock: Dock, cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next item in the same mode and bins (once the undo history is full) leaves the
    session as the row holds it: nothing is written for it; the row always says what the
    committed scans left, failures included."""
    written: list[str | None] = []
    real = Journal.capture

    def recording(self: Journal, records: list[Any]) -> Any:
        written.extend(r.session_state for r in records)
        return real(self, records)

    monkeypatch.setattr(Journal, "capture", recording)
    await dock.scan("LOC-A-01")
    for _ in range(22):
        await dock.scan(EAN, after_ms=1000)
    assert [w is not None for w in written] == [True] * 21 + [False] * 2
    assert saved_session(cfg) == dock.station.session("handheld").to_json()

    await dock.fill_disk()
    out, unchanged = await until_failed(dock, cfg, "LOC-B-02")
    assert out.status == "failed" and unchanged
    assert saved_session(cfg) == dock.station.session("handheld").to_json()
    await dock.free_disk()
    written.clear()
    await dock.scan(EAN, after_ms=1000)  # the LOC- scans' context is let go: written
    await dock.scan(EAN, after_ms=1000)  # as the row holds it: not written
    assert [w is not None for w in written] == [True, False]
    assert json.loads(saved_session(cfg))["to_location"] == "B-02"
    assert saved_session(cfg) == dock.station.session("handheld").to_json()


async def test_a_rescan_after_a_failed_commit_writes_the_session_it_makes(
        dock: Dock, cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed scan's session never reached the row: its rescan, which makes the same
    session, must write it (the row is compared with what was committed, not tried)."""
    from agent.errors import JournalError

    await dock.scan("LOC-A-01")
    real = Journal.capture
    fail = True

    def once(self: Journal, records: list[Any]) -> Any:
        nonlocal fail
        if fail:
            fail = False
            raise JournalError("journal error while committing a scan: I/O error")
        return real(self, records)

    monkeypatch.setattr(Journal, "capture", once)
    assert (await dock.scan("LOC-C-03")).status == "failed"
    assert json.loads(saved_session(cfg))["to_location"] == "A-01"
    assert (await dock.scan("LOC-C-03")).status == "accepted"
    assert json.loads(saved_session(cfg))["to_location"] == "C-03"
    assert saved_session(cfg) == dock.station.session("handheld").to_json()
