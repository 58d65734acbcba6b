"""Reading TOML config files strictly: one message naming the file, the key and the problem.

Shared by the dock config (:mod:`agent.config`) and the ledger's (:mod:`ledger.config`);
each passes its own ``ConfigError`` class, which takes ``(file, key, problem)``.

>>> from agent.errors import ConfigError
>>> t = TomlTable("dock.toml", {"baudrat": 9600}, "scanners[0]", ConfigError)
>>> t.integer("baudrate", 9600)
9600
>>> t.finish()
Traceback (most recent call last):
agent.errors.ConfigError: dock.toml: scanners[0].baudrat: unknown key (did you mean 'baudrate'?)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drivers.settings import REQUIRED, Settings, describe

__all__ = ["ID", "REQUIRED", "ErrorFactory", "TomlTable", "describe", "read_toml"]

#: station, site and similar ids: letters, digits, '.', '_', '-'; at most 64
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

ErrorFactory = Callable[[str, str, str], Exception]


def read_toml(path: Path, error: ErrorFactory) -> dict[str, Any]:
    """Parse a TOML file; every failure is ``error(file, "", problem)``."""
    name = str(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(name, "", "file not found") from None
    except PermissionError:
        raise error(name, "", "permission denied") from None
    except IsADirectoryError:
        raise error(name, "", "is a directory, expected a TOML file") from None
    except UnicodeDecodeError as exc:
        raise error(name, "", f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(name, "", f"invalid TOML: {exc}") from None


class TomlTable(Settings):
    """Reads one TOML table, tracking which keys were used so leftovers are reported.

    :class:`drivers.settings.Settings` with messages that name the file and the table.
    """

    def __init__(self, file: str, data: Any, prefix: str, error: ErrorFactory) -> None:
        if not isinstance(data, Mapping):
            raise error(file, prefix or "(top level)", f"expected a table, got {describe(data)}")
        super().__init__(data)
        self.file, self.prefix, self._error = file, prefix, error

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def error(self, k: str, problem: str) -> Exception:
        return self._error(self.file, self.key(k), problem)

    def ident(self, k: str, default: Any = None) -> Any:
        v = self.text(k, default)
        if isinstance(v, str) and not ID.match(v):
            raise self.error(
                k, f"{v!r} is not a valid id (letters, digits, '.', '_', '-'; at most 64)"
            )
        return v

    def table(self, k: str) -> TomlTable | None:
        self.used.add(k)
        if k not in self.data:
            return None
        return TomlTable(self.file, self.data[k], self.key(k), self._error)
