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

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["RawScan", "Scanner", "ScannerState", "StateCallback", "boottime_ns"]


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


@runtime_checkable
class Scanner(Protocol):
    """What the agent needs from a driver."""

    name: str

    @property
    def state(self) -> ScannerState: ...

    def __aiter__(self) -> AsyncIterator[RawScan]: ...

    async def acknowledge(self, ok: bool) -> None:
        """Tell the scanner a scan was committed (``ok``) or rejected. No-op if unsupported."""

    async def close(self) -> None:
        """Stop reading and release the device. Idempotent."""
