"""The capture thread: the journal's writer runs its own event loop, commits captures submitted
there inline, puts captures before every other use of the journal, waits briefly for the
scanners of the previous group, leaves checkpoints to a reading connection; sync reads through
a connection of its own. Real files in tmp_path throughout."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import agent.journal as journal_module
from agent.journal import Captured, Journal, JournalReader, JournalWriter
from tests.test_journal import capture, draft


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


async def test_a_capture_on_the_writers_loop_commits_on_that_thread_with_no_crossing(
        path: Path) -> None:
    """The daemon's scans are committed where they are read: the commit runs on the writer's
    thread, and the caller is told right after it (``then``) with no turn of the loop."""
    async with JournalWriter(Journal(path, "dock-3", "WH1")) as writer:
        seen: list[tuple[str, bool]] = []

        async def on_capture_thread() -> Captured:
            fut = writer.submit(capture(draft()), lambda f: seen.append(
                (threading.current_thread().name, f.done())))
            return await fut

        done = await writer.run(on_capture_thread())
        assert done.seq == 1
        assert seen == [("journal-writer", True)]


async def test_captures_go_before_queued_calls(path: Path) -> None:
    """Regression: sync's reads and writes queued for the one writer thread made a scan wait
    for all of them (a thousand-row update held it). Now a capture waits for one call at
    most, however many are queued."""
    order: list[str] = []

    def slow(j: Journal, n: int) -> None:
        time.sleep(0.02)
        order.append(f"call {n}")

    async with JournalWriter(Journal(path, "dock-3", "WH1")) as writer:
        calls = [asyncio.ensure_future(writer.call(slow, n)) for n in range(6)]
        await asyncio.sleep(0.005)  # the first call is running
        done = await writer.capture(capture(draft()))
        order.append("capture")
        await asyncio.gather(*calls)
    assert done.seq == 1
    assert order.index("capture") <= 2, order


async def test_a_group_waits_for_the_scanners_of_the_group_before_it(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host-ACK scanners send their next scan only after their answer: the commit waits for
    the scanners of the previous group (bounded), so they share one commit instead of
    alternating in half groups; once one of them is waited for in vain, it is not again."""
    monkeypatch.setattr(journal_module, "_WAIT_FOR_SCANNERS_MAX", 0.3)
    groups: list[list[str]] = []
    real = Journal.capture

    def recording(self: Journal, records: list[journal_module.Capture]) -> list[Captured]:
        groups.append([r.scanner for r in records])
        return real(self, records)

    monkeypatch.setattr(Journal, "capture", recording)
    async with JournalWriter(Journal(path, "dock-3", "WH1")) as writer:

        async def scans() -> list[float]:
            await asyncio.gather(writer.submit(capture(draft(), scanner="a")),
                                 writer.submit(capture(draft(), scanner="b")))
            writer._commit_s = 10.0  # a slow disk: a commit is worth waiting for
            first = writer.submit(capture(draft(), scanner="a"))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await asyncio.gather(first, writer.submit(capture(draft(), scanner="b")))
            joined = time.monotonic() - t0  # b's arrival let the group go at once
            t0 = time.monotonic()
            await writer.submit(capture(draft(), scanner="a"))  # b does not come
            waited = time.monotonic() - t0
            t0 = time.monotonic()
            await writer.submit(capture(draft(), scanner="a"))  # a alone now: no wait
            return [joined, waited, time.monotonic() - t0]

        joined, waited, alone = await writer.run(scans())
    assert groups == [["a", "b"], ["a", "b"], ["a"], ["a"]]
    assert joined < 0.2 and alone < 0.2
    assert 0.25 < waited < 2


async def test_the_writer_checkpoints_from_a_reader_and_no_commit_does(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk of each checkpoint (the log copied into the database and synced) runs off
    the capture path: the writer checkpoints from a reading connection in a worker thread,
    while there is something new to fold in."""
    monkeypatch.setattr(journal_module, "_CHECKPOINT_EVERY", 0.05)
    threads: list[str] = []
    real = JournalReader.checkpoint

    def recording(self: JournalReader) -> None:
        threads.append(threading.current_thread().name)
        real(self)

    monkeypatch.setattr(JournalReader, "checkpoint", recording)
    async with JournalWriter(Journal(path, "dock-3", "WH1")) as writer:
        for _ in range(20):
            await writer.capture(capture(draft()))
        deadline = time.monotonic() + 10
        while not threads and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert threads
        seen = len(threads)
        await asyncio.sleep(0.3)  # nothing new written: no more checkpoints
        assert len(threads) <= seen + 1
    assert "journal-writer" not in threads


def test_a_reader_sees_what_the_writer_committed_and_never_skips_a_pending_seq(
        path: Path) -> None:
    """Sync reads through its own connection: the same rows as the writer's ``pending``,
    and once it found nothing pending it starts after the newest seq, never past one that
    is committed later."""
    journal = Journal(path, "dock-3", "WH1")
    reader = JournalReader(path)
    try:
        assert reader.pending(10) == []
        journal.capture([capture(draft()) for _ in range(5)])
        assert [r["seq"] for r in reader.pending(3)] == [1, 2, 3]
        assert [r["seq"] for r in reader.pending(10, after_seq=3)] == [4, 5]
        journal.record_results([(s, "accepted", None, []) for s in range(1, 6)], time.time())
        assert reader.pending(10) == []
        journal.capture([capture(draft())])
        rows = reader.pending(10)
        assert [r["seq"] for r in rows] == [6]
        assert rows == journal.pending(10)
        assert reader.queue_depth()[:2] == (1, 0)
        reader.checkpoint()
        with pytest.raises(sqlite3.OperationalError,
                           match=r"^attempt to write a readonly database$"):
            reader.conn.execute("DELETE FROM movements")
    finally:
        reader.close()
        journal.close()


def test_sync_results_wait_for_no_disk_but_a_batchs_stamps_do(path: Path) -> None:
    """Results are committed with synchronous=NORMAL (a power cut may take one back: the
    movement is sent again and answered duplicate); stamps, which must be durable before a
    batch leaves, end with a durable commit; the connection is left at FULL either way."""
    journal = Journal(path, "dock-3", "WH1")
    seen: list[int] = []
    journal.conn.set_trace_callback(
        lambda sql: seen.append(journal.conn.execute("PRAGMA synchronous").fetchone()[0])
        if sql == "COMMIT" else None)
    try:
        journal.capture([capture(draft())])
        journal.freeze([(1, "2026-01-01T00:00:00.000000Z", "{}", "{}", 1.0)], durable=False)
        journal.freeze([(1, "2026-01-01T00:00:00.000000Z", "{}", "{}", 1.0)])
        journal.record_results([(1, "accepted", None, [])], time.time())
        journal.conn.set_trace_callback(None)
        assert seen == [2, 1, 2, 1]  # FULL, NORMAL, FULL, NORMAL
        assert journal.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        journal.close()


async def test_a_commit_waiting_for_its_scanners_holds_up_no_other_loops_captures(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: while the capture loop's commit waited for a scanner, a capture submitted
    from another loop (a test's, a tool's) was never committed."""
    monkeypatch.setattr(journal_module, "_WAIT_FOR_SCANNERS_MAX", 2.0)
    async with JournalWriter(Journal(path, "dock-3", "WH1")) as writer:

        async def start_waiting() -> None:
            await asyncio.gather(writer.submit(capture(draft(), scanner="a")),
                                 writer.submit(capture(draft(), scanner="b")))
            writer._commit_s = 100.0
            writer.submit(capture(draft(), scanner="a"))  # waits for b

        await writer.run(start_waiting())
        t0 = time.monotonic()
        done = await writer.capture(capture(draft(), scanner="c"))  # from this loop
        assert time.monotonic() - t0 < 1.5
        assert done.seq is not None


async def test_sync_cuts_its_writes_in_slices_only_while_operators_scan(
        path: Path) -> None:
    """A quiet dock drains a batch in one transaction each way (fewer commits); once a scan
    comes, sync's writes go in slices so the scan waits behind one slice at most."""
    from agent.capture import Outcome
    from agent.config import parse_config
    from agent.sync import SyncLoop

    token = path.parent / "token"
    token.write_text("t\n")
    cfg = parse_config({
        "station": "dock-3", "site": "WH1", "database": str(path),
        "ledger": {"url": "http://127.0.0.1:9", "token_file": str(token)},
        "scanners": [{"name": "h", "driver": "serial", "port": "/dev/null"}],
    }, "dock-3.toml")
    async with JournalWriter(Journal(path, "dock-3", "WH1")) as writer:
        sync = SyncLoop(cfg, writer)
        assert [sync._slice(n) for n in (0, 1, 1000)] == [1, 1, 1000]
        sync.on_capture(Outcome("h", "LOC-A", "accepted"))
        assert [sync._slice(n) for n in (0, 1, 1000)] == [1, 1, 100]


async def test_a_commit_callback_that_raises_leaves_the_rest_of_its_group_told(
        path: Path) -> None:
    """One caller's callback failing (a bug on the daemon's side) is reported, and every
    other capture committed in the same group is still told."""
    errors: list[dict[str, object]] = []
    async with JournalWriter(Journal(path, "dock-3", "WH1")) as writer:
        told: list[str] = []

        def bad(f: asyncio.Future[Captured]) -> None:
            raise RuntimeError("a bug after the commit")

        async def group() -> list[Captured]:
            asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
            futs = [writer.submit(capture(draft(), scanner="a"), bad),
                    writer.submit(capture(draft(), scanner="b"), lambda f: told.append("b")),
                    writer.submit(capture(draft(), scanner="c"), lambda f: told.append("c"))]
            return list(await asyncio.gather(*futs))

        done = await writer.run(group())
    assert [d.seq for d in done] == [1, 2, 3]
    assert told == ["b", "c"]
    assert [str(e["exception"]) for e in errors] == ["a bug after the commit"]
