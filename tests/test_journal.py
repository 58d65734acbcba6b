"""The station's SQLite journal: durability settings, schema, gap-free seq, group commit,
retention, read-only access, integrity and a full disk. Real files in tmp_path throughout."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from agent.errors import JournalError, JournalFullError
from agent.journal import SCHEMA_VERSION, Capture, Journal, JournalWriter, open_readonly
from agent.session import Draft

_ids = itertools.count(1)
DAY = 86400.0


def draft(item: str | None = "04006381333931", *, type: str = "receipt",
          qty: int = 1) -> Draft:
    return Draft(event_id=f"ev-{next(_ids)}", type=type, item=item, qty=qty,  # type: ignore[arg-type]
                 to_location="DOCK-3", raw=("LOC-DOCK-3", "4006381333931"))


def capture(movement: Draft | None = None, *, scanner: str = "handheld",
            outcome: str = "accepted", reason: str | None = None,
            wall_time: float | None = None, text: str = "4006381333931") -> Capture:
    return Capture(scanner=scanner, text=text, raw=text.encode(),
                   wall_time=time.time() if wall_time is None else wall_time,
                   boot_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME), boot_id="boot-1",
                   outcome=outcome, reason=reason, movement=movement,
                   session_state='{"mode":"receipt"}')


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def journal(path: Path):  # type: ignore[no-untyped-def]
    j = Journal(path, "dock-3", "WH1")
    yield j
    j.close()


def seqs(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT seq FROM movements ORDER BY seq")]
    finally:
        conn.close()


# -- durability and schema -------------------------------------------------------------------


def test_wal_and_synchronous_full_are_really_set(journal: Journal, path: Path) -> None:
    """DESIGN section 1: a scan is on disk (WAL, synchronous=FULL) before its good-read beep."""
    assert journal.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "WAL is persistent"
    finally:
        other.close()


def test_schema_version_is_recorded_in_user_version(journal: Journal) -> None:
    assert journal.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    tables = {r[0] for r in journal.conn.execute("SELECT name FROM sqlite_master"
                                                 " WHERE type = 'table'")}
    assert {"meta", "scans", "movements", "sessions", "scanners", "alerts",
            "ledger_incidents"} <= tables
    assert journal.get_meta("station") == "dock-3"
    assert journal.get_meta("site") == "WH1"


def test_reopening_migrates_nothing_and_keeps_next_seq(path: Path) -> None:
    j = Journal(path, "dock-3", "WH1")
    j.capture([capture(draft()), capture(draft())])
    schema = j.conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    j.close()

    j = Journal(path, "dock-3", "WH1")
    try:
        assert j.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert j.conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
        (done,) = j.capture([capture(draft())])
        assert done.seq == 3
    finally:
        j.close()
    assert seqs(path) == [1, 2, 3]


def test_a_journal_of_the_first_schema_is_migrated_keeping_its_movements(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 2 adds the ledger's open incidents: a journal written by an agent that did not
    keep them is upgraded in place, its movements and seqs untouched; until then a reader
    (``status`` beside the old daemon) finds no answer from the ledger, not an error."""
    import agent.journal as journal_module

    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", 1)
    j = Journal(path, "dock-3", "WH1")
    with j.transaction():  # movements as the first schema's agent wrote them
        for seq in (1, 2):
            j.conn.execute(
                "INSERT INTO movements (seq, event_id, scanner, type, item, qty, raw, wall_time,"
                " boot_ns, boot_id) VALUES (?, ?, 'handheld', 'receipt', ?, 1, '[]', 0, 0, 'b')",
                (seq, f"e{seq}", "04006381333931"))
    j.close()
    conn = open_readonly(path)
    try:
        assert journal_module.ledger_view(conn) == journal_module.LedgerView(
            None, None, (), None, None)
    finally:
        conn.close()
    monkeypatch.undo()

    j = Journal(path, "dock-3", "WH1")
    try:
        assert j.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        j.store_incidents(100.0, 2, [{"id": 4, "depletion_event_id": "e", "item": "i",
                                   "location": "A-07", "class": "item", "balance": -1,
                                   "confirmed": False, "opened_at": None}])
        (done,) = j.capture([capture(draft())])
        assert done.seq == 3
        view = journal_module.ledger_view(j.conn)
        assert (view.asked_at, view.through_seq, [i["id"] for i in view.incidents]) == (
            100.0, 2, [4])
    finally:
        j.close()
    assert seqs(path) == [1, 2, 3]


def test_a_journal_of_another_station_is_refused(path: Path) -> None:
    """Two docks sharing one file would interleave their seqs; refuse with a clear reason."""
    Journal(path, "dock-3", "WH1").close()
    with pytest.raises(JournalError) as info:
        Journal(path, "dock-4", "WH1")
    assert str(info.value) == (f"{path}: this journal belongs to station 'dock-3', not 'dock-4';"
                               " give each station its own database")


def test_a_newer_schema_is_refused(path: Path) -> None:
    """A downgrade must not write into a schema it does not understand."""
    Journal(path, "dock-3", "WH1").close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError) as info:
        Journal(path, "dock-3", "WH1")
    assert str(info.value) == (f"{path}: journal schema {SCHEMA_VERSION + 1} is newer than this"
                               f" agent understands ({SCHEMA_VERSION}); upgrade scan-agent")


def test_a_file_that_is_not_sqlite_is_a_journal_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(JournalError) as info:
        Journal(path, "dock-3", "WH1")
    assert str(info.value).startswith(f"journal error while opening {path}: ")


# -- seq: per station, gap-free, from 1 -------------------------------------------------------


def test_seq_starts_at_1_and_only_movements_take_one(journal: Journal, path: Path) -> None:
    done = journal.capture([
        capture(draft()),
        capture(None, outcome="rejected", reason="unknown barcode 'x'", text="x"),
        capture(draft()),
        capture(None, outcome="debounced"),
    ])
    assert [d.seq for d in done] == [1, None, 2, None]
    assert [d.scan_id for d in done] == [1, 2, 3, 4]
    assert seqs(path) == [1, 2]


def test_seq_is_gap_free_across_reopen(path: Path) -> None:
    for expected in ([1, 2], [3], [4, 5, 6]):
        j = Journal(path, "dock-3", "WH1")
        try:
            assert [d.seq for d in j.capture([capture(draft()) for _ in expected])] == expected
        finally:
            j.close()
    assert seqs(path) == [1, 2, 3, 4, 5, 6]


def test_a_failed_transaction_leaves_no_gap_and_no_partial_rows(journal: Journal,
                                                               path: Path) -> None:
    """Regression guard: a seq consumed by a rolled-back commit would look like a lost event
    to the ledger."""
    journal.capture([capture(draft())])
    good = capture(draft())
    bad = capture(draft(item=None))  # violates movements.item NOT NULL
    with pytest.raises(JournalError) as info:
        journal.capture([good, bad])
    assert not isinstance(info.value, JournalFullError)
    assert str(info.value) == ("journal error while committing a scan: NOT NULL constraint"
                               " failed: movements.item")
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert journal.conn.execute("SELECT count(*) FROM scans").fetchone()[0] == 1, (
        "all or nothing: the good capture of the failed group is not half-committed")
    (done,) = journal.capture([capture(draft())])
    assert done.seq == 2
    assert seqs(path) == [1, 2]


def test_capture_commits_audit_movement_and_session_together(journal: Journal) -> None:
    m = draft()
    (done,) = journal.capture([capture(m)])
    scan = journal.conn.execute("SELECT scanner, text, outcome, event_id FROM scans"
                                " WHERE id = ?", (done.scan_id,)).fetchone()
    assert scan == ("handheld", "4006381333931", "accepted", m.event_id)
    row = journal.pending(10)[0]
    assert (row["seq"], row["event_id"], row["type"], row["item"], row["state"]) == (
        1, m.event_id, "receipt", "04006381333931", "pending")
    assert row["raw"] == '["LOC-DOCK-3", "4006381333931"]'
    assert journal.sessions() == {"handheld": '{"mode":"receipt"}'}


def test_raw_scans_are_stored_as_the_json_encoder_writes_them(journal: Journal) -> None:
    """A movement's raw scans are written out by hand: the same text as ``json.dumps``, for
    scans with a GS, quotes, backslashes and characters beyond ASCII."""
    raw = ("]C10100614141999996\x1d10L1", 'say "hi"\\', "caf\u00e9 \u2603", "")
    m = draft()._replace(raw=raw)
    journal.capture([capture(m)])
    stored = journal.pending(10)[0]["raw"]
    assert stored == json.dumps(list(raw))
    assert tuple(json.loads(stored)) == raw


# -- group commit ---------------------------------------------------------------------------


async def test_concurrent_captures_through_the_writer_get_distinct_consecutive_seqs(
        path: Path) -> None:
    """Four scanners streaming at once share commits; none is lost or numbered twice."""
    journal = Journal(path, "dock-3", "WH1")
    async with JournalWriter(journal) as writer:
        records = [capture(draft(), scanner=f"s{i % 4}") for i in range(400)]
        done = await asyncio.gather(*(writer.capture(r) for r in records))
        assert sorted(d.seq for d in done if d.seq is not None) == list(range(1, 401))
        assert [d.event_id for d in done] == [r.movement.event_id for r in records
                                              if r.movement is not None]
        counts = await writer.call(lambda j: j.counts())
        assert counts == {"pending": 400}
    assert seqs(path) == list(range(1, 401))


async def test_a_failing_capture_fails_its_group_but_not_later_ones(path: Path) -> None:
    journal = Journal(path, "dock-3", "WH1")
    async with JournalWriter(journal) as writer:
        await writer.capture(capture(draft()))
        results = await asyncio.gather(writer.capture(capture(draft(item=None))),
                                       return_exceptions=True)
        assert isinstance(results[0], JournalError)
        done = await writer.capture(capture(draft()))
        assert done.seq == 2
    assert seqs(path) == [1, 2]


async def test_a_bad_record_in_a_group_does_not_fail_the_scans_sharing_its_commit(
        path: Path) -> None:
    """Regression: scans from other scanners committed in the same group as a record the
    journal refuses must still be committed and acknowledged, not NAKed with it."""
    journal = Journal(path, "dock-3", "WH1")
    async with JournalWriter(journal) as writer:
        good1, bad, good2 = capture(draft()), capture(draft(item=None)), capture(draft())
        results = await asyncio.gather(writer.capture(good1), writer.capture(bad),
                                       writer.capture(good2), return_exceptions=True)
        assert isinstance(results[1], JournalError)
        assert [r.seq for r in (results[0], results[2])] == [1, 2]  # type: ignore[union-attr]
    assert seqs(path) == [1, 2]


async def test_writer_close_is_idempotent_and_refuses_new_work(path: Path) -> None:
    writer = JournalWriter(Journal(path, "dock-3", "WH1"))
    await writer.capture(capture(draft()))
    await writer.close()
    await writer.close()
    with pytest.raises(JournalError, match=r"^journal is closed$"):
        await writer.capture(capture(draft()))


# -- retention ------------------------------------------------------------------------------


def test_prune_removes_only_old_synced_movements(journal: Journal) -> None:
    """Unsynced (pending) and quarantined (rejected) movements are never pruned, however old."""
    now = time.time()
    old = now - 40 * DAY
    done = journal.capture([capture(draft(), wall_time=old) for _ in range(5)])
    s = [d.seq for d in done]
    journal.capture([capture(None, outcome="rejected", reason="unknown barcode 'x'",
                             wall_time=old, text="x")])
    journal.record_results([(s[0], "accepted", None, []), (s[1], "duplicate", None, [])],
                           now=old)
    journal.record_results([(s[2], "rejected", "bad item", [])], now=old)
    journal.record_results([(s[3], "accepted", None, [])], now=now - 1 * DAY)
    # s[4] stays pending

    assert journal.prune(30, now=now) == 2
    remaining = {r[0]: r[1] for r in journal.conn.execute("SELECT seq, state FROM movements")}
    assert remaining == {s[2]: "rejected", s[3]: "synced", s[4]: "pending"}
    audit = [r[0] for r in journal.conn.execute("SELECT event_id FROM scans ORDER BY id")]
    assert audit == [d.event_id for d in done[2:]], (
        "old audit rows go with their movements; old rejected scans go too")
    assert journal.prune(30, now=now) == 0
    (nxt,) = journal.capture([capture(draft())])
    assert nxt.seq == 6, "pruning never rewinds seq"


def test_pruning_every_movement_never_lets_seq_restart(path: Path) -> None:
    """Regression guard: with all rows pruned, a reopened journal must not hand out seq 1
    again; the ledger would take the new events for replays of old ones."""
    j = Journal(path, "dock-3", "WH1")
    done = j.capture([capture(draft()) for _ in range(3)])
    j.record_results([(d.seq, "accepted", None, []) for d in done if d.seq], now=1.0)
    assert j.prune(30, now=time.time()) == 3
    j.close()
    assert seqs(path) == []
    j = Journal(path, "dock-3", "WH1")
    try:
        (nxt,) = j.capture([capture(draft())])
        assert nxt.seq == 4
    finally:
        j.close()


# -- read-only access -----------------------------------------------------------------------


def test_open_readonly_reads_while_the_writer_holds_a_transaction(journal: Journal,
                                                                  path: Path) -> None:
    """status and events must work beside a running daemon (WAL lets readers in)."""
    journal.capture([capture(draft()), capture(draft())])
    with journal.transaction():
        journal.conn.execute("INSERT INTO alerts (at, source, message) VALUES (1, 't', 'x')")
        conn = open_readonly(path)
        try:
            assert conn.execute("SELECT count(*) FROM movements").fetchone()[0] == 2
            assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                conn.execute("DELETE FROM movements")
        finally:
            conn.close()


def test_open_readonly_after_the_writer_stopped(path: Path) -> None:
    j = Journal(path, "dock-3", "WH1")
    j.capture([capture(draft())])
    j.close()
    conn = open_readonly(path)
    try:
        assert conn.execute("SELECT seq FROM movements").fetchall()[0]["seq"] == 1
    finally:
        conn.close()


def test_open_readonly_without_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    with pytest.raises(JournalError) as info:
        open_readonly(path)
    assert str(info.value) == f"{path}: no journal here yet (has the agent run with this config?)"
    assert not path.exists(), "a read must not create the file"


# -- integrity ------------------------------------------------------------------------------


def test_integrity_check_sound_and_corrupted(path: Path, tmp_path: Path) -> None:
    j = Journal(path, "dock-3", "WH1")
    try:
        for _ in range(20):
            j.capture([capture(draft()) for _ in range(50)])
        assert j.integrity_check() == []
        j.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        j.close()

    broken = tmp_path / "broken.db"
    shutil.copy(path, broken)
    size = broken.stat().st_size
    assert size > 64 * 4096
    with broken.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 3 * 4096)
    j = Journal(broken, "dock-3", "WH1")  # meta and schema pages are early: it still opens
    try:
        report = j.integrity_check()
        assert report, "a corrupted journal must not pass as sound"
        assert report != ["ok"]
        assert all(isinstance(line, str) and line for line in report)
    finally:
        j.close()


# -- full disk ------------------------------------------------------------------------------


def fill_until_full(journal: Journal) -> tuple[int, JournalFullError]:
    pages = journal.conn.execute("PRAGMA page_count").fetchone()[0]
    journal.conn.execute(f"PRAGMA max_page_count = {pages}")
    for committed in range(10_000):
        try:
            journal.capture([capture(draft())])
        except JournalFullError as exc:
            return committed, exc
    raise AssertionError("the journal never filled up")


def test_full_disk_is_journal_full_error_and_capture_resumes_when_space_returns(
        journal: Journal, path: Path) -> None:
    """SQLITE_FULL becomes JournalFullError (an OSError with ENOSPC); nothing committed before
    is lost, and captures work again once there is room."""
    journal.capture([capture(draft())])
    committed, exc = fill_until_full(journal)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    assert str(exc) == "[Errno 28] journal disk full while committing a scan"
    assert isinstance(exc.__cause__, sqlite3.OperationalError)
    before = 1 + committed
    assert seqs(path) == list(range(1, before + 1))

    with pytest.raises(JournalFullError):  # still full: still refused, still no gap
        journal.capture([capture(draft())])

    journal.conn.execute("PRAGMA max_page_count = 1073741823")
    done = journal.capture([capture(draft()) for _ in range(3)])
    assert [d.seq for d in done] == [before + 1, before + 2, before + 3]
    assert seqs(path) == list(range(1, before + 4))
    assert journal.integrity_check() == []


def test_errors_are_translated_by_kind() -> None:
    from agent.journal import _translate

    full = _translate(sqlite3.OperationalError("database or disk is full"), "x")
    assert isinstance(full, JournalFullError) and full.errno == errno.ENOSPC
    enospc = _translate(OSError(errno.ENOSPC, "No space left on device"), "writing")
    assert isinstance(enospc, JournalFullError)
    other = _translate(sqlite3.OperationalError("disk I/O error"), "writing")
    assert type(other) is JournalError
    assert str(other) == "journal error while writing: disk I/O error"


def test_pending_starts_from_the_lowest_pending_seq_and_misses_nothing(
        journal: Journal) -> None:
    """Pending rows are found without an index, from the lowest seq still pending; rows that
    arrive later, and a quarantined row left behind, are never skipped or repeated."""
    journal.capture([capture(draft()) for _ in range(10)])
    assert [r["seq"] for r in journal.pending(100)] == list(range(1, 11))
    journal.record_results([(s, "accepted", None, []) for s in range(1, 6)], time.time())
    assert [r["seq"] for r in journal.pending(3)] == [6, 7, 8]
    assert [r["seq"] for r in journal.pending(3, after_seq=8)] == [9, 10]
    journal.capture([capture(draft())])
    assert [r["seq"] for r in journal.pending(100)] == list(range(6, 12))
    journal.record_results([(6, "rejected", "bad", [])], time.time())
    journal.record_results([(s, "accepted", None, []) for s in range(7, 12)], time.time())
    assert journal.pending(100) == []
    assert journal.queue_depth() == (0, 1, None)
    journal.capture([capture(draft())])
    assert [r["seq"] for r in journal.pending(100)] == [12]
    pending, rejected, oldest = journal.queue_depth()
    assert (pending, rejected) == (1, 1) and oldest is not None
    assert journal.counts() == {"synced": 10, "rejected": 1, "pending": 1}


def test_undo_history_is_the_scanners_newest_movements_less_voids_and_what_they_voided(
        journal: Journal) -> None:
    """What CMD-UNDO can reach after a restart, read back from the movements: the newest of
    this scanner's, a void and its target left out, oldest first, at most the depth asked."""
    made = [draft() for _ in range(5)]
    journal.capture([capture(made[0]), capture(made[1]), capture(draft(), scanner="fixed")])
    journal.capture([capture(made[2])])
    void = Draft(event_id="ev-void", type="void", item=made[2].item, qty=1, voids=made[2].event_id)
    journal.capture([capture(void), capture(made[3]),
                     capture(made[4]._replace(type="count", previous_total=4))])
    rows = journal.undo_history("handheld", 3)
    assert [r["event_id"] for r in rows] == [made[1].event_id, made[3].event_id,
                                             made[4].event_id]
    assert (rows[-1]["type"], rows[-1]["previous_total"], rows[-1]["boot_id"]) == (
        "count", 4, "boot-1")
    assert [r["event_id"] for r in journal.undo_history("handheld", 20)] == [
        made[0].event_id, made[1].event_id, made[3].event_id, made[4].event_id]
    assert journal.undo_history("handheld", 0) == []
    assert journal.undo_history("nobody", 5) == []


def test_undo_history_stops_at_a_count_journaled_before_its_total_was_kept(
        journal: Journal) -> None:
    """A count written by schema 2 has no previous total: undoing it could not put the
    count's total back, so the history read back ends just after it (undo is refused rather
    than wrong)."""
    old, newer = draft(type="count"), draft(type="count")
    journal.capture([capture(old), capture(newer._replace(previous_total=1))])
    assert [r["event_id"] for r in journal.undo_history("handheld", 5)] == [newer.event_id]
