"""Scanner drivers: one adapter per kind of scanner, all behind :class:`drivers.base.Scanner`.

Pick one by the config's ``driver`` name with :func:`open_scanner`; an unknown name fails
loudly. Driver modules are imported only when a dock uses them, so a serial-only dock never
loads evdev.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from drivers.base import RawScan, Scanner, ScannerState, StateCallback

if TYPE_CHECKING:
    from agent.config import ScannerConfig

__all__ = ["DRIVERS", "RawScan", "Scanner", "ScannerState", "open_scanner"]

#: driver name -> "module:class"; each class takes (config, on_state=None).
DRIVERS: dict[str, str] = {
    "serial": "drivers.serial:SerialScanner",
    "evdev": "drivers.evdev:EvdevScanner",
    "tcp": "drivers.tcp:TcpScanner",
}


def open_scanner(cfg: ScannerConfig, on_state: StateCallback | None = None) -> Scanner:
    """Build the driver named by ``cfg.driver``. Reading starts when iterated."""
    from agent.errors import DriverError

    try:
        target = DRIVERS[cfg.driver]
    except KeyError:
        raise DriverError(
            f"scanner {cfg.name!r}: unknown driver {cfg.driver!r} "
            f"(known: {', '.join(sorted(DRIVERS))})"
        ) from None
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    scanner: Scanner = cls(cfg, on_state=on_state)
    return scanner
