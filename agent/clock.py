"""Time you can trust on a Pi without a real-time clock (DESIGN section 7).

Every capture records the wall clock, ``CLOCK_BOOTTIME`` and the boot id. Each sync exchange
with the ledger is an NTP-style sample: boottime before sending (t0) and after the answer (t3),
and the ledger's ``server_time`` (T2, read just before it answers). With a symmetric path the
ledger read T2 at boottime (t0 + t3) / 2, so ``ledger_time(b) = b + base`` with
``base = T2 - (t0 + t3) / 2``, good to half the round trip. When the ledger also says when the
request reached it (``received_at``, T1), the time it held the request (T2 - T1: reading the
body, committing the batch, which can be seconds on a busy ledger) is no part of the path:
``base = (T1 + T2) / 2 - (t0 + t3) / 2``, good to half of the round trip less that hold, as
NTP does with its four timestamps. An event of the current boot then gets
``occurred_at = ledger_time(event_boottime)``, whatever the wall clock says.

The pure parts (:class:`Sample`, :class:`TimeBase`, :func:`stamp`) take every time as an
argument; only :func:`boot_id` and :func:`kernel_clock_synced` look at the machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Sample",
    "TimeBase",
    "boot_id",
    "format_utc",
    "kernel_clock_synced",
    "parse_utc",
    "stamp",
]

_KEEP = 8  # recent samples the time base chooses from
_MAX_AGE_NS = 300 * 10**9  # samples older than this are no longer preferred for a low RTT


@functools.cache
def boot_id() -> str:
    """The kernel's id for this boot (changes on every reboot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:  # not Linux: treat the process as the boot
        import uuid

        return str(uuid.uuid4())


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: only the fields before 'status' matter here; the rest
    # is padding large enough for every architecture's layout.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("_rest", ctypes.c_byte * 256)]


_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_TIMESYNCD_FLAG = "/run/systemd/timesync/synchronized"


def kernel_clock_synced() -> bool | None:
    """Whether the clock is NTP-synchronised; None if unknown.

    systemd-timesyncd (Raspberry Pi OS's default) marks a synchronised clock with a flag
    file, which a hardened service can still read; otherwise the kernel is asked with
    ``adjtimex``, which the shipped unit's system-call filter refuses (then: unknown).
    """
    import os

    if os.path.exists(_TIMESYNCD_FLAG):
        return True
    libc = _libc()
    if libc is None:
        return None
    try:
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not tx.status & _STA_UNSYNC


def format_utc(ns: int) -> str:
    """Nanoseconds since the epoch as ``2026-11-22T10:15:30.123456Z``."""
    secs, rem = divmod(ns, 10**9)
    dt = datetime.fromtimestamp(secs, UTC).replace(microsecond=rem // 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> int:
    """``format_utc``'s inverse, also accepting ``+00:00`` offsets; nanoseconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (int(dt.timestamp()) * 10**6 + dt.microsecond) * 1000


@dataclass(frozen=True, slots=True)
class Sample:
    """One exchange: boottime at send (t0) and receive (t3), the ledger's time as it answered
    (T2), wall at t3; and when the ledger says the request reached it (T1), if it does."""

    t0_boot_ns: int
    t3_boot_ns: int
    server_ns: int
    wall_ns: int
    received_ns: int | None = None

    @property
    def held_ns(self) -> int:
        """How long the ledger held the request (T2 - T1): 0 when it does not say, or when
        what it says cannot be (a negative hold, or one longer than the round trip)."""
        if self.received_ns is None:
            return 0
        held = self.server_ns - self.received_ns
        return held if 0 <= held <= self.t3_boot_ns - self.t0_boot_ns else 0

    @property
    def rtt_ns(self) -> int:
        """The path's round trip: the exchange less the ledger's hold."""
        return max(0, self.t3_boot_ns - self.t0_boot_ns - self.held_ns)

    @property
    def base_ns(self) -> int:
        """ledger time minus boottime: the middle of the ledger's hold, at the middle of the
        exchange."""
        return self.server_ns - self.held_ns // 2 - (self.t0_boot_ns + self.t3_boot_ns) // 2

    @property
    def wall_offset_ms(self) -> float:
        """ledger time minus the local wall clock, in ms (positive: the Pi is behind)."""
        return (self.server_ns + self.rtt_ns // 2 - self.wall_ns) / 1e6


@dataclass(frozen=True, slots=True)
class TimeBase:
    """The best mapping from this boot's boottime to ledger time, from recent samples."""

    boot_id: str
    samples: tuple[Sample, ...] = ()
    #: the lowest-RTT sample among the recent ones (the least uncertain), chosen once here
    #: because every stamped movement asks for it
    best: Sample | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.samples:
            newest = self.samples[-1].t3_boot_ns
            fresh = [s for s in self.samples if newest - s.t3_boot_ns <= _MAX_AGE_NS]
            object.__setattr__(self, "best", min(fresh, key=lambda s: (s.rtt_ns, -s.t3_boot_ns)))

    def add(self, s: Sample) -> TimeBase:
        return TimeBase(self.boot_id, (*self.samples, s)[-_KEEP:])

    def age_ns(self, now_boot_ns: int) -> int | None:
        return None if not self.samples else now_boot_ns - self.samples[-1].t3_boot_ns

    def ledger_ns(self, boot_ns: int) -> int | None:
        b = self.best
        return None if b is None else boot_ns + b.base_ns

    def wall_offset_ms(self, wall_ns: int, boot_ns: int) -> float | None:
        """Ledger time minus the wall clock read at (``wall_ns``, ``boot_ns``), in ms.

        Worked out from boottime, so a wall-clock step shows at once, not when the sample
        taken before it ages out.
        """
        ledger = self.ledger_ns(boot_ns)
        return None if ledger is None else (ledger - wall_ns) / 1e6

    def summary(self, wall_ns: int, boot_ns: int) -> dict[str, Any]:
        b = self.best
        offset = self.wall_offset_ms(wall_ns, boot_ns)
        if b is None or offset is None:
            return {"basis": "none", "offset_ms": None, "rtt_ms": None}
        return {"basis": "ledger", "offset_ms": round(offset, 3),
                "rtt_ms": round(b.rtt_ns / 1e6, 3)}


def stamp(row: dict[str, Any], base: TimeBase) -> tuple[str, dict[str, Any]]:
    """``occurred_at`` and the ``clock`` object for a journaled movement row.

    Current boot with a time base: ledger time from boottime (basis ``ledger``). Earlier boot:
    the wall time of capture plus the offset known then (basis ``previous-boot``, or ``wall``
    when no offset was known), flagged ``synced: false`` unless the kernel clock was
    NTP-synchronised at capture.
    """
    wall_ns = int(row["wall_time"] * 1e9)
    if row["boot_id"] == base.boot_id:
        ledger_ns = base.ledger_ns(int(row["boot_ns"]))
        if ledger_ns is not None:
            offset = (ledger_ns - wall_ns) / 1e6
            return format_utc(ledger_ns), {"synced": True, "offset_ms": round(offset, 3),
                                           "basis": "ledger"}
    known = row.get("wall_offset_ms")
    synced_then = bool(row.get("ntp_synced"))
    if known is not None:
        return format_utc(wall_ns + int(known * 1e6)), {
            "synced": False, "offset_ms": round(float(known), 3), "basis": "previous-boot"}
    return format_utc(wall_ns), {"synced": synced_then, "offset_ms": 0.0,
                                 "basis": "ntp" if synced_then else "wall"}


def now_ns() -> tuple[int, int]:
    """(wall ns, boottime ns) read together."""
    return time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME)
