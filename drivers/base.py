"""The one small interface every scanner driver implements.

A driver is an async iterator of :class:`RawScan` plus ``acknowledge()`` (operator feedback
sent back to the scanner, if it supports any) and an idempotent ``close()``. Drivers reconnect
by themselves when a device goes away and comes back: the iterator only ends on ``close()``.
Connection changes are reported through ``state`` and the optional ``on_state`` callback.

A driver never decides what a barcode means: it frames bytes or key events into one scan's
text, and flags what it could not turn into text (``RawScan.error``) instead of raising, so the
agent can audit it and NAK the operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from drivers.settings import ScannerConfig, Settings

__all__ = ["MAX_WAITING", "Driver", "RawScan", "ScanQueue", "Scanner", "ScannerState", "Sink",
           "StateCallback", "boottime_ns"]

log = logging.getLogger(__name__)

MAX_WAITING = 10_000  # scans read from one scanner and not yet taken by the station (~4 MB)


def boottime_ns() -> int:
    """Nanoseconds on ``CLOCK_BOOTTIME``: monotonic, and counts time spent suspended."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class RawScan:
    """One framed read from a scanner, before interpretation.

    ``text`` is the scan as text (AIM symbology identifier and GS characters kept).
    ``raw`` is what arrived on the wire (bytes, or the decoded key text for keyboard wedges).
    ``error`` is set, and ``text`` is best effort, when the driver could not frame the read
    into valid text (non-text bytes, over-long input, dropped key events).
    """

    scanner: str
    text: str
    raw: bytes
    wall_time: float = field(default_factory=time.time)
    boot_ns: int = field(default_factory=boottime_ns)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ScannerState:
    """Whether a scanner is connected, and why not when it is not."""

    scanner: str
    connected: bool
    detail: str = ""


StateCallback = Callable[[ScannerState], None]

# Takes one scan, at once, in the driver's own callback; returns whether it takes another now.
Sink = Callable[[RawScan], bool]


@runtime_checkable
class Scanner(Protocol):
    """What the agent needs from a driver."""

    name: str

    @property
    def state(self) -> ScannerState: ...

    def __aiter__(self) -> AsyncIterator[RawScan]: ...

    async def acknowledge(self, ok: bool) -> None:
        """Tell the scanner a scan was committed (``ok``) or rejected. No-op if unsupported."""

    async def deliver(self, sink: Sink) -> None:
        """Hand each scan to ``sink`` the moment it is framed, instead of through iteration,
        until ``close()``; see :meth:`ScanQueue.deliver`."""

    def resume(self) -> None:
        """The sink takes scans again, after it last said it could not."""

    def acknowledge_nowait(self, ok: bool) -> bool:
        """:meth:`acknowledge` at once, where that cannot block; whether it was sent (if
        not, await :meth:`acknowledge`). Never raises."""

    async def close(self) -> None:
        """Stop reading and release the device. Idempotent."""


@dataclass(frozen=True, slots=True)
class Driver:
    """One kind of scanner, as the registry in :mod:`drivers` knows it.

    ``parse`` reads the driver's keys of a ``[[scanners]]`` table into its frozen ``config``
    type (raising :class:`~drivers.errors.DriverConfigError`); ``scanner`` builds the driver
    from that config and an optional state callback.
    """

    name: str
    config: type[ScannerConfig]
    parse: Callable[..., ScannerConfig]
    scanner: Callable[..., Any]

    def parse_settings(self, settings: Settings, *, name: str,
                       max_length: int = 512) -> ScannerConfig:
        """Read this driver's keys from ``settings``; unknown keys are errors."""
        cfg = self.parse(settings, name=name, max_length=max_length)
        settings.finish()
        return cfg


class ScanQueue:
    """Scans read from one scanner and not yet taken by the station: about ``limit`` at most.

    The station takes scans as fast as its journal commits them (thousands a second), so the
    queue only fills when a device sends far faster than anyone scans (a reader in continuous
    mode, a faulty adapter) or the journal's disk stalls; then what waits must not grow
    until the Pi runs out of memory. Three ways in:

    * :meth:`put` waits for room (a TCP connection: the driver stops reading and TCP holds
      the reader back);
    * :meth:`push` always queues, and tells the driver when to stop reading until
      :attr:`on_room` is called (a tty: the kernel then stops taking bytes from a USB
      device, whose own flow control holds it back), so the queue holds at most ``limit``
      plus what the last reads brought;
    * :meth:`offer` drops the scan when full (a keyboard wedge's key events come whether or
      not anyone reads them), whole scans, never half of one, and logs it: the first of a
      run, every hundredth after it, and how many when scans go in again.

    What a device sends while the driver does not read waits in the connection (the socket,
    the tty) and is lost with it if the connection drops before reading resumes.

    After :meth:`end`, :meth:`get` returns what is left and then ``None`` for ever.

    Instead of :meth:`get`, a consumer may take the scans through :meth:`deliver`: each scan
    goes to its sink the moment the driver frames it, with no queue, task or turn of the
    event loop in between (the capture path: see ``agent.daemon``). While the sink says it
    is full, scans wait here as they would for :meth:`get`, within the same limits.
    """

    def __init__(self, scanner: str, limit: int = MAX_WAITING) -> None:
        self.scanner = scanner
        self.limit = max(1, limit)
        self.dropped = 0  # scans dropped since the queue was made
        self.on_room: Callable[[], None] | None = None  # called when a full queue has room
        self._run = 0  # scans dropped since the last one that went in
        self._blocked = False  # a reader waits for room
        self._ended = False
        self._items: asyncio.Queue[RawScan | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self._sink: Sink | None = None
        self._taking = False  # the sink takes scans now
        self._delivered: asyncio.Future[None] | None = None  # ends deliver()

    def __len__(self) -> int:
        """Scans waiting (not counting the end)."""
        return self._items.qsize() - self._ended

    def push(self, scan: RawScan) -> bool:
        """Queue a scan, room or not. Whether the queue is full now: then the caller stops
        reading until :attr:`on_room` is called."""
        self._add(scan)
        if self._items.qsize() >= self.limit:
            self._blocked = True
            return True
        return False

    def offer(self, scan: RawScan) -> bool:
        """Queue a scan if there is room; else drop it (and say so). Whether it went in."""
        if self._items.qsize() >= self.limit:
            self.dropped += 1
            self._run += 1
            if self._run == 1 or self._run % 100 == 0:
                log.warning("scanner %s: %d scan(s) dropped: %d are waiting for the station "
                            "already (it is not keeping up with this device)",
                            self.scanner, self._run, self.limit)
            return False
        if self._run:
            log.warning("scanner %s: taking scans again after dropping %d", self.scanner,
                        self._run)
            self._run = 0
        self._add(scan)
        return True

    async def put(self, scan: RawScan) -> None:
        """Queue a scan, waiting for room."""
        while self._items.qsize() >= self.limit:
            self._blocked = True
            self._room.clear()
            await self._room.wait()
        self._add(scan)

    def end(self) -> None:
        """No more scans: :meth:`get` returns ``None`` once the queued ones are taken."""
        if not self._ended:
            self._ended = True
            self._items.put_nowait(None)
            if self._taking:
                self._drain()

    async def get(self) -> RawScan | None:
        """The next scan, or ``None`` after :meth:`end`."""
        items = self._items
        item = await items.get()
        if item is None:
            items.put_nowait(None)  # every later call ends too
        else:
            self._taken()
        return item

    async def deliver(self, sink: Sink) -> None:
        """Hand every scan to ``sink`` as it comes, until :meth:`end`; return after the last.

        ``sink(scan)`` is called in the driver's own callback, the moment the scan is framed
        (the scans already waiting first, in order). It takes the scan and returns whether it
        takes another now; when it does not, the scans that follow wait here until
        :meth:`resume`. If the sink raises, nothing more is delivered and this raises it.
        """
        if self._sink is not None:
            raise RuntimeError(f"scanner {self.scanner}: scans are delivered already")
        self._delivered = asyncio.get_running_loop().create_future()
        try:
            self._sink, self._taking = sink, True
            self._drain()
            await self._delivered
        finally:
            self._sink, self._taking, self._delivered = None, False, None

    def resume(self) -> None:
        """The sink takes scans again: hand it those waiting."""
        if self._sink is not None and not self._taking:
            self._taking = True
            self._drain()

    def _add(self, scan: RawScan) -> None:
        if self._taking and self._items.empty():  # nothing waits ahead of it
            self._give(scan)
        else:
            self._items.put_nowait(scan)

    def _give(self, scan: RawScan) -> None:
        assert self._sink is not None
        try:
            self._taking = self._sink(scan)
        except BaseException as exc:
            self._taking = False
            if self._delivered is not None and not self._delivered.done():
                self._delivered.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _drain(self) -> None:
        items = self._items
        while self._taking and not items.empty():
            item = items.get_nowait()
            if item is None:
                items.put_nowait(None)  # as for get(): the end stays
                if self._delivered is not None and not self._delivered.done():
                    self._delivered.set_result(None)
                return
            self._taken()
            self._give(item)

    def _taken(self) -> None:
        """A waiting scan was taken: a reader held back by a full queue may read again."""
        if self._blocked and self._items.qsize() < self.limit:
            self._blocked = False
            self._room.set()
            if self.on_room is not None:
                self.on_room()
