"""Time you can trust: occurred_at from the ledger's time base, whatever the Pi's clock says."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

import httpx
import pytest

from agent.clock import Sample, TimeBase, format_utc, parse_utc, stamp
from ledger.server import LedgerServer

S = 10**9


def test_sample_is_ntp_style() -> None:
    """The ledger read T at the midpoint of the round trip: base = T - (t0 + t3) / 2."""
    s = Sample(t0_boot_ns=100 * S, t3_boot_ns=100 * S + 20_000_000, server_ns=5000 * S,
               wall_ns=4400 * S)
    assert s.rtt_ns == 20_000_000
    assert s.base_ns == 5000 * S - 100 * S - 10_000_000
    assert s.wall_offset_ms == pytest.approx(600_010.0)


def test_the_ledgers_hold_on_a_request_is_no_part_of_the_path() -> None:
    """A busy ledger took 2 s between receiving the batch (T1) and answering (T2); the path
    took 5 ms each way. With T1 the offset is right to the path's asymmetry; without it, it
    would be off by half the hold (1 s)."""
    true_base = 1_700_000_000 * S  # ledger time = boottime + true_base
    t0 = 50 * S
    t1 = t0 + 5_000_000 + true_base  # the request arrives 5 ms later (ledger time)
    t2 = t1 + 2 * S  # answered 2 s after that
    t3 = t2 - true_base + 5_000_000  # and back 5 ms later (boottime)
    held = Sample(t0, t3, server_ns=t2, wall_ns=0, received_ns=t1)
    assert held.held_ns == 2 * S
    assert held.rtt_ns == 10_000_000
    assert held.base_ns == true_base
    assert Sample(t0, t3, server_ns=t2, wall_ns=0).base_ns == true_base + S
    # the time base picks the sample whose path was quickest, whatever the ledger's hold
    quick_path = Sample(100 * S, 103 * S, server_ns=true_base + 103 * S - 1_000_000,
                        wall_ns=0, received_ns=true_base + 100 * S + 1_000_000)
    slow_path = Sample(200 * S, 200 * S + 40_000_000, true_base + 200 * S + 20_000_000, 0)
    assert quick_path.rtt_ns == 2_000_000 and slow_path.rtt_ns == 40_000_000
    assert TimeBase("boot-1").add(quick_path).add(slow_path).best is quick_path


def test_a_receive_time_that_cannot_be_is_not_used() -> None:
    """After the answer, or a hold longer than the whole exchange: the ledger's clocks do not
    agree with themselves (another process answered, a clock stepped); T2 alone is used."""
    t0, t3, t2 = 10 * S, 10 * S + 20_000_000, 5000 * S
    for received in (t2 + 1, t2 - 20_000_001):
        s = Sample(t0, t3, server_ns=t2, wall_ns=0, received_ns=received)
        assert s.held_ns == 0
        assert s.rtt_ns == 20_000_000
        assert s.base_ns == Sample(t0, t3, t2, 0).base_ns


def test_time_base_prefers_the_lowest_round_trip() -> None:
    tb = TimeBase("boot-1")
    tb = tb.add(Sample(0, 80_000_000, 1000 * S, 0))
    tb = tb.add(Sample(S, S + 2_000_000, 1001 * S + 40_000_000, 0))
    assert tb.best is not None and tb.best.rtt_ns == 2_000_000
    assert tb.ledger_ns(2 * S) == 2 * S + tb.best.base_ns


def test_stamp_current_boot_ignores_the_wall_clock() -> None:
    tb = TimeBase("boot-1").add(Sample(10 * S, 10 * S, 1_700_000_000 * S, 0))
    row = {"boot_id": "boot-1", "boot_ns": 4 * S, "wall_time": 12.0, "wall_offset_ms": None,
           "ntp_synced": 0}
    occurred, clock = stamp(row, tb)
    assert parse_utc(occurred) == 1_700_000_000 * S - 6 * S
    assert clock["synced"] is True and clock["basis"] == "ledger"


def test_stamp_earlier_boot_uses_the_offset_known_then_and_is_flagged() -> None:
    tb = TimeBase("boot-2").add(Sample(0, 0, 1_700_000_000 * S, 0))
    row = {"boot_id": "boot-1", "boot_ns": 4 * S, "wall_time": 1_699_990_000.0,
           "wall_offset_ms": 1500.0, "ntp_synced": 0}
    occurred, clock = stamp(row, tb)
    assert parse_utc(occurred) == 1_699_990_000 * S + 1500 * 10**6
    assert clock == {"synced": False, "offset_ms": 1500.0, "basis": "previous-boot"}
    row["wall_offset_ms"] = None
    occurred, clock = stamp(row, tb)
    assert clock == {"synced": False, "offset_ms": 0.0, "basis": "wall"}


def test_utc_round_trip() -> None:
    ns = 1_763_807_730_123_456_000
    assert format_utc(ns) == "2025-11-22T10:35:30.123456Z"
    assert parse_utc(format_utc(ns)) == ns


@pytest.mark.skipif(shutil.which("faketime") is None,
                    reason="Debian's faketime is not installed (.ci/run installs it)")
def test_agent_ten_minutes_off_still_stamps_true_time(tmp_path: Path) -> None:
    """An agent whose wall clock is 10 minutes behind (libfaketime) sends occurred_at
    within 1 s of the true capture time: it is derived from CLOCK_BOOTTIME and the ledger's
    clock, not from the local wall clock."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    with LedgerServer(tmp_path / "ledger.db") as ledger:
        token = ledger.add_station("dock-9", site="WH1")
        (tmp_path / "token").write_text(token)
        cfg = tmp_path / "dock-9.toml"
        cfg.write_text(
            f'station = "dock-9"\nsite = "WH1"\nlocation = "DOCK-9"\n'
            f'database = "{tmp_path / "journal.db"}"\n'
            f'[ledger]\nurl = "{ledger.url}"\ntoken_file = "{tmp_path / "token"}"\n'
            f'[[scanners]]\nname = "h"\ndriver = "serial"\nport = "{os.ttyname(slave)}"\n'
            f'ack = "\\u0006"\ndebounce_ms = 0\n')
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            ["faketime", "-f", "-600s", sys.executable, "-m", "agent.cli", "run", "--config",
             str(cfg)], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            written: list[float] = []
            time.sleep(2.0)  # start-up (libfaketime slows nothing, but the import takes time)
            for gtin in ("4006381333931", "5901234123457", "4012345678901"):
                os.write(master, gtin.encode() + b"\r")
                written.append(time.time())
                assert os.read(master, 1) == b"\x06"
                time.sleep(0.7)
            events: list[dict[str, object]] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(events) < 3:
                events = httpx.get(f"{ledger.url}/v1/events",
                                   params={"station": "dock-9"}).json()["events"]
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # faketime and the agent it runs
            _, err = proc.communicate(timeout=20)
            os.close(master)
            os.close(slave)
    assert len(events) == 3, err
    events.sort(key=lambda e: int(str(e["seq"])))
    for e, t in zip(events, written, strict=True):
        assert abs(parse_utc(str(e["occurred_at"])) / 1e9 - t) < 1.0, (e, t)
        assert json.loads(json.dumps(e["clock"]))["basis"] == "ledger"
    # and the agent's own wall clock really was 10 minutes off
    import sqlite3

    walls = [r[0] for r in sqlite3.connect(tmp_path / "journal.db").execute(
        "SELECT wall_time FROM movements ORDER BY seq")]
    assert all(abs((w + 600) - t) < 1.0 for w, t in zip(walls, written, strict=True))


def test_wall_offset_follows_a_wall_clock_step_at_once() -> None:
    """Regression: the offset shown in status and metrics came from the sample taken before a
    wall-clock step and stayed stale for minutes; it is now read against boottime."""
    tb = TimeBase("boot-1").add(Sample(10 * S, 10 * S, 1_700_000_000 * S, 1_700_000_000 * S))
    assert tb.wall_offset_ms(1_700_000_005 * S, 15 * S) == 0.0
    # the wall clock jumps back an hour; boottime runs on
    assert tb.wall_offset_ms(1_699_996_406 * S, 16 * S) == 3_600_000.0
    assert tb.summary(1_699_996_406 * S, 16 * S)["offset_ms"] == 3_600_000.0
