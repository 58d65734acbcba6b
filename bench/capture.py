"""Capture benchmark: scan-to-commit latency and durable throughput, against baselines.

Measured in one run, in one directory on the same disk:

- bare: one ``INSERT`` + ``COMMIT`` per row on SQLite in WAL with ``synchronous=FULL``, issued
  the way a blocking program would (on the calling thread): the floor for any durable capture;
- agent: ``Station.handle`` per scan (interpret, session, audit row + movement + session state
  in one transaction) on the capture thread, where the daemon runs it: the commit runs inline
  on that thread, with no crossing between threads on the way;
- through the daemon: a real ``scan-agent run`` with 4 host-ACK serial scanners on
  pseudo-terminals, driven from this process: one scanner's barcode until its ACK byte
  (latency); the 4 scanners each waiting for its ACK before its next scan, as a scanner in
  host-acknowledge mode does (the throughput goal); and the 4 streaming, each sending all its
  barcodes at once, until the last ACK;
- persist-queue's ``SQLiteAckQueue`` with the same durability (WAL, ``synchronous=FULL``) fed
  by 4 threads, one put after the other, each durable when it returns (the baseline);
- for context, 4 scanners on the station alone, streaming and each waiting for its commit.

Every figure is measured twice: on the whole machine, and with the agent in a CPU budget of a
quarter of one core (:mod:`bench.cpubudget`): the daemon starts inside the cgroup, and the
in-process figures (bare commit, station, persist-queue) run in a child process inside it; the
scanners' side stays outside. Skipped with the reason where no cgroup can be made.

Run: ``.venv/bin/python bench/capture.py [--scans N] [--dir DIR] [--budget both|only|none]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
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
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture import Outcome, Station
from agent.config import Config, parse_config
from agent.journal import Journal, JournalWriter
from bench.cpubudget import CpuBudget, Unavailable
from drivers.base import RawScan

GTINS = ["4006381333931", "5901234123457", "4012345678901", "9780201379624"]
CODES = [g.encode() + b"\r" for g in GTINS]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def bare_commit(path: Path, n: int) -> list[float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE scans (id INTEGER PRIMARY KEY, scanner TEXT, wall REAL, "
                 "text TEXT, raw BLOB)")
    out = []
    for i in range(n):
        t = GTINS[i % 4]
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO scans (scanner, wall, text, raw) VALUES (?,?,?,?)",
                     ("h", time.time(), t, t.encode()))
        conn.execute("COMMIT")
        out.append(time.perf_counter() - t0)
    conn.close()
    return out


def _config(dirpath: Path, scanners: int = 4) -> Config:
    return parse_config({
        "station": "bench", "site": "WH1", "location": "DOCK-1",
        "database": str(dirpath / "journal.db"),
        "scanners": [{"name": f"s{i}", "driver": "serial", "port": "/dev/null",
                      "debounce_ms": 0} for i in range(scanners)],
    }, "bench.toml")


async def _on_capture_thread(w: JournalWriter, coro: Any) -> Any:
    """Run ``coro`` where the daemon runs its station: on the writer's own loop."""
    return await w.run(coro)


async def agent_latency(dirpath: Path, n: int, *, durable: bool = True,
                        prof: cProfile.Profile | None = None) -> list[float]:
    """``Station.handle`` per scan on the capture thread, as the daemon captures: the commit
    runs inline on that thread, with no crossing on the way. ``durable=False``: with
    ``synchronous = OFF``, the CPU of the path without the disk's wait (bench/station_cpu.py);
    ``prof`` profiles the scans."""
    cfg = _config(dirpath)
    journal = Journal(cfg.database, cfg.station, cfg.site)
    if not durable:
        journal.conn.execute("PRAGMA synchronous = OFF")
    async with JournalWriter(journal) as w:
        st = Station(cfg, w)

        async def measure() -> list[float]:
            await st.start()
            out = []
            if prof is not None:
                prof.enable()
            for i in range(n):
                t = GTINS[i % 4]
                scan = RawScan("s0", t, t.encode())
                t0 = time.perf_counter()
                o = await st.handle(scan)
                out.append(time.perf_counter() - t0)
                assert o.status == "accepted", o
            if prof is not None:
                prof.disable()
            return out

        return list(await _on_capture_thread(w, measure()))


async def _scans_per_s(dirpath: Path, per_scanner: int, scanners: int,
                       stream: Callable[[Station, str], Awaitable[None]]) -> float:
    """Scans/s of ``scanners`` scanners, each running ``stream(station, name)`` on the
    capture thread at once, until all committed."""
    cfg = _config(dirpath, scanners)
    async with JournalWriter(Journal(cfg.database, cfg.station, cfg.site)) as w:
        st = Station(cfg, w)

        async def measure() -> float:
            await st.start()
            t0 = time.perf_counter()
            await asyncio.gather(*(stream(st, f"s{i}") for i in range(scanners)))
            return scanners * per_scanner / (time.perf_counter() - t0)

        return float(await _on_capture_thread(w, measure()))


async def agent_streaming(dirpath: Path, per_scanner: int, scanners: int = 4) -> float:
    """4 scanners streaming: a scan submitted per scanner per loop turn, as the daemon reads
    them, each scanner holding at most the daemon's in-flight window; until all committed."""
    from agent.daemon import _IN_FLIGHT

    async def stream(st: Station, name: str) -> None:
        inflight: deque[asyncio.Future[Outcome]] = deque()
        for i in range(per_scanner):
            t = GTINS[i % 4]
            inflight.append(st.submit(RawScan(name, t, t.encode())))
            if len(inflight) >= _IN_FLIGHT:
                assert (await inflight.popleft()).status == "accepted"
            else:
                await asyncio.sleep(0)  # the next read comes in a later loop turn
        for fut in inflight:
            assert (await fut).status == "accepted"

    return await _scans_per_s(dirpath, per_scanner, scanners, stream)


async def agent_throughput(dirpath: Path, per_scanner: int, scanners: int = 4) -> float:
    """4 scanners on the capture thread, each waiting for its commit before its next scan."""

    async def stream(st: Station, name: str) -> None:
        for i in range(per_scanner):
            t = GTINS[i % 4]
            o = await st.handle(RawScan(name, t, t.encode()))
            assert o.status == "accepted"

    return await _scans_per_s(dirpath, per_scanner, scanners, stream)


def persist_queue_throughput(dirpath: Path, per_thread: int, threads: int = 4) -> float:
    from persistqueue import SQLiteAckQueue

    q = SQLiteAckQueue(str(dirpath), auto_commit=True, multithreading=True)
    q._putter.execute("PRAGMA synchronous = FULL")  # equal durability to the journal

    def put(k: int) -> None:
        for i in range(per_thread):
            q.put({"scanner": f"s{k}", "text": GTINS[i % 4], "wall": time.time()})

    ts = [threading.Thread(target=put, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rate = threads * per_thread / (time.perf_counter() - t0)
    q.close()
    return rate


def inprocess(d: Path, scans: int, repeats: int = 3) -> dict[str, Any]:
    """The figures measured inside this process: commits, station, persist-queue."""
    d.mkdir(parents=True, exist_ok=True)
    bare: list[float] = []
    agent: list[float] = []
    rounds = 4
    for r in range(rounds):  # interleaved, so that disk noise hits both alike
        bare += bare_commit(d / f"bare{r}.db", scans // rounds)
        agent += asyncio.run(agent_latency(d / f"agent{r}", scans // rounds))
    waiting = asyncio.run(agent_throughput(d / "thr", scans // 2))
    streaming = asyncio.run(agent_streaming(d / "stream", scans // 2))
    pq = [persist_queue_throughput(d / f"pq{k}", scans // 8) for k in range(repeats)]
    return {
        "bare_p50_ms": statistics.median(bare) * 1e3, "bare_p99_ms": pct(bare, 99) * 1e3,
        "agent_p50_ms": statistics.median(agent) * 1e3, "agent_p99_ms": pct(agent, 99) * 1e3,
        "ratio_p50": statistics.median(agent) / statistics.median(bare),
        "agent_4x_streaming_per_s": streaming, "agent_4x_scans_per_s": waiting,
        "persist_queue_4x_puts_per_s": statistics.median(pq), "persist_queue_runs": pq,
        "bare_commits_per_s": len(bare) / sum(bare), "scans": len(agent),
    }


def _inprocess_in(budget: CpuBudget, d: Path, scans: int) -> dict[str, Any]:
    """:func:`inprocess` in a child process inside the CPU budget."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--inprocess-json", "--scans",
         str(scans), "--dir", str(d)], capture_output=True, text=True, timeout=1800,
        preexec_fn=lambda: budget.enter(os.getpid()))
    if out.returncode != 0:
        raise RuntimeError(f"bench/capture.py in the CPU budget failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.splitlines()[-1]))


def _ack_mode(masters: list[int], per_scanner: int) -> float:
    """Each scanner writes a barcode and waits for its ACK byte before the next (a scanner
    in host-acknowledge mode); scans/s over all of them. One thread drives every scanner
    from a poll loop, so that the scanners' side adds no contention of its own."""
    poll = select.poll()
    for m in masters:
        poll.register(m, select.POLLIN)
    sent = dict.fromkeys(masters, 0)
    t0 = time.perf_counter()
    for m in masters:
        os.write(m, CODES[0])
        sent[m] = 1
    answered = 0
    while answered < len(masters) * per_scanner:
        ready = poll.poll(30_000)
        if not ready:
            raise RuntimeError("no ACK within 30 s")
        for m, _ in ready:
            got = os.read(m, 16)
            assert got == b"\x06", got
            answered += 1
            if sent[m] < per_scanner:
                os.write(m, CODES[sent[m] % 4])
                sent[m] += 1
    return len(masters) * per_scanner / (time.perf_counter() - t0)


def _streaming(masters: list[int], per_scanner: int) -> float:
    """Each scanner sends all its barcodes as fast as the pty takes them; until every ACK."""
    payload = b"".join(CODES[i % 4] for i in range(per_scanner))

    def acks(master: int) -> None:
        got = 0
        while got < per_scanner:
            data = os.read(master, 4096)
            assert set(data) == {6}, data
            got += len(data)

    with ThreadPoolExecutor(max_workers=2 * len(masters)) as pool:
        t0 = time.perf_counter()
        readers = [pool.submit(acks, m) for m in masters]
        writers = [pool.submit(os.write, m, payload) for m in masters]
        for f in writers + readers:
            f.result()
        return len(masters) * per_scanner / (time.perf_counter() - t0)


def _round_trips(master: int, n: int) -> list[float]:
    poll = select.poll()
    poll.register(master, select.POLLIN)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        os.write(master, CODES[i % 4])
        if not poll.poll(30_000):
            raise RuntimeError("no ACK within 30 s")
        got = os.read(master, 16)
        out.append(time.perf_counter() - t0)
        assert got == b"\x06", got
    return out


def daemon(d: Path, scans: int, budget: CpuBudget | None, repeats: int = 3) -> dict[str, Any]:
    """Through a real ``scan-agent run`` (inside the budget if one is given) with 4 host-ACK
    serial scanners on pseudo-terminals, driven from this process."""
    from bench.ack import pty_dock
    from bench.agent import agent_process, wait_connected

    work = d / ("daemon-pi" if budget else "daemon")
    dock = pty_dock(work, [f"s{k}" for k in range(4)])
    enter = None if budget is None else (lambda: budget.enter(os.getpid()))
    masters = [m for m, _ in dock.ptys]
    try:
        with agent_process(dock, preexec=enter):
            wait_connected(dock, 4)
            trips = _round_trips(masters[0], max(100, scans // 4))
            ack = [_ack_mode(masters, scans // 8) for _ in range(repeats)]
            stream = _streaming(masters, scans // 2)
    finally:
        dock.close()
    return {"pty_p50_ms": statistics.median(trips) * 1e3, "pty_p99_ms": pct(trips, 99) * 1e3,
            "ack_mode_4x_per_s": statistics.median(ack), "ack_mode_runs": ack,
            "pty_4x_streaming_per_s": stream}


def figures(d: Path, scans: int, budget: CpuBudget | None) -> dict[str, Any]:
    r = inprocess(d / "full", scans) if budget is None else _inprocess_in(
        budget, d / "pi", scans)
    r.update(daemon(d, scans, budget))
    pq = r["persist_queue_4x_puts_per_s"]
    r.update({"throughput_vs_persist_queue": r["agent_4x_streaming_per_s"] / pq,
              "ack_mode_vs_persist_queue": r["ack_mode_4x_per_s"] / pq,
              "pty_vs_persist_queue": r["pty_4x_streaming_per_s"] / pq,
              "waiting_vs_persist_queue": r["agent_4x_scans_per_s"] / pq})
    return r


def run(scans: int = 2000, workdir: Path | None = None,
        budgets: tuple[bool, ...] = (False, True)) -> dict[str, Any]:
    """Every figure on the whole machine, and again with the agent in a CPU budget of a
    quarter of one core (skipped, with the reason, where no cgroup can be made)."""
    base = workdir or Path(__file__).resolve().parent / ".work"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="capture-", dir=base))
    out: dict[str, Any] = {}
    budget: CpuBudget | None = None
    try:
        if False in budgets:
            out["full"] = figures(d, scans, None)
        if True in budgets:
            try:
                budget = CpuBudget.create()
            except Unavailable as exc:
                out["budget_skipped"] = str(exc)
            else:
                out["budget"] = budget.describe()
                out["pi"] = figures(d, scans, budget)
    finally:
        if budget is not None:
            budget.remove()
        shutil.rmtree(d, ignore_errors=True)
    return out


def report_one(r: dict[str, Any]) -> str:
    return "\n".join([
        f"  scan-to-commit latency over {r['scans']} scans (same disk, same run):",
        f"    bare SQLite insert+commit (WAL, synchronous=FULL)  p50 {r['bare_p50_ms']:.3f} ms"
        f"  p99 {r['bare_p99_ms']:.3f} ms",
        f"    agent capture on its capture thread              p50 {r['agent_p50_ms']:.3f} ms"
        f"  p99 {r['agent_p99_ms']:.3f} ms",
        f"    ratio agent/bare p50: {r['ratio_p50']:.2f}x   (goal <= 1.5x)",
        f"    pty barcode -> ACK byte through the daemon       p50 {r['pty_p50_ms']:.3f} ms"
        f"  p99 {r['pty_p99_ms']:.3f} ms",
        "  durable throughput, 4 scanners at once:",
        f"    4 host-ACK pty scanners through the daemon, each waiting for its ACK "
        f"{r['ack_mode_4x_per_s']:,.0f} scans/s (runs: "
        + ", ".join(f"{x:,.0f}" for x in r["ack_mode_runs"]) + ")",
        f"    4 pty scanners streaming through the daemon, to the last ACK "
        f"{r['pty_4x_streaming_per_s']:,.0f} scans/s",
        f"    station, scanners streaming (Station.submit)     "
        f"{r['agent_4x_streaming_per_s']:,.0f} scans/s",
        f"    station, each scan waiting for its commit        "
        f"{r['agent_4x_scans_per_s']:,.0f} scans/s",
        f"    persist-queue SQLiteAckQueue, 4 threads          "
        f"{r['persist_queue_4x_puts_per_s']:,.0f} puts/s (runs: "
        + ", ".join(f"{x:,.0f}" for x in r["persist_queue_runs"]) + ")",
        f"    bare sequential commits                          "
        f"{r['bare_commits_per_s']:,.0f} commits/s",
        f"    4 host-ACK scanners / persist-queue: {r['ack_mode_vs_persist_queue']:.1f}x"
        "   (goal >= 2x)",
        f"    streaming: station / persist-queue {r['throughput_vs_persist_queue']:.1f}x, "
        f"through the ptys {r['pty_vs_persist_queue']:.1f}x",
    ])


def report(r: dict[str, Any]) -> str:
    lines = []
    if "full" in r:
        lines += ["whole machine:", report_one(r["full"])]
    if "pi" in r:
        lines += [f"CPU budget, {r['budget']} (the agent, its station and persist-queue inside "
                  "it; the scanners' side outside):", report_one(r["pi"])]
    elif "budget_skipped" in r:
        lines.append(f"CPU budget: skipped: {r['budget_skipped']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    ap.add_argument("--budget", choices=("both", "only", "none"), default="both")
    ap.add_argument("--inprocess-json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inprocess_json:  # the in-process figures, for a run inside a CPU budget
        print(json.dumps(inprocess(a.dir, a.scans)))
        return
    budgets = {"both": (False, True), "only": (True,), "none": (False,)}[a.budget]
    print(report(run(a.scans, a.dir, budgets)))


if __name__ == "__main__":
    main()
