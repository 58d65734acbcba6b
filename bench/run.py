"""Run every benchmark and write docs/benchmarks.md.

    .venv/bin/python bench/run.py                 # full run (about 10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick         # smoke run: small sizes, every code path
    .venv/bin/python bench/run.py --only sync     # some sections only
    .venv/bin/python bench/run.py --output FILE   # write the report elsewhere

Every figure is printed next to a baseline measured in the same run on the same machine and
disk (the machine is shared and noisy: compare ratios), with its goal and a plain verdict.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ack as ack_bench  # noqa: E402
from bench import agent as agent_bench  # noqa: E402
from bench import capture as capture_bench  # noqa: E402
from bench import sync as sync_bench  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"
SECTIONS = ("capture", "ack", "sync", "agent", "ledger", "postgres")


@dataclass(frozen=True)
class Row:
    """One goal: what was measured, against what, and whether the goal is met."""

    what: str
    measured: str
    baseline: str
    ratio: str
    goal: str
    met: bool | None  # None: no goal to judge (shown for context)

    def markdown(self) -> str:
        verdict = "—" if self.met is None else ("met" if self.met else "**not met**")
        return (f"| {self.what} | {self.measured} | {self.baseline} | {self.ratio} | "
                f"{self.goal} | {verdict} |")


@dataclass
class Section:
    name: str
    title: str
    what: str
    reproduce: str
    rows: list[Row]
    details: str
    seconds: float
    error: str | None = None


# -- the sections ------------------------------------------------------------------------------


def _capture_rows(r: dict[str, Any], where: str) -> list[Row]:
    pq = f"persist-queue `SQLiteAckQueue`, 4 threads, synchronous=FULL: " \
         f"{r['persist_queue_4x_puts_per_s']:,.0f} puts/s"
    return [
        Row(f"scan-to-commit latency p50 (`Station.handle` on the capture thread){where}",
            f"{r['agent_p50_ms']:.3f} ms",
            f"bare SQLite insert+commit on the calling thread, WAL, synchronous=FULL: "
            f"{r['bare_p50_ms']:.3f} ms", f"{r['ratio_p50']:.2f}x", "<= 1.5x the bare commit",
            r["ratio_p50"] <= 1.5),
        Row(f"durable throughput, 4 host-ACK pty scanners through the daemon, each waiting "
            f"for its ACK{where}", f"{r['ack_mode_4x_per_s']:,.0f} scans/s", pq,
            f"{r['ack_mode_vs_persist_queue']:.1f}x", ">= 2x persist-queue",
            r["ack_mode_vs_persist_queue"] >= 2),
        Row(f"durable throughput, 4 scanners streaming at once (`Station.submit`){where}",
            f"{r['agent_4x_streaming_per_s']:,.0f} scans/s", pq,
            f"{r['throughput_vs_persist_queue']:.1f}x", ">= 2x persist-queue and >= 2,000 "
            "scans/s", r["throughput_vs_persist_queue"] >= 2
            and r["agent_4x_streaming_per_s"] >= 2000),
        Row(f"durable throughput, 4 pty scanners streaming through the daemon, to the last "
            f"ACK{where}", f"{r['pty_4x_streaming_per_s']:,.0f} scans/s",
            f"persist-queue: {r['persist_queue_4x_puts_per_s']:,.0f} puts/s",
            f"{r['pty_vs_persist_queue']:.1f}x", "(context)", None),
        Row(f"durable throughput, 4 scanners on the station each waiting for its commit{where}",
            f"{r['agent_4x_scans_per_s']:,.0f} scans/s",
            f"persist-queue: {r['persist_queue_4x_puts_per_s']:,.0f} puts/s",
            f"{r['waiting_vs_persist_queue']:.1f}x", "(context)", None),
        Row(f"pty barcode -> ACK byte through the daemon, p50{where}",
            f"{r['pty_p50_ms']:.3f} ms (p99 {r['pty_p99_ms']:.3f} ms)",
            f"bare commit p50: {r['bare_p50_ms']:.3f} ms",
            f"{r['pty_p50_ms'] / r['bare_p50_ms']:.2f}x", "(context)", None),
    ]


PI = ", CPU budget of a quarter core"


def _skipped(r: dict[str, Any], what: str) -> list[Row]:
    return [Row(f"{what}{PI}", f"skipped: {r['budget_skipped']}", "—", "—", "(context)",
                None)] if "budget_skipped" in r else []


def capture_section(quick: bool) -> tuple[list[Row], str]:
    r = capture_bench.run(200 if quick else 2000, WORK)
    full, pi = _capture_rows(r["full"], ""), _capture_rows(r["pi"], PI) if "pi" in r else []
    rows = [x for pair in zip(full, pi, strict=True) for x in pair] if pi else full
    return rows + _skipped(r, "every capture figure"), capture_bench.report(r)


def ack_section(quick: bool) -> tuple[list[Row], str]:
    r = (ack_bench.run(2_000, 1, 1.5, 1.5, WORK) if quick
         else ack_bench.run(40_000, 3, 6.0, 6.0, WORK))
    rows = []
    for key, where in (("full", ""), ("pi", PI)):
        s = r.get(key)
        if s is None:
            continue
        off = s["phases"]["offline"]
        rows.append(Row(f"scan -> ACK, ledger down{where}",
                        f"p50 {off['p50'] * 1e3:.2f} ms, p99 {off['p99'] * 1e3:.2f} ms, max "
                        f"{off['max'] * 1e3:.1f} ms", "—", "—", "(the baseline)", None))
        for phase, what in (("online", "ledger up, each scan synced as it comes"),
                            ("draining", f"draining a {r['backlog']:,}-movement backlog")):
            f = s["phases"][phase]
            rows.append(Row(
                f"scan -> ACK p99, {what}{where}",
                f"p50 {f['p50'] * 1e3:.2f} ms, p99 {f['p99'] * 1e3:.2f} ms, max "
                f"{f['max'] * 1e3:.1f} ms", f"ledger down, same round: p99 "
                f"{off['p99'] * 1e3:.2f} ms", f"{s['ratios'][phase]:.2f}x",
                "<= 1.5x the offline p99", s["met"][phase]))
        rows.append(Row(f"backlog drain while scanning{where}",
                        f"{s['drain_rate']:,.0f} movements/s ({s['drain_s']:.1f} s); ledger "
                        f"holds each once: {'yes' if s['exact'] else 'NO'}", "—", "—",
                        "every movement once", s["exact"]))
    return rows + _skipped(r, "scan -> ACK in three phases"), ack_bench.report(r)


def sync_section(quick: bool) -> tuple[list[Row], str]:
    r = sync_bench.run(5_000 if quick else 100_000, 50 if quick else 500, WORK)
    rows = []
    for b, x in r["drains"].items():
        rows.append(Row(
            f"backlog drain, {r['movements']:,} movements, batch_size {b}",
            f"{x['rate']:,.0f} movements/s; ledger holds {x['ledger_events']:,} "
            f"({'exact' if x['exact'] else 'MISMATCH'})",
            f"ledger ceiling, raw posts of {b}: {x['raw_rate']:,.0f} events/s",
            f"{x['ratio']:.2f}", ">= 10,000 movements/s, each delivered once", x["met"]))
    rows.append(Row(
        f"scan-to-ledger-acknowledged p50 ({r['scans']} scans 20 ms apart)",
        f"{r['synced_p50_ms']:.1f} ms (p99 {r['synced_p99_ms']:.1f} ms)",
        f"raw POST of a 1-event batch: {r['raw_p50_ms']:.1f} ms (p99 {r['raw_p99_ms']:.1f} ms)",
        f"{r['latency_ratio_p50']:.2f}x", "p50 < 50 ms", r["latency_met"]))
    return rows, sync_bench.report(r)


def agent_section(quick: bool) -> tuple[list[Row], str]:
    r = (agent_bench.run(5_000, 5.0, 3, 1, WORK) if quick
         else agent_bench.run(100_000, 60.0, 10, 2, WORK))
    m, i, s, p = r["memory"], r["idle"], r["ready"], r["imports"]
    rows = [
        Row("RSS, empty queue", f"{m['empty_mb']:.1f} MB",
            f"`python -c '{agent_bench.LIBS}'`: {m['libs_mb']:.1f} MB; interpreter alone "
            f"{m['interp_mb']:.1f} MB", f"{m['over_libs']:.2f}x", "<= 60 MB",
            m["empty_mb"] <= agent_bench.RSS_GOAL_MB),
        Row(f"RSS, {m['movements']:,} movements queued", f"{m['backlog_mb']:.1f} MB",
            f"the same agent with an empty queue: {m['empty_mb']:.1f} MB", f"{m['growth']:.2f}x",
            f"<= 60 MB and no growth (<= {agent_bench.RSS_GROWTH_GOAL:.2f}x)", m["met"]),
        Row(f"idle CPU over {i['window_s']:.0f} s, two scanners connected, ledger up",
            f"{i['agent_pct']:.3f} % of one core ({i['wakeups_per_s']:.1f} wake-ups/s)",
            f"idle asyncio interpreter: {i['baseline_pct']:.3f} %",
            f"+{i['agent_pct'] - i['baseline_pct']:.3f} points", "< 0.5 %", i["met"]),
        Row(f"start to READY=1, median of {s['starts']}", f"{s['agent_s'] * 1e3:.0f} ms",
            f"`python -c pass`: {s['pass_s'] * 1e3:.0f} ms; importing the libraries: "
            f"{s['libs_s'] * 1e3:.0f} ms", f"{s['ratio']:.1f}x", "< 1 s", s["met"]),
        Row("packages never to load in a serial dock", ", ".join(p["forbidden_loaded"])
            or "none loaded", "—", "—", "uvicorn, starlette, ledger, evdev, gpiozero, biip "
            "not loaded", not p["forbidden_loaded"]),
    ]
    return rows, agent_bench.report(r)


def _ledger_subprocess(quick: bool) -> tuple[list[Row], str]:
    """Fallback: bench/ledger.py's own output, when its functions cannot be called."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "ledger.py"),
                          *(["--quick"] if quick else [])], capture_output=True, text=True,
                         cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench/ledger.py failed:\n{out.stderr[-2000:]}")
    return [Row("ledger ingest and late-event cost", "see the output below", "—", "—",
                ">= 20,000 events/s; late event at 1M <= 2x at 10k", None)], out.stdout


REPEAT = 5  # ingest runs per figure, taking turns between figures (the median is reported)
ROUNDS = 10  # rounds of LATE late events per history size (the best is reported)
LATE = 1000


def ledger_section(quick: bool) -> tuple[list[Row], str]:
    try:
        from bench import ledger as ledger_bench

        ingest_figures = ledger_bench.ingest_figures
        late_event_costs = ledger_bench.late_event_costs
        history_figures = ledger_bench.history_figures
        stations = ledger_bench.STATIONS
    except (ImportError, AttributeError):
        return _ledger_subprocess(quick)
    # long enough that settling (every 50,000 events at least) is in every figure
    n_direct, n_http = (5_000, 2_000) if quick else (150_000, 150_000)
    sizes = [10_000, 30_000] if quick else [10_000, 100_000, 1_000_000]
    histories = [20_000, 60_000] if quick else [300_000, 3_000_000]
    thresholds = gc.get_threshold()  # the ledger tunes the collector as its server does
    try:
        with tempfile.TemporaryDirectory(prefix="ledger-", dir=WORK) as tmp:
            ingest = ingest_figures(n_direct, n_http, Path(tmp), REPEAT)
            history = history_figures(histories, Path(tmp))
        costs = late_event_costs(sizes, LATE, ROUNDS)
    except TypeError:  # its interface changed under us: use its command line
        return _ledger_subprocess(quick)
    finally:
        gc.set_threshold(*thresholds)
    lines = [f"ingest (batches of {ledger_bench.BATCH} over 100 items x 10 locations; "
             f"store+engine "
             f"{n_direct:,} events, HTTP to `scan-ledger serve` {n_http:,} events from "
             f"{stations} stations at once; median of {REPEAT} runs each, the figures' runs "
             "taking turns):"]
    rows = []
    base_direct, base_http, _ = ingest[0.0]
    for late, (direct, http, incidents) in ingest.items():
        label = "in order" if late == 0 else f"{late:.0%} late"
        lines.append(f"  {label:>9}: store+engine {direct:>9,.0f} events/s   HTTP "
                     f"{http:>9,.0f} events/s   ({incidents:,} incidents opened)")
        for path, rate, base in (("store+engine", direct, base_direct),
                                 ("over HTTP", http, base_http)):
            rows.append(Row(f"ingest {path}, {label}", f"{rate:,.0f} events/s",
                            "—" if late == 0 else f"in-order ingest: {base:,.0f} events/s",
                            "—" if late == 0 else f"{rate / base:.2f}", ">= 20,000 events/s",
                            rate >= 20_000))
    lines.append(f"one late event on one item-location (engine), best of {ROUNDS} x {LATE}, "
                 "the sizes measured in turn, each kept within 10% of its size:")
    for size, cost in zip(sizes, costs, strict=True):
        lines.append(f"  history {size:>9,}: {cost * 1e6:7.1f} µs per late event   "
                     f"ratio vs 10k {cost / costs[0]:4.2f}")
    rows.append(Row(f"one late event, history {sizes[-1]:,} on one item-location",
                    f"{costs[-1] * 1e6:.1f} µs",
                    f"history {sizes[0]:,}: {costs[0] * 1e6:.1f} µs",
                    f"{costs[-1] / costs[0]:.2f}x", "<= 2x the 10k cost",
                    costs[-1] / costs[0] <= 2))
    lines.append("restart of `scan-ledger serve` (SIGTERM, start, first answer) and its "
                 "resident memory then, against history (4 stations, watermarks advancing, "
                 "the same items and locations), median of 3 restarts:")
    for size, in_memory, restart, rss, dbsize in history:
        lines.append(f"  history {size:>9,}: restart {restart:5.2f} s   RSS "
                     f"{rss / 2**20:6.1f} MiB   ({in_memory:,} events in memory; database "
                     f"{dbsize / 2**20:,.0f} MiB)")
    small, big = history[0], history[-1]
    rows.append(Row(f"RSS after a restart, history {big[0]:,}", f"{big[3] / 2**20:.1f} MiB",
                    f"history {small[0]:,}: {small[3] / 2**20:.1f} MiB",
                    f"{big[3] / small[3]:.2f}x", "<= 1.25x", big[3] / small[3] <= 1.25))
    for size, _mem, restart, _rss, _db in history:
        rows.append(Row(f"restart to first answer, history {size:,}", f"{restart:.2f} s",
                        "—", "—", "<= 3 s", restart <= 3))
    return rows, "\n".join(lines)


def postgres_section(quick: bool) -> tuple[list[Row], str]:
    from bench import ledger as ledger_bench

    n = 10_000 if quick else 50_000
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="ledger-pg-", dir=WORK) as tmp:
        rates, takeovers = ledger_bench.postgres_figures(n, Path(tmp), repeat)
    stations = ledger_bench.STATIONS * 2
    base = rates["sqlite, 1 process"]
    lines = [f"ingest over HTTP, {n:,} in-order events from {stations} stations over "
             f"{ledger_bench.PG_SITES} sites, batches of {ledger_bench.BATCH}, each to a "
             f"process at random; median of {repeat} runs, taking turns:"]
    rows = []
    for label, rate in rates.items():
        lines.append(f"  {label:<24} {rate:>9,.0f} events/s   ratio vs SQLite {rate / base:.2f}")
        if label.startswith("postgresql"):
            two = label.endswith("2 processes")
            rows.append(Row(f"ingest over HTTP into PostgreSQL, {label.split(', ')[1]}",
                            f"{rate:,.0f} events/s", f"SQLite, 1 process: {base:,.0f} events/s",
                            f"{rate / base:.2f}", ">= 10,000 events/s" if two else "—",
                            rate >= 10_000 if two else None))
    lines.append("takeover after SIGKILL of one of two processes (until every station of its "
                 "sites is acknowledged again): " + ", ".join(f"{t:.2f} s" for t in takeovers))
    worst = max(takeovers)
    rows.append(Row("takeover after SIGKILL, worst of the runs", f"{worst:.2f} s", "—", "—",
                    "< 10 s", worst < 10))
    return rows, "\n".join(lines)


RUNNERS: dict[str, tuple[str, str, str, Callable[[bool], tuple[list[Row], str]]]] = {
    "capture": ("Capture", "Scan-to-commit latency and durable throughput of the station's "
                "capture path, against a bare durable SQLite commit issued the way a blocking "
                "program would (on the calling thread) and persist-queue. The agent captures "
                "on its capture thread: the journal's writer runs an event loop of its own "
                "where the daemon reads the scanners, works out each scan, commits it inline "
                "and writes its ACK, so a scan crosses no thread on its way. The throughput "
                "goal is 4 host-ACK scanners on pseudo-terminals through a real `scan-agent "
                "run`, each waiting for its ACK before its next scan; persist-queue's 4 "
                "threads put one scan after the other, each put durable when it returns. "
                "Streaming (a scanner's next scans read while earlier ones commit) and the "
                "station alone are shown too. Every figure is measured again with the agent "
                "in a CPU cgroup of a quarter of one core (the in-process figures, baselines "
                "included, in a child process inside it; the scanners' side outside).",
                ".venv/bin/python bench/capture.py", capture_section),
    "ack": ("Scan to ACK under sync", "The operator's good-read signal while the station "
            "syncs: one `scan-agent run` process, one serial scanner on a pseudo-terminal in "
            "host-acknowledge mode, a scan every 10 ms, each timed from the barcode written "
            "on the pty to the ACK byte read back. One run of the daemon on a journal holding "
            "a backlog goes through three phases: the ledger down (the baseline), then the "
            "ledger started and the backlog drained while the scans go on, then each scan "
            "synced as it comes. Each goal compares a phase's p99 with the offline p99 of "
            "the same round; the figures are medians of the rounds. The same rounds run "
            "with the agent in a CPU cgroup of a quarter of one core (a Raspberry-Pi-class "
            "budget), the ledger and the scanner outside it.",
            ".venv/bin/python bench/ack.py", ack_section),
    "sync": ("Sync", "Backlog drain into the reference ledger and scan-to-ledger latency, "
             "against the ledger's own ingest ceiling and a raw HTTP POST. The drain handles "
             "one batch at a time (read and stamp it, commit the stamps, post it, commit the "
             "results), so its rate is bounded by the agent's time per movement plus the "
             "ledger's time per event; the ceiling column is the ledger's share alone.",
             ".venv/bin/python bench/sync.py", sync_section),
    "agent": ("Agent", "Memory, idle CPU and start-to-ready of a real `scan-agent run` "
              "with two serial scanners on pseudo-terminals.",
              ".venv/bin/python bench/agent.py", agent_section),
    "ledger": ("Ledger", "Ingest throughput of the reference ledger and the cost of one late "
               "event as one item-location's history grows. Ingest is measured through the "
               "service in one thread (JSON parsing, validation, engine, one SQLite "
               "transaction per batch) and over HTTP with several stations posting at once, "
               "as a central ledger is used (`scan-ledger serve` reads each batch in its "
               "reader process while it applies the one before), in batches of the agent's "
               "default `batch_size` (1000, what a station catching up sends); each figure "
               "is the median of a few runs on fresh databases, each run long enough to "
               "settle its history several times. The late-event histories are all built "
               "first and measured in turn, so that the 10k and 1M figures see the same "
               "machine, and a history grown by a tenth is built again; at 1M the history "
               "no longer fits in the CPU's caches, which is most of what grows besides the "
               "O(log n) path.",
               ".venv/bin/python bench/ledger.py", ledger_section),
    "postgres": ("Ledger on PostgreSQL", "Ingest over HTTP into `scan-ledger serve` on "
                 "PostgreSQL (a throwaway cluster started by the benchmark, fsync on, every "
                 "commit synced) with one and with two processes, beside one process on "
                 "SQLite in the same run, with the stations spread over four sites and each "
                 "batch sent to one of the processes at random, as a round-robin load "
                 "balancer does (so about half the batches are forwarded to their site's "
                 "owner); and the takeover: seconds from SIGKILL of one of two processes, "
                 "stations posting all the while, until every station of its sites has a "
                 "batch acknowledged again. Everything, the database server and the stations "
                 "included, shares the machine's cores.",
                 ".venv/bin/python bench/ledger.py --only-postgres", postgres_section),
}


# -- the machine -------------------------------------------------------------------------------


def _disk(path: Path) -> str:
    path = path.resolve()
    best = ("?", "?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype, *_ = line.split()
        if str(path).startswith(mnt) and len(mnt) >= len(best[2]):
            best = (dev, fstype, mnt)
    dev, fstype, mnt = best
    kind = ""
    name = Path(dev).name.rstrip("0123456789")
    rot = Path(f"/sys/block/{name}/queue/rotational")
    if rot.exists():
        kind = (", kernel reports it rotational" if rot.read_text().strip() == "1"
                else ", kernel reports it non-rotational")
    st = os.statvfs(path)
    return (f"{dev} ({fstype}{kind}, mounted on {mnt}, "
            f"{st.f_bavail * st.f_frsize / 2**30:.0f} GiB free)")


def machine() -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    u = os.uname()
    return [
        ("CPU", f"{os.cpu_count()} cores (`nproc`), {platform.machine()} (`uname -m`), {cpu}"),
        ("Memory", mem),
        ("Kernel", f"{u.sysname} {u.release}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}, "
                   f"SQLite {sqlite3.sqlite_version}"),
        ("Disk (databases and journals)", _disk(WORK)),
    ]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the report --------------------------------------------------------------------------------


def render(sections: list[Section], started: dt.datetime, seconds: float, quick: bool,
           load_before: str, load_after: str) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run.py{' --quick' if quick else ''}` on "
        f"{started:%Y-%m-%d %H:%M} UTC; the run took {seconds / 60:.1f} minutes."
        + (" **Quick run: small sizes, figures not representative.**" if quick else ""),
        "",
        "Each figure sits next to a baseline measured in the same run, on the same machine and "
        "disk. The machine is shared (other test suites run on it at the same time), so "
        "absolute figures are noisy: the ratios are what to compare between runs and machines.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine()],
        f"- Load average (1, 5, 15 min): {load_before} at the start, {load_after} at the end",
        "",
        "## How to reproduce",
        "",
        "From the repository root, after the README's setup:",
        "",
        "```sh",
        ".venv/bin/python bench/run.py            # everything; rewrites docs/benchmarks.md",
        ".venv/bin/python bench/run.py --quick    # smoke run (small sizes, every code path)",
        *[f"{RUNNERS[s.name][2]:<40} # {s.title.lower()} alone, prints its figures"
          for s in sections],
        "```",
        "",
        "## Summary",
        "",
        "| Section | Goal | Verdict |",
        "| --- | --- | --- |",
    ]
    for s in sections:
        if s.error is not None:
            out.append(f"| {s.title} | (the benchmark failed) | **not met** |")
        for row in s.rows:
            if row.met is not None:
                out.append(f"| {s.title} | {row.what}: {row.goal} | "
                           f"{'met' if row.met else '**not met**'} |")
    for s in sections:
        out += [
            "",
            f"## {s.title}",
            "",
            f"{s.what} Reproduce alone: `{s.reproduce}`. Section time: {s.seconds:.0f} s.",
            "",
        ]
        if s.error is not None:
            out += ["**The benchmark failed:**", "", "```", s.error.rstrip(), "```"]
            continue
        out += [
            "| Measure | Measured | Baseline (same run) | Ratio | Goal | Verdict |",
            "| --- | --- | --- | --- | --- | --- |",
            *[row.markdown() for row in s.rows],
            "",
            "```",
            s.details.rstrip(),
            "```",
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and a short idle window: a smoke run of every code path")
    ap.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md",
                    help="where to write the report (default: docs/benchmarks.md)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    metavar="SECTION", help=f"run only these ({', '.join(SECTIONS)})")
    a = ap.parse_args(argv)
    # the benchmarks start and stop scanners and ledgers on purpose: only errors matter
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    WORK.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    load_before = load()
    sections = []
    for name in (s for s in SECTIONS if s in a.only):
        title, what, reproduce, fn = RUNNERS[name]
        print(f"== {title}", flush=True)
        s0 = time.perf_counter()
        try:
            rows, details = fn(a.quick)
            error = None
        except Exception:
            rows, details, error = [], "", traceback.format_exc()
        sec = Section(name, title, what, reproduce, rows, details, time.perf_counter() - s0,
                      error)
        sections.append(sec)
        print(error or details, flush=True)
    text = render(sections, started, time.perf_counter() - t0, a.quick, load_before, load())
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(text, encoding="utf-8")
    print(f"wrote {a.output}")
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
