"""Agent process benchmark: memory, idle CPU and start-to-ready of a real ``scan-agent run``.

Every subject is a real ``scan-agent run`` process with two serial scanners on
pseudo-terminals and a ``[ledger]`` configured, measured from outside through ``/proc``:

- RSS (``VmRSS``) once both scanners are connected, with an empty journal and with N
  movements queued (journal filled before start, the ledger URL pointing at a closed port so
  they stay queued). Baselines, interleaved: the interpreter alone, and an interpreter that
  has imported ``sqlite3, asyncio, httpx, serial``.
- idle CPU: utime + stime over a window with both scanners connected and the ledger up (the
  idle heartbeat included). Baseline over the same window: an idle asyncio process.
- start-to-ready: spawn to ``READY=1`` on a ``NOTIFY_SOCKET`` we bind, median of several
  starts. Baseline, interleaved: spawn to exit of ``python -c pass``.
- which of the heavy packages the agent loads (``python -X importtime``).

Run: ``.venv/bin/python bench/agent.py [--movements N] [--idle SECONDS] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.journal import Journal  # noqa: E402
from bench.sync import SITE, fill_journal, ledger_process, stop_process, write_token  # noqa: E402

RSS_GOAL_MB = 60.0
RSS_GROWTH_GOAL = 1.10  # "the same" with a backlog: within 10 %
CPU_GOAL_PCT = 0.5
READY_GOAL_S = 1.0
LIBS = "import sqlite3, asyncio, httpx, serial"
#: packages a serial dock must (or may) load, and those it must never load
WATCH = ["click", "httpx", "serial", "sqlite_utils", "uuid6", "biip", "evdev", "gpiozero",
         "uvicorn", "starlette", "ledger"]
NEVER = {"uvicorn", "starlette", "ledger", "evdev", "gpiozero", "biip"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _agent_cmd(*python_flags: str) -> list[str]:
    script = Path(sys.executable).parent / "scan-agent"
    if script.exists():
        return [sys.executable, *python_flags, str(script)]
    return [sys.executable, *python_flags, "-m", "agent.cli"]


def rss_kb(pid: int) -> int:
    return _status_field(pid, "VmRSS")


def _status_field(pid: int, name: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{name}:\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def ctx_switches(pid: int) -> int:
    """Context switches summed over the process's threads (each one is a wake-up)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            text = (task / "status").read_text()
            total += sum(int(v) for v in re.findall(r"ctxt_switches:\s+(\d+)", text))
    return total


# -- a dock with two pty scanners --------------------------------------------------------------


@dataclass
class Dock:
    dirpath: Path
    config: Path
    database: Path
    ptys: list[tuple[int, int]]

    def close(self) -> None:
        for m, s in self.ptys:
            for fd in (m, s):
                with contextlib.suppress(OSError):
                    os.close(fd)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dock(dirpath: Path, station: str, ledger_url: str, token: str,
         database: Path | None = None) -> Iterator[Dock]:
    dirpath.mkdir(parents=True, exist_ok=True)
    ptys = []
    for _ in range(2):
        m, s = os.openpty()
        tty.setraw(m)
        tty.setraw(s)
        ptys.append((m, s))
    db = database or dirpath / "journal.db"
    token_file = write_token(dirpath / "token", token)
    scanners = "".join(
        f'\n[[scanners]]\nname = "s{i}"\ndriver = "serial"\nport = "{os.ttyname(s)}"\n'
        for i, (_, s) in enumerate(ptys))
    cfg = dirpath / "dock.toml"
    cfg.write_text(
        f'station = "{station}"\nsite = "{SITE}"\nlocation = "DOCK-1"\ndatabase = "{db}"\n'
        f'log_level = "WARNING"\n\n[ledger]\nurl = "{ledger_url}"\n'
        f'token_file = "{token_file}"\n{scanners}', encoding="utf-8")
    d = Dock(dirpath, cfg, db, ptys)
    try:
        yield d
    finally:
        d.close()


class NotifySocket:
    """An ``AF_UNIX`` datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_for(self, text: str, timeout: float) -> float:
        """perf_counter() when a datagram containing ``text`` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {text} within {timeout} s")
            self.sock.settimeout(left)
            data = self.sock.recv(4096)
            if text.encode() in data.split(b"\n"):
                return time.perf_counter()

    def drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(4096)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    started: float
    ready: float
    notify: NotifySocket

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def agent_process(d: Dock, *python_flags: str, stderr: Path | None = None,
                  timeout: float = 30,
                  preexec: Callable[[], None] | None = None) -> Iterator[Running]:
    """``scan-agent run`` for dock ``d``, ready (READY=1 received) on entry, stopped on exit.

    ``preexec`` runs in the child before the agent starts (e.g. to enter a CPU cgroup)."""
    notify = NotifySocket(d.dirpath / "notify")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = str(notify.path)
    err = open(stderr or d.dirpath / "agent.log", "ab")  # noqa: SIM115 - closed below
    proc: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*_agent_cmd(*python_flags), "run", "--config", str(d.config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, cwd=d.dirpath, start_new_session=True,
                                preexec_fn=preexec)
        try:
            ready = notify.wait_for("READY=1", timeout)
        except (TimeoutError, OSError) as exc:
            err.flush()
            tail = (stderr or d.dirpath / "agent.log").read_text(errors="replace")
            tail = "\n".join(ln for ln in tail.splitlines()
                             if not ln.startswith("import time:"))[-3000:]
            raise RuntimeError(f"scan-agent did not become ready ({exc}, exit code "
                               f"{proc.poll()}); its log:\n{tail}") from exc
        yield Running(proc, t0, ready, notify)
    finally:
        if proc is not None:
            stop_process(proc)
        err.close()
        notify.close()


def wait_connected(d: Dock, n: int = 2, timeout: float = 15) -> None:
    """Until the journal says ``n`` scanners are connected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(f"file:{d.database}?mode=ro", uri=True, timeout=1)
            try:
                up = conn.execute("SELECT count(*) FROM scanners WHERE connected = 1"
                                  ).fetchone()[0]
            finally:
                conn.close()
            if up >= n:
                return
        time.sleep(0.05)
    raise RuntimeError(f"scanners not connected within {timeout} s")


@contextlib.contextmanager
def baseline_process(code: str) -> Iterator[subprocess.Popen[str]]:
    """A Python process that ran ``code`` and now waits on stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('ok', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"baseline {code!r} failed")
        yield proc
    finally:
        stop_process(proc)


# -- measurements ------------------------------------------------------------------------------


def _settled_rss(pid: int, settle: float, samples: int = 5) -> int:
    """The highest VmRSS over a few samples after ``settle`` seconds."""
    time.sleep(settle)
    best = 0
    for _ in range(samples):
        best = max(best, rss_kb(pid))
        time.sleep(0.2)
    return best


def memory(work: Path, movements: int, rounds: int, settle: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{closed_port()}"  # unreachable: the backlog stays queued
    filled = work / "filled.db"
    fill_journal(filled, "dock-rss", movements)
    out: dict[str, list[int]] = {"interp": [], "libs": [], "empty": [], "backlog": [],
                                 "empty_hwm": [], "backlog_hwm": []}
    for r in range(rounds):
        with baseline_process("pass") as p:
            out["interp"].append(_settled_rss(p.pid, 0.2, 2))
        with baseline_process(LIBS) as p:
            out["libs"].append(_settled_rss(p.pid, 0.2, 2))
        for case in ("empty", "backlog"):
            run = work / f"rss-{case}-{r}"
            run.mkdir()
            db = run / "journal.db"
            if case == "backlog":
                shutil.copy(filled, db)
            else:
                Journal(db, "dock-rss", SITE).close()  # a dock's journal exists after day one
            with dock(run, "dock-rss", url, "unused-token", db) as d, agent_process(d) as a:
                wait_connected(d)
                out[case].append(_settled_rss(a.pid, settle))
                out[f"{case}_hwm"].append(_status_field(a.pid, "VmHWM"))
                if case == "backlog":
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                    pending = conn.execute("SELECT count(*) FROM movements WHERE state ="
                                           " 'pending'").fetchone()[0]
                    conn.close()
                    if pending != movements:
                        raise RuntimeError(f"{pending} pending, expected {movements}")
    med = {k: statistics.median(v) / 1024 for k, v in out.items()}
    return {**{f"{k}_mb": v for k, v in med.items()},
            "growth": med["backlog"] / med["empty"], "movements": movements,
            "over_libs": med["empty"] / med["libs"],
            "met": max(med["empty"], med["backlog"]) <= RSS_GOAL_MB
            and med["backlog"] / med["empty"] <= RSS_GROWTH_GOAL}


def idle_cpu(work: Path, window: float, settle: float) -> dict[str, Any]:
    run = work / "idle"
    run.mkdir()
    with ledger_process(run / "ledger.db", ["dock-idle"]) as (url, tokens), \
            dock(run, "dock-idle", url, tokens["dock-idle"]) as d, agent_process(d) as a, \
            baseline_process("import asyncio") as base:
        wait_connected(d)
        time.sleep(settle)
        a0, b0, s0 = cpu_ticks(a.pid), cpu_ticks(base.pid), ctx_switches(a.pid)
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        a1, b1, s1 = cpu_ticks(a.pid), cpu_ticks(base.pid), ctx_switches(a.pid)
        a.notify.drain()
    agent_pct = (a1 - a0) / CLK_TCK / elapsed * 100
    return {"window_s": elapsed, "agent_pct": agent_pct,
            "agent_cpu_s": (a1 - a0) / CLK_TCK,
            "baseline_pct": (b1 - b0) / CLK_TCK / elapsed * 100,
            "wakeups_per_s": (s1 - s0) / elapsed, "met": agent_pct < CPU_GOAL_PCT}


def start_to_ready(work: Path, starts: int) -> dict[str, Any]:
    run = work / "ready"
    url = f"http://127.0.0.1:{closed_port()}"
    agent: list[float] = []
    bare: list[float] = []
    libs: list[float] = []
    with dock(run, "dock-ready", url, "unused-token") as d:
        for _ in range(starts):  # baseline and subject alternate
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", LIBS], check=True)
            libs.append(time.perf_counter() - t0)
            with agent_process(d) as a:
                agent.append(a.ready - a.started)
    med = statistics.median(agent)
    return {"starts": starts, "agent_s": med, "agent_max_s": max(agent),
            "pass_s": statistics.median(bare), "libs_s": statistics.median(libs),
            "ratio": med / statistics.median(bare), "met": med < READY_GOAL_S}


def loaded_packages(work: Path) -> dict[str, Any]:
    """Top-level packages imported by a ready agent (``-X importtime`` on one start)."""
    run = work / "imports"
    url = f"http://127.0.0.1:{closed_port()}"
    log = run / "importtime.log"
    with dock(run, "dock-imports", url, "unused-token") as d:
        Journal(d.database, "dock-imports", SITE).close()
        with agent_process(d, "-X", "importtime", stderr=log) as a:
            wait_connected(d)
            time.sleep(0.5)
            a.notify.drain()
    mods: dict[str, int] = {}
    total_us = 0
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s+)(\S+)", line)
        if m:
            total_us += int(m.group(1))
            top = m.group(4).split(".")[0]
            mods[top] = mods.get(top, 0) + int(m.group(1))
    loaded = [p for p in WATCH if p in mods]
    return {"loaded": loaded, "not_loaded": [p for p in WATCH if p not in mods],
            "forbidden_loaded": sorted(NEVER & set(loaded)), "import_ms": total_us / 1000,
            "top": sorted(((v / 1000, k) for k, v in mods.items()), reverse=True)[:8]}


def run(movements: int = 100_000, idle: float = 60.0, starts: int = 10, rounds: int = 2,
        workdir: Path | None = None) -> dict[str, Any]:
    base = workdir or Path(__file__).resolve().parent / ".work"
    base.mkdir(parents=True, exist_ok=True)
    # short: AF_UNIX socket paths are limited to 108 bytes
    d = Path(tempfile.mkdtemp(prefix="agent-", dir=base))
    settle = 3.0 if idle >= 30 else 1.0
    try:
        return {"memory": memory(d, movements, rounds, settle),
                "idle": idle_cpu(d, idle, settle),
                "ready": start_to_ready(d, starts),
                "imports": loaded_packages(d)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def report(r: dict[str, Any]) -> str:
    m, i, s, p = r["memory"], r["idle"], r["ready"], r["imports"]
    return "\n".join([
        "RSS (VmRSS) of `scan-agent run`, two serial scanners on ptys connected, [ledger] set, "
        "median of the rounds:",
        f"  baseline: interpreter alone                  {m['interp_mb']:6.1f} MB",
        f"  baseline: python -c '{LIBS}' {m['libs_mb']:6.1f} MB",
        f"  agent, empty queue                           {m['empty_mb']:6.1f} MB"
        f"   (peak {m['empty_hwm_mb']:.1f} MB)   ratio to the libraries baseline "
        f"{m['over_libs']:.2f}x",
        f"  agent, {m['movements']:,} movements queued          {m['backlog_mb']:6.1f} MB"
        f"   (peak {m['backlog_hwm_mb']:.1f} MB)   ratio to empty queue {m['growth']:.2f}x",
        f"  goal <= {RSS_GOAL_MB:.0f} MB and no growth with the backlog (ratio <= "
        f"{RSS_GROWTH_GOAL:.2f}): {verdict(m['met'])}",
        f"idle CPU over {i['window_s']:.0f} s, two scanners connected, ledger up:",
        f"  agent     {i['agent_pct']:.3f} % of one core ({i['agent_cpu_s']:.2f} s CPU), "
        f"{i['wakeups_per_s']:.1f} context switches/s",
        f"  baseline: idle asyncio interpreter, same window  {i['baseline_pct']:.3f} %",
        f"  goal < {CPU_GOAL_PCT} %: {verdict(i['met'])}",
        f"start to READY=1 on NOTIFY_SOCKET, median of {s['starts']} starts:",
        f"  agent {s['agent_s'] * 1e3:7.1f} ms (slowest {s['agent_max_s'] * 1e3:.1f} ms)",
        f"  baseline: python -c pass {s['pass_s'] * 1e3:7.1f} ms;  python -c '{LIBS}' "
        f"{s['libs_s'] * 1e3:7.1f} ms",
        f"  ratio agent / python -c pass: {s['ratio']:.1f}x",
        f"  goal < {READY_GOAL_S:.0f} s: {verdict(s['met'])}",
        f"packages a ready serial dock has imported ({p['import_ms']:.0f} ms of imports):",
        f"  loaded: {', '.join(p['loaded'])}",
        f"  not loaded: {', '.join(p['not_loaded'])}",
        "  heaviest: " + ", ".join(f"{k} {v:.0f} ms" for v, k in p["top"][:6]),
        "  never to load (ledger server, evdev, gpiozero, biip before a GS1 scan): "
        + ("none loaded: met" if not p["forbidden_loaded"]
           else f"NOT MET: {', '.join(p['forbidden_loaded'])}"),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--movements", type=int, default=100_000)
    ap.add_argument("--idle", type=float, default=60.0, help="idle CPU window, seconds")
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the files")
    a = ap.parse_args()
    if a.quick:
        print(report(run(5_000, 5.0, 3, 1, a.dir)))
    else:
        print(report(run(a.movements, a.idle, a.starts, 2, a.dir)))


if __name__ == "__main__":
    main()
