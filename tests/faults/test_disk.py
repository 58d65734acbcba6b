"""Disk faults: the journal's filesystem full, and a damaged journal at start.

A full disk must cost only the scans that arrive while it is full: each gets a NAK and the
operator rescans later; an alert says why (log and ``scan-agent status``); what was
acknowledged before stays intact; capture resumes by itself when space returns. A damaged
journal stops ``scan-agent run`` with a report, before anything is written to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, load_config
from agent.daemon import Agent
from agent.journal import Journal
from ledger.server import LedgerServer
from tests.faults.rig import (
    ACK,
    SKU_PATTERN,
    PtyScanner,
    assert_exactly_once,
    integrity,
    journal_rows,
    token_file,
    write_config,
)


@pytest.fixture
def scanner() -> Iterator[PtyScanner]:
    s = PtyScanner("h")
    try:
        yield s
    finally:
        s.close()


def _dock(tmp_path: Path, database: Path, scanner: PtyScanner,
          ledger: LedgerServer | None = None) -> Config:
    data: dict[str, Any] = {
        "station": "dock-1", "site": "WH1", "location": "DOCK-1", "database": str(database),
        "grammar": {"sku_patterns": [SKU_PATTERN]},
        "scanners": [scanner.scanner_config(debounce_ms=0)],
    }
    if ledger is not None:
        tokens = token_file(tmp_path / "dock-1.token", ledger.add_station("dock-1", "WH1"))
        data["ledger"] = {"url": ledger.url, "token_file": str(tokens), "timeout": 5.0,
                          "max_backoff": 0.3, "batch_size": 50}
    return load_config(write_config(tmp_path / "dock-1.toml", data))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LedgerServer]:
    with LedgerServer(tmp_path / "ledger.db") as srv:
        yield srv


async def _drained(agent: Agent) -> None:
    """Sync delivers everything once the disk has room again (it cannot record results
    while the journal is full). Regression: a ``JournalFullError`` while recording results
    used to end the sync task for good, so nothing was sent again until a restart."""
    assert agent.writer is not None and agent.sync is not None
    writer = agent.writer
    deadline = time.monotonic() + 60
    while (await writer.call(lambda j: j.counts())).get("pending", 0):
        assert time.monotonic() < deadline, f"sync did not resume: {agent.sync.stats}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def agent_factory() -> AsyncIterator[Callable[[Config], Awaitable[Agent]]]:
    started: list[Agent] = []

    async def start(cfg: Config) -> Agent:
        agent = Agent(cfg)
        started.append(agent)
        await agent.start()
        return agent

    try:
        yield start
    finally:
        for agent in started:
            await agent.close()


def _status(cfg: Config) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", cfg.path,
                          "--json"], capture_output=True, text=True, timeout=60)
    # 0 running, 3 not: the agent runs inside pytest here, which status need not recognise
    assert out.returncode in (0, 3), out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


async def _fill_until_refused(scanner: PtyScanner, prefix: str, acked: list[str],
                              refused: list[str], limit: int = 5000) -> None:
    """Scan until five scans in a row are refused (small rows still fit for a while)."""
    in_a_row = 0
    for i in range(limit):
        text = f"SKU-A-{prefix}{i}"
        if await scanner.scan(text) == ACK:
            acked.append(text)
            in_a_row = 0
        else:
            refused.append(text)
            in_a_row += 1
            if in_a_row == 5:
                return
    raise AssertionError(f"the journal never filled up in {limit} scans")


def _assert_intact(database: Path, acked: list[str], refused: list[str]) -> None:
    assert integrity(database) == ["ok"]
    texts = [r["text"] for r in journal_rows(database, "scans", "id")]
    assert [t for t in texts if t in set(acked)] == acked, "an acknowledged scan was lost"
    assert not set(refused) & set(texts), "a refused scan was journaled"
    movements = journal_rows(database, "movements", "seq")
    assert [m["seq"] for m in movements] == list(range(1, len(acked) + 1))
    assert [json.loads(m["raw"])[-1] for m in movements] == acked


async def _full_disk_then_space(agent: Agent, scanner: PtyScanner, cfg: Config,
                                fill: Callable[[], Awaitable[None]],
                                free: Callable[[], Awaitable[None]],
                                caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    acked: list[str] = []
    refused: list[str] = []
    for i in range(20):
        assert await scanner.scan(f"SKU-A-OK{i}") == ACK
        acked.append(f"SKU-A-OK{i}")

    await fill()
    await _fill_until_refused(scanner, "F", acked, refused)
    log = caplog.text
    assert "not saved (disk full)" in log, log[-2000:]
    assert all(f"'{t}' failed: not saved (disk full)" in log for t in refused)
    # nothing moved on: the scanner's session and seq are as they were before the refusals
    assert agent.station is not None
    assert agent.station.session("h").to_location == "DOCK-1"

    await free()
    for i in range(20):
        assert await scanner.scan(f"SKU-A-BACK{i}") == ACK, "capture did not resume"
        acked.append(f"SKU-A-BACK{i}")
    # Regression: on a really full disk the alert's own write failed and was dropped, so
    # `status` never told of the episode; it is now written once the journal has room.
    errors = _status(cfg)["recent_errors"]
    assert any(e["source"] == "capture" and "disk full" in e["message"] for e in errors), errors
    return acked, refused


async def test_journal_full_by_max_page_count(
        tmp_path: Path, scanner: PtyScanner, caplog: pytest.LogCaptureFixture,
        ledger: LedgerServer, agent_factory: Callable[[Config], Awaitable[Agent]]) -> None:
    """SQLITE_FULL from the real file: ``max_page_count`` pinned at the journal's size."""
    database = tmp_path / "journal.db"
    cfg = _dock(tmp_path, database, scanner, ledger)
    agent = await agent_factory(cfg)
    assert agent.writer is not None
    writer = agent.writer

    def pragma(sql: str) -> Callable[[Journal], Any]:
        return lambda j: j.conn.execute(sql).fetchone()

    async def fill() -> None:
        pages = (await writer.call(pragma("PRAGMA page_count")))[0]
        assert (await writer.call(pragma(f"PRAGMA max_page_count = {pages}")))[0] == pages

    async def free() -> None:
        await writer.call(pragma("PRAGMA max_page_count = 1073741823"))

    acked, refused = await _full_disk_then_space(agent, scanner, cfg, fill, free, caplog)
    await _drained(agent)
    await agent.close()
    _assert_intact(database, acked, refused)
    delivery = await asyncio.to_thread(assert_exactly_once, database, ledger.url, "dock-1")
    assert len(delivery.movements) == len(acked)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own, where the machine lets the tests mount one."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


async def test_journal_filesystem_full(
        tmp_path: Path, small_fs: Path, scanner: PtyScanner,
        caplog: pytest.LogCaptureFixture, ledger: LedgerServer,
        agent_factory: Callable[[Config], Awaitable[Agent]]) -> None:
    """ENOSPC from a real filesystem: a small tmpfs filled to the brim by another file."""
    database = small_fs / "journal.db"
    cfg = _dock(tmp_path, database, scanner, ledger)
    agent = await agent_factory(cfg)
    ballast = small_fs / "ballast"

    async def fill() -> None:
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        probe = small_fs / "probe"
        with pytest.raises(OSError) as exc:
            probe.write_bytes(b"x" * 4096)
        assert exc.value.errno == errno.ENOSPC

    async def free() -> None:
        ballast.unlink()
        (small_fs / "probe").unlink(missing_ok=True)

    acked, refused = await _full_disk_then_space(agent, scanner, cfg, fill, free, caplog)
    await _drained(agent)
    await agent.close()
    _assert_intact(database, acked, refused)
    delivery = await asyncio.to_thread(assert_exactly_once, database, ledger.url, "dock-1")
    assert len(delivery.movements) == len(acked)


# -- integrity check at start ------------------------------------------------------------


def _make_journal(database: Path, n: int) -> None:
    """A journal with ``n`` movements, written by the agent's own store."""
    from agent.journal import Capture
    from agent.session import Draft

    j = Journal(database, "dock-1", "WH1")
    try:
        for i in range(n):
            draft = Draft(event_id=f"0192b3c4-5d6e-7f80-9a1b-{i:012d}", type="receipt",
                          item="A", qty=1, to_location="DOCK-1", raw=(f"SKU-A-{i}",))
            j.capture([Capture(scanner="h", text=f"SKU-A-{i}", raw=b"", wall_time=1.0e9 + i,
                               boot_ns=i, boot_id="b", outcome="accepted", movement=draft)])
    finally:
        j.close()


def _garble_table(database: Path, table: str) -> None:
    conn = sqlite3.connect(database)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                            (table,)).fetchone()[0]
    finally:
        conn.close()
    with database.open("r+b") as f:
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xa5" * 64)


def _garble_header(database: Path) -> None:
    with database.open("r+b") as f:
        f.write(b"not a journal at all")


@pytest.mark.parametrize("damage", [
    pytest.param(lambda db: _garble_table(db, "scans"), id="audit-table-page"),
    pytest.param(lambda db: _garble_table(db, "movements"), id="movements-page"),
    pytest.param(_garble_header, id="file-header"),
])
def test_damaged_journal_stops_the_agent(tmp_path: Path, scanner: PtyScanner,
                                         damage: Callable[[Path], None]) -> None:
    """``scan-agent run`` on a damaged journal exits non-zero naming the file and what to
    do, and leaves the file exactly as it found it. Regression: damage that already broke
    opening the file (a movements page, the header) gave no advice, only SQLite's words."""
    database = tmp_path / "journal.db"
    _make_journal(database, 300)
    assert not Path(f"{database}-wal").exists()
    damage(database)
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    cfg = _dock(tmp_path, database, scanner)
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", cfg.path],
                         capture_output=True, text=True, timeout=60, start_new_session=True)
    assert out.returncode == 1, out.stderr
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("scan-agent: ") and str(database) in message, out.stderr
    assert "copy the file aside" in message, out.stderr
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before, "the journal changed"
    assert not scanner.acked and not scanner.naked
