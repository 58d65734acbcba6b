"""The serial driver end to end over real pseudo-terminals (and socat for unplug/replug)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import subprocess
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import RawScan, Scanner, ScannerState, boottime_ns
from drivers.errors import DriverError
from drivers.serial import SerialScanner, SerialScannerConfig
from tests.drivers.states import States

TIMEOUT = 10.0  # only to turn a hang into a failure; never a pass/fail threshold

SCANS = ["LOC-A-01-02", "]E04006381333931", "QTY-3", "]d2010400638133393110LOT7\x1d21SN1"]


def config(port: str, **kwargs: Any) -> SerialScannerConfig:
    return SerialScannerConfig(name="handheld", port=port, **kwargs)


async def next_scan(scanner: SerialScanner) -> RawScan:
    return await asyncio.wait_for(anext(scanner), TIMEOUT)


async def read_exactly(fd: int, n: int) -> bytes:
    """Read n bytes from a (master) pty fd without blocking the loop."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        got.extend(os.read(fd, 1024))
        if len(got) >= n and not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(done, TIMEOUT)
    finally:
        loop.remove_reader(fd)
    return bytes(got)


async def wait_until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


def open_fds_to(path: str) -> int:
    """How many of this process's descriptors are open on the device ``path``."""
    device = os.stat(path).st_rdev
    count = 0
    for entry in os.scandir("/proc/self/fd"):
        try:
            if os.stat(entry.path).st_rdev == device:
                count += 1
        except OSError:
            continue
    return count


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: the test writes on the master, the driver opens the slave by path."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no CR/LF translation, no echo: the bytes arrive as written
    tty.setraw(master)
    os.set_blocking(master, False)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture
async def open_scanner(pty: tuple[int, str]) -> AsyncIterator[Callable[..., Any]]:
    """Builds a SerialScanner on the pty, waits until it is connected, closes it afterwards."""
    scanners: list[SerialScanner] = []

    async def make(**kwargs: Any) -> tuple[SerialScanner, int, States]:
        states = States()
        scanner = SerialScanner(config(pty[1], **kwargs), on_state=states)
        scanners.append(scanner)
        aiter(scanner)  # starts reading
        await states.connected()
        return scanner, pty[0], states

    yield make
    for scanner in scanners:
        await scanner.close()


def test_is_a_scanner(pty: tuple[int, str]) -> None:
    assert isinstance(SerialScanner(config(pty[1])), Scanner)


TERMINATORS = [
    ("auto", b"\r"), ("auto", b"\n"), ("auto", b"\r\n"),
    ("CR", b"\r"), ("LF", b"\n"), ("CRLF", b"\r\n"), ("#", b"#"), ("\t", b"\t"),
]


@pytest.mark.parametrize(("terminator", "wire"), TERMINATORS,
                         ids=[f"{t}-{w!r}" for t, w in TERMINATORS])
async def test_scans_arrive_for_every_terminator(
    open_scanner: Callable[..., Any], terminator: str, wire: bytes
) -> None:
    scanner, master, _ = await open_scanner(terminator=terminator)
    before = boottime_ns()
    os.write(master, b"".join(s.encode() + wire for s in SCANS))
    got = [await next_scan(scanner) for _ in SCANS]
    after = boottime_ns()
    assert [(s.scanner, s.text, s.error) for s in got] == [("handheld", s, None) for s in SCANS]
    assert [s.raw for s in got] == [s.encode() for s in SCANS]
    assert all(before <= s.boot_ns <= after for s in got)


async def test_scan_split_across_writes_is_one_scan(open_scanner: Callable[..., Any]) -> None:
    scanner, master, _ = await open_scanner(terminator="CRLF")
    os.write(master, b"LOC-A-")
    os.write(master, b"01\r")
    os.write(master, b"\nQTY-2\r\n")
    assert [(await next_scan(scanner)).text for _ in range(2)] == ["LOC-A-01", "QTY-2"]


async def test_prefix_and_suffix_are_stripped(open_scanner: Callable[..., Any]) -> None:
    scanner, master, _ = await open_scanner(prefix="\x02", suffix="\x03", terminator="CR")
    os.write(master, b"\x02LOC-A-01\x03\rQTY-2\r")
    first, second = await next_scan(scanner), await next_scan(scanner)
    assert (first.text, first.raw, first.error) == ("LOC-A-01", b"\x02LOC-A-01\x03", None)
    assert (second.text, second.error) == ("QTY-2", None)


async def test_over_long_scan_is_flagged_once(open_scanner: Callable[..., Any]) -> None:
    scanner, master, _ = await open_scanner(max_length=16)
    os.write(master, b"9" * 5000 + b"\r\nLOC-A-01\r\n")
    bad, good = await next_scan(scanner), await next_scan(scanner)
    assert (bad.text, bad.error) == ("9" * 16, "over-long scan: more than 16 bytes")
    assert (good.text, good.error) == ("LOC-A-01", None)


@pytest.mark.parametrize(("wire", "text", "error"), [
    (b"LOC\x00A", "LOC\\x00A", "non-text bytes: control character 0x00 at byte 3"),
    (b"LOC\xfe\xffA", "LOC\\xfe\\xffA", "non-text bytes: invalid utf-8 at byte 3"),
    (b"\x1b[2J", "\\x1b[2J", "non-text bytes: control character 0x1B at byte 0"),
], ids=["nul", "invalid-utf8", "escape-sequence"])
async def test_non_text_bytes_give_an_error_scan_not_a_crash(
    open_scanner: Callable[..., Any], wire: bytes, text: str, error: str
) -> None:
    scanner, master, _ = await open_scanner()
    os.write(master, wire + b"\rLOC-A-01\r")
    bad, good = await next_scan(scanner), await next_scan(scanner)
    assert (bad.text, bad.raw, bad.error) == (text, wire, error)
    assert (good.text, good.error) == ("LOC-A-01", None)


async def test_gs_and_aim_identifier_are_kept(open_scanner: Callable[..., Any]) -> None:
    scanner, master, _ = await open_scanner()
    os.write(master, b"]d2010400638133393110LOT7\x1d17270101\r]C10104006381333931\r")
    assert [(await next_scan(scanner)).text for _ in range(2)] == [
        "]d2010400638133393110LOT7\x1d17270101", "]C10104006381333931"
    ]


async def test_ack_and_nak_reach_the_scanner(open_scanner: Callable[..., Any]) -> None:
    scanner, master, _ = await open_scanner(ack="\x06", nak="\x15\x07")
    await scanner.acknowledge(True)
    await scanner.acknowledge(False)
    await scanner.acknowledge(True)
    assert await read_exactly(master, 4) == b"\x06\x15\x07\x06"


async def test_no_ack_configured_sends_nothing(open_scanner: Callable[..., Any]) -> None:
    """Only the NAK is configured: an ACK call must not put anything on the wire before it."""
    scanner, master, _ = await open_scanner(nak="\x15")
    await scanner.acknowledge(True)
    await scanner.acknowledge(False)
    assert await read_exactly(master, 1) == b"\x15"


async def test_ack_when_port_is_gone_does_not_raise(tmp_path: Path) -> None:
    states = States()
    scanner = SerialScanner(config(str(tmp_path / "absent"), ack="\x06"), on_state=states,
                            backoff_start=0.05, backoff_cap=0.2)
    async with scanner:
        aiter(scanner)
        state = await states.wait(lambda s: "cannot open" in s.detail)
        assert state.detail == f"cannot open {tmp_path / 'absent'}: No such file or directory"
        await scanner.acknowledge(True)


async def test_close_is_idempotent_and_releases_the_port(
    open_scanner: Callable[..., Any], pty: tuple[int, str]
) -> None:
    scanner, _, states = await open_scanner()
    assert open_fds_to(pty[1]) == 2  # the fixture's slave and the driver's port
    pending = asyncio.ensure_future(anext(scanner))
    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(scanner.close(), scanner.close()), TIMEOUT)
    await scanner.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, TIMEOUT)
    with pytest.raises(StopAsyncIteration):
        await next_scan(scanner)
    assert open_fds_to(pty[1]) == 1
    assert scanner.state == ScannerState("handheld", False, "closed")
    assert [s.connected for s in states.seen] == [True, False]


async def test_scans_read_before_close_are_still_delivered(
    open_scanner: Callable[..., Any],
) -> None:
    scanner, master, _ = await open_scanner()
    os.write(master, b"LOC-A-01\r")
    first = await next_scan(scanner)
    await scanner.close()
    assert first.text == "LOC-A-01"
    assert [s async for s in scanner] == []


async def test_a_device_faster_than_the_station_is_not_read_until_it_has_room(
    open_scanner: Callable[..., Any],
) -> None:
    """What waits for the station is bounded: once the scans read fill the queue, the driver
    stops reading (the tty keeps the rest, and a USB device is held back by its own flow
    control), and reads on when the station has taken some: every scan arrives, in order."""
    scanner, master, _ = await open_scanner()
    scanner._queue.limit = 5
    first = [f"A{i:03d}" for i in range(50)]
    os.write(master, b"".join(t.encode() + b"\r" for t in first))  # one read, 50 scans
    await wait_until(lambda: len(scanner._queue) == 50)
    second = [f"B{i:03d}" for i in range(50)]
    os.write(master, b"".join(t.encode() + b"\r" for t in second))
    for _ in range(20):  # the station away a while longer: nothing more is read
        await asyncio.sleep(0.01)
        assert len(scanner._queue) == 50
    got = [await next_scan(scanner) for _ in range(100)]
    assert [s.text for s in got] == first + second
    assert scanner._queue.dropped == 0


async def test_a_reader_thread_waits_for_room_too() -> None:
    """The same over a ``socket://`` URL, read by a thread rather than add_reader."""
    server = await asyncio.start_server(lambda r, w: peers.put_nowait(w), "127.0.0.1", 0)
    peers: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
    port = server.sockets[0].getsockname()[1]
    states = States()
    scanner = SerialScanner(config(f"socket://127.0.0.1:{port}"), on_state=states)
    scanner._queue.limit = 5
    aiter(scanner)
    try:
        await states.connected()
        peer = await asyncio.wait_for(peers.get(), TIMEOUT)
        texts = [f"S{i:05d}" for i in range(20_000)]
        peer.write(b"".join(t.encode() + b"\r" for t in texts))
        await peer.drain()
        await wait_until(lambda: len(scanner._queue) >= 5)
        await asyncio.sleep(0.3)  # several of the thread's read timeouts
        # The limit plus the last reads (4 KiB each) before the pause took effect.
        assert len(scanner._queue) < 5 + 3 * 4096 // 7
        got = [await next_scan(scanner) for _ in texts]
        assert [s.text for s in got] == texts
        peer.close()
    finally:
        await scanner.close()
        server.close()
        await server.wait_closed()


async def test_device_path_vanishing_is_noticed(pty: tuple[int, str], tmp_path: Path) -> None:
    """A by-id link removed on unplug, while the tty itself has not hung up (yet)."""
    link = tmp_path / "usb-Scanner-if00"
    link.symlink_to(pty[1])
    states = States()
    scanner = SerialScanner(config(str(link)), on_state=states,
                            backoff_start=0.05, backoff_cap=0.2, watch_interval=0.05)
    async with scanner:
        aiter(scanner)
        await states.connected()
        link.unlink()
        gone = await states.disconnected()
        assert gone.detail == f"{link} lost: the device path vanished"
        link.symlink_to(pty[1])
        await states.wait(lambda s: s.connected and s is not states.seen[0])
        os.write(pty[0], b"LOC-A-01\r")
        assert (await next_scan(scanner)).text == "LOC-A-01"


async def test_port_in_use_is_reported_then_taken_when_free(pty: tuple[int, str]) -> None:
    other = os.open(pty[1], os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another program holds the scanner
    states = States()
    scanner = SerialScanner(config(pty[1]), on_state=states, backoff_start=0.05, backoff_cap=0.1)
    async with scanner:
        aiter(scanner)
        busy = await states.wait(lambda s: s.detail.startswith("cannot open"))
        assert busy.detail == (f"cannot open {pty[1]}: in use by another program "
                               "(cannot lock it: Resource temporarily unavailable)")
        os.close(other)
        await states.connected()


async def test_close_before_iterating() -> None:
    scanner = SerialScanner(config("/dev/null-not-a-scanner"))
    await scanner.close()
    assert [s async for s in scanner] == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"port": "bogus://x"}, "unknown pyserial URL scheme 'bogus'"),
    ({"port": "/dev/ttyX", "terminator": "§", "encoding": "ascii"},
     "terminator '§' cannot be written in ascii"),
], ids=["url-scheme", "terminator-encoding"])
def test_bad_settings_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DriverError, match=message):
        SerialScanner(SerialScannerConfig(name="handheld", **kwargs))


async def test_url_transport_without_fd_uses_a_reader_thread() -> None:
    """loop:// has no descriptor: bytes come through the reader thread (the ACK loops back)."""
    states = States()
    async with SerialScanner(config("loop://", ack="LOC-A-01\r"), on_state=states) as scanner:
        aiter(scanner)
        await states.connected()
        await scanner.acknowledge(True)
        scan = await next_scan(scanner)
        assert (scan.text, scan.error) == ("LOC-A-01", None)
    assert scanner.state.detail == "closed"


async def test_socket_url_reconnects() -> None:
    """socket:// is read through its descriptor, and a dropped connection is reopened."""
    connections: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connections.put(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    states = States()
    scanner = SerialScanner(config(f"socket://127.0.0.1:{port}"), on_state=states,
                            backoff_start=0.05, backoff_cap=0.2)
    try:
        aiter(scanner)
        writer = await asyncio.wait_for(connections.get(), TIMEOUT)
        writer.write(b"LOC-A-01\r")
        assert (await next_scan(scanner)).text == "LOC-A-01"
        writer.close()
        await writer.wait_closed()
        await states.disconnected()
        writer = await asyncio.wait_for(connections.get(), TIMEOUT)
        writer.write(b"LOC-B-02\r")
        assert (await next_scan(scanner)).text == "LOC-B-02"
        writer.close()
        await writer.wait_closed()
    finally:
        await scanner.close()
        server.close()
        await server.wait_closed()


# -- unplug and replug: a socat pty link that goes away and comes back at the same path ----------


class Socat:
    """A pty pair linked at ``scanner`` (the driver's end) and ``host`` (the test's end)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.scanner = directory / "scanner"
        self.host = directory / "host"
        self.log = directory / "socat.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_fd: int | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-d", "-d",
                 f"pty,raw,echo=0,link={self.scanner}", f"pty,raw,echo=0,link={self.host}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + TIMEOUT
        while not (self.scanner.exists() and self.host.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not start: {self.log.read_text()}")
            await asyncio.sleep(0.01)
        self.host_fd = os.open(self.host, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        assert self.host_fd is not None
        os.write(self.host_fd, data)

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, TIMEOUT)
            self.proc = None
        if self.host_fd is not None:
            os.close(self.host_fd)
            self.host_fd = None


@pytest.fixture
async def socat(tmp_path: Path) -> AsyncIterator[Socat]:
    binary = shutil.which("socat")
    if binary is None:
        pytest.skip("socat is not installed: the unplug/replug test needs it for a pty link "
                    "that vanishes and returns (apt-get install socat)")
    link = Socat(binary, tmp_path)
    yield link
    await link.stop()


async def test_unplug_and_replug_at_the_same_path(socat: Socat) -> None:
    """The device vanishes and returns: reported, reopened, and no scan after the return lost."""
    await socat.start()
    states = States()
    scanner = SerialScanner(config(str(socat.scanner), ack="\x06"), on_state=states,
                            backoff_start=0.05, backoff_cap=0.3, watch_interval=0.1)
    try:
        aiter(scanner)
        await states.connected()
        socat.write(b"LOC-A-01\r")
        assert (await next_scan(scanner)).text == "LOC-A-01"

        socat.write(b"LOC-CUT-")  # a scan interrupted by the unplug
        await wait_until(lambda: scanner._framer.pending == len(b"LOC-CUT-"))
        await socat.stop()
        gone = await states.disconnected()
        assert gone.detail.startswith(f"{socat.scanner} lost: ")
        assert not scanner.state.connected
        await scanner.acknowledge(True)  # no port: logged, not raised
        await states.wait(lambda s: s.detail.startswith("cannot open"))

        await socat.start()
        after = [f"AFTER-{i}" for i in range(20)]
        socat.write(b"".join(s.encode() + b"\r\n" for s in after[:10]))  # maybe before reopen
        await states.wait(lambda s: s.connected and s is not states.seen[0])
        socat.write(b"".join(s.encode() + b"\r\n" for s in after[10:]))
        got = [await next_scan(scanner) for _ in after]
        # All there, and the cut-off "LOC-CUT-" is not glued to the first of them.
        assert [(s.text, s.error) for s in got] == [(s, None) for s in after]
        assert [s.connected for s in states.seen if s.connected] == [True, True]
    finally:
        await scanner.close()


async def test_serial_scans_are_delivered_and_answered_without_waiting(
        open_scanner: Callable[..., Any]) -> None:
    """A serial scanner on a pty: the sink gets each scan in the read callback, and the ACK
    is written at once (a port the event loop reads never blocks on a write)."""
    scanner, master, _ = await open_scanner(ack="\x06", nak="\x15")
    got: list[str] = []

    def sink(s: RawScan) -> bool:
        got.append(s.text)
        assert scanner.acknowledge_nowait(s.text != "BAD") is True
        return True

    delivering = asyncio.ensure_future(scanner.deliver(sink))
    os.write(master, b"LOC-A-01\rBAD\r4006381333931\r")
    await wait_until(lambda: len(got) == 3)
    assert got == ["LOC-A-01", "BAD", "4006381333931"]
    assert await read_exactly(master, 3) == b"\x06\x15\x06"
    await scanner.close()
    await asyncio.wait_for(delivering, TIMEOUT)


async def test_a_serial_port_read_by_a_thread_is_answered_by_a_task() -> None:
    """``loop://`` has no descriptor: a thread reads it and writes it (a write may block), so
    ``acknowledge_nowait`` says it did not send, and ``acknowledge`` sends (the ACK loops
    back as a scan)."""
    states = States()
    got: list[str] = []
    scanner = SerialScanner(config("loop://", ack="LOC-A-01\r"), on_state=states)
    delivering = asyncio.ensure_future(scanner.deliver(lambda s: got.append(s.text) is None))
    try:
        await states.connected()
        assert scanner.acknowledge_nowait(True) is False
        assert got == []
        await scanner.acknowledge(True)
        await wait_until(lambda: got == ["LOC-A-01"])
    finally:
        await scanner.close()
        await asyncio.wait_for(delivering, TIMEOUT)
