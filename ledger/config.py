"""The ledger's configuration: one optional TOML file, validated once at start.

Every mistake raises :class:`~ledger.errors.ConfigError` naming the file, the key and the
problem; unknown keys are errors so that typos never pass silently.

.. code-block:: toml

    max_body_bytes = 16777216        # larger requests get 413
    head_timeout_s = 30.0            # a request head not in by then: connection closed
    body_timeout_s = 30.0            # a body not in by then gets 408 (a stalled client)
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

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.errors import ConfigError
from scankit.tomltable import ID as _ID
from scankit.tomltable import TomlTable, read_toml

__all__ = ["LedgerConfig", "SitePolicy", "load_config", "parse_config"]



@dataclass(frozen=True, slots=True)
class SitePolicy:
    """``[sites.NAME]``: what the ledger does for one site."""

    allow_negative: bool = True


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """A validated ledger configuration (all defaults when there is no file)."""

    path: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    head_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
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
    data = read_toml(Path(path), ConfigError)
    return parse_config(data, str(path))


def parse_config(data: Mapping[str, Any], file: str = "<config>") -> LedgerConfig:
    """Validate an already-parsed TOML mapping (``load_config`` without the file read)."""
    top = TomlTable(file, data, "", ConfigError)
    d = LedgerConfig()
    max_body_bytes = top.integer("max_body_bytes", d.max_body_bytes, lo=1024)
    max_batch_events = top.integer("max_batch_events", d.max_batch_events, lo=1)
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
        sites[name] = SitePolicy(allow_negative=t.get("allow_negative", (bool,), "true or false",
                                                      True))
        t.finish()
    top.finish()
    return LedgerConfig(
        path=file, max_body_bytes=max_body_bytes, head_timeout_s=head_timeout_s,
        body_timeout_s=body_timeout_s,
        max_batch_events=max_batch_events,
        duplicate_window_s=duplicate_window_s, read_token=read_token, webhook_url=webhook_url,
        webhook_timeout_s=webhook_timeout_s, webhook_max_attempts=webhook_max_attempts,
        sites=sites,
    )
