"""Clock faults: the wall clock stepped by hours during a shift, and a reboot with a backlog.

The agent runs as a subprocess under libfaketime, whose offset the test rewrites in
``FAKETIME_TIMESTAMP_FILE`` (with ``FAKETIME_NO_CACHE=1``, so each step takes effect at once).
``DONT_FAKE_MONOTONIC=1`` keeps ``CLOCK_BOOTTIME`` real: without it libfaketime shifts
boottime as well (``test_libfaketime_leaves_boottime_alone`` shows both), and a real Pi's
boottime never jumps; it is the clock the agent trusts for ``occurred_at`` and debounce.

A reboot is what the journal sees after one: rows captured under another boot id. The test
stops the agent and rewrites ``boot_id`` in its journal, which is exactly that.
"""

from __future__ import annotations

import glob
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.clock import parse_utc
from ledger.server import LedgerServer
from tests.faults.rig import (
    ACK,
    SKU_PATTERN,
    AgentProcess,
    PtyScanner,
    free_port,
    journal_pending,
    journal_rows,
    ledger_events,
    token_file,
    write_config,
)

pytestmark = pytest.mark.slow

HOUR = 3600.0
DEBOUNCE_MS = 2000  # long, so that "within the window" never depends on the machine's speed


def _libfaketime() -> str:
    for name in ("libfaketimeMT.so.1", "libfaketime.so.1"):
        found = sorted(glob.glob(f"/usr/lib/*/faketime/{name}"))
        if found:
            return found[0]
    pytest.skip("libfaketime is not installed (apt-get install faketime)")


def _faked_env(clock_file: Path, *, fake_monotonic: bool = False) -> dict[str, str]:
    env = dict(os.environ, LD_PRELOAD=_libfaketime(), FAKETIME_TIMESTAMP_FILE=str(clock_file),
               FAKETIME_NO_CACHE="1")
    if not fake_monotonic:
        env["DONT_FAKE_MONOTONIC"] = "1"
    return env


def _step(clock_file: Path, hours: float) -> None:
    """Step the agent's wall clock to ``hours`` from true time (libfaketime's relative form)."""
    clock_file.write_text(f"{'+' if hours >= 0 else '-'}{abs(hours) * HOUR:.0f}\n")


def test_libfaketime_leaves_boottime_alone(tmp_path: Path) -> None:
    """Why the suite sets DONT_FAKE_MONOTONIC=1: without it CLOCK_BOOTTIME is faked too."""
    clock_file = tmp_path / "faketime"
    _step(clock_file, 3)
    probe = ("import time; print(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))")
    for fake_monotonic in (False, True):
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=_faked_env(clock_file, fake_monotonic=fake_monotonic),
                             timeout=60, check=True)
        after = time.clock_gettime(time.CLOCK_BOOTTIME)
        wall, boot = map(float, out.stdout.split())
        assert abs(wall - time.time() - 3 * HOUR) < 60, "libfaketime did not shift the wall"
        real = before <= boot <= after
        assert real is not fake_monotonic, (
            f"CLOCK_BOOTTIME {'faked' if not real else 'real'} with "
            f"DONT_FAKE_MONOTONIC={'unset' if fake_monotonic else '1'}")


@dataclass
class Scan:
    text: str
    t0: float  # true time just before the scan was sent
    t1: float  # true time its ACK was read
    hours: float  # the agent's wall clock offset at the time


@pytest.fixture
def scanner() -> Iterator[PtyScanner]:
    s = PtyScanner("h")
    try:
        yield s
    finally:
        s.close()


def _scan(scanner: PtyScanner, text: str, hours: float, out: list[Scan]) -> None:
    t0 = time.time()
    assert scanner.wait_answer(text) == ACK, text
    out.append(Scan(text, t0, time.time(), hours))


def _wait_drained(db: Path, agent: AgentProcess) -> None:
    deadline = time.monotonic() + 60
    while journal_pending(db):
        assert time.monotonic() < deadline, f"not drained:\n{agent.tail()}"
        assert agent.alive(), agent.tail()
        time.sleep(0.05)


def _assert_near(event: dict[str, Any], s: Scan, slack: float = 1.0) -> None:
    """occurred_at within ~1 s of when the scan really happened (not the agent's wall)."""
    at = parse_utc(event["occurred_at"]) / 1e9
    assert s.t0 - slack <= at <= s.t1 + slack, (
        f"{s.text} at wall offset {s.hours:+}h: occurred_at {event['occurred_at']} is "
        f"{at - s.t0:+.1f} s from its capture; clock {event['clock']}")


def test_wall_clock_steps_and_a_reboot(tmp_path: Path, scanner: PtyScanner) -> None:
    clock_file = tmp_path / "faketime"
    _step(clock_file, 0)
    env = _faked_env(clock_file)
    db = tmp_path / "journal.db"
    port = free_port()
    ledger = LedgerServer(tmp_path / "ledger.db", port=port).start()
    try:
        tokens = token_file(tmp_path / "dock-1.token", ledger.add_station("dock-1", "WH1"))
        config = write_config(tmp_path / "dock-1.toml", {
            "station": "dock-1", "site": "WH1", "location": "DOCK-1", "database": str(db),
            "grammar": {"sku_patterns": [SKU_PATTERN]},
            "ledger": {"url": ledger.url, "token_file": str(tokens), "timeout": 2.0,
                       "max_backoff": 0.5, "batch_size": 50},
            "scanners": [scanner.scanner_config(debounce_ms=DEBOUNCE_MS)],
        })
        agent = AgentProcess(config, tmp_path / "agent.log", env=env)
        shift: list[Scan] = []
        with agent:
            # -- a shift with the wall clock stepped back and forth by hours --------------
            for hours in (0, -3, 5, -1, 2):
                _step(clock_file, hours)
                for i in range(4):
                    tag = f"{'M' if hours < 0 else 'P'}{abs(hours)}"
                    _scan(scanner, f"SKU-A-H{tag}N{i}", hours, shift)
                    time.sleep(0.05)
            # debounce: a repeat within the window is one read even if the wall clock jumped
            # 5 h forward between the two; a repeat after the window is a new read even if
            # the wall clock jumped 8 h back, to before the first
            _step(clock_file, 0)
            _scan(scanner, "SKU-B-TWICE", 0, shift)
            _step(clock_file, 5)
            assert scanner.wait_answer("SKU-B-TWICE") == ACK
            _scan(scanner, "SKU-C-AGAIN", 5, shift)
            _step(clock_file, -3)
            time.sleep(DEBOUNCE_MS / 1000 + 0.3)
            _scan(scanner, "SKU-C-AGAIN", -3, shift)
            _wait_drained(db, agent)

            # -- the network goes, the clock is 2 h slow, then a reboot -------------------
            _step(clock_file, -2)
            ledger.stop()
            known: list[Scan] = []  # captured with the clock offset known
            for i in range(4):
                _scan(scanner, f"SKU-A-KNOWN{i}", -2, known)
            assert agent.stop() == 0, agent.tail()
        with agent:  # a new process knows no offset until it reaches the ledger
            unknown: list[Scan] = []
            for i in range(3):
                _scan(scanner, f"SKU-A-UNKNOWN{i}", -2, unknown)
            assert agent.stop() == 0, agent.tail()

        conn = sqlite3.connect(db)
        with conn:
            old_boot = str(uuid.uuid4())
            conn.execute("UPDATE movements SET boot_id = ?", (old_boot,))
            conn.execute("UPDATE scans SET boot_id = ?", (old_boot,))
            # The reboot comes before their first send. (Whether a sync retry stamped some of
            # them with the still-fresh ledger time base before the stop depends on retry
            # timing; such a stamp is accurate and final. The ledger was down the whole time,
            # so none of them reached it, and clearing the stamp puts every one of them on
            # the earlier-boot path this test is about.)
            conn.execute("UPDATE movements SET occurred_at = NULL, clock = NULL, body = NULL,"
                         " first_sent_at = NULL WHERE state = 'pending'")
        conn.close()
        ledger = LedgerServer(tmp_path / "ledger.db", port=port).start()
        with agent:
            after: list[Scan] = []
            for i in range(2):
                _scan(scanner, f"SKU-A-AFTER{i}", -2, after)
            _wait_drained(db, agent)
            assert agent.stop() == 0, agent.tail()

        events = ledger_events(ledger.url, "dock-1")
    finally:
        ledger.stop()

    movements = journal_rows(db, "movements", "seq")
    scans = journal_rows(db, "scans", "id")
    by_text: dict[str, list[dict[str, Any]]] = {}
    for m in movements:
        by_text.setdefault(m["raw"].rsplit('"', 2)[-2], []).append(m)
    by_id = {e["event_id"]: e for e in events}
    assert len(by_id) == len(events) == len(movements)

    # debounce was measured on boottime, not on the stepped wall clock
    assert [s["outcome"] for s in scans if s["text"] == "SKU-B-TWICE"] == [
        "accepted", "debounced"]
    assert len(by_text["SKU-B-TWICE"]) == 1
    assert [s["outcome"] for s in scans if s["text"] == "SKU-C-AGAIN"] == [
        "accepted", "accepted"]
    assert len(by_text["SKU-C-AGAIN"]) == 2

    # seq follows the order of the scans, whatever the wall clock said
    order = [s.text for s in (*shift, *known, *unknown, *after)]
    texts_by_seq = [m["raw"].rsplit('"', 2)[-2] for m in movements]
    assert texts_by_seq == order
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events), (
        "the ledger received them out of seq order")

    # the agent's wall clock really was stepped (else this test proves nothing)
    for s in (*shift, *known, *unknown):
        assert any(s.t0 - 1 <= m["wall_time"] - s.hours * HOUR <= s.t1 + 1
                   for m in by_text[s.text]), (s, by_text[s.text])

    # current boot: occurred_at from boottime and the ledger's clock, flagged synced
    seen_again = 0
    for s in shift:
        rows = by_text[s.text]
        m = rows[seen_again] if s.text == "SKU-C-AGAIN" else rows[0]
        seen_again += s.text == "SKU-C-AGAIN"
        e = by_id[m["event_id"]]
        assert e["clock"]["basis"] == "ledger" and e["clock"]["synced"] is True, e["clock"]
        _assert_near(e, s)
    for s in after:
        e = by_id[by_text[s.text][0]["event_id"]]
        assert e["clock"]["basis"] == "ledger" and e["clock"]["synced"] is True, e["clock"]
        _assert_near(e, s)

    # earlier boot, offset known at capture: wall time + that offset, flagged. Regression:
    # the offset was the best sample's, taken before the last wall-clock step, so these
    # events came out hours off; it is now the offset at the read itself.
    for s in known:
        m = by_text[s.text][0]
        e = by_id[m["event_id"]]
        assert e["clock"]["basis"] == "previous-boot", e["clock"]
        assert e["clock"]["synced"] is False
        assert e["clock"]["offset_ms"] == round(m["wall_offset_ms"], 3)
        _assert_near(e, s)

    # earlier boot, no offset known: the bare wall time (2 h slow here), flagged
    for s in unknown:
        m = by_text[s.text][0]
        e = by_id[m["event_id"]]
        assert m["wall_offset_ms"] is None
        ntp = bool(m["ntp_synced"])
        assert e["clock"] == {"synced": ntp, "offset_ms": 0.0,
                              "basis": "ntp" if ntp else "wall"}
        assert abs(parse_utc(e["occurred_at"]) / 1e9 - m["wall_time"]) < 1e-3
