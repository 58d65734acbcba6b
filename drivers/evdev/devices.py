"""Finding a keyboard-wedge scanner among the input devices, and reading any device's events.

A scanner is matched by path (``/dev/input/by-id/...`` links included), by USB vendor/product
(and serial), or by a name pattern; only devices that can type a barcode (Enter and digit keys)
match, so a scanner's extra "consumer control" interface is skipped. :class:`FdEventSource`
reads kernel input events from any file descriptor with evdev's own parser: a pipe in tests,
a socket from an event forwarder.

Event timestamps: :func:`use_boottime` asks the kernel to stamp a device's events on
``CLOCK_BOOTTIME`` (``EVIOCSCLOCKID``), the clock the agent keeps scans on, which a wall-clock
step (NTP setting the clock of a Pi that has no RTC) does not move.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import evdev
from evdev import InputEvent, ecodes
from evdev.eventio import EventIO

from drivers.errors import DriverError, ScannerGoneError
from drivers.evdev.config import EvdevScannerConfig
from drivers.keymap import can_type_barcode

__all__ = [
    "DeviceIdentity",
    "EventSource",
    "FdEventSource",
    "Opener",
    "describe_match",
    "event_clock",
    "matches",
    "open_matching_device",
    "use_boottime",
]

#: ioctl EVIOCSCLOCKID: _IOW('E', 0xa0, int)
_EVIOCSCLOCKID = 0x400445A0


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
    kernel, deals in whole events only. ``clock`` is the clock its timestamps are on
    (``time.CLOCK_REALTIME``, the kernel's default, or ``time.CLOCK_BOOTTIME``).
    """

    def __init__(self, fd: int, path: str = "", name: str = "",
                 clock: int = time.CLOCK_REALTIME) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.path = path or f"fd:{fd}"
        self.name = name or self.path
        self.clock = clock

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


def use_boottime(source: EventSource) -> int:
    """Have the kernel stamp ``source``'s events on ``CLOCK_BOOTTIME``; the clock they are on.

    An :class:`FdEventSource` keeps the clock it was given; a device that refuses the ioctl
    keeps the kernel's default, ``CLOCK_REALTIME``.
    """
    if isinstance(source, FdEventSource):
        return source.clock
    try:
        fcntl.ioctl(source.fileno(), _EVIOCSCLOCKID, struct.pack("i", time.CLOCK_BOOTTIME))
    except OSError:
        return time.CLOCK_REALTIME
    return time.CLOCK_BOOTTIME


def event_clock(source: EventSource) -> int:
    """The clock ``source``'s timestamps are on, as :func:`use_boottime` left it."""
    return getattr(source, "clock", time.CLOCK_REALTIME)


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


