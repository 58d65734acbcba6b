"""Hostile barcodes, end to end: bytes and key events through the real drivers into a running
:class:`~agent.daemon.Agent` (DESIGN section 4: "anything else: rejected with a reason; the
raw scan is kept in the audit table, no movement is made").

One daemon takes a whole hypothesis run, so each example also proves that the garbage before
it did not break capture. After every example a probe (``CMD-RESET`` then a valid GTIN) must
become a receipt, and :func:`~tests.security.conftest.check_invariants` must hold: every scan
audited with its fate, every rejection with a reason, every movement made by an item scan,
and no log record carrying a control character.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from evdev import InputEvent, ecodes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import drivers.evdev.scanner
from agent.config import Config, parse_config
from drivers.evdev import FdEventSource
from drivers.keymap import KeyDecoder
from tests.drivers.keyevents import Typist, to_bytes
from tests.security.conftest import (
    SKU_PATTERN,
    TIMEOUT,
    VALID_GTINS,
    LiveAgent,
    assert_clean_lines,
    check_invariants,
    live_agent,
)

E = ecodes
ACK, NAK = b"\x06", b"\x15"
PROBE = "4006381333931"

# -- what a hostile or broken scanner sends ---------------------------------------------------

NASTY = [
    "\x1b[2J\x1b]0;pwned\x07", "\x1b[31mLOC-A-01\x1b[0m", "'; DROP TABLE movements; --",
    "LOC-'; DROP TABLE movements; --", "REF-\x1b]8;;http://evil\x07x", "USER-\u202eu17",
    "\x00", "4006381333931\x00", "\x9b2J", "\u009b31m", "\x7f", "\x1d", "\x1d\x1d01",
    "]C1", "]C1\x1d", "]E04006381333930", "]C10104006381333931\x1d", "]d2" + "01" * 20,
    "4006381333932", "400638133393", "04006381333931 ", " 4006381333931", "٤٠٠٦٣٨١٣٣٣٩٣١",
    "0104006381333932", "01040063813339311", "0104006381333931\x1d10\x1b[2J",
    "0104006381333931\x1d30-5", "0104006381333931\x1d3000000000", "0204006381333931\x1d37",
    "LOC-", "LOC-" + "A" * 65, "LOC-Ä-01", "QTY-0", "QTY--1", "QTY-1e9", "QTY-٣",
    "QTY-99999999999999999999999", "MODE-", "MODE-PUSH", "MODE-pick\x00", "CMD-UNDO\x1b",
    "CMD-RESET ", "cmd-reset", "REF-", "USER-", "SKU-12345", "SKU-1234567", "SKU-12345\x00",
    "%s%s%n", "{0.__class__}", "<script>alert(1)</script>", "\ud7ff\ufffe\uffff",
    "\U0010ffff", "\u2028LOC-A", "A" * 600,
]
LEGIT = [*VALID_GTINS, "0104006381333931\x1d10LOT-1", "]C10104006381333931", "SKU-123456",
         "LOC-B-02", "QTY-3", "MODE-PICK", "MODE-MOVE", "MODE-COUNT", "CMD-UNDO", "REF-PO-1",
         "USER-u1"]
TERMINATORS = [b"\r", b"\n", b"\r\n"]

fragments = st.one_of(
    st.sampled_from(NASTY).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(LEGIT).map(str.encode),
    st.sampled_from(TERMINATORS),
    st.binary(max_size=48),
    st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                     b"\x02", b"\x03", b"\x1b", b"\x1d", b"\x00"]),
    st.text(max_size=24).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
byte_streams = st.lists(fragments, max_size=12).map(b"".join)
MEGABYTE_LINE = b"7" * (1 << 20) + b"\r"
MEGABYTE_ESCAPES = b"\x1b[2J" * (1 << 18) + b"\n"


def agent_config(tmp_path: Path, scanner: dict[str, Any]) -> Config:
    return parse_config({
        "station": "dock-1", "site": "WH1", "location": "DOCK-1", "log_level": "DEBUG",
        "database": str(tmp_path / "journal.db"),
        "grammar": {"sku_patterns": [SKU_PATTERN]},
        "scanners": [{"name": "s1", "debounce_ms": 0, **scanner}],
    }, str(tmp_path / "dock-1.toml"))


_probes = itertools.count(1)


def new_marker() -> str:
    """A reference scan no garbage contains, so the probe after it is surely ours."""
    return f"REF-PROBE-{next(_probes)}"


def probe_done(start: int, marker: str) -> Any:
    """After outcome number ``start``: the marker, then the probe's receipt."""
    def cond(outcomes: list[Any]) -> bool:
        seen = False
        for o in outcomes[start:]:
            seen = seen or o.text == marker
            if seen and o.text == PROBE and o.movement_type == "receipt":
                return True
        return False
    return cond


# -- serial: a real pseudo-terminal ------------------------------------------------------------


class SerialLine:
    """The scanner's end of a pty, with the agent's ACK/NAK bytes drained as they come."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.replies = bytearray()

    @property
    def port(self) -> str:
        return os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + TIMEOUT
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                n = 0
            view = view[n:]
            self.drain()
            if view:
                assert time.monotonic() < deadline, "the agent stopped reading the pty"
                time.sleep(0.001)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.master, 4096):
                self.replies += chunk

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def serial_dock(tmp_path: Path, no_systemd: None) -> Iterator[tuple[LiveAgent, SerialLine]]:
    line = SerialLine()
    try:
        cfg = agent_config(tmp_path, {"driver": "serial", "port": line.port,
                                      "ack": "\u0006", "nak": "\u0015"})
        with live_agent(cfg) as live:
            live.wait_connected("s1")
            yield live, line
    finally:
        line.close()


@pytest.mark.slow
@settings(max_examples=1000, deadline=None,
          # one daemon for the whole run is the point: it must survive every example
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(garbage=byte_streams)
@example(garbage=MEGABYTE_LINE)
@example(garbage=MEGABYTE_ESCAPES)
@example(garbage=b"\x1b[2J\x1b]0;pwned\x07\r'; DROP TABLE movements; --\r")
@example(garbage=b"\x00\x00\x00")
def test_serial_garbage_never_crashes_never_moves_stock_never_reaches_the_log_raw(
        serial_dock: tuple[LiveAgent, SerialLine], caplog: pytest.LogCaptureFixture,
        garbage: bytes) -> None:
    live, line = serial_dock
    caplog.set_level(logging.DEBUG)
    start = len(live.outcomes)
    # The garbage, a terminator (a partial scan must not glue onto the probe), then a probe.
    marker = new_marker()
    line.write(garbage + b"\r" + f"CMD-RESET\r{marker}\r{PROBE}\r".encode())
    live.wait_for(probe_done(start, marker), "the probe scan after the garbage")
    assert live.reader_alive("s1"), "the scanner's reader task ended"
    check_invariants(live, caplog.records)
    deadline = time.monotonic() + TIMEOUT
    while len(line.replies) < len(live.outcomes) and time.monotonic() < deadline:
        line.drain()
        time.sleep(0.001)
    # host-acknowledge mode: exactly one ACK or NAK per scan, NAK for each rejection
    assert bytes(line.replies) == b"".join(ACK if o.ok else NAK for o in live.outcomes)


# -- TCP: a fixed-mount reader that is a server on 127.0.0.1 -----------------------------------


class TcpReader:
    """A reader on 127.0.0.1: accepts the agent's connection and sends what it is told."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None
        self._accepted = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            self.conn, _ = self.server.accept()
            self._accepted.set()

    def send(self, data: bytes) -> None:
        assert self._accepted.wait(TIMEOUT), "the agent never connected"
        assert self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()
        self._thread.join(TIMEOUT)


@pytest.fixture(params=["line", "stx-etx"])
def tcp_dock(request: pytest.FixtureRequest, tmp_path: Path,
             no_systemd: None) -> Iterator[tuple[LiveAgent, TcpReader, str]]:
    reader = TcpReader()
    try:
        cfg = agent_config(tmp_path, {"driver": "tcp", "host": "127.0.0.1",
                                      "port": reader.port, "framing": request.param})
        with live_agent(cfg) as live:
            live.wait_connected("s1")
            yield live, reader, request.param
    finally:
        reader.close()


@pytest.mark.slow
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(garbage=byte_streams)
@example(garbage=MEGABYTE_LINE)
@example(garbage=b"\x02\x1b[2J\x02\x03\x03\x02" + b"9" * 70000)
def test_tcp_garbage_never_crashes_never_moves_stock_never_reaches_the_log_raw(
        tcp_dock: tuple[LiveAgent, TcpReader, str], caplog: pytest.LogCaptureFixture,
        garbage: bytes) -> None:
    live, reader, framing = tcp_dock
    caplog.set_level(logging.DEBUG)
    start = len(live.outcomes)
    marker = new_marker()
    if framing == "line":
        reader.send(garbage + b"\r" + f"CMD-RESET\r{marker}\r{PROBE}\r".encode())
    else:  # an ETX closes an open frame; the probes are whole frames
        reader.send(garbage + f"\x03\x02CMD-RESET\x03\x02{marker}\x03\x02{PROBE}\x03".encode())
    live.wait_for(probe_done(start, marker), "the probe scan after the garbage")
    assert live.reader_alive("s1")
    assert live.agent is not None and live.agent.scanner_states["s1"].connected
    check_invariants(live, caplog.records)


# -- evdev: kernel input_event records through evdev's reader over a pipe -----------------------

KEYS = sorted({*range(1, 128), E.KEY_LEFTCTRL, E.KEY_RIGHTCTRL, E.KEY_LEFTALT, E.KEY_RIGHTALT,
               E.KEY_LEFTSHIFT, E.KEY_RIGHTSHIFT, E.KEY_LEFTMETA, E.KEY_CAPSLOCK, E.KEY_NUMLOCK,
               E.KEY_KPENTER, E.KEY_TAB, E.KEY_F1, E.KEY_UP, 0x2ff, *range(E.KEY_KP7,
                                                                            E.KEY_KPDOT + 1)})
MODIFIERS = [E.KEY_LEFTCTRL, E.KEY_RIGHTCTRL, E.KEY_LEFTALT, E.KEY_RIGHTALT, E.KEY_LEFTSHIFT,
             E.KEY_RIGHTSHIFT, E.KEY_LEFTMETA, E.KEY_RIGHTMETA]

raw_event = st.one_of(
    st.tuples(st.just(E.EV_KEY), st.sampled_from(KEYS), st.sampled_from([0, 1, 1, 2])),
    st.tuples(st.just(E.EV_SYN), st.sampled_from([E.SYN_REPORT, E.SYN_DROPPED]), st.just(0)),
    st.tuples(st.just(E.EV_MSC), st.just(E.MSC_SCAN), st.integers(0, 2**31 - 1)),
    st.tuples(st.integers(0, 0x1f), st.integers(0, 0x2ff), st.integers(-2**31, 2**31 - 1)),
)
typed = st.sampled_from([*NASTY[:6], *LEGIT, "ALT:027", "ALT:0155", "ALT:0", "ALT:00",
                         "ALT:99999999", "CTRL:[", "CTRL:]", "CTRL:J"])


def _typed_events(t: Typist, what: str) -> None:
    if what.startswith("ALT:"):
        t.alt_code(what[4:])
    elif what.startswith("CTRL:"):
        code, _, _ = t.lookup(what[5:])
        t.tap(code, E.KEY_LEFTCTRL)
    else:
        for ch in what:
            try:
                t.type(ch)
            except KeyError:  # not on the layout: type it as an Alt code instead
                t.alt_code(f"0{ord(ch)}")
    if what and not what.startswith(("ALT:", "CTRL:")):
        t.enter()


key_streams = st.lists(st.one_of(raw_event.map(lambda e: ("raw", e)),
                                 typed.map(lambda s: ("typed", s))), max_size=40)


class EventPipe:
    """Stands in for the device node: evdev's own reader parses what is written here."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.typist = Typist("us")
        self.opened = False

    def open(self) -> FdEventSource:
        if self.opened:
            from agent.errors import ScannerGoneError

            raise ScannerGoneError("the test pipe was opened already")
        self.opened = True
        return FdEventSource(self.read_fd, path="/dev/input/event-test",
                             name="Test Barcode Scanner")

    def send(self, events: list[InputEvent]) -> None:
        data = to_bytes(events)
        view = memoryview(data)
        while view:
            n = os.write(self.write_fd, view)
            view = view[n:]

    def close(self) -> None:
        os.close(self.write_fd)
        if not self.opened:
            os.close(self.read_fd)


@pytest.fixture
def evdev_dock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               no_systemd: None) -> Iterator[tuple[LiveAgent, EventPipe]]:
    pipe = EventPipe()
    monkeypatch.setattr(drivers.evdev.scanner, "open_matching_device",
                        lambda cfg, input_dir="/dev/input": pipe.open())
    try:
        cfg = agent_config(tmp_path, {"driver": "evdev", "match_name": "scanner",
                                      "grab": False})
        with live_agent(cfg) as live:
            live.wait_connected("s1")
            yield live, pipe
    finally:
        pipe.close()


@pytest.mark.slow
@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=key_streams)
@example(stream=[("typed", "ALT:027"), ("typed", "\x1b[2J")])
@example(stream=[("raw", (E.EV_KEY, E.KEY_LEFTCTRL, 1)), ("raw", (E.EV_SYN, E.SYN_DROPPED, 0)),
                 ("typed", "4006381333931")])
def test_evdev_garbage_never_crashes_never_moves_stock_never_reaches_the_log_raw(
        evdev_dock: tuple[LiveAgent, EventPipe], caplog: pytest.LogCaptureFixture,
        stream: list[tuple[str, Any]]) -> None:
    live, pipe = evdev_dock
    caplog.set_level(logging.DEBUG)
    start = len(live.outcomes)
    t = pipe.typist
    for kind, item in stream:
        if kind == "raw":
            typ, code, value = item
            t.events.append(InputEvent(t.t // 1_000_000, t.t % 1_000_000, typ, code, value))
            t.t += 300
        else:
            _typed_events(t, item)
    garbage = t.take()
    # Bring the keyboard state back the way a person would: end a SYN_DROPPED window, let go
    # of every modifier, set the lock keys back (the same decoder, fed the same events, says
    # where they are), press Enter; then the probe.
    twin = KeyDecoder("us")

    def twin_feed(events: list[InputEvent]) -> None:
        for event in events:
            twin.feed(event)
            if twin.resync_needed:
                twin.resync([])  # as the driver does, with the pipe's (empty) key state

    twin_feed(garbage)
    t.syn(E.SYN_REPORT)
    for m in sorted(set(MODIFIERS) | twin.keys_down):  # lock keys held down too
        t.key(m, 0)
    twin_feed(t.events)
    if twin.capslock:
        t.tap(E.KEY_CAPSLOCK)
    if not twin.numlock:
        t.tap(E.KEY_NUMLOCK)
    marker = new_marker()
    t.enter().scan("CMD-RESET").scan(marker).scan(PROBE)
    pipe.send(garbage + t.take())
    live.wait_for(probe_done(start, marker), "the probe scan after the key events")
    assert live.reader_alive("s1")
    check_invariants(live, caplog.records)


# -- the real process: its standard error, and what `status` and `events` print ---------------


def test_daemon_stderr_status_and_events_never_carry_a_control_byte(
        tmp_path: Path, no_systemd: None) -> None:
    """``scan-agent run`` as systemd runs it, fed every nasty scan: nothing it writes to
    standard error, and nothing ``status`` or ``events`` print, holds a raw control byte."""
    line = SerialLine()
    cfg_path = tmp_path / "dock-1.toml"
    cfg_path.write_text(f"""\
station = "dock-1"
site = "WH1"
location = "DOCK-1"
database = "{tmp_path / 'journal.db'}"
log_level = "DEBUG"

[grammar]
sku_patterns = ['{SKU_PATTERN}']

[[scanners]]
name = "s1"
driver = "serial"
port = "{line.port}"
ack = "\\u0006"
nak = "\\u0015"
debounce_ms = 0
""")
    scans = [s.encode("utf-8", "surrogatepass") for s in NASTY + LEGIT]
    scans += [b"\xff\xfe", b"\xc3\x28", MEGABYTE_LINE[:-1]]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    cli = [sys.executable, "-m", "agent.cli"]
    proc = subprocess.Popen([*cli, "run", "--config", str(cfg_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        scans += [b"CMD-RESET", PROBE.encode()]
        for s in scans:
            line.write(s + b"\r")
        # every scan answers with exactly one byte (ACK or NAK) once committed
        while len(line.replies) < len(scans):
            assert proc.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, f"only {len(line.replies)} answers"
            line.drain()
            time.sleep(0.01)
        assert line.replies[-2:] == ACK + ACK, "the probe after the garbage was captured"
        status_text = subprocess.run([*cli, "status", "--config", str(cfg_path)], env=env,
                                     capture_output=True, text=True, timeout=60, check=True)
        events_text = subprocess.run([*cli, "events", "--config", str(cfg_path)], env=env,
                                     capture_output=True, text=True, timeout=60, check=True)
        status_json = subprocess.run([*cli, "status", "--json", "--config", str(cfg_path)],
                                     env=env, capture_output=True, text=True, timeout=60,
                                     check=True)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        line.close()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    stderr = err.decode("utf-8")  # strict: the log is valid UTF-8 too
    assert "rejected" in stderr and "x1b" in stderr, "the rejections were logged, escaped"
    assert_clean_lines(stderr, "the daemon's standard error")
    for out in (status_text, events_text, status_json):
        assert_clean_lines(out.stdout, f"`{' '.join(out.args[3:])}`")
        assert_clean_lines(out.stderr, f"`{' '.join(out.args[3:])}` stderr")
    assert "recent rejected scans" in status_text.stdout
    assert "receipt" in events_text.stdout
