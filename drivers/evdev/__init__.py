"""``driver = "evdev"``: keyboard-wedge scanners (USB or Bluetooth HID) read through /dev/input.

- :mod:`drivers.evdev.config`: the scanner's settings (:class:`EvdevScannerConfig`);
- :mod:`drivers.evdev.devices`: finding the device, reading any device's events;
- :mod:`drivers.evdev.hotplug`: waking up when /dev/input changes (inotify);
- :mod:`drivers.evdev.scanner`: the driver, :class:`EvdevScanner`.

Key events become text in :mod:`drivers.keymap`, with the layouts of :mod:`drivers.xkb`.
"""

from __future__ import annotations

from drivers.base import Driver
from drivers.evdev.config import EvdevScannerConfig, parse_config
from drivers.evdev.devices import (
    DeviceIdentity,
    EventSource,
    FdEventSource,
    describe_match,
    matches,
    open_matching_device,
)
from drivers.evdev.hotplug import IN_ATTRIB, IN_CREATE, IN_DELETE, IN_MOVED_TO, DirectoryWatcher
from drivers.evdev.scanner import EvdevScanner

__all__ = [
    "DRIVER",
    "IN_ATTRIB",
    "IN_CREATE",
    "IN_DELETE",
    "IN_MOVED_TO",
    "DeviceIdentity",
    "DirectoryWatcher",
    "EvdevScanner",
    "EvdevScannerConfig",
    "EventSource",
    "FdEventSource",
    "describe_match",
    "matches",
    "open_matching_device",
    "parse_config",
]

#: The registry entry (see :mod:`drivers`).
DRIVER = Driver("evdev", EvdevScannerConfig, parse_config, EvdevScanner)
