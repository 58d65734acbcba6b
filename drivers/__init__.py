"""Scanner drivers: one adapter per kind of scanner, all behind :class:`drivers.base.Scanner`.

The registry :data:`DRIVERS` names each driver's module; the module's ``DRIVER``
(:class:`drivers.base.Driver`) owns the driver's config type, the parsing of its keys and the
scanner class. :func:`parse_scanner_config` reads a ``[[scanners]]`` table's driver keys,
:func:`open_scanner` builds the driver for a config; an unknown driver name fails loudly.
Driver modules are imported only when a dock uses them, so a serial-only dock never loads
evdev. Drivers stand on their own: nothing here imports the agent, and their errors are
:mod:`drivers.errors`.

>>> cfg = parse_scanner_config("tcp", {"host": "10.0.4.21", "port": 51236}, name="conveyor")
>>> type(cfg).__name__, cfg.driver, cfg.port
('TcpScannerConfig', 'tcp', 51236)
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from drivers.base import Driver, RawScan, Scanner, ScannerState, StateCallback
from drivers.errors import DriverConfigError
from drivers.settings import ScannerConfig, Settings

__all__ = ["DRIVERS", "Driver", "RawScan", "Scanner", "ScannerConfig", "ScannerState",
           "driver", "open_scanner", "parse_scanner_config"]

#: driver name -> the module whose ``DRIVER`` it is.
DRIVERS: dict[str, str] = {
    "serial": "drivers.serial",
    "evdev": "drivers.evdev",
    "tcp": "drivers.tcp",
}


def driver(name: str) -> Driver:
    """The driver called ``name``; ``DriverConfigError`` (key ``driver``) naming the known ones."""
    try:
        module = DRIVERS[name]
    except KeyError:
        raise DriverConfigError(
            "driver", f"must be one of {', '.join(DRIVERS)}; got {name!r}") from None
    try:
        entry: Driver = importlib.import_module(module).DRIVER
    except ImportError as exc:
        raise DriverConfigError("driver", f"{name!r} cannot run here: {exc}") from exc
    return entry


def parse_scanner_config(driver_name: str, data: Mapping[str, Any], *, name: str,
                         max_length: int = 512) -> ScannerConfig:
    """Validate the driver keys of one ``[[scanners]]`` table into the driver's config.

    ``data`` holds the driver's keys only (the caller takes its own, such as ``name``, out);
    any key the driver does not know is an error. Raises ``DriverConfigError`` naming the key.
    """
    return driver(driver_name).parse_settings(Settings(data), name=name, max_length=max_length)


def open_scanner(cfg: ScannerConfig, on_state: StateCallback | None = None) -> Scanner:
    """Build the driver for ``cfg`` (its type says which). Reading starts when iterated."""
    scanner: Scanner = driver(cfg.driver).scanner(cfg, on_state=on_state)
    return scanner
