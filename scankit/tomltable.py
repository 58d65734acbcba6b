"""Reading TOML config files strictly: one message naming the file, the key and the problem.

Shared by the dock config (:mod:`agent.config`) and the ledger's (:mod:`ledger.config`);
each passes its own ``ConfigError`` class, which takes ``(file, key, problem)``.

>>> class ConfigError(ValueError):
...     def __init__(self, file: str, key: str, problem: str) -> None:
...         super().__init__(f"{file}: {key}: {problem}")
>>> t = TomlTable("dock.toml", {"baudrat": 9600}, "scanners[0]", ConfigError)
>>> t.integer("baudrate", 9600)
9600
>>> t.finish()
Traceback (most recent call last):
ConfigError: dock.toml: scanners[0].baudrat: unknown key (did you mean 'baudrate'?)
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ID", "REQUIRED", "ErrorFactory", "TomlTable", "describe", "read_toml"]

#: station, site and similar ids: letters, digits, '.', '_', '-'; at most 64
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: a default that makes a key required
REQUIRED: Any = object()

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


def describe(v: Any) -> str:
    """What a TOML value is, for messages: ``a string ('fast')``."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return f"a number ({v!r})"
    if isinstance(v, str):
        return f"a string ({v!r})"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


class TomlTable:
    """Reads one TOML table, tracking which keys were used so leftovers are reported."""

    def __init__(self, file: str, data: Any, prefix: str, error: ErrorFactory) -> None:
        if not isinstance(data, Mapping):
            raise error(file, prefix or "(top level)", f"expected a table, got {describe(data)}")
        self.file, self.data, self.prefix, self._error = file, data, prefix, error
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def error(self, k: str, problem: str) -> Exception:
        return self._error(self.file, self.key(k), problem)

    def get(self, k: str, types: tuple[type, ...], expected: str, default: Any) -> Any:
        self.used.add(k)
        if k not in self.data:
            if default is REQUIRED:
                raise self.error(k, "required key is missing")
            return default
        v = self.data[k]
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            raise self.error(k, f"expected {expected}, got {describe(v)}")
        return v

    def text(self, k: str, default: Any = None, *, nonempty: bool = True) -> Any:
        v = self.get(k, (str,), "a string", default)
        if isinstance(v, str) and nonempty and not v.strip():
            raise self.error(k, "must not be empty")
        return v

    def ident(self, k: str, default: Any = None) -> Any:
        v = self.text(k, default)
        if isinstance(v, str) and not ID.match(v):
            raise self.error(
                k, f"{v!r} is not a valid id (letters, digits, '.', '_', '-'; at most 64)"
            )
        return v

    def integer(self, k: str, default: Any = None, *, lo: int | None = None,
                hi: int | None = None) -> Any:
        v = self.get(k, (int,), "an integer", default)
        if isinstance(v, int):
            if lo is not None and v < lo:
                raise self.error(k, f"must be at least {lo}, got {v}")
            if hi is not None and v > hi:
                raise self.error(k, f"must be at most {hi}, got {v}")
        return v

    def number(self, k: str, default: Any = None, *, lo: float | None = None) -> Any:
        v = self.get(k, (int, float), "a number", default)
        if isinstance(v, int | float):
            if lo is not None and v < lo:
                raise self.error(k, f"must be at least {lo}, got {v}")
            return float(v)
        return v

    def flag(self, k: str, default: Any = None) -> Any:
        return self.get(k, (bool,), "true or false", default)

    def choice(self, k: str, choices: tuple[str, ...], default: Any = None) -> Any:
        v = self.text(k, default)
        if v is not None and v not in choices:
            raise self.error(k, f"must be one of {', '.join(choices)}; got {v!r}")
        return v

    def table(self, k: str) -> TomlTable | None:
        self.used.add(k)
        if k not in self.data:
            return None
        return TomlTable(self.file, self.data[k], self.key(k), self._error)

    def finish(self) -> None:
        """Raise for the first key nobody asked for (with a did-you-mean hint)."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            k = unknown[0]
            m = difflib.get_close_matches(k, sorted(self.used), n=1, cutoff=0.6)
            raise self.error(k, "unknown key" + (f" (did you mean {m[0]!r}?)" if m else ""))
