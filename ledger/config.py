"""The ledger's configuration: one optional TOML file, validated once at start.

Every mistake raises :class:`~ledger.errors.ConfigError` naming the file, the key and the
problem; unknown keys are errors so that typos never pass silently.

.. code-block:: toml

    max_body_bytes = 16777216        # larger requests get 413
    max_batch_events = 10000         # more events in one batch get 413
    duplicate_window_s = 10.0        # window for suspected_duplicate
    read_token = "..."               # if set, reads and the dashboard need it
    webhook_url = "https://alerts.example/ledger"
    webhook_timeout_s = 5.0
    webhook_max_attempts = 8

    [sites.WH1]
    allow_negative = false           # hold depletions that would go negative

>>> parse_config({"sites": {"WH1": {"allow_negative": False}}}).allow_negative("WH1")
False
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.errors import ConfigError

__all__ = ["LedgerConfig", "SitePolicy", "load_config", "parse_config"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """``[sites.NAME]``: what the ledger does for one site."""

    allow_negative: bool = True


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """A validated ledger configuration (all defaults when there is no file)."""

    path: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_events: int = 10_000
    duplicate_window_s: float = 10.0
    read_token: str | None = None
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 8
    sites: Mapping[str, SitePolicy] = field(default_factory=dict)

    def allow_negative(self, site: str) -> bool:
        policy = self.sites.get(site)
        return True if policy is None else policy.allow_negative


def load_config(path: str | os.PathLike[str] | None) -> LedgerConfig:
    """Read and validate the ledger config; ``None`` gives the defaults."""
    if path is None:
        return LedgerConfig()
    name = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(name, "", "file not found") from None
    except PermissionError:
        raise ConfigError(name, "", "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(name, "", "is a directory, expected a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(name, "", f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"invalid TOML: {exc}") from None
    return parse_config(data, name)


def _kind(v: Any) -> str:
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


class _Table:
    """Reads one TOML table, tracking which keys were used so leftovers are reported."""

    def __init__(self, file: str, data: Any, prefix: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(file, prefix or "(top level)", f"expected a table, got {_kind(data)}")
        self.file, self.data, self.prefix = file, data, prefix
        self.used: set[str] = set()

    def error(self, k: str, problem: str) -> ConfigError:
        return ConfigError(self.file, f"{self.prefix}.{k}" if self.prefix else k, problem)

    def get(self, k: str, types: tuple[type, ...], expected: str, default: Any) -> Any:
        self.used.add(k)
        if k not in self.data:
            return default
        v = self.data[k]
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            raise self.error(k, f"expected {expected}, got {_kind(v)}")
        return v

    def int(self, k: str, default: int, lo: int) -> int:
        v: int = self.get(k, (int,), "an integer", default)
        if v < lo:
            raise self.error(k, f"must be at least {lo}, got {v}")
        return v

    def float(self, k: str, default: float, lo: float) -> float:
        v = self.get(k, (int, float), "a number", default)
        if v < lo:
            raise self.error(k, f"must be at least {lo}, got {v}")
        return float(v)

    def str(self, k: str) -> str | None:
        v: str | None = self.get(k, (str,), "a string", None)
        if v is not None and not v.strip():
            raise self.error(k, "must not be empty")
        return v

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            k = unknown[0]
            m = difflib.get_close_matches(k, sorted(self.used), n=1, cutoff=0.6)
            raise self.error(k, "unknown key" + (f" (did you mean {m[0]!r}?)" if m else ""))


def parse_config(data: Mapping[str, Any], file: str = "<config>") -> LedgerConfig:
    """Validate an already-parsed TOML mapping (``load_config`` without the file read)."""
    top = _Table(file, data, "")
    d = LedgerConfig()
    max_body_bytes = top.int("max_body_bytes", d.max_body_bytes, lo=1024)
    max_batch_events = top.int("max_batch_events", d.max_batch_events, lo=1)
    duplicate_window_s = top.float("duplicate_window_s", d.duplicate_window_s, lo=0.0)
    read_token = top.str("read_token")
    webhook_url = top.str("webhook_url")
    if webhook_url is not None and not re.match(r"^https?://[^\s/]+", webhook_url):
        raise top.error("webhook_url", f"expected an http:// or https:// URL, got {webhook_url!r}")
    webhook_timeout_s = top.float("webhook_timeout_s", d.webhook_timeout_s, lo=0.1)
    webhook_max_attempts = top.int("webhook_max_attempts", d.webhook_max_attempts, lo=1)
    sites: dict[str, SitePolicy] = {}
    raw_sites = top.get("sites", (dict,), "a table of sites ([sites.WH1])", {})
    for name, raw in raw_sites.items():
        if not _ID.match(name):
            raise ConfigError(file, f"sites.{name}", "not a valid site id (letters, digits, "
                                                     "'.', '_', '-'; at most 64)")
        t = _Table(file, raw, f"sites.{name}")
        sites[name] = SitePolicy(allow_negative=t.get("allow_negative", (bool,), "true or false",
                                                      True))
        t.finish()
    top.finish()
    return LedgerConfig(
        path=file, max_body_bytes=max_body_bytes, max_batch_events=max_batch_events,
        duplicate_window_s=duplicate_window_s, read_token=read_token, webhook_url=webhook_url,
        webhook_timeout_s=webhook_timeout_s, webhook_max_attempts=webhook_max_attempts,
        sites=sites,
    )
