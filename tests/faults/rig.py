"""The fault suite's rig: real processes, real pseudo-terminals, a real ledger on 127.0.0.1.

- :class:`PtyScanner`: a serial scanner in host-acknowledge mode, played by the test on a
  pseudo-terminal. It keeps the slave side open itself, so the terminal outlives a killed
  daemon, and it maps every ACK/NAK byte to the scan it answers (one byte per scan, in order).
- :class:`AgentProcess` and :class:`LedgerProcess`: ``scan-agent run`` and ``scan-ledger
  serve`` as subprocesses in their own session, killed as a process group.
- :func:`journal_rows`, :func:`ledger_get`, :func:`assert_exactly_once`: the checks every
  fault ends with.

Every wait here has a generous limit so that a broken run fails instead of hanging; none of
them is a pass/fail criterion.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import termios
import time
import tty
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

ACK = 0x06
NAK = 0x15
SKU_PATTERN = r"SKU-(?P<sku>[A-Z])-[0-9A-Z]+"
DEFAULT_LOCATION = "DOCK-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- scanners ----------------------------------------------------------------------------


class PtyScanner:
    """One scanner on a pseudo-terminal; ``send`` a scan, ``collect`` the answers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing, even before the agent opens it
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.outstanding: deque[str] = deque()
        self.acked: list[str] = []
        self.naked: list[str] = []
        self.unanswered: list[str] = []  # sent, but the daemon died before answering
        self.sent: list[str] = []
        self.stray = 0  # answer bytes with no scan outstanding: must stay 0

    def send(self, text: str) -> None:
        os.write(self.master, text.encode() + b"\r")
        self.outstanding.append(text)
        self.sent.append(text)

    def collect(self) -> int:
        """Read whatever answers arrived; returns how many."""
        n = 0
        while True:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:  # EIO: nobody holds the slave (never, since we do)
                return n
            if not data:
                return n
            for byte in data:
                if not self.outstanding:
                    self.stray += 1
                    continue
                text = self.outstanding.popleft()
                if byte == ACK:
                    self.acked.append(text)
                elif byte == NAK:
                    self.naked.append(text)
                else:
                    self.stray += 1
                n += 1

    def after_crash(self) -> None:
        """The daemon is dead: take its last answers, then drop what it never read.

        Scans still in the terminal's input queue would reach the next daemon cut at an
        arbitrary byte (the dead one may have read half of them), and their answers would
        be taken for answers to later scans; a real scanner whose host died times out and
        is re-triggered instead.
        """
        time.sleep(0.1)  # let the last bytes the dead process wrote cross the terminal
        self.collect()
        termios.tcflush(self.slave, termios.TCIFLUSH)
        self.unanswered.extend(self.outstanding)
        self.outstanding.clear()

    async def scan(self, text: str, timeout: float = 30.0) -> int:
        """Send one scan and wait for its answer byte (for in-process agents)."""
        import asyncio

        before = len(self.acked) + len(self.naked)
        self.send(text)
        deadline = time.monotonic() + timeout
        while len(self.acked) + len(self.naked) == before:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no answer to {text!r} in {timeout} s")
            await asyncio.sleep(0.002)
            self.collect()
        return ACK if self.acked and self.acked[-1] == text else NAK

    def wait_answer(self, text: str, timeout: float = 30.0) -> int:
        """Send one scan and block until its answer byte (for subprocess agents)."""
        before = len(self.acked) + len(self.naked)
        self.send(text)
        deadline = time.monotonic() + timeout
        while len(self.acked) + len(self.naked) == before:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no answer to {text!r} in {timeout} s")
            select.select([self.master], [], [], min(left, 0.05))
            self.collect()
        return ACK if self.acked and self.acked[-1] == text else NAK

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def scanner_config(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, "driver": "serial", "port": self.path, "ack": "\u0006",
                "nak": "\u0015", **extra}


# -- configuration -----------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a dock config as TOML (flat keys, tables, and [[scanners]])."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    scanners: list[dict[str, Any]] = []
    for k, v in data.items():
        if k == "scanners":
            scanners = list(v)
        elif isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    for sc in scanners:
        lines.append("\n[[scanners]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in sc.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def token_file(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


# -- processes ---------------------------------------------------------------------------


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@dataclass
class AgentProcess:
    """``scan-agent run --config FILE`` in its own session; output appended to ``log``."""

    config: Path
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    def start(self) -> AgentProcess:
        self._out = self.log.open("ab")
        self._out.write(f"--- start at {time.time():.3f}\n".encode())
        self._out.flush()
        env = dict(os.environ if self.env is None else self.env)
        env.pop("CREDENTIALS_DIRECTORY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash or a power cut."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd stops it; SIGKILL if it does not stop in time."""
        assert self.proc is not None
        _kill_group(self.proc, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"agent did not stop on SIGTERM within {timeout} s") from None
        self._close_log()
        return rc

    def _close_log(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.kill()
        self._close_log()


def ledger_command() -> list[str]:
    script = Path(sys.executable).with_name("scan-ledger")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ledger"]


def add_station(db: Path, name: str, site: str = "WH1") -> str:
    """``scan-ledger station add``: the token is alone on the last line."""
    out = subprocess.run([*ledger_command(), "station", "add", name, "--site", site,
                          "--db", str(db)], capture_output=True, text=True, check=True,
                         timeout=60)
    return out.stdout.strip().splitlines()[-1]


@dataclass
class LedgerProcess:
    """``scan-ledger serve --db F --port P`` in its own session; restartable on one port."""

    db: Path
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    starts: int = 0

    def start(self, timeout: float = 60.0) -> LedgerProcess:
        with self.log.open("ab") as out:
            out.write(f"--- start at {time.time():.3f}\n".encode())
        err = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                [*ledger_command(), "serve", "--db", str(self.db), "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        finally:
            err.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if line or self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        m = re.search(rb"listening on (http://\S+)", line)
        if m is None:
            self.kill()
            raise AssertionError(f"scan-ledger did not start: {line!r}\n"
                                 f"{self.log.read_text(errors='replace')[-2000:]}")
        self.url = m.group(1).decode()
        self.port = int(self.url.rsplit(":", 1)[1])
        self.starts += 1
        return self

    def kill(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(30)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("scan-ledger did not stop on SIGTERM") from None
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def __enter__(self) -> LedgerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- checks ------------------------------------------------------------------------------


def journal_rows(db: Path | str, table: str, order: str) -> list[dict[str, Any]]:
    """Every row of a journal table, read-only (the daemon may be running)."""
    conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    finally:
        conn.close()


def journal_pending(db: Path | str) -> int:
    conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True, timeout=30)
    try:
        n: int = conn.execute(
            "SELECT count(*) FROM movements WHERE state = 'pending'").fetchone()[0]
        return n
    finally:
        conn.close()


def integrity(db: Path | str) -> list[str]:
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def ledger_get(url: str, path: str, **params: Any) -> Any:
    r = httpx.get(url + path, params=params, timeout=60)
    r.raise_for_status()
    return r.json()


def ledger_events(url: str, station: str) -> list[dict[str, Any]]:
    """The station's events in the order the ledger received them."""
    events: list[dict[str, Any]] = ledger_get(url, "/v1/events", station=station,
                                              limit=10000)["events"]
    assert len(events) < 10000, "too many events to check in one read"
    return list(reversed(events))


def ledger_balances(url: str, site: str = "WH1") -> dict[tuple[str, str], int]:
    rows = ledger_get(url, "/v1/balances", site=site)["balances"]
    return {(b["item"], b["location"]): b["on_hand"] for b in rows if b["on_hand"]}


def movement_totals(movements: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Balances per (item, location) implied by journaled receipts, picks, moves, voids."""
    by_id = {m["event_id"]: m for m in movements}
    voided = {m["voids"] for m in movements if m["type"] == "void"}
    total: Counter[tuple[str, str]] = Counter()
    for m in movements:
        if m["type"] == "void" or m["event_id"] in voided:
            continue
        assert m["type"] in ("receipt", "pick", "move"), m
        if m["to_location"]:
            total[(m["item"], m["to_location"])] += m["qty"]
        if m["from_location"]:
            total[(m["item"], m["from_location"])] -= m["qty"]
    assert voided <= set(by_id), "a void names a movement the journal does not have"
    return {k: v for k, v in total.items() if v}


@dataclass
class Delivery:
    """What one station's journal and the ledger hold, for the exactly-once checks."""

    movements: list[dict[str, Any]]
    events: list[dict[str, Any]]


def assert_exactly_once(db: Path | str, url: str, station: str) -> Delivery:
    """Every journaled movement reached the ledger once, with its own content.

    seq is gap-free from 1, every movement is synced (none quarantined, none pending), the
    ledger holds each event id once, the same set as the journal, with the same seq.
    """
    movements = journal_rows(db, "movements", "seq")
    seqs = [m["seq"] for m in movements]
    assert seqs == list(range(1, len(seqs) + 1)), "seq is not gap-free from 1"
    states = Counter(m["state"] for m in movements)
    assert set(states) <= {"synced"}, f"not all movements synced: {dict(states)}"
    events = ledger_events(url, station)
    ids = [e["event_id"] for e in events]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"{len(dupes)} event(s) stored twice at the ledger: {dupes[:5]}"
    journal_ids = {m["event_id"]: m["seq"] for m in movements}
    assert set(ids) == set(journal_ids), (
        f"ledger has {len(set(ids) - set(journal_ids))} unknown and misses "
        f"{len(set(journal_ids) - set(ids))} journaled event(s)")
    for e in events:
        assert e["seq"] == journal_ids[e["event_id"]]
    return Delivery(movements, events)
