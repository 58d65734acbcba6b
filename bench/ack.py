"""Scan -> ACK through the daemon while it syncs: does syncing ever slow the operator's beep?

One ``scan-agent run`` process, one serial scanner on a pseudo-terminal in host-acknowledge
mode (``ack = "\\u0006"``), a scan every 10 ms: the benchmark writes a barcode on the pty and
times it until the ACK byte is read back, and the next scan follows 10 ms after the previous
one (or at once when the ACK took longer, as a host-ACK scanner waits for it). In one run of
the daemon, on a journal that starts with a backlog of N movements (40,000 by default):

1. **offline**: the ledger is down (its port refuses connections); sync retries meanwhile;
2. **draining**: the ledger starts, and the station drains the backlog while the scans go on;
   the phase lasts until the backlog's last movement is marked synced in the journal;
3. **online**: the ledger up and the backlog gone: each scan is synced as it comes.

Each phase gives p50, p99 and max; the goals compare the online and draining p99 with the
offline p99 of the same round. A round is repeated and the medians judged. With a CPU budget
(:mod:`bench.cpubudget`, a quarter of one core by default, as a Raspberry-Pi-class CPU), the
agent process starts inside the cgroup (as under a systemd unit with ``CPUQuota=25%``); the
ledger and the benchmark stay outside it.

Afterwards the ledger must hold every movement of the journal exactly once.

Run: ``.venv/bin/python bench/ack.py [--backlog N] [--rounds N] [--budget] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent import Dock, agent_process, closed_port, cpu_ticks, wait_connected  # noqa: E402
from bench.cpubudget import CpuBudget, Unavailable  # noqa: E402
from bench.sync import (  # noqa: E402
    SITE,
    _ledger_cli,
    fill_journal,
    ledger_count,
    stop_process,
    write_token,
)

GTINS = ["4006381333931", "5901234123457", "4012345678901", "9780201379624"]
PHASES = ("offline", "online", "draining")
GOAL_RATIO = 1.5  # p99 online and draining <= 1.5x offline
EVERY = 0.010  # seconds between scans
STATION = "dock-ack"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


@dataclass
class Scanner:
    """A host-ACK scanner on a pty master: a barcode every ``every`` seconds, each waiting for
    its answer byte. ``samples`` holds (wall time of the scan, seconds to its ACK)."""

    master: int
    every: float = EVERY
    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scanner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        poll = select.poll()
        poll.register(self.master, select.POLLIN)
        codes = [g.encode() + b"\r" for g in GTINS]
        nxt = time.perf_counter()
        i = 0
        while not self._stop.is_set():
            wall = time.time()
            t0 = time.perf_counter()
            os.write(self.master, codes[i % 4])
            if not poll.poll(30_000):
                self.errors.append(f"no answer within 30 s to scan {i}")
                return
            answer = os.read(self.master, 16)
            t1 = time.perf_counter()
            if answer != b"\x06":
                self.errors.append(f"scan {i} answered {answer!r}, not one ACK")
                return
            self.samples.append((wall, t1 - t0))
            i += 1
            nxt = max(nxt + self.every, t1)
            delay = nxt - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


@contextlib.contextmanager
def ledger_on(db: Path, port: int) -> Iterator[float]:
    """``scan-ledger serve`` on 127.0.0.1:``port``; yields the wall time it listened."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "serve", "--db", str(db), "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the ledger did not start: {line!r}")
        yield time.time()
    finally:
        stop_process(proc)


def _synced_at(db: Path, seq: int) -> float | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT synced_at FROM movements WHERE seq = ?", (seq,)).fetchone()
    finally:
        conn.close()
    return None if row is None or row[0] is None else float(row[0])


def _journal_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0]: r[1] for r in conn.execute(
            "SELECT state, count(*) FROM movements GROUP BY state")}
    finally:
        conn.close()


def pty_dock(work: Path, names: Sequence[str], ledger: str = "") -> Dock:
    """A dock config in ``work`` reading a raw pseudo-terminal per name as a host-ACK serial
    scanner (ACK ``\\u0006``, NAK ``\\u0015``); ``ledger`` is the config's [ledger] table."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / "journal.db"
    ptys = []
    for _ in names:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        ptys.append((master, slave))
    scanners = "".join(
        f'\n[[scanners]]\nname = "{name}"\ndriver = "serial"\nport = "{os.ttyname(slave)}"\n'
        'ack = "\\u0006"\nnak = "\\u0015"\n' for name, (_, slave) in zip(names, ptys, strict=True))
    cfg = work / "dock.toml"
    cfg.write_text(
        f'station = "{STATION}"\nsite = "{SITE}"\nlocation = "DOCK-1"\ndatabase = "{db}"\n'
        f'log_level = "WARNING"\n{ledger}{scanners}', encoding="utf-8")
    return Dock(work, cfg, db, ptys)


def one_round(work: Path, filled: Path, backlog: int, offline_s: float, online_s: float,
              budget: CpuBudget | None, drain_timeout: float = 600) -> dict[str, Any]:
    """One daemon run through the three phases; the latencies of each phase."""
    port = closed_port()
    ledger_db = work / "ledger.db"
    work.mkdir(parents=True)
    token = _ledger_cli("station", "add", STATION, "--site", SITE, "--db", str(ledger_db)
                        ).stdout.splitlines()[-1].strip()
    token_file = write_token(work / "token", token)
    dock = pty_dock(work, ["h"], f'\n[ledger]\nurl = "http://127.0.0.1:{port}"\n'
                    f'token_file = "{token_file}"\nmax_backoff = 0.2\n')
    db = dock.database
    shutil.copy(filled, db)
    ((master, _),) = dock.ptys
    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    throttled: dict[str, tuple[int, float]] = {}
    scanner = Scanner(master)
    try:
        # a budgeted agent starts inside its cgroup, as under a unit with CPUQuota=
        enter = None if budget is None else (lambda: budget.enter(os.getpid()))
        with agent_process(dock, preexec=enter) as agent:
            wait_connected(dock, 1)

            def mark(name: str) -> None:
                marks[name] = time.time()
                cpu[name] = cpu_ticks(agent.pid) / CLK_TCK
                if budget is not None:
                    throttled[name] = budget.throttled()

            scanner.start()
            mark("start")
            time.sleep(offline_s)
            with ledger_on(ledger_db, port) as up:
                mark("ledger")
                marks["ledger"] = up
                deadline = time.monotonic() + drain_timeout
                while (done := _synced_at(db, backlog)) is None:
                    if time.monotonic() > deadline or scanner.errors:
                        raise RuntimeError(scanner.errors[0] if scanner.errors else
                                           f"backlog not drained within {drain_timeout} s")
                    time.sleep(0.2)
                mark("drained")
                marks["drained"] = done
                time.sleep(0.5 + online_s)
                mark("end")
                scanner.stop()
                deadline = time.monotonic() + 30
                while (counts := _journal_counts(db)).get("pending", 0):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"still pending after the run: {counts}")
                    time.sleep(0.2)
    finally:
        scanner.stop()
        dock.close()
    if scanner.errors:
        raise RuntimeError(scanner.errors[0])
    held, seqs = ledger_count(ledger_db, STATION)
    counts = _journal_counts(db)
    movements = sum(counts.values())
    bounds = {"offline": (marks["start"] + 0.2, marks["ledger"]),
              "draining": (marks["ledger"], marks["drained"]),
              "online": (marks["drained"] + 0.5, marks["end"])}
    phases: dict[str, dict[str, float]] = {}
    for phase, (lo, hi) in bounds.items():
        lat = [d for w, d in scanner.samples if lo <= w < hi]
        if not lat:
            raise RuntimeError(f"no scan fell in the {phase} phase")
        phases[phase] = {"n": len(lat), "p50": statistics.median(lat), "p99": pct(lat, 99),
                         "max": max(lat)}
    spans = {"offline": ("start", "ledger"), "draining": ("ledger", "drained"),
             "online": ("drained", "end")}
    for phase, (a, b) in spans.items():
        secs = max(1e-9, marks[b] - marks[a])
        phases[phase]["cpu"] = (cpu[b] - cpu[a]) / secs
        if budget is not None:
            phases[phase]["throttled"] = throttled[b][0] - throttled[a][0]
    drain_s = marks["drained"] - marks["ledger"]
    return {"phases": phases, "drain_s": drain_s, "drain_rate": backlog / drain_s,
            "exact": held == seqs == movements and counts.get("synced", 0) == movements,
            "ledger_events": held, "movements": movements}


def run(backlog: int = 40_000, rounds: int = 3, offline_s: float = 6.0, online_s: float = 6.0,
        workdir: Path | None = None, budgets: Sequence[bool] = (False, True)) -> dict[str, Any]:
    """Rounds of the three phases, without and with the CPU budget taking turns."""
    base = workdir or Path(__file__).resolve().parent / ".work"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="ack-", dir=base))
    out: dict[str, Any] = {"backlog": backlog, "rounds": rounds, "every_ms": EVERY * 1e3}
    budget: CpuBudget | None = None
    if True in budgets:
        try:
            budget = CpuBudget.create()
            out["budget"] = budget.describe()
        except Unavailable as exc:
            out["budget_skipped"] = str(exc)
    try:
        filled = d / "filled.db"
        fill_journal(filled, STATION, backlog)
        per: dict[bool, list[dict[str, Any]]] = {b: [] for b in budgets}
        for r in range(rounds):
            for limited in budgets:
                if limited and budget is None:
                    continue
                per[limited].append(one_round(
                    d / f"r{r}-{'pi' if limited else 'full'}", filled, backlog, offline_s,
                    online_s, budget if limited else None))
        for limited, results in per.items():
            if results:
                out["pi" if limited else "full"] = summarize(results)
    finally:
        if budget is not None:
            budget.remove()
        shutil.rmtree(d, ignore_errors=True)
    return out


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds; the ratios are taken within each round, then their median."""
    med = {p: {k: statistics.median(r["phases"][p][k] for r in results)
               for k in results[0]["phases"][p]} for p in PHASES}
    ratios = {p: statistics.median(r["phases"][p]["p99"] / r["phases"]["offline"]["p99"]
                                   for r in results) for p in ("online", "draining")}
    return {"phases": med, "ratios": ratios,
            "per_round": [{p: r["phases"][p]["p99"] for p in PHASES} for r in results],
            "drain_s": statistics.median(r["drain_s"] for r in results),
            "drain_rate": statistics.median(r["drain_rate"] for r in results),
            "exact": all(r["exact"] for r in results),
            "met": {p: ratios[p] <= GOAL_RATIO for p in ratios}}


def report(r: dict[str, Any]) -> str:
    lines = [f"scan -> ACK byte through `scan-agent run`, one host-ACK serial scanner on a pty, "
             f"a scan every {r['every_ms']:.0f} ms; backlog {r['backlog']:,} movements; "
             f"median of {r['rounds']} rounds (ratios taken within each round):"]
    for key, title in (("full", "whole machine"), ("pi", "CPU budget")):
        s = r.get(key)
        if key == "pi" and "budget_skipped" in r:
            lines.append(f"  CPU budget: skipped: {r['budget_skipped']}")
            continue
        if s is None:
            continue
        if key == "pi":
            title = f"CPU budget, {r['budget']}"
        lines.append(f"  {title}:")
        for p in PHASES:
            f = s["phases"][p]
            extra = f"  agent CPU {f['cpu'] * 100:5.1f} %"
            if "throttled" in f:
                extra += f", throttled in {f['throttled']:.0f} periods"
            ratio = "" if p == "offline" else (
                f"  p99 ratio {s['ratios'][p]:.2f}x (goal <= {GOAL_RATIO}x: "
                f"{'met' if s['met'][p] else 'NOT met'})")
            lines.append(f"    {p:<9} n {f['n']:>5.0f}  p50 {f['p50'] * 1e3:6.2f} ms  p99 "
                         f"{f['p99'] * 1e3:6.2f} ms  max {f['max'] * 1e3:7.2f} ms{extra}{ratio}")
        lines.append(f"    drain of the backlog: {s['drain_s']:.1f} s "
                     f"({s['drain_rate']:,.0f} movements/s); per-round p99 (ms): " + "; ".join(
                         " ".join(f"{p} {x[p] * 1e3:.1f}" for p in PHASES)
                         for x in s["per_round"]))
        lines.append("    ledger holds every movement exactly once: "
                     + ("yes" if s["exact"] else "NO"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--backlog", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="offline and online phase length")
    ap.add_argument("--budget", choices=("both", "only", "none"), default="both")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    budgets = {"both": (False, True), "only": (True,), "none": (False,)}[a.budget]
    if a.quick:
        print(report(run(2_000, 1, 1.0, 1.0, budgets=budgets)))
    else:
        print(report(run(a.backlog, a.rounds, a.seconds, a.seconds, budgets=budgets)))


if __name__ == "__main__":
    main()
