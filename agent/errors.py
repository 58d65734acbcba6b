"""The agent's exceptions: one tree, so callers can catch what they mean.

::

    AgentError                      root of everything the agent raises on purpose
    ├── ConfigError (ValueError)    a dock config file is wrong: names file, key, problem
    ├── JournalError                the SQLite journal could not be read or written
    │   └── JournalFullError (OSError)  the journal's disk is full (ENOSPC / SQLITE_FULL)
    └── SyncError                   the ledger could not be reached or refused a batch
        └── AuthError               401/403: the station's token is wrong or revoked

Drivers stand on their own and have their own tree, :mod:`drivers.errors` (``DriverError``,
``ScannerGoneError``, ``DriverConfigError``), re-exported here; the CLI and the daemon catch
``AgentError`` and ``DriverError`` alike.

Lower layers translate ``OSError``, ``serial.SerialException``, ``sqlite3.Error`` and
``httpx.HTTPError`` into these with ``raise ... from exc`` at the boundary. Only the CLI turns
them into messages and exit codes.
"""

from __future__ import annotations

from drivers.errors import DriverError, ScannerGoneError

__all__ = [
    "AgentError",
    "AuthError",
    "ConfigError",
    "DriverError",
    "JournalError",
    "JournalFullError",
    "ScannerGoneError",
    "SyncError",
]


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """A configuration file is invalid.

    The message always names the file, the key and what is wrong, e.g.
    ``dock-3.toml: scanners[0].baudrate: expected an integer, got "fast"``.
    """

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class JournalError(AgentError):
    """The journal could not be opened, read or written."""


class JournalFullError(JournalError, OSError):
    """The journal's filesystem is full: captures are refused until space returns."""


class SyncError(AgentError):
    """The ledger could not be reached, or it refused a batch."""


class AuthError(SyncError):
    """The ledger refused the station's token (HTTP 401 or 403)."""
