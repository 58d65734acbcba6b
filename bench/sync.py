"""Sync benchmark: backlog drain rate and scan-to-ledger latency, against baselines.

Measured in one run against the reference ledger (``scan-ledger serve`` in its own process,
on 127.0.0.1, a fresh database per measurement):

- drain: a journal holding N movements captured through ``Journal.capture`` (real scans:
  location scans and GTINs interpreted and applied to a session, in groups of 1,000 per
  transaction) is drained by a :class:`~agent.sync.SyncLoop` at ``batch_size`` 1000 (the
  default) and 2,000. Baseline: the same ledger ingesting pre-built batches of the same size
  posted back to back on one kept-alive connection (the ledger's ceiling over loopback).
  The ledger must hold exactly N events of the station afterwards.
- latency: scans handled by a :class:`~agent.capture.Station` wired to a ``SyncLoop`` as the
  daemon wires them, 20 ms apart, from ``Station.handle`` to the moment the movement is
  marked synced in the journal. Baseline, interleaved round by round: the raw HTTP POST round
  trip of a 1-event batch to the same ledger, also 20 ms apart.

Run: ``.venv/bin/python bench/sync.py [--movements N] [--scans N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uuid6  # noqa: E402

from agent.capture import Station  # noqa: E402
from agent.clock import boot_id, format_utc, kernel_clock_synced  # noqa: E402
from agent.config import Config, GrammarConfig, parse_config  # noqa: E402
from agent.grammar import interpret, printable  # noqa: E402
from agent.journal import Capture, Journal, JournalWriter  # noqa: E402
from agent.session import Defaults, apply, initial_state  # noqa: E402
from agent.sync import SyncLoop  # noqa: E402
from drivers.base import RawScan  # noqa: E402

GTINS = ["4006381333931", "5901234123457", "4012345678901", "9780201379624"]
SITE = "WH1"
DRAIN_GOAL = 10_000.0  # movements/s
LATENCY_GOAL_MS = 50.0  # p50


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


# -- the reference ledger, in its own process --------------------------------------------------


def _ledger_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger", *args], capture_output=True,
                          text=True, check=True, cwd=ROOT, timeout=120)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL it if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def ledger_process(db: Path, stations: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """``scan-ledger serve`` on a free port of 127.0.0.1 with ``stations`` registered.

    Yields (base URL, station -> token); the process group is stopped on exit.
    """
    tokens = {s: _ledger_cli("station", "add", s, "--site", SITE, "--db", str(db))
              .stdout.splitlines()[-1].strip() for s in stations}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "serve", "--db", str(db), "--host", "127.0.0.1",
         "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            stop_process(proc)
            raise RuntimeError(f"the ledger did not start: {line!r}")
        yield line.split()[-1], tokens
    finally:
        stop_process(proc)


def ledger_count(db: Path, station: str) -> tuple[int, int]:
    """(events, distinct seqs) the ledger holds for ``station``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*), count(DISTINCT seq) FROM events WHERE station = ?",
                           (station,)).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1])


# -- a dock ------------------------------------------------------------------------------------


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def dock_config(dirpath: Path, station: str, *, ledger_url: str | None = None,
                token_file: Path | None = None, batch_size: int = 1000,
                database: Path | None = None) -> Config:
    data: dict[str, Any] = {
        "station": station, "site": SITE, "location": "DOCK-1",
        "database": str(database or dirpath / f"{station}.db"),
        "scanners": [{"name": "s0", "driver": "serial", "port": "/dev/null",
                      "debounce_ms": 0}],
    }
    if ledger_url is not None:
        data["ledger"] = {"url": ledger_url, "token_file": str(token_file),
                          "batch_size": batch_size}
    return parse_config(data, "bench.toml")


def fill_journal(path: Path, station: str, movements: int, group: int = 1000) -> float:
    """Capture ``movements`` receipts into a new journal at ``path``; returns seconds taken.

    The scans are what a receiving dock reads: a bin label every 50 scans, then GTINs,
    interpreted and applied to the scanner's session exactly as the station does, and
    committed ``group`` at a time (audit rows, movements and session state).
    """
    t0 = time.perf_counter()
    journal = Journal(path, station, SITE)
    grammar = GrammarConfig()
    defaults = Defaults(mode="receipt", location="DOCK-1")
    state = initial_state(defaults)
    bid, ntp = boot_id(), kernel_clock_synced()
    made, i = 0, 0
    batch: list[Capture] = []
    try:
        while made < movements:
            text = f"LOC-A-{(i // 50) % 40:02d}" if i % 50 == 0 else GTINS[i % 4]
            i += 1
            step = apply(state, interpret(text, grammar), defaults, printable(text, 200),
                         event_id=str(uuid6.uuid7()))
            assert step.rejected is None, step.rejected
            state = step.state
            batch.append(Capture(
                scanner="s0", text=text, raw=text.encode(), wall_time=time.time(),
                boot_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME), boot_id=bid,
                outcome="accepted", note=step.note, movement=step.movement,
                session_state=state.to_json(), ntp_synced=ntp))
            made += step.movement is not None
            if len(batch) >= group:
                journal.capture(batch)
                batch = []
        if batch:
            journal.capture(batch)
        assert journal.counts().get("pending") == movements
    finally:
        journal.close()
    return time.perf_counter() - t0


# -- drain -------------------------------------------------------------------------------------


async def _drain(cfg: Config, movements: int) -> tuple[float, dict[str, int]]:
    journal = await asyncio.to_thread(Journal, cfg.database, cfg.station, cfg.site)
    async with JournalWriter(journal) as writer:
        sync = SyncLoop(cfg, writer)
        t0 = time.perf_counter()
        task = asyncio.create_task(sync.run())
        try:
            while sync.stats.sent < movements:
                if task.done():
                    task.result()
                    raise RuntimeError("the sync loop stopped early")
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - t0
        finally:
            await sync.close()
            await task
        counts = await writer.call(lambda j: j.counts())
    if sync.stats.accepted != movements:
        raise RuntimeError(f"ledger accepted {sync.stats.accepted} of {movements}")
    return movements / elapsed, counts


def drain_rate(workdir: Path, source: Path, station: str, movements: int,
               batch_size: int) -> dict[str, Any]:
    """A copy of the filled journal drained into a fresh ledger at ``batch_size``."""
    run = workdir / f"drain-{batch_size}"
    run.mkdir()
    shutil.copy(source, run / "journal.db")
    db = run / "ledger.db"
    with ledger_process(db, [station]) as (url, tokens):
        cfg = dock_config(run, station, ledger_url=url,
                          token_file=write_token(run / "token", tokens[station]),
                          batch_size=batch_size, database=run / "journal.db")
        rate, counts = asyncio.run(_drain(cfg, movements))
    held, seqs = ledger_count(db, station)
    return {"rate": rate, "journal_pending": counts.get("pending", 0),
            "journal_synced": counts.get("synced", 0), "ledger_events": held,
            "ledger_seqs": seqs, "exact": held == seqs == movements
            and counts.get("synced", 0) == movements}


def _event(station: str, seq: int, t_ns: int, i: int) -> dict[str, Any]:
    """One receipt as the agent sends it (DESIGN section 5)."""
    return {
        "event_id": str(uuid6.uuid7()), "station": station, "site": SITE, "scanner": "s0",
        "seq": seq, "type": "receipt", "item": "0" + GTINS[i % 4], "lot": None,
        "serial": None, "qty": 1, "from_location": None,
        "to_location": f"A-{(i // 50) % 40:02d}", "occurred_at": format_utc(t_ns),
        "reference": None, "operator": None, "voids": None,
        "clock": {"synced": True, "offset_ms": 0.0, "basis": "ledger"},
        "raw": [GTINS[i % 4]],
    }


def _bodies(station: str, first_seq: int, n: int, batch: int) -> list[bytes]:
    t = time.time_ns() - n * 1_000_000
    events = [_event(station, first_seq + i, t + i * 1_000_000, i) for i in range(n)]
    out = []
    for k in range(0, n, batch):
        chunk = events[k:k + batch]
        out.append(json.dumps({"station": station, "sent_at": format_utc(time.time_ns()),
                               "watermark": chunk[-1]["occurred_at"], "events": chunk},
                              separators=(",", ":")).encode())
    return out


def raw_ingest_rate(workdir: Path, station: str, movements: int, batch_size: int) -> float:
    """The ledger's own ceiling: pre-built batches posted back to back, one connection."""
    run = workdir / f"raw-{batch_size}"
    run.mkdir()
    bodies = _bodies(station, 1, movements, batch_size)
    with ledger_process(run / "ledger.db", [station]) as (url, tokens):
        headers = {"Authorization": f"Bearer {tokens[station]}",
                   "Content-Type": "application/json"}
        with httpx.Client(base_url=url, timeout=120) as http:
            t0 = time.perf_counter()
            for body in bodies:
                r = http.post("/v1/events", content=body, headers=headers)
                r.raise_for_status()
            return movements / (time.perf_counter() - t0)


# -- scan-to-ledger latency --------------------------------------------------------------------


async def _scan_round(station: Station, sync: SyncLoop, n: int, spacing: float,
                      offset: int) -> tuple[list[float], list[float]]:
    """``n`` scans ``spacing`` apart; (scan -> committed, scan -> synced) for each."""
    base = sync.stats.sent
    started: list[float] = []
    committed: list[float] = []
    synced: list[float] = []

    async def watch() -> None:
        while len(synced) < n:
            now = time.perf_counter()
            while len(synced) < min(sync.stats.sent - base, len(started)):
                synced.append(now - started[len(synced)])
            await asyncio.sleep(0.0005)

    watcher = asyncio.create_task(watch())
    t_first = time.perf_counter()
    for k in range(n):
        delay = t_first + k * spacing - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        text = GTINS[(offset + k) % 4]
        t0 = time.perf_counter()
        started.append(t0)
        outcome = await station.handle(RawScan("s0", text, text.encode()))
        committed.append(time.perf_counter() - t0)
        if outcome.status != "accepted":
            raise RuntimeError(f"scan not accepted: {outcome.describe()}")
    await asyncio.wait_for(watcher, 60)
    return committed, synced


async def _raw_round(http: httpx.AsyncClient, token: str, station: str, first_seq: int,
                     n: int, spacing: float) -> list[float]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    out = []
    t_first = time.perf_counter()
    for k in range(n):
        delay = t_first + k * spacing - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        body = _bodies(station, first_seq + k, 1, 1)[0]
        t0 = time.perf_counter()
        r = await http.post("/v1/events", content=body, headers=headers)
        out.append(time.perf_counter() - t0)
        if r.status_code != 200 or r.json()["results"][0]["status"] != "accepted":
            raise RuntimeError(f"raw post refused: {r.status_code} {r.text[:200]}")
    return out


async def _latency(cfg: Config, url: str, raw_token: str, scans: int, rounds: int,
                   spacing: float) -> dict[str, list[float]]:
    journal = await asyncio.to_thread(Journal, cfg.database, cfg.station, cfg.site)
    async with JournalWriter(journal) as writer:
        sync = SyncLoop(cfg, writer)
        station = Station(cfg, writer, time_base=lambda: sync.time_base,
                          ntp_synced=kernel_clock_synced)
        station.listeners.append(sync.on_capture)  # wired as the daemon wires it
        await station.start()
        task = asyncio.create_task(sync.run())
        out: dict[str, list[float]] = {"committed": [], "synced": [], "raw": []}
        try:
            while sync.stats.last_ok is None:  # a running daemon has its time base already
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
                per = max(1, scans // rounds)
                for r in range(rounds):
                    committed, synced = await _scan_round(station, sync, per, spacing, r * per)
                    out["committed"] += committed
                    out["synced"] += synced
                    out["raw"] += await _raw_round(http, raw_token, "raw-post", r * per + 1,
                                                   per, spacing)
        finally:
            await sync.close()
            await task
    return out


def scan_to_ledger(workdir: Path, scans: int, rounds: int = 5,
                   spacing: float = 0.020) -> dict[str, Any]:
    run = workdir / "latency"
    run.mkdir()
    db = run / "ledger.db"
    with ledger_process(db, ["dock-lat", "raw-post"]) as (url, tokens):
        cfg = dock_config(run, "dock-lat", ledger_url=url,
                          token_file=write_token(run / "token", tokens["dock-lat"]))
        lat = asyncio.run(_latency(cfg, url, tokens["raw-post"], scans, rounds, spacing))
    held, _ = ledger_count(db, "dock-lat")
    return {"lat": lat, "ledger_events": held}


# -- the benchmark -----------------------------------------------------------------------------


def run(movements: int = 100_000, scans: int = 500, workdir: Path | None = None,
        batch_sizes: Sequence[int] = (1000, 2000)) -> dict[str, Any]:
    base = workdir or Path(__file__).resolve().parent / ".work"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="sync-", dir=base))
    station = "dock-1"
    try:
        source = d / "filled.db"
        fill_s = fill_journal(source, station, movements)
        drains: dict[int, dict[str, Any]] = {}
        raws: dict[int, float] = {}
        for b in batch_sizes:  # baseline and subject alternate, batch size by batch size
            raws[b] = raw_ingest_rate(d, "raw-ingest", movements, b)
            drains[b] = drain_rate(d, source, station, movements, b)
        lat = scan_to_ledger(d, scans)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    ms = {k: [v * 1e3 for v in vs] for k, vs in lat["lat"].items()}
    return {
        "movements": movements, "fill_s": fill_s, "fill_rate": movements / fill_s,
        "drains": {b: {**drains[b], "raw_rate": raws[b], "ratio": drains[b]["rate"] / raws[b],
                       "met": drains[b]["rate"] >= DRAIN_GOAL and drains[b]["exact"]}
                   for b in batch_sizes},
        "scans": len(ms["synced"]),
        "synced_p50_ms": statistics.median(ms["synced"]), "synced_p99_ms": pct(ms["synced"], 99),
        "committed_p50_ms": statistics.median(ms["committed"]),
        "committed_p99_ms": pct(ms["committed"], 99),
        "raw_p50_ms": statistics.median(ms["raw"]), "raw_p99_ms": pct(ms["raw"], 99),
        "latency_ratio_p50": statistics.median(ms["synced"]) / statistics.median(ms["raw"]),
        "latency_ledger_events": lat["ledger_events"],
        "latency_met": statistics.median(ms["synced"]) < LATENCY_GOAL_MS,
    }


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def report(r: dict[str, Any]) -> str:
    lines = [
        f"backlog drain: {r['movements']:,} movements captured into a journal "
        f"({r['fill_rate']:,.0f}/s, groups of 1,000), then drained into the reference ledger "
        "(own process, 127.0.0.1):",
    ]
    for b, x in r["drains"].items():
        lines += [
            f"  batch_size {b:>5}: agent drain {x['rate']:>9,.0f} movements/s   "
            f"ledger ceiling (raw posts of {b}) {x['raw_rate']:>9,.0f} events/s   "
            f"ratio {x['ratio']:.2f}",
            f"                    ledger holds {x['ledger_events']:,} events "
            f"({x['ledger_seqs']:,} distinct seq), journal synced {x['journal_synced']:,}, "
            f"pending {x['journal_pending']:,}: {'exact' if x['exact'] else 'MISMATCH'}",
            f"                    goal >= {DRAIN_GOAL:,.0f} movements/s, all delivered once: "
            f"{verdict(x['met'])}",
        ]
    lines += [
        f"scan-to-ledger latency, {r['scans']} scans 20 ms apart (network up), "
        "interleaved with the baseline:",
        f"  scan -> committed in the journal        p50 {r['committed_p50_ms']:7.2f} ms"
        f"  p99 {r['committed_p99_ms']:7.2f} ms",
        f"  scan -> synced (ledger acknowledged)    p50 {r['synced_p50_ms']:7.2f} ms"
        f"  p99 {r['synced_p99_ms']:7.2f} ms",
        f"  baseline: raw POST of a 1-event batch   p50 {r['raw_p50_ms']:7.2f} ms"
        f"  p99 {r['raw_p99_ms']:7.2f} ms",
        f"  ratio scan-to-ledger / raw POST p50: {r['latency_ratio_p50']:.2f}x",
        f"  goal p50 < {LATENCY_GOAL_MS:.0f} ms: {verdict(r['latency_met'])}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--movements", type=int, default=100_000)
    ap.add_argument("--scans", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    a = ap.parse_args()
    movements, scans = (5_000, 50) if a.quick else (a.movements, a.scans)
    print(report(run(movements, scans, a.dir)))


if __name__ == "__main__":
    main()
