"""The ledger's exceptions: one tree, so callers can catch what they mean.

::

    LedgerError                     root of everything the ledger raises on purpose
    ├── ConfigError (ValueError)    the ledger's TOML config is wrong: names file, key, problem
    ├── StoreError                  the database could not be opened, read or written
    ├── StationError (ValueError)   a station command was refused (unknown name, duplicate, bad id)
    ├── ManagerError (ValueError)   a manager command was refused (unknown name, duplicate, bad id)
    ├── ItemFileError (ValueError)  an item-names CSV is wrong: names the file, lines and columns
    ├── FilterError (ValueError)    a filter's query parameter is wrong (an HTTP 400)
    ├── ServerError                 the HTTP server could not start or stop
    └── ConnectorError              forwarding into an ERP failed this time (retried with backoff)
        └── Unmapped                the ERP does not know the movement's item, location or site
                                    (kept as ``unmapped`` and retried, never dropped)

Lower layers translate ``OSError`` and ``sqlite3.Error`` into these with ``raise ... from exc``
at the boundary. Only the CLI turns them into messages and exit codes. Problems with a single
posted event are not exceptions: they become a ``rejected`` result with a reason.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConnectorError", "FilterError", "ItemFileError", "LedgerError",
           "ManagerError", "ServerError", "StationError", "StoreError", "Unmapped"]


class LedgerError(Exception):
    """Root of every error the ledger raises on purpose."""


class ConfigError(LedgerError, ValueError):
    """The ledger config file is invalid.

    The message always names the file, the key and what is wrong, e.g.
    ``ledger.toml: sites.WH1.allow_negative: expected true or false, got a string ('no')``.
    """

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class StoreError(LedgerError):
    """The ledger database could not be opened, read or written."""


class StationError(LedgerError, ValueError):
    """A station could not be added, found or revoked."""


class ManagerError(LedgerError, ValueError):
    """A manager could not be added or revoked."""


class ItemFileError(LedgerError, ValueError):
    """An item-names CSV file could not be imported; nothing of it was.

    ``problems`` lists every bad row as ``line N, column C: what is wrong``."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{file}: nothing imported; fix these and import again:\n  "
                         + "\n  ".join(shown) + more)


class FilterError(LedgerError, ValueError):
    """A filter parameter is wrong; the message names it and says what is allowed."""


class ServerError(LedgerError):
    """The HTTP server could not be started or stopped."""


class ConnectorError(LedgerError):
    """An ERP call failed: down, slow, refused or answered nonsense. The message never holds
    credentials. The connector keeps the movement and retries with backoff."""


class Unmapped(ConnectorError):
    """The ERP has no product, location or warehouse for a movement (yet)."""
