"""The ledger's configuration: one optional TOML file, validated once at start.

Every mistake raises :class:`~ledger.errors.ConfigError` naming the file, the key and the
problem; unknown keys are errors so that typos never pass silently.

.. code-block:: toml

    max_body_bytes = 16777216        # larger requests get 413
    head_timeout_s = 30.0            # a request head not in by then: connection closed
    body_timeout_s = 30.0            # a body not in by then gets 408 (a stalled client)
    max_batch_events = 10000         # more events in one batch get 413
    reader_processes = 1             # processes that read batches beside the ledger's own
                                     # (default: 1 with two or more cores, else 0)
    duplicate_window_s = 10.0        # window for suspected_duplicate
    read_token = "..."               # if set, reads and the dashboard need it
    webhook_url = "https://alerts.example/ledger"
    webhook_timeout_s = 5.0
    webhook_max_attempts = 8

    [sites.WH1]
    allow_negative = false           # hold depletions that would go negative
    timezone = "Europe/Berlin"       # the manager's page shows the site's times in it

    [[connectors]]                   # forward movements into an ERP (docs/connectors.md)
    name = "erp"
    kind = "tryton"
    url = "http://erp.internal:8000/"
    database = "prod"
    credentials_file = "erp.secret"
    sites = ["WH1"]

>>> parse_config({"sites": {"WH1": {"allow_negative": False}}}).allow_negative("WH1")
False
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.settings import ID as _ID
from drivers.settings import TomlTable, read_toml
from ledger.connectors.settings import ConnectorConfig, parse_connectors
from ledger.errors import ConfigError

__all__ = ["LedgerConfig", "SitePolicy", "load_config", "parse_config"]



@dataclass(frozen=True, slots=True)
class SitePolicy:
    """``[sites.NAME]``: what the ledger does for one site."""

    allow_negative: bool = True
    timezone: str = "UTC"
    zone: tzinfo = UTC


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """A validated ledger configuration (all defaults when there is no file)."""

    path: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    head_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    max_batch_events: int = 10_000
    reader_processes: int | None = None  # None: 1 with two or more cores, else 0
    duplicate_window_s: float = 10.0
    read_token: str | None = None
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 8
    sites: Mapping[str, SitePolicy] = field(default_factory=dict)
    connectors: tuple[ConnectorConfig, ...] = ()

    def allow_negative(self, site: str) -> bool:
        policy = self.sites.get(site)
        return True if policy is None else policy.allow_negative

    def zone(self, site: str) -> tzinfo:
        """The site's time zone (UTC unless ``[sites.NAME] timezone`` says otherwise)."""
        policy = self.sites.get(site)
        return UTC if policy is None else policy.zone


def _zone(t: TomlTable, name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise t.error("timezone", f"unknown time zone {name!r}; expected an IANA name such as "
                                  "'Europe/Berlin' or 'UTC'") from None


def load_config(path: str | os.PathLike[str] | None) -> LedgerConfig:
    """Read and validate the ledger config; ``None`` gives the defaults."""
    if path is None:
        return LedgerConfig()
    data = read_toml(Path(path), ConfigError)
    return parse_config(data, str(path))


def parse_config(data: Mapping[str, Any], file: str = "<config>") -> LedgerConfig:
    """Validate an already-parsed TOML mapping (``load_config`` without the file read)."""
    top = TomlTable(file, data, "", ConfigError)
    d = LedgerConfig()
    max_body_bytes = top.integer("max_body_bytes", d.max_body_bytes, lo=1024)
    max_batch_events = top.integer("max_batch_events", d.max_batch_events, lo=1)
    reader_processes = top.integer("reader_processes", None, lo=0, hi=64)
    head_timeout_s = top.number("head_timeout_s", d.head_timeout_s, lo=0.1)
    body_timeout_s = top.number("body_timeout_s", d.body_timeout_s, lo=0.1)
    duplicate_window_s = top.number("duplicate_window_s", d.duplicate_window_s, lo=0.0)
    read_token = top.text("read_token")
    webhook_url = top.text("webhook_url")
    if webhook_url is not None and not re.match(r"^https?://[^\s/]+", webhook_url):
        raise top.error("webhook_url", f"expected an http:// or https:// URL, got {webhook_url!r}")
    webhook_timeout_s = top.number("webhook_timeout_s", d.webhook_timeout_s, lo=0.1)
    webhook_max_attempts = top.integer("webhook_max_attempts", d.webhook_max_attempts, lo=1)
    sites: dict[str, SitePolicy] = {}
    raw_sites = top.get("sites", (dict,), "a table of sites ([sites.WH1])", {})
    for name, raw in raw_sites.items():
        if not _ID.match(name):
            raise ConfigError(file, f"sites.{name}", "not a valid site id (letters, digits, "
                                                     "'.', '_', '-'; at most 64)")
        t = TomlTable(file, raw, f"sites.{name}", ConfigError)
        timezone = t.get("timezone", (str,), "an IANA time zone name such as 'Europe/Berlin'",
                         "UTC")
        sites[name] = SitePolicy(allow_negative=t.get("allow_negative", (bool,), "true or false",
                                                      True),
                                 timezone=timezone, zone=_zone(t, timezone))
        t.finish()
    connectors = parse_connectors(top, Path(file).parent if file != "<config>" else None)
    top.finish()
    return LedgerConfig(
        path=file, max_body_bytes=max_body_bytes, head_timeout_s=head_timeout_s,
        body_timeout_s=body_timeout_s,
        max_batch_events=max_batch_events, reader_processes=reader_processes,
        duplicate_window_s=duplicate_window_s, read_token=read_token, webhook_url=webhook_url,
        webhook_timeout_s=webhook_timeout_s, webhook_max_attempts=webhook_max_attempts,
        sites=sites, connectors=connectors,
    )
