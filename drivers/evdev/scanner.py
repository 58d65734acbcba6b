"""``driver = "evdev"``: USB and Bluetooth keyboard-wedge scanners read through /dev/input.

The device is found (:mod:`drivers.evdev.devices`), then grabbed exclusively (``EVIOCGRAB``) so
a barcode is never typed into a console login as well. The grab waits until no key is held:
grabbing in the middle of a key press leaves the console with a key that never comes up.

Events are read without blocking the loop (``loop.add_reader`` on the device's descriptor) and
parsed by evdev's own reader; :mod:`drivers.keymap` turns them into scans with the scanner's
layout. Each scan keeps the kernel's timestamp of the key that ended it (on
``CLOCK_BOOTTIME``, see :func:`~drivers.evdev.devices.use_boottime`), as the serial and TCP
drivers keep the time their bytes arrived, not the time the loop got to them. A scanner that
disappears (unplug, ``ENODEV``, a Bluetooth scanner going to sleep) is reported as disconnected
and re-opened when it returns: an inotify watch on /dev/input
(:mod:`drivers.evdev.hotplug`) wakes the reconnect at once, and a capped backoff timer covers
what inotify cannot see. Nothing polls: an idle scanner costs no CPU.

Shutdown order (:meth:`EvdevScanner.close`): remove the reader, ungrab, close the device, then
stop the watcher and cancel the timers and the reconnect task.

The device is opened through a small seam (``opener``), so tests and tools can read events from
any file descriptor with :class:`~drivers.evdev.devices.FdEventSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator

from evdev import InputEvent

from drivers.base import (
    RawScan,
    ScannerState,
    ScanQueue,
    Sink,
    StateCallback,
    boottime_ns,
)
from drivers.errors import DriverError, ScannerGoneError
from drivers.evdev.config import EvdevScannerConfig
from drivers.evdev.devices import EventSource, Opener, open_matching_device, use_boottime
from drivers.evdev.hotplug import DirectoryWatcher
from drivers.keymap import DecodedScan, KeyDecoder

__all__ = ["EvdevScanner"]

log = logging.getLogger(__name__)

_GRAB_POLL = 0.05  # seconds between "is a key held?" checks before grabbing
#: Slack for a kernel timestamp that reads a little before the device was opened.
_CLOCK_SLACK_NS = 5_000_000


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
        self._clock = time.CLOCK_REALTIME  # the clock of the open device's event timestamps
        self._opened_boot_ns = 0
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

    def acknowledge_nowait(self, ok: bool) -> bool:
        """Keyboard wedges cannot be told anything back: nothing to send."""
        return True

    async def deliver(self, sink: Sink) -> None:
        """Hand each scan to ``sink`` as it is decoded (see :meth:`ScanQueue.deliver`)."""
        self._start()
        await self._queue.deliver(sink)

    def resume(self) -> None:
        self._queue.resume()

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
        self._clock = use_boottime(source)
        self._opened_boot_ns = boottime_ns()
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
        wall, boot = self._scan_time(scan.ended_us)
        self._queue.offer(RawScan(scanner=self.name, text=scan.text,
                                  raw=scan.text.encode("utf-8", "replace"), wall_time=wall,
                                  boot_ns=boot, error=scan.error))

    def _scan_time(self, event_us: int) -> tuple[float, int]:
        """Wall time and boottime of a kernel event timestamp (the key that ended a scan).

        The events came from a device opened at ``_opened_boot_ns``, so their time lies
        between then and now; one outside (a test pipe's made-up times, a wall clock that was
        stepped meanwhile) is taken as now, the time it was read.
        """
        now_boot, now_wall = boottime_ns(), time.time_ns()
        now = now_boot if self._clock == time.CLOCK_BOOTTIME else now_wall
        age = now - event_us * 1000
        if not 0 <= age <= now_boot - self._opened_boot_ns + _CLOCK_SLACK_NS:
            age = 0
        return (now_wall - age) / 1e9, now_boot - age

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
