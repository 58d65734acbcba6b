"""``scan-agent run`` as a real process, the way systemd runs it (DESIGN section 9, issues 2
and 6): crash safety under SIGKILL, a clean SIGTERM, sd_notify on a real datagram socket, the
watchdog stopping with the loop, the ledger token from a systemd credential, Prometheus
metrics, and ``status``/``events`` beside the running daemon.

Every daemon runs in its own session (process group); the ``daemons`` fixture kills the group
at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

TIMEOUT = 15.0  # only to turn a hang into a failure; never a pass/fail threshold
ACK, NAK = b"\x06", b"\x15"
EAN13 = "4006381333931"
ITEM = "04006381333931"
OTHER = "5901234123457"
OTHER_ITEM = "05901234123457"


# -- the scanner side of a pseudo-terminal ----------------------------------------------------


class Pty:
    """A pseudo-terminal whose slave path is the scanner port the daemon opens."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)

    def write(self, *scans: str) -> None:
        os.write(self.master, b"".join(s.encode() + b"\r" for s in scans))

    def read(self, n: int = 1) -> bytes:
        got = b""
        deadline = time.monotonic() + TIMEOUT
        while len(got) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no answer from the daemon after {got!r}")
            got += os.read(self.master, n - len(got))
        return got

    def scan(self, text: str) -> bytes:
        """One scan; the ACK/NAK byte the daemon answers with."""
        self.write(text)
        return self.read(1)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


# -- the daemon process -------------------------------------------------------------------------


class Daemon:
    """``python -m agent.cli run --config FILE`` in its own session, stderr collected."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._pump = threading.Thread(target=self._read_stderr, daemon=True)
        self._pump.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_log(self, fragment: str) -> str:
        """The first stderr line containing ``fragment`` (waits for it)."""
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while True:
                for line in self.lines:
                    if fragment in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._pump.is_alive()):
                    raise AssertionError(f"no log line with {fragment!r}:\n" + "\n".join(
                        self.lines))
                self._changed.wait(min(left, 0.5))

    def wait_connected(self) -> None:
        self.wait_log("scanner handheld: connected to")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self) -> int:
        code = self.proc.wait(TIMEOUT)
        self._pump.join(TIMEOUT)
        return code

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self._pump.join(TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def daemons() -> Iterator[StartDaemon]:
    """``start(config, **env)``: a daemon whose whole process group dies at teardown."""
    started: list[Daemon] = []

    def start(config: Path, **env: str | None) -> Daemon:
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                "CREDENTIALS_DIRECTORY")}
        environ["PYTHONUNBUFFERED"] = "1"
        environ.update({k: v for k, v in env.items() if v is not None})
        d = Daemon(config, environ)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill_group()


def write_config(tmp_path: Path, port: str, *, debounce_ms: int = 0, extra: str = "") -> Path:
    path = tmp_path / "dock-1.toml"
    path.write_text(f"""\
station = "dock-1"
site = "WH1"
mode = "receipt"
location = "DOCK-1"
database = "{tmp_path / 'journal.db'}"
{extra}
[[scanners]]
name = "handheld"
driver = "serial"
port = "{port}"
baudrate = 9600
ack = "\\u0006"
nak = "\\u0015"
debounce_ms = {debounce_ms}
""", encoding="utf-8")
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def journal_rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` until it returns something truthy (a hang guard, not a speed test)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- (a) SIGKILL right after an acknowledgement ---------------------------------------------


@dataclass
class Round:
    """Scans sent one by one (each answered by ACK), then SIGKILL; the journal must hold
    every acknowledged movement exactly once, and the session as the last ACK left it."""

    moment: str
    scans: list[str]
    movements: list[tuple[str, str, int, str | None, str | None]]
    session: dict[str, Any]
    burst: bool = False  # written in one go, answers read after: scans arriving together
    voids: list[int] = field(default_factory=list)  # index into all movements so far


ROUNDS = [
    Round("after an item scan", ["MODE-MOVE", "LOC-A-01", "LOC-B-02", EAN13],
          [("move", ITEM, 1, "A-01", "B-02")],
          {"mode": "move", "from_location": "A-01", "to_location": "B-02"}),
    Round("after a location scan (session only)", ["LOC-C-03", "LOC-D-04"], [],
          {"mode": "move", "from_location": "C-03", "to_location": "D-04"}),
    Round("after an undo", ["QTY-3", OTHER, "CMD-UNDO"],
          [("move", OTHER_ITEM, 3, "C-03", "D-04"), ("void", OTHER_ITEM, 3, "C-03", "D-04")],
          {"mode": "move", "from_location": "C-03", "to_location": "D-04"}, voids=[1]),
    Round("after a burst of scans committed together",
          ["MODE-PICK", "LOC-P-1", EAN13, OTHER, "QTY-2", EAN13],
          [("pick", ITEM, 1, "P-1", None), ("pick", OTHER_ITEM, 1, "P-1", None),
           ("pick", ITEM, 2, "P-1", None)],
          {"mode": "pick", "from_location": "P-1", "to_location": None}, burst=True),
    Round("right after the first ACK of a restart", [EAN13],
          [("pick", ITEM, 1, "P-1", None)],
          {"mode": "pick", "from_location": "P-1", "to_location": None}),
]


def test_sigkill_after_ack_keeps_each_movement_exactly_once_and_the_session(
        tmp_path: Path, pty: Pty, daemons: StartDaemon) -> None:
    """Issue 2: a scan acknowledged to the scanner is on disk; a crash at any moment after
    the ACK neither loses it nor writes it twice, and seq stays gap-free."""
    config = write_config(tmp_path, pty.port)
    db = tmp_path / "journal.db"
    expected: list[tuple[str, str, int, str | None, str | None]] = []
    voids: list[tuple[int, int]] = []  # (void's index, voided index)
    for r in ROUNDS:
        d = daemons(config)
        d.wait_connected()
        if r.burst:
            pty.write(*r.scans)
            assert pty.read(len(r.scans)) == ACK * len(r.scans), r.moment
        else:
            for text in r.scans:
                assert pty.scan(text) == ACK, (r.moment, text)
        d.signal(signal.SIGKILL)  # at once: no chance to flush or close anything
        assert d.wait() == -signal.SIGKILL
        voids += [(len(expected) + len(r.movements) - 1, v) for v in r.voids]
        expected += r.movements

        rows = journal_rows(db, "SELECT * FROM movements ORDER BY seq")
        assert [(m["type"], m["item"], m["qty"], m["from_location"], m["to_location"])
                for m in rows] == expected, r.moment
        assert [m["seq"] for m in rows] == list(range(1, len(expected) + 1)), r.moment
        assert len({m["event_id"] for m in rows}) == len(rows)
        for void, target in voids:
            assert rows[void]["voids"] == rows[target]["event_id"]
        (session,) = journal_rows(db, "SELECT state FROM sessions WHERE scanner = 'handheld'")
        state = json.loads(session["state"])
        assert {k: state[k] for k in r.session} == r.session, r.moment
        # status does not believe the dead daemon's last word that the scanner is connected
        crashed = json.loads(cli("status", "--config", str(config), "--json").stdout)
        assert crashed["running"] is False
        assert (crashed["scanners"][0]["connected"], crashed["scanners"][0]["detail"]) == (
            False, "agent not running")

    # And the next start carries on: the session and the seq continue from the journal.
    d = daemons(config)
    d.wait_connected()
    status = json.loads(cli("status", "--config", str(config), "--json").stdout)
    assert status["running"] is True
    (sc,) = status["scanners"]
    assert (sc["mode"], sc["from_location"], sc["to_location"]) == ("pick", "P-1", None)
    assert status["queue"]["pending"] == len(expected)
    assert pty.scan(OTHER) == ACK
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    rows = journal_rows(db, "SELECT seq, type, from_location FROM movements ORDER BY seq")
    assert rows[-1] == {"seq": len(expected) + 1, "type": "pick", "from_location": "P-1"}
    assert journal_rows(db, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]


# -- (b) SIGTERM --------------------------------------------------------------------------------


def test_sigterm_exits_0_and_status_shows_the_scanner_stopped(
        tmp_path: Path, pty: Pty, daemons: StartDaemon) -> None:
    config = write_config(tmp_path, pty.port)
    d = daemons(config)
    d.wait_connected()
    assert pty.scan(EAN13) == ACK
    running = cli("status", "--config", str(config), "--json")
    assert running.returncode == 0, "status exits 0 while the agent runs"
    assert json.loads(running.stdout)["scanners"][0]["connected"] is True
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.stderr
    assert any(line.endswith(" INFO scan_agent: stopping") for line in d.stderr.splitlines())
    status = cli("status", "--config", str(config))
    assert status.returncode == 3, "and 3 once it stopped (as `systemctl is-active` does)"
    (line,) = [ln for ln in status.stdout.splitlines() if ln.lstrip().startswith("handheld")]
    assert line.split()[:3] == ["handheld", "serial", "DISCONNECTED"]
    assert "(agent stopped)" in line
    js = json.loads(cli("status", "--config", str(config), "--json").stdout)
    assert (js["scanners"][0]["connected"], js["scanners"][0]["detail"]) == (
        False, "agent stopped")
    assert js["queue"]["pending"] == 1, "the scan captured before the stop is kept"


# -- (c, d) sd_notify ---------------------------------------------------------------------------


class NotifySocket:
    """What systemd's end of ``$NOTIFY_SOCKET`` sees: datagrams with their arrival times."""

    def __init__(self) -> None:
        # A short directory: AF_UNIX paths are limited to 108 bytes.
        self._dir = tempfile.TemporaryDirectory(prefix="sa-notify-")
        self.path = os.path.join(self._dir.name, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[tuple[float, str]] = []

    def wait_for(self, predicate: Callable[[str], bool], what: str,
                 timeout: float = TIMEOUT) -> tuple[float, str]:
        """The next datagram matching ``predicate`` (earlier ones are kept in ``received``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what}; got {[m for _, m in self.received]}")
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                msg = self.sock.recv(4096).decode()
                item = (time.monotonic(), msg)
                self.received.append(item)
                if predicate(msg):
                    return item

    def drain(self) -> list[str]:
        """Everything queued now, without waiting."""
        out = []
        while True:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return out
            msg = self.sock.recv(4096).decode()
            self.received.append((time.monotonic(), msg))
            out.append(msg)

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    n = NotifySocket()
    yield n
    n.close()


def fields(msg: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


WATCHDOG_USEC = 400_000


def test_sd_notify_ready_status_watchdog_and_stopping(
        tmp_path: Path, pty: Pty, notify: NotifySocket, daemons: StartDaemon) -> None:
    """Issue 6: READY=1 once journal and scanners are open, STATUS= lines, WATCHDOG=1 at
    half of WATCHDOG_USEC, STOPPING=1 on SIGTERM.

    Guards against two regressions: READY=1 sent before the serial port was opened (its
    STATUS said "0/1 scanners up"), and no STOPPING=1 at all on SIGTERM (the signal handler
    set the stop flag that close() took as "already notified")."""
    config = write_config(tmp_path, pty.port)
    d = daemons(config, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    _, ready = notify.wait_for(lambda m: "READY=1" in m.split("\n"), "READY=1")
    assert (tmp_path / "journal.db").exists(), "READY=1 only after the journal is open"
    assert fields(ready)["STATUS"].startswith("1/1 scanners up, 0 pending"), \
        "READY=1 only once the scanner's port is open"
    assert pty.scan(EAN13) == ACK, "ready means scans are captured"

    # The periodic STATUS= line (every 5 s) counts the movement just captured.
    _, status = notify.wait_for(lambda m: m.startswith("STATUS=") and "READY=1" not in m,
                                "a periodic STATUS= line")
    assert fields(status)["STATUS"] == "1/1 scanners up, 1 pending"

    pings = [t for t, m in notify.received if m == "WATCHDOG=1"]
    while len(pings) < 8:
        t, _ = notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1")
        pings.append(t)
    gaps = sorted(b - a for a, b in zip(pings[-8:], pings[-7:], strict=False))
    median = gaps[len(gaps) // 2]
    half = WATCHDOG_USEC / 2 / 1e6
    # About half of WatchdogSec: clearly below the full interval, after which systemd kills.
    assert 0.75 * half <= median < 2 * half, f"pings every {median:.3f}s, not {half}s"

    d.signal(signal.SIGTERM)
    notify.wait_for(lambda m: "STOPPING=1" in m.split("\n"), "STOPPING=1")
    assert d.wait() == 0, d.stderr


def test_no_watchdog_ping_while_the_process_is_stopped(
        tmp_path: Path, pty: Pty, notify: NotifySocket, daemons: StartDaemon) -> None:
    """A loop that cannot run sends no WATCHDOG=1, so systemd restarts a hung daemon; pings
    come back when it runs again."""
    config = write_config(tmp_path, pty.port)
    d = daemons(config, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    notify.wait_for(lambda m: "READY=1" in m.split("\n"), "READY=1")
    notify.wait_for(lambda m: m == "WATCHDOG=1", "a first WATCHDOG=1")

    d.signal(signal.SIGSTOP)
    try:
        until(lambda: _proc_state(d.pid) == "T", "the daemon to be stopped")
        notify.drain()  # whatever was sent before the stop took effect
        time.sleep(1.5)  # more than 3 ping intervals
        during = notify.drain()
    finally:
        d.signal(signal.SIGCONT)
    assert "WATCHDOG=1" not in during, during
    notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1 after SIGCONT")
    assert pty.scan(EAN13) == ACK, "and the daemon captures again"


def _proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


# -- (e) the ledger token from a systemd credential -------------------------------------------


def test_ledger_token_comes_from_the_credentials_directory(
        tmp_path: Path, pty: Pty, daemons: StartDaemon) -> None:
    """``$CREDENTIALS_DIRECTORY/ledger-token`` (LoadCredential=) wins over token_file."""
    from ledger.server import LedgerServer

    with LedgerServer(tmp_path / "l.db") as srv:
        token = srv.add_station("dock-1", site="WH1")
        wrong = tmp_path / "dock-1.token"
        wrong.write_text("not-the-token\n")
        wrong.chmod(0o600)
        creds = tmp_path / "credentials"
        creds.mkdir()
        (creds / "ledger-token").write_text(token + "\n")
        refused = httpx.post(f"{srv.url}/v1/events",
                             headers={"Authorization": "Bearer not-the-token"},
                             json={"station": "dock-1", "events": []}, timeout=10)
        assert refused.status_code == 401, "the token file's token really is wrong"

        config = write_config(tmp_path, pty.port, extra=(
            f'[ledger]\nurl = "{srv.url}"\ntoken_file = "{wrong}"\ntimeout = 2.0\n'
            "max_backoff = 1.0\n"))
        d = daemons(config, CREDENTIALS_DIRECTORY=str(creds))
        d.wait_connected()
        assert pty.scan(EAN13) == ACK

        def stored() -> list[dict[str, Any]]:
            r = httpx.get(f"{srv.url}/v1/events", params={"station": "dock-1"}, timeout=10)
            events: list[dict[str, Any]] = r.json()["events"]
            return events

        (event,) = until(stored, "the event at the ledger")
        (row,) = journal_rows(tmp_path / "journal.db", "SELECT * FROM movements")
        assert (event["event_id"], event["item"], event["to_location"]) == (
            row["event_id"], ITEM, "DOCK-1")
        until(lambda: journal_rows(tmp_path / "journal.db",
                                   "SELECT state FROM movements")[0]["state"] == "synced",
              "the journal to record the sync")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    assert token not in d.stderr, "the token never reaches a log line"


# -- (f) metrics --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(name, labels): value}`` from the text exposition format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        pairs = frozenset(
            (k, v.strip('"')) for k, v in
            (p.split("=", 1) for p in labels.rstrip("}").split(",") if p))
        out[(name, pairs)] = float(value)
    return out


def series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (f"scan_agent_{name}",
            frozenset({"station": "dock-1", "site": "WH1", **labels}.items()))


def test_metrics_endpoint_and_textfile_count_what_was_scanned(
        tmp_path: Path, pty: Pty, daemons: StartDaemon) -> None:
    port = free_port()
    textfile = tmp_path / "textfile" / "scan_agent.prom"
    textfile.parent.mkdir()
    config = write_config(tmp_path, pty.port, debounce_ms=60_000, extra=(
        f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"\ninterval = 1\n'))
    d = daemons(config)
    d.wait_connected()
    replies = [pty.scan(s) for s in
               ["LOC-A-01", EAN13, EAN13, "hello", "MODE-PICK", "LOC-B-01", OTHER]]
    assert replies == [ACK, ACK, ACK, NAK, ACK, ACK, ACK]
    expected = {
        series("up"): 1,
        series("scans_total", outcome="accepted"): 5,
        series("scans_total", outcome="debounced"): 1,
        series("scans_total", outcome="rejected"): 1,
        series("movements_total", type="receipt"): 1,
        series("movements_total", type="pick"): 1,
        series("pending_events"): 2,
        series("rejected_events"): 0,
        series("scanner_connected", scanner="handheld"): 1,
    }

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        got = parse_prometheus(r.text)
        # pending is refreshed from the journal every few seconds: wait for it
        return got if got.get(series("pending_events")) == 2 else None

    got = until(scrape, "pending_events 2 at /metrics")
    assert {k: got.get(k) for k in expected} == expected
    assert got[series("oldest_pending_age_seconds")] > 0
    assert [k for k in got if k[0] == "scan_agent_movements_total"] == [
        series("movements_total", type="pick"), series("movements_total", type="receipt")]

    def from_file() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        if not textfile.exists():
            return None
        parsed = parse_prometheus(textfile.read_text())
        return parsed if parsed.get(series("pending_events")) == 2 else None

    on_disk = until(from_file, "the textfile with pending_events 2")
    assert {k: on_disk.get(k) for k in expected} == expected
    assert [p.name for p in textfile.parent.iterdir()] == ["scan_agent.prom"], \
        "written atomically, no temporary files left behind"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


# -- (g) status and events beside the running daemon -------------------------------------------


def test_status_and_events_while_the_daemon_runs(
        tmp_path: Path, pty: Pty, daemons: StartDaemon) -> None:
    config = write_config(tmp_path, pty.port)
    d = daemons(config)
    d.wait_connected()
    for text in ["MODE-MOVE", "LOC-A-01", "LOC-B-02", EAN13, "QTY-2", OTHER]:
        assert pty.scan(text) == ACK
    assert pty.scan("4006381333932") == NAK

    result = cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    (sc,) = s["scanners"]
    assert (sc["name"], sc["connected"], sc["mode"], sc["from_location"], sc["to_location"]) == (
        "handheld", True, "move", "A-01", "B-02")
    assert sc["last_scan"]["text"] == "4006381333932"
    assert (sc["last_scan"]["outcome"], sc["last_scan"]["reason"]) == (
        "rejected", "invalid GTIN check digit in 4006381333932: expected 1, got 2")
    assert (s["queue"]["pending"], s["queue"]["next_seq"]) == (2, 3)
    assert s["recent_rejections"][0]["reason"] == sc["last_scan"]["reason"]

    result = cli("events", "--config", str(config), "--pending", "--json")
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert [(e["seq"], e["type"], e["item"], e["qty"], e["from_location"], e["to_location"],
             e["state"]) for e in events] == [
        (2, "move", OTHER_ITEM, 2, "A-01", "B-02", "pending"),
        (1, "move", ITEM, 1, "A-01", "B-02", "pending")]
    text = cli("events", "--config", str(config), "--pending").stdout.splitlines()
    assert len(text) == 3 and text[1].split()[0] == "2" and text[2].split()[0] == "1"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


# -- the demo -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_runs_the_whole_shift() -> None:
    """``scan-agent demo`` on this machine, no setup: every expected outcome happens.

    At ``--speed 3`` the scripted double scan once came 0.2 s after the first read, inside
    the 300 ms debounce window, so it was swallowed and the undo voided the real pick."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--speed", "3"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            # The demo's agents run in sessions of their own: find them while they are still
            # its children, then end every group.
            agents = _children(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in agents:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out
    assert "Every expected outcome happened" in out
    lines = out.splitlines()
    assert "http://" not in lines[-1], "no dashboard URL once the ledger has stopped"
    assert lines[-1] == ("The ledger stopped with the demo; 'scan-agent demo --keep' leaves it "
                         "running to browse its dashboard.")
    # the items by name, and the voided double read as what it was, not a real shortage
    assert any("pick 04012345678901 (kettles) x4" in line for line in lines), out
    kinds = {" ".join(line.split()[:-3]): line.split()[-3:] for line in lines
             if line.startswith("  ") and len(line.split()) > 4 and line.split()[-1].isdigit()}
    assert kinds["a real shortage of the item (item)"] == ["1", "0", "1"], out
    assert kinds["a double read, undone at the scanner"] == ["1", "1", "0"], out
    assert "    lamps at A-01: balance -1, item, confirmed: no station can still send anything " \
        "older" in lines, out


@contextlib.contextmanager
def _kept_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``scan-agent demo --keep``, read until it says "Press Ctrl-C" (or ends): the process and
    its lines so far. Whatever is still running afterwards is killed, the agents too."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--speed", "3", "--keep", "--workdir",
         str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, start_new_session=True)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            out.append(line)
            if not line or line.startswith("Press Ctrl-C"):
                break
        yield proc, out
    finally:
        if proc.poll() is None:
            agents = _children(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in agents:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            proc.communicate()


@pytest.mark.slow
def test_demo_keep_leaves_a_ledger_with_confirmed_incidents(tmp_path: Path) -> None:
    """With --keep the open incidents stayed provisional for ever (the stopped stations'
    watermarks never moved): the kept ledger shows what a manager sees the next morning."""
    with _kept_demo(tmp_path) as (proc, out):
        url = next(ln.split()[1] for ln in out if ln.strip().startswith("dashboard "))
        incidents = httpx.get(f"{url}v1/negatives", params={"status": "open"},
                              timeout=10).json()["incidents"]
        page = httpx.get(url, timeout=10).text
        flags = {s["name"]: s["flags"] for s in httpx.get(f"{url}v1/stations", timeout=10)
                 .json()["stations"]}
        # the printed curl command adds a note with the manager's token it shows
        curl = next(ln for ln in out if ln.strip().startswith("a note ")).split()
        token = curl[curl.index("'Authorization:") + 2].rstrip("'")
        note_url = curl[-1]
        r = httpx.post(note_url, json={"text": "Counted it."}, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        incident_page = httpx.get(url + "incidents/" + note_url.split("/")[-2],
                                  timeout=10).text
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(out) + rest
    assert sorted((i["class"], i["confirmed"]) for i in incidents) == [
        ("item", True), ("location", True)], incidents
    assert "1 confirmed, 0 provisional" in page
    # the demo's item names beside the codes; the station whose clock is 10 min slow flagged
    assert "Desk lamp, LED" in page and "Green tea, 250 g" in page
    assert {i["item_name"] for i in incidents} == {"Desk lamp, LED", "Green tea, 250 g"}
    assert flags == {"recv": [], "pick": [], "putaway": ["clock_offset"]}, flags
    assert "clock 600." in page and "behind the ledger" in page
    assert "<b>manager</b>" in incident_page and "Counted it." in incident_page


@pytest.mark.slow
def test_demo_keep_stops_cleanly_on_a_ctrl_c_as_soon_as_it_says_so(tmp_path: Path) -> None:
    """A Ctrl-C the moment "Press Ctrl-C" shows used to land before the demo waited for it:
    a traceback and exit status 1, or (under load) a demo that never stopped."""
    with _kept_demo(tmp_path) as (proc, out):
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert out[-1].startswith("Press Ctrl-C"), "".join(out)
    assert proc.returncode == 0, "".join(out) + rest
    assert "Traceback" not in rest, rest


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


async def test_a_part_that_dies_stops_the_agent_so_systemd_restarts_it(tmp_path: Path) -> None:
    """Regression: a long-running task (sync, a scanner reader) that died left the daemon
    up but deaf, so systemd never restarted it. Now the agent stops and run() fails."""
    import asyncio

    from agent.config import parse_config
    from agent.daemon import Agent

    cfg = parse_config({"station": "d1", "site": "WH1", "database": str(tmp_path / "j.db"),
                        "scanners": []}, "d1.toml")
    agent = Agent(cfg)
    await agent.start()

    async def dies() -> None:
        raise RuntimeError("boom")

    agent._spawn(dies(), "sync")
    await asyncio.wait_for(agent.wait(), 5)
    assert agent.failed == "sync stopped unexpectedly"
    await agent.close()
