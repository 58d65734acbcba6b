"""The drivers' exceptions: one tree, raised by drivers and caught by whoever runs them.

::

    DriverError                         root of everything a driver raises on purpose
    ├── DriverConfigError (ValueError)  a scanner's settings are wrong: names the key and why
    │   └── UnknownLayoutError (LookupError)  no such keyboard layout in the XKB data
    ├── RecordingError (ValueError)     a key recording cannot be read: names file and line
    └── ScannerGoneError                the device disappeared (unplug, reset); retried

Drivers translate ``OSError`` and ``serial.SerialException`` into these with
``raise ... from exc``. The agent re-exports ``DriverError`` and ``ScannerGoneError`` and turns
a ``DriverConfigError`` into its own config error, adding the file and the table's place.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DriverConfigError", "DriverError", "RecordingError", "ScannerGoneError",
           "UnknownLayoutError"]


class DriverError(Exception):
    """A scanner could not be opened, read or set up."""


class ScannerGoneError(DriverError):
    """The scanner disappeared (unplugged, reset, connection closed); the driver retries."""


class DriverConfigError(DriverError, ValueError):
    """A scanner's settings are invalid: ``key`` (within the scanner's table) and ``problem``.

    >>> str(DriverConfigError("baudrate", "must be at least 50, got 3"))
    'baudrate: must be at least 50, got 3'
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class UnknownLayoutError(DriverConfigError, LookupError):
    """The keyboard layout is not in this machine's XKB data; ``suggestions`` are close names."""

    def __init__(self, problem: str, suggestions: Sequence[str] = ()) -> None:
        self.suggestions = tuple(suggestions)
        super().__init__("layout", problem)


class RecordingError(DriverError, ValueError):
    """A recording of key events cannot be read or written (the message names file and line)."""
