"""``driver = "evdev"``: USB and Bluetooth keyboard-wedge scanners read through /dev/input.

The device is found by path (``/dev/input/by-id/...`` links included), by USB vendor/product
(and serial), or by a name pattern, then grabbed exclusively (``EVIOCGRAB``) so a barcode is never
typed into a console login as well. The grab waits until no key is held: grabbing in the middle of
a key press leaves the console with a key that never comes up.

Events are read without blocking the loop (``loop.add_reader`` on the device's descriptor) and
parsed by evdev's own reader; :mod:`drivers.keymap` turns them into scans with the scanner's
layout. A scanner that disappears (unplug, ``ENODEV``, a Bluetooth scanner going to sleep) is
reported as disconnected and re-opened when it returns: an inotify watch on /dev/input (creation,
and attribute changes, because udev applies the group and mode after the node appears) wakes the
reconnect at once, and a capped backoff timer covers what inotify cannot see. Nothing polls: an
idle scanner costs no CPU.

Shutdown order (:meth:`EvdevScanner.close`): remove the reader, ungrab, close the device, then
stop the watcher and cancel the timers and the reconnect task.

The device is opened through a small seam (``opener``), so tests and tools can read events from
any file descriptor with :class:`FdEventSource`: evdev's own parser over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import glob
import logging
import os
import re
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import evdev
from evdev import InputEvent, ecodes
from evdev.eventio import EventIO

from agent.errors import DriverError, ScannerGoneError
from drivers.base import RawScan, ScannerState, ScanQueue, StateCallback
from drivers.keymap import DecodedScan, KeyDecoder, can_type_barcode

if TYPE_CHECKING:
    from agent.config import EvdevScannerConfig

__all__ = [
    "DeviceIdentity",
    "DirectoryWatcher",
    "EvdevScanner",
    "EventSource",
    "FdEventSource",
    "describe_match",
    "matches",
    "open_matching_device",
]

log = logging.getLogger(__name__)

_GRAB_POLL = 0.05  # seconds between "is a key held?" checks before grabbing


class EventSource(Protocol):
    """What the driver reads from: an opened input device, or anything shaped like one."""

    @property
    def path(self) -> str | bytes: ...

    @property
    def name(self) -> str: ...

    def fileno(self) -> int: ...

    def read(self) -> Iterator[InputEvent]:
        """The events available now; raises ``BlockingIOError`` when there are none."""

    def active_keys(self) -> list[int]:
        """Key codes held down right now (``EVIOCGKEY``)."""

    def grab(self) -> None: ...

    def ungrab(self) -> None: ...

    def close(self) -> None: ...


Opener = Callable[[], EventSource]


class FdEventSource(EventIO):
    """Input events from any file descriptor, parsed by evdev's own reader.

    The bytes must be kernel ``struct input_event`` records (a ``timeval``, then type, code and
    value). Stands in for a device node where there is none: a pipe in tests, a socket from an
    event forwarder. It holds no keys and cannot be grabbed. Takes ownership of ``fd``.
    Writers must write whole records (24 bytes each on 64-bit Linux): evdev's reader, like the
    kernel, deals in whole events only.
    """

    def __init__(self, fd: int, path: str = "", name: str = "") -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.path = path or f"fd:{fd}"
        self.name = name or self.path

    def active_keys(self) -> list[int]:
        return []

    def grab(self) -> None:
        pass

    def ungrab(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


# -- finding the device -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What a device says about itself, as matched against the config."""

    path: str
    name: str
    vendor: int
    product: int
    uniq: str
    keyboard: bool  # has Enter and digit keys: it can type a barcode


def matches(cfg: EvdevScannerConfig, ident: DeviceIdentity) -> bool:
    """Whether ``ident`` is the scanner ``cfg`` describes (vendor/product, serial, name).

    Only devices that can type a barcode match: a scanner's extra "consumer control" or
    "system control" interface shares its USB ids but has no digit keys.
    """
    if cfg.vendor is not None and int(cfg.vendor, 16) != ident.vendor:
        return False
    if cfg.product is not None and int(cfg.product, 16) != ident.product:
        return False
    if cfg.serial is not None and cfg.serial != ident.uniq:
        return False
    if cfg.name_pattern is not None and not re.search(cfg.name_pattern, ident.name,
                                                      re.IGNORECASE):
        return False
    return ident.keyboard


def describe_match(cfg: EvdevScannerConfig) -> str:
    """The config's device selection in words, for messages."""
    if cfg.device:
        return cfg.device
    parts = []
    if cfg.vendor is not None:
        parts.append(f"vendor {cfg.vendor} product {cfg.product}")
    if cfg.serial is not None:
        parts.append(f"serial {cfg.serial!r}")
    if cfg.name_pattern is not None:
        parts.append(f"name matching {cfg.name_pattern!r}")
    return ", ".join(parts) or "any keyboard"


def _identity(dev: evdev.InputDevice[str]) -> DeviceIdentity:
    keyboard = can_type_barcode(dev.capabilities().get(ecodes.EV_KEY, []))
    return DeviceIdentity(
        path=str(dev.path), name=dev.name, vendor=dev.info.vendor, product=dev.info.product,
        uniq=dev.uniq or "", keyboard=keyboard,
    )


def _open_path(path: str) -> evdev.InputDevice[str]:
    try:
        return evdev.InputDevice(path)
    except FileNotFoundError as exc:
        raise ScannerGoneError(f"{path} is not present (unplugged or asleep?)") from exc
    except PermissionError as exc:
        raise DriverError(
            f"{path}: permission denied; add the agent's user to the 'input' group or "
            "install the udev rule (see docs/scanners.md)") from exc
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            raise ScannerGoneError(f"{path} is not present (unplugged or asleep?)") from exc
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise DriverError(f"{path} is not an input event device") from exc
        raise DriverError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def _event_number(path: str) -> int:
    digits = re.sub(r"\D", "", os.path.basename(path))
    return int(digits) if digits else -1


def open_matching_device(cfg: EvdevScannerConfig,
                         input_dir: str = "/dev/input") -> evdev.InputDevice[str]:
    """Open the input device that ``cfg`` selects; raise if there is none (yet).

    ``ScannerGoneError`` when nothing matches (the driver waits for it), ``DriverError`` when
    it cannot be opened (permissions) or is not what the config says.
    """
    if cfg.device:
        dev = _open_path(cfg.device)
        if cfg.vendor is not None or cfg.serial is not None or cfg.name_pattern is not None:
            ident = _identity(dev)
            if not matches(cfg, ident):
                dev.close()
                raise DriverError(
                    f"{cfg.device} is {ident.name!r} ({ident.vendor:04x}:{ident.product:04x}), "
                    f"which does not match {describe_match(cfg)}")
        return dev
    unreadable: list[str] = []
    for path in sorted(glob.glob(os.path.join(input_dir, "event*")), key=_event_number):
        try:
            dev = evdev.InputDevice(path)
        except PermissionError:
            unreadable.append(path)
            continue
        except OSError:
            continue  # gone meanwhile, or not an event device
        try:
            if matches(cfg, _identity(dev)):
                return dev
        except OSError:
            pass
        dev.close()
    hint = ""
    if unreadable:
        hint = (f"; {len(unreadable)} input device(s) are not readable by this user "
                "(group 'input' or the udev rule, see docs/scanners.md)")
    raise ScannerGoneError(f"no input device matches {describe_match(cfg)}{hint}")


# -- inotify ----------------------------------------------------------------------------------

IN_ATTRIB = 0x00000004
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class _Inotify:
    """The three libc calls, through ctypes (the standard library has no inotify)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._init1 = libc.inotify_init1
        self._init1.argtypes, self._init1.restype = [ctypes.c_int], ctypes.c_int
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int

    def init(self) -> int:
        fd = int(self._init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        return fd

    def add_watch(self, fd: int, path: str, mask: int) -> int:
        wd = int(self._add(fd, os.fsencode(path), mask))
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_add_watch {path}: {os.strerror(e)}", path)
        return wd


WatchCallback = Callable[[str, str, int], None]


class DirectoryWatcher:
    """Calls ``callback(directory, name, mask)`` when entries of a directory change.

    Watches ``root`` and those of ``subdirs`` that exist (and those created later), for
    creation, deletion and attribute changes (udev sets a node's group and mode just after
    creating it). The inotify descriptor is read by the event loop: no thread, no polling.

    >>> w = DirectoryWatcher("/dev/input", print, subdirs=("by-id",))  # doctest: +SKIP
    >>> w.start(asyncio.get_running_loop())                            # doctest: +SKIP
    """

    MASK = IN_CREATE | IN_ATTRIB | IN_DELETE | IN_MOVED_TO

    def __init__(self, root: str, callback: WatchCallback, *,
                 subdirs: tuple[str, ...] = ()) -> None:
        self.root = root
        self.subdirs = subdirs
        self._callback = callback
        self._fd = -1
        self._dirs: dict[int, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inotify: _Inotify | None = None

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin watching; raises ``OSError`` (e.g. the root does not exist)."""
        if self._fd >= 0:
            return
        self._inotify = _Inotify()
        fd = self._inotify.init()
        try:
            self._dirs[self._inotify.add_watch(fd, self.root, self.MASK)] = self.root
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        for sub in self.subdirs:
            self._watch_subdir(sub)
        loop.add_reader(fd, self._on_readable)
        self._loop = loop

    def _watch_subdir(self, name: str) -> None:
        path = os.path.join(self.root, name)
        if self._inotify is None or not os.path.isdir(path):
            return
        try:
            self._dirs[self._inotify.add_watch(self._fd, path, self.MASK)] = path
        except OSError as exc:
            log.debug("cannot watch %s: %s", path, exc)

    def _on_readable(self) -> None:
        try:
            buf = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("inotify read failed: %s", exc)
            return
        offset = 0
        while offset + _EVENT_HEADER.size <= len(buf):
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buf, offset)
            start = offset + _EVENT_HEADER.size
            name = os.fsdecode(buf[start:start + length].rstrip(b"\0"))
            offset = start + length
            directory = self._dirs.get(wd, self.root)
            if mask & IN_IGNORED:
                self._dirs.pop(wd, None)  # the watched directory went away
                continue
            if (mask & IN_ISDIR and directory == self.root and name in self.subdirs
                    and mask & (IN_CREATE | IN_MOVED_TO)):
                self._watch_subdir(name)
            try:
                self._callback(directory, name, mask)
            except Exception:  # a watcher must survive its callback's bugs
                log.exception("inotify callback failed")

    def close(self) -> None:
        """Stop watching. Idempotent."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)
        self._dirs.clear()


# -- the driver -------------------------------------------------------------------------------


class EvdevScanner:
    """A keyboard-wedge scanner: an async iterator of :class:`~drivers.base.RawScan`.

    ``opener`` (for tests and tools) replaces finding and opening the device node; it returns an
    :class:`EventSource` or raises ``DriverError`` / ``ScannerGoneError`` while there is none.
    ``input_dir`` is the directory watched for hotplug.

    >>> async for scan in EvdevScanner(cfg):   # doctest: +SKIP
    ...     print(scan.text, scan.error)
    """

    def __init__(
        self,
        cfg: EvdevScannerConfig,
        on_state: StateCallback | None = None,
        *,
        opener: Opener | None = None,
        input_dir: str = "/dev/input",
        backoff: tuple[float, float] = (0.25, 30.0),
        grab_wait: float = 2.0,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.input_dir = input_dir
        self._on_state = on_state
        self._opener: Opener = opener or (lambda: open_matching_device(cfg, input_dir))
        self._min_backoff, self._max_backoff = backoff
        self._grab_wait = grab_wait
        self._state = ScannerState(cfg.name, False, "not opened yet")
        self._queue = ScanQueue(cfg.name)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._source: EventSource | None = None
        self._fd = -1
        self._grabbed = False
        self._lost_detail = ""
        self._decoder = self._new_decoder()
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._connector: asyncio.Task[None] | None = None
        self._watcher = DirectoryWatcher(input_dir, self._on_dir_change,
                                         subdirs=("by-id", "by-path"))
        self._started = False
        self._closed = False

    # -- Scanner protocol -------------------------------------------------------------------

    @property
    def state(self) -> ScannerState:
        return self._state

    def __aiter__(self) -> AsyncIterator[RawScan]:
        return self._scans()

    async def acknowledge(self, ok: bool) -> None:
        """Keyboard wedges cannot be told anything back: a no-op."""

    async def close(self) -> None:
        """Remove the reader, ungrab, close the device, cancel timers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        self._deliver(self._decoder.reset("scanner closed in the middle of a scan"))
        self._watcher.close()
        task, self._connector = self._connector, None
        if task is not None and not task.done():
            task.cancel()
            if task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._queue.end()
        self._set_state(False, "closed")

    async def __aenter__(self) -> EvdevScanner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- running ----------------------------------------------------------------------------

    async def _scans(self) -> AsyncIterator[RawScan]:
        self._start()
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def _start(self) -> None:
        if self._started or self._closed:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        try:
            self._watcher.start(self._loop)
        except OSError as exc:
            # No inotify on this directory: the backoff timer alone finds the device.
            log.info("scanner %r: not watching %s for hotplug (%s)", self.name,
                     self.input_dir, exc.strerror or exc)
        self._connector = self._loop.create_task(self._connect_loop(),
                                                 name=f"evdev-connect-{self.name}")

    def _new_decoder(self) -> KeyDecoder:
        return KeyDecoder(self.cfg.layout, terminator=self.cfg.terminator,
                          timeout_ms=self.cfg.timeout_ms, max_length=self.cfg.max_length)

    async def _connect_loop(self) -> None:
        delay = self._min_backoff
        while not self._closed:
            self._wake.clear()
            try:
                source = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, DriverError | OSError):
                    log.exception("scanner %r: opening the device failed", self.name)
                # While an unplugged scanner stays away, keep saying why it went; problems
                # that need a person (permissions, another grab) replace that.
                gone = isinstance(exc, ScannerGoneError) and self._lost_detail
                self._set_state(False, self._lost_detail if gone else str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            if self._closed:
                source.close()
                return
            self._attach(source)
            return

    async def _open(self) -> EventSource:
        source = self._opener()
        try:
            if self.cfg.grab:
                await self._grab(source)
        except BaseException:
            source.close()
            raise
        return source

    async def _grab(self, source: EventSource) -> None:
        path = os.fsdecode(source.path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grab_wait
        while True:
            try:
                held = source.active_keys()
            except OSError as exc:
                raise ScannerGoneError(f"{path}: {exc.strerror or exc}") from exc
            if not held:
                break
            if loop.time() >= deadline:
                log.warning("scanner %r: keys %s still held after %.1f s; grabbing anyway",
                            self.name, held, self._grab_wait)
                break
            await asyncio.sleep(_GRAB_POLL)
        try:
            source.grab()
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise DriverError(
                    f"{path}: grabbed by another program (EVIOCGRAB: device busy); stop the "
                    "other reader (another scan-agent?) or set grab = false") from exc
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                raise ScannerGoneError(f"{path}: {exc.strerror}") from exc
            raise DriverError(f"{path}: cannot grab: {exc.strerror or exc}") from exc
        self._grabbed = True

    def _attach(self, source: EventSource) -> None:
        assert self._loop is not None
        self._source = source
        self._lost_detail = ""
        self._fd = source.fileno()
        self._decoder = self._new_decoder()
        self._loop.add_reader(self._fd, self._on_readable)
        detail = os.fsdecode(source.path)
        if source.name and source.name != detail:
            detail += f" ({source.name})"
        self._set_state(True, detail + (", grabbed" if self._grabbed else ""))

    def _detach(self) -> None:
        """Remove the reader, ungrab, close the device, cancel the quiet timer."""
        source, self._source = self._source, None
        if self._fd >= 0 and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = -1
        if source is not None:
            if self._grabbed:
                with contextlib.suppress(OSError):  # already gone when unplugged
                    source.ungrab()
            with contextlib.suppress(OSError):
                source.close()
        self._grabbed = False
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None

    def _on_readable(self) -> None:
        source = self._source
        if source is None:
            return
        for _ in range(16):  # drain what is there, then let others run
            try:
                events = list(source.read())
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                self._lost(exc.strerror or str(exc))
                return
            if not events:
                self._lost("end of file")
                return
            self._process(source, events)
        self._arm_quiet_timer()

    def _process(self, source: EventSource, events: list[InputEvent]) -> None:
        decoder = self._decoder
        for event in events:
            for scan in decoder.feed(event):
                self._deliver(scan)
            if decoder.resync_needed:
                # Kernel docs: after SYN_DROPPED, re-read the state the lost events changed.
                try:
                    held = source.active_keys()
                except OSError:
                    held = []
                decoder.resync(held)

    def _arm_quiet_timer(self) -> None:
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        if self._decoder.pending and self._loop is not None:
            self._quiet_timer = self._loop.call_later(self._decoder.quiet_ms / 1000,
                                                      self._on_quiet)

    def _on_quiet(self) -> None:
        self._quiet_timer = None
        self._deliver(self._decoder.expire())

    def _lost(self, reason: str) -> None:
        path = os.fsdecode(self._source.path) if self._source is not None else "device"
        detail = self._lost_detail = f"disconnected: {path}: {reason}"
        self._detach()
        self._deliver(self._decoder.reset(f"scanner disconnected in the middle of a scan "
                                          f"({reason})"))
        self._set_state(False, detail)
        if not self._closed and self._loop is not None:
            self._connector = self._loop.create_task(self._connect_loop(),
                                                     name=f"evdev-connect-{self.name}")

    def _on_dir_change(self, directory: str, name: str, mask: int) -> None:
        self._wake.set()

    def _deliver(self, scan: DecodedScan | None) -> None:
        if scan is None:
            return
        self._queue.offer(RawScan(scanner=self.name, text=scan.text,
                                  raw=scan.text.encode("utf-8", "replace"), error=scan.error))

    def _set_state(self, connected: bool, detail: str) -> None:
        if self._state.connected == connected and self._state.detail == detail:
            return
        self._state = ScannerState(self.name, connected, detail)
        if connected:
            log.info("scanner %r connected: %s", self.name, detail)
        elif detail != "closed":
            log.warning("scanner %r not connected: %s", self.name, detail)
        if self._on_state is not None:
            try:
                self._on_state(self._state)
            except Exception:
                log.exception("scanner %r: state callback failed", self.name)
