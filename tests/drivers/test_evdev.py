"""The evdev driver's read path, hotplug and grab.

Event bytes are written into a pipe and parsed by evdev's own reader (``FdEventSource``), which
stands in for the device node through the driver's ``opener`` seam. Hotplug uses a real inotify
watch on a temporary directory. Tests that need a real virtual keyboard (``/dev/uinput``) skip
where it is missing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from evdev import InputEvent, ecodes

from drivers import open_scanner
from drivers.base import RawScan, Scanner, ScannerState, boottime_ns
from drivers.errors import DriverError, ScannerGoneError
from drivers.evdev import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    DeviceIdentity,
    DirectoryWatcher,
    EvdevScanner,
    EvdevScannerConfig,
    EventSource,
    FdEventSource,
    matches,
    open_matching_device,
)
from tests.drivers.keyevents import SHIFT, Typist, to_bytes

E = ecodes
GS = "\x1d"


def config(**kw: object) -> EvdevScannerConfig:
    base: dict[str, object] = {"name": "wedge", "name_pattern": "scanner"}
    base.update(kw)
    return EvdevScannerConfig(**base)  # type: ignore[arg-type]


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def next_scan(it: AsyncIterator[RawScan], timeout: float = 3.0) -> RawScan:
    return await asyncio.wait_for(anext(it), timeout)


class PipeDock:
    """Stands in for /dev/input: a node file in a directory, and a pipe as the device."""

    def __init__(self, directory: Path, source_cls: type[FdEventSource] = FdEventSource) -> None:
        self.dir = directory
        self.node = directory / "event7"
        self.source_cls = source_cls
        self.write_fd = -1
        self._read_fd: int | None = None
        self.sources: list[FdEventSource] = []

    def plug(self) -> None:
        self._read_fd, self.write_fd = os.pipe()
        self.node.touch()  # the "device node" appears: inotify IN_CREATE

    def unplug(self) -> None:
        os.close(self.write_fd)  # the reader sees end of file
        self.write_fd = -1
        self.node.unlink()

    def open(self) -> EventSource:
        if self._read_fd is None:
            raise ScannerGoneError(f"{self.node} is not present (unplugged or asleep?)")
        fd, self._read_fd = self._read_fd, None
        source = self.source_cls(fd, path=str(self.node), name="Test Barcode Scanner")
        self.sources.append(source)
        return source

    def send(self, events: list[InputEvent]) -> None:
        os.write(self.write_fd, to_bytes(events))

    def close(self) -> None:
        for fd in (self.write_fd, self._read_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        for s in self.sources:
            s.close()


class BoottimeSource(FdEventSource):
    """A pipe whose events are stamped on CLOCK_BOOTTIME, as the driver asks of a device."""

    def __init__(self, fd: int, path: str = "", name: str = "") -> None:
        super().__init__(fd, path, name, clock=time.CLOCK_BOOTTIME)


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[PipeDock]:
    d = PipeDock(tmp_path)
    yield d
    d.close()


def scanner_on(dock: PipeDock, states: list[ScannerState] | None = None,
               **kw: object) -> EvdevScanner:
    backoff = kw.pop("backoff", (30.0, 30.0))  # only inotify can make a reconnect quick
    return EvdevScanner(config(**kw), on_state=None if states is None else states.append,
                        opener=dock.open, input_dir=str(dock.dir),
                        backoff=backoff)  # type: ignore[arg-type]


# -- evdev's reader over a pipe ----------------------------------------------------------------


def test_fd_event_source_parses_kernel_input_event_bytes() -> None:
    r, w = os.pipe()
    source = FdEventSource(r, name="pipe")
    events = Typist("us", t0_us=1_700_000_123_456_789).tap(E.KEY_A).take()
    os.write(w, to_bytes(events))
    got = list(source.read())
    assert [(e.sec, e.usec, e.type, e.code, e.value) for e in got] == [
        (e.sec, e.usec, e.type, e.code, e.value) for e in events]
    with pytest.raises(BlockingIOError):
        list(source.read())
    os.close(w)
    assert list(source.read()) == []  # end of file: the driver's "unplugged"
    source.close()
    source.close()


# -- reading scans -----------------------------------------------------------------------------


async def test_scans_arrive_decoded_from_event_bytes(dock: PipeDock) -> None:
    dock.plug()
    scanner = scanner_on(dock)
    it = aiter(scanner)
    first = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    t = Typist("us", step_us=150)  # fast: three scans in one write
    t.scan("LOC-A-01").scan("]d20104006381333931" + "10LOT7" + GS + "21SN1").scan("QTY-12")
    dock.send(t.take())
    scans = [await first, await next_scan(it), await next_scan(it)]
    assert [(s.scanner, s.text, s.error) for s in scans] == [
        ("wedge", "LOC-A-01", None),
        ("wedge", "]d20104006381333931" + "10LOT7" + GS + "21SN1", None),
        ("wedge", "QTY-12", None)]
    assert scans[1].raw == scans[1].text.encode()
    await scanner.close()


async def test_scans_are_delivered_to_a_sink_as_they_are_decoded(dock: PipeDock) -> None:
    """As the daemon reads a wedge: each scan handed over in the read callback; nothing to
    answer (a keyboard cannot be told anything)."""
    dock.plug()
    scanner = scanner_on(dock)
    got: list[str] = []
    delivering = asyncio.ensure_future(scanner.deliver(lambda s: got.append(s.text) is None))
    await until(lambda: scanner.state.connected)
    dock.send(Typist("us", step_us=150).scan("LOC-A-01").scan("QTY-12").take())
    await until(lambda: len(got) == 2)
    assert got == ["LOC-A-01", "QTY-12"]
    assert scanner.acknowledge_nowait(True) is True
    await scanner.close()
    await asyncio.wait_for(delivering, 3.0)


async def test_a_scan_keeps_the_kernel_timestamp_of_its_last_key(tmp_path: Path) -> None:
    """Like serial and TCP scans keep the time their bytes arrived, a wedge's scan keeps the
    kernel's timestamp of the key that ended it (on CLOCK_BOOTTIME), not the time the loop got
    to it: here the events are stamped 300 ms before they are written."""
    dock = PipeDock(tmp_path, source_cls=BoottimeSource)
    dock.plug()
    scanner = scanner_on(dock)
    it = aiter(scanner)
    first = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    await asyncio.sleep(0.4)
    enter_us = (boottime_ns() - 300_000_000) // 1000
    t = Typist("us", t0_us=enter_us - 2 * 4 * 800, step_us=800).scan("AB")
    events = t.take()
    assert events[-1].sec * 1_000_000 + events[-1].usec == enter_us + 800  # the Enter key-up
    dock.send(events)
    scan = await first
    enter_down_us = enter_us  # the Enter key-down ended the scan
    assert scan.text == "AB"
    assert scan.boot_ns == enter_down_us * 1000
    assert abs(scan.wall_time - (time.time() - (boottime_ns() - scan.boot_ns) / 1e9)) < 0.05
    await scanner.close()
    dock.close()


async def test_timestamps_from_before_the_device_was_opened_are_taken_as_read_time(
        dock: PipeDock) -> None:
    """Events from a device can only be younger than its opening: a stamp outside that
    (a clock stepped meanwhile, a made-up stream) falls back to the time it was read."""
    dock.plug()
    scanner = scanner_on(dock)
    it = aiter(scanner)
    first = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    before = boottime_ns()
    dock.send(Typist("us", t0_us=1_000_000).scan("AB").take())  # realtime clock, 1970
    scan = await first
    assert before <= scan.boot_ns <= boottime_ns()
    await scanner.close()


async def test_a_flooding_wedge_has_whole_scans_dropped_beyond_the_limit(
    dock: PipeDock, caplog: pytest.LogCaptureFixture
) -> None:
    """A keyboard types whether or not anyone reads it: beyond the limit of scans waiting
    for the station, whole scans are dropped (never acknowledged: scanned again) with a
    warning, and those kept arrive intact, in order."""
    caplog.set_level(logging.WARNING, logger="drivers.base")
    dock.plug()
    scanner = scanner_on(dock)
    scanner._queue.limit = 3
    it = aiter(scanner)
    first = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    t = Typist("us", step_us=150)
    texts = [f"S{i:02d}" for i in range(10)]
    for text in texts:
        t.scan(text)
    dock.send(t.take())
    got = [await first]
    await until(lambda: 1 + len(scanner._queue) + scanner._queue.dropped == len(texts))
    while len(scanner._queue):
        got.append(await next_scan(it))
    assert [s.text for s in got] == texts[:len(got)]
    assert scanner._queue.dropped >= len(texts) - 4
    assert "scanner wedge: 1 scan(s) dropped" in caplog.text
    t.scan("AFTER")
    dock.send(t.take())
    assert (await next_scan(it)).text == "AFTER"
    assert f"taking scans again after dropping {scanner._queue.dropped}" in caplog.text
    await scanner.close()


async def test_gs_via_alt_0029_through_the_pipe(dock: PipeDock) -> None:
    dock.plug()
    scanner = scanner_on(dock, layout="de")
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    t = Typist("de").type("0104006381333931" + "10AB").alt_code("0029").type("21Z").enter()
    dock.send(t.take())
    assert (await pending).text == "0104006381333931" + "10AB" + GS + "21Z"
    await scanner.close()


async def test_a_scan_split_across_reads(dock: PipeDock) -> None:
    dock.plug()
    scanner = scanner_on(dock, layout="fr")
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    events = Typist("fr").scan("4006381333931").take()
    dock.send(events[:25])
    await asyncio.sleep(0.02)
    dock.send(events[25:])
    assert (await pending).text == "4006381333931"
    await scanner.close()


async def test_timeout_terminator_ends_the_scan_on_the_quiet_timer(dock: PipeDock) -> None:
    dock.plug()
    scanner = scanner_on(dock, terminator="timeout", timeout_ms=30)
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    dock.send(Typist("us").scan("ABC", suffix=None).take())
    scan = await pending
    assert (scan.text, scan.error) == ("ABC", None)
    await scanner.close()


async def test_syn_dropped_through_the_pipe(dock: PipeDock) -> None:
    dock.plug()
    scanner = scanner_on(dock)
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    t = Typist("us").type("4006").syn(E.SYN_DROPPED).bare(E.KEY_3, 1).syn(E.SYN_REPORT)
    dock.send(t.type("81").enter().scan("LOC-C").take())
    damaged, clean = await pending, await next_scan(it)
    assert damaged.text == "400681"
    assert damaged.error == "key events were dropped (SYN_DROPPED): characters may be missing"
    assert (clean.text, clean.error) == ("LOC-C", None)
    await scanner.close()


# -- hotplug -----------------------------------------------------------------------------------


async def test_unplug_is_reported_and_replug_is_picked_up_through_inotify(
        dock: PipeDock) -> None:
    states: list[ScannerState] = []
    dock.plug()
    scanner = scanner_on(dock, states)
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    dock.send(Typist("us").type("40063").take())  # unplugged in the middle of a scan
    await asyncio.sleep(0.02)
    dock.unplug()
    partial = await pending
    assert partial.text == "40063"
    assert partial.error == "scanner disconnected in the middle of a scan (end of file)"
    await until(lambda: not scanner.state.connected)
    assert scanner.state.detail == f"disconnected: {dock.node}: end of file"

    dock.plug()  # IN_CREATE wakes the reconnect; the 30 s backoff never gets a say
    await until(lambda: scanner.state.connected, timeout=2.0)
    dock.send(Typist("us").scan("LOC-B").take())
    scan = await next_scan(it)
    assert (scan.text, scan.error) == ("LOC-B", None)
    assert [(s.connected, s.detail) for s in states] == [
        (True, f"{dock.node} (Test Barcode Scanner), grabbed"),
        (False, f"disconnected: {dock.node}: end of file"),
        (True, f"{dock.node} (Test Barcode Scanner), grabbed")]
    await scanner.close()


class VanishingSource(FdEventSource):
    """A device whose read fails with ENODEV, as an unplugged evdev node does."""

    gone = False

    def read(self) -> Iterator[InputEvent]:
        if self.gone:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return super().read()


async def test_enodev_at_the_fd_boundary_is_an_unplug(tmp_path: Path) -> None:
    dock = PipeDock(tmp_path, VanishingSource)
    try:
        dock.plug()
        scanner = scanner_on(dock)
        it = aiter(scanner)
        pending = asyncio.ensure_future(next_scan(it))
        await until(lambda: scanner.state.connected)
        source = dock.sources[0]
        assert isinstance(source, VanishingSource)
        source.gone = True
        dock.send(Typist("us").tap(E.KEY_A).take())  # makes the fd readable
        await until(lambda: not scanner.state.connected)
        assert scanner.state.detail == f"disconnected: {dock.node}: No such device"
        pending.cancel()
        await scanner.close()
    finally:
        dock.close()


async def test_replug_without_inotify_is_found_by_the_backoff_timer(tmp_path: Path) -> None:
    dock = PipeDock(tmp_path)
    try:
        dock.plug()
        scanner = EvdevScanner(config(), opener=dock.open, input_dir=str(tmp_path / "absent"),
                               backoff=(0.02, 0.1))
        it = aiter(scanner)
        pending = asyncio.ensure_future(next_scan(it))
        await until(lambda: scanner.state.connected)
        dock.unplug()
        await until(lambda: not scanner.state.connected)
        dock.plug()
        await until(lambda: scanner.state.connected)
        dock.send(Typist("us").scan("X1").take())
        assert (await pending).text == "X1"
        await scanner.close()
    finally:
        dock.close()


async def test_absent_device_waits_without_spending_cpu(tmp_path: Path) -> None:
    """Idle means idle: no polling loop while the scanner is away."""
    dock = PipeDock(tmp_path)
    scanner = EvdevScanner(config(), opener=dock.open, input_dir=str(tmp_path))
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: "not present" in scanner.state.detail)
    cpu = time.process_time()
    await asyncio.sleep(0.5)
    assert time.process_time() - cpu < 0.05
    pending.cancel()
    await scanner.close()
    dock.close()


# -- grab --------------------------------------------------------------------------------------


class GrabbableSource(FdEventSource):
    """Records grab traffic; keys are "held" for the first few checks."""

    def __init__(self, fd: int, log: list[str], held: list[list[int]],
                 grab_errors: list[int]) -> None:
        super().__init__(fd, path="/dev/input/event9", name="Grabbable Scanner")
        self.log, self.held, self.grab_errors = log, held, grab_errors

    def active_keys(self) -> list[int]:
        keys = self.held.pop(0) if self.held else []
        self.log.append(f"active_keys={keys}")
        return keys

    def grab(self) -> None:
        if self.grab_errors:
            err = self.grab_errors.pop(0)
            self.log.append("grab failed")
            raise OSError(err, os.strerror(err))
        self.log.append("grab")

    def ungrab(self) -> None:
        self.log.append("ungrab")

    def close(self) -> None:
        if self.fd >= 0:
            self.log.append("close")
        super().close()


async def test_grab_waits_until_no_key_is_held() -> None:
    """Grabbing mid-keypress would leave the console with a key that never comes up."""
    log: list[str] = []
    r, w = os.pipe()
    source = GrabbableSource(r, log, held=[[E.KEY_ENTER], [E.KEY_LEFTSHIFT, E.KEY_A]],
                             grab_errors=[])
    scanner = EvdevScanner(config(), opener=lambda: source, input_dir="/nonexistent")
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    assert log == ["active_keys=[28]", "active_keys=[42, 30]", "active_keys=[]", "grab"]
    assert scanner.state.detail == "/dev/input/event9 (Grabbable Scanner), grabbed"
    pending.cancel()
    await scanner.close()
    os.close(w)


async def test_grab_ebusy_is_reported_clearly_and_retried() -> None:
    log: list[str] = []
    states: list[ScannerState] = []
    pipes = [os.pipe() for _ in range(2)]
    errors = [errno.EBUSY]
    sources = iter([GrabbableSource(r, log, [], errors) for r, _ in pipes])
    scanner = EvdevScanner(config(), on_state=states.append, opener=lambda: next(sources),
                           input_dir="/nonexistent", backoff=(0.02, 0.02))
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    assert states[0] == ScannerState(
        "wedge", False,
        "/dev/input/event9: grabbed by another program (EVIOCGRAB: device busy); stop the "
        "other reader (another scan-agent?) or set grab = false")
    assert log == ["active_keys=[]", "grab failed", "close", "active_keys=[]", "grab"]
    pending.cancel()
    await scanner.close()
    for _, w in pipes:
        os.close(w)


async def test_close_removes_reader_then_ungrabs_then_closes_and_is_idempotent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    r, w = os.pipe()
    source = GrabbableSource(r, log, [], [])
    loop = asyncio.get_running_loop()
    real_remove = loop.remove_reader

    def remove_reader(fd: int) -> bool:
        log.append("remove_reader")
        return real_remove(fd)

    monkeypatch.setattr(loop, "remove_reader", remove_reader)
    scanner = EvdevScanner(config(), opener=lambda: source, input_dir="/nonexistent")
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it))
    await until(lambda: scanner.state.connected)
    os.write(w, to_bytes(Typist("us").type("AB").take()))  # a scan cut short by shutdown
    await asyncio.sleep(0.02)
    log.clear()
    await scanner.close()
    await scanner.close()
    assert log == ["remove_reader", "ungrab", "close"]
    cut = await pending
    assert (cut.text, cut.error) == ("AB", "scanner closed in the middle of a scan")
    with pytest.raises(StopAsyncIteration):
        await next_scan(it)
    assert scanner.state == ScannerState("wedge", False, "closed")
    with pytest.raises(OSError):
        os.fstat(r)
    os.close(w)


async def test_close_before_iterating_and_iterating_after_close() -> None:
    def never() -> EventSource:
        raise AssertionError("a closed scanner must not open its device")

    scanner = EvdevScanner(config(), opener=never)
    await scanner.close()
    assert [s async for s in scanner] == []


def test_registry_builds_the_driver_without_touching_devices() -> None:
    scanner = open_scanner(config(device="/dev/input/by-id/usb-X-event-kbd"))
    assert isinstance(scanner, EvdevScanner)
    assert isinstance(scanner, Scanner)
    assert scanner.state == ScannerState("wedge", False, "not opened yet")


# -- finding the device ------------------------------------------------------------------------


def ident(**kw: object) -> DeviceIdentity:
    base: dict[str, object] = {"path": "/dev/input/event3", "name": "Honeywell 1900 Scanner",
                               "vendor": 0x0C2E, "product": 0x0B61, "uniq": "17088B4F07",
                               "keyboard": True}
    base.update(kw)
    return DeviceIdentity(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cfg", "device", "expected"),
    [
        ({"name_pattern": None, "vendor": "0c2e", "product": "0b61"}, {}, True),
        ({"name_pattern": None, "vendor": "0c2e", "product": "0b62"}, {}, False),
        ({"name_pattern": None, "vendor": "0c2e", "product": "0b61", "serial": "17088B4F07"},
         {}, True),
        ({"name_pattern": None, "vendor": "0c2e", "product": "0b61", "serial": "X"}, {}, False),
        ({"name_pattern": "honeywell.*scanner"}, {}, True),
        ({"name_pattern": "^zebra"}, {}, False),
        ({"name_pattern": None, "vendor": "0c2e", "product": "0b61"}, {"keyboard": False},
         False),
    ],
    ids=["ids", "other-product", "ids-serial", "wrong-serial", "name-regex-ci", "name-no",
         "consumer-control-interface"],
)
def test_matches(cfg: dict[str, object], device: dict[str, object], expected: bool) -> None:
    assert matches(config(**cfg), ident(**device)) is expected


def test_no_matching_device_is_waited_for(tmp_path: Path) -> None:
    with pytest.raises(ScannerGoneError, match="no input device matches name matching 'scanner'"):
        open_matching_device(config(), str(tmp_path))


def test_missing_device_path_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "by-id" / "usb-X-event-kbd"
    with pytest.raises(ScannerGoneError, match="is not present"):
        open_matching_device(config(device=str(path)))


def test_a_path_that_is_no_input_device_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "event0"
    path.write_bytes(b"")
    with pytest.raises(DriverError, match="is not an input event device"):
        open_matching_device(config(device=str(path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_device_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "event0"
    path.write_bytes(b"")
    path.chmod(0)
    with pytest.raises(DriverError, match="permission denied; add the agent's user to the "
                                          "'input' group"):
        open_matching_device(config(device=str(path)))


# -- inotify -----------------------------------------------------------------------------------


async def test_directory_watcher_reports_create_attrib_delete(tmp_path: Path) -> None:
    seen: list[tuple[str, str, int]] = []
    watcher = DirectoryWatcher(str(tmp_path), lambda d, n, m: seen.append((d, n, m)),
                               subdirs=("by-id",))
    watcher.start(asyncio.get_running_loop())
    node = tmp_path / "event5"
    node.touch()
    await until(lambda: any(n == "event5" and m & IN_CREATE for _, n, m in seen))
    node.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)  # udev applying the group mode
    await until(lambda: any(n == "event5" and m & IN_ATTRIB for _, n, m in seen))
    (tmp_path / "by-id").mkdir()  # created after the watch started: watched from then on
    await until(lambda: any(n == "by-id" for _, n, _m in seen))
    (tmp_path / "by-id" / "usb-Scanner-event-kbd").symlink_to(node)
    await until(lambda: any(n == "usb-Scanner-event-kbd" for _, n, _m in seen))
    assert (str(tmp_path / "by-id"), "usb-Scanner-event-kbd") in [(d, n) for d, n, _ in seen]
    node.unlink()
    await until(lambda: any(n == "event5" and m & IN_DELETE for _, n, m in seen))
    watcher.close()
    watcher.close()
    assert not watcher.active


async def test_directory_watcher_on_a_missing_directory_raises(tmp_path: Path) -> None:
    watcher = DirectoryWatcher(str(tmp_path / "absent"), lambda d, n, m: None)
    with pytest.raises(FileNotFoundError):
        watcher.start(asyncio.get_running_loop())
    assert not watcher.active


# -- a real virtual keyboard -------------------------------------------------------------------

_NO_UINPUT = not os.access("/dev/uinput", os.R_OK | os.W_OK)
uinput = pytest.mark.skipif(
    _NO_UINPUT, reason="needs /dev/uinput (read-write) for a virtual keyboard; absent here")


def _virtual_scanner(name: str = "Virtual Barcode Scanner") -> object:
    from evdev import UInput

    keys = [c for c in range(1, 128)]
    return UInput({E.EV_KEY: keys}, name=name, vendor=0x0C2E, product=0x0B61)


@pytest.mark.hardware
@uinput
async def test_uinput_match_grab_read_and_hotplug() -> None:
    from evdev import UInput

    ui = _virtual_scanner()
    assert isinstance(ui, UInput)
    states: list[ScannerState] = []
    scanner = EvdevScanner(config(name_pattern=None, vendor="0c2e", product="0b61"),
                           on_state=states.append, backoff=(0.1, 1.0))
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it, timeout=10))
    await until(lambda: scanner.state.connected, timeout=10)
    assert scanner.state.detail.endswith("(Virtual Barcode Scanner), grabbed")
    for ev in Typist("us").scan("LOC-A1").take():
        ui.write(ev.type, ev.code, ev.value)
    assert (await pending).text == "LOC-A1"

    ui.close()  # unplug: ENODEV on the reader
    await until(lambda: not scanner.state.connected, timeout=10)
    ui = _virtual_scanner()  # replug: inotify IN_CREATE / IN_ATTRIB
    assert isinstance(ui, UInput)
    await until(lambda: scanner.state.connected, timeout=10)
    await asyncio.sleep(0.2)
    for ev in Typist("us").key(SHIFT, 1).tap(E.KEY_A).key(SHIFT, 0).enter().take():
        ui.write(ev.type, ev.code, ev.value)
    assert (await next_scan(it, timeout=10)).text == "A"
    await scanner.close()
    ui.close()


@pytest.mark.hardware
@uinput
async def test_uinput_second_grab_is_ebusy() -> None:
    from evdev import UInput

    ui = _virtual_scanner("Busy Barcode Scanner")
    assert isinstance(ui, UInput)
    await asyncio.sleep(0.3)
    other = open_matching_device(config(name_pattern="^busy barcode scanner$"))
    other.grab()
    scanner = EvdevScanner(config(name_pattern="^busy barcode scanner$"),
                           backoff=(5.0, 5.0))
    it = aiter(scanner)
    pending = asyncio.ensure_future(next_scan(it, timeout=10))
    await until(lambda: "grabbed by another program" in scanner.state.detail, timeout=10)
    pending.cancel()
    await scanner.close()
    other.ungrab()
    other.close()
    ui.close()
