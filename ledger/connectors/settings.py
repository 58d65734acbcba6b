"""``[[connectors]]`` in the ledger's config, and the credentials files they name.

Validated once, at start, into frozen objects; every mistake is a
:class:`~ledger.errors.ConfigError` naming the file, the key and the problem. The secrets
themselves never appear in a message, a log line or a ``repr``.

.. code-block:: toml

    [[connectors]]
    name = "erp"
    kind = "tryton"                     # tryton | erpnext | odoo
    url = "http://erp.internal:8000/"
    database = "prod"                   # tryton: required; odoo: sent as X-Odoo-Database
    credentials_file = "/etc/scan-ledger/erp.secret"   # TOML, mode 0600
    sites = ["WH1"]
    timeout_s = 30.0                    # one ERP call
    retry_max_s = 300.0                 # cap of the backoff after failures
    unmapped_retry_s = 60.0             # how often movements the ERP cannot map are tried again
    timezone = "UTC"                    # the ERP's posting dates (Tryton keeps dates only)
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.settings import ID, REQUIRED, TomlTable
from ledger.errors import ConfigError

__all__ = ["KINDS", "ConnectorConfig", "ConnectorKind", "parse_connectors", "read_credentials"]

ConnectorKind = Literal["tryton", "erpnext", "odoo"]
KINDS: tuple[ConnectorKind, ...] = ("tryton", "erpnext", "odoo")

#: which keys each kind's credentials file holds (all required, nothing else allowed)
CREDENTIAL_KEYS: Mapping[str, tuple[str, ...]] = {
    "tryton": ("user", "password"),
    "erpnext": ("api_key", "api_secret"),
    "odoo": ("api_key",),
}
MAX_CREDENTIALS_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """One ``[[connectors]]`` entry, its credentials read and checked."""

    name: str
    kind: ConnectorKind
    url: str
    database: str | None
    credentials_file: str
    sites: tuple[str, ...]
    credentials: Mapping[str, str] = field(repr=False, compare=False)
    timeout_s: float = 30.0
    retry_max_s: float = 300.0
    unmapped_retry_s: float = 60.0
    timezone: str = "UTC"


def parse_connectors(top: TomlTable, base: Path | None) -> tuple[ConnectorConfig, ...]:
    """Read ``[[connectors]]`` from the config's top table (relative credential paths are
    relative to the config file's directory ``base``)."""
    raw = top.get("connectors", (list,), "an array of tables ([[connectors]])", [])
    out: list[ConnectorConfig] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        t = TomlTable(top.file, entry, f"connectors[{i}]", ConfigError)
        name = t.ident("name", REQUIRED)
        if name in names:
            raise t.error("name", f"{name!r} is used by another connector")
        names.add(name)
        kind = cast(ConnectorKind, t.choice("kind", KINDS, REQUIRED))
        url = t.text("url", REQUIRED)
        if not re.match(r"^https?://[^\s/]+", url):
            raise t.error("url", f"expected an http:// or https:// URL, got {url!r}")
        database = t.text("database")
        if kind == "tryton" and database is None:
            raise t.error("database", "required for a Tryton connector (the database name)")
        cred_path = t.text("credentials_file", REQUIRED)
        sites_raw = t.get("sites", (list,), "an array of site ids", REQUIRED)
        if not sites_raw:
            raise t.error("sites", "name at least one site")
        for s in sites_raw:
            if not isinstance(s, str) or not ID.match(s):
                raise t.error("sites", f"{s!r} is not a valid site id")
        timeout_s = t.number("timeout_s", 30.0, lo=0.1)
        retry_max_s = t.number("retry_max_s", 300.0, lo=0.1)
        unmapped_retry_s = t.number("unmapped_retry_s", 60.0, lo=0.1)
        timezone = t.text("timezone", "UTC")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise t.error("timezone", f"unknown time zone {timezone!r}") from None
        t.finish()
        path = Path(cred_path)
        if not path.is_absolute() and base is not None:
            path = base / path
        credentials = read_credentials(path, kind, f"connectors[{i}].credentials_file")
        out.append(ConnectorConfig(
            name=name, kind=kind, url=url, database=database, credentials_file=str(path),
            sites=tuple(sites_raw), credentials=credentials, timeout_s=timeout_s,
            retry_max_s=retry_max_s, unmapped_retry_s=unmapped_retry_s, timezone=timezone))
    for site in {s for c in out for s in c.sites}:
        kinds = [c.name for c in out if site in c.sites]
        if len(kinds) > 1:
            raise ConfigError(top.file, "connectors",
                              f"site {site!r} is forwarded by {' and '.join(kinds)}; "
                              "one ERP per site")
    return tuple(out)


def read_credentials(path: Path, kind: str, key: str) -> dict[str, str]:
    """The credentials TOML for ``kind``; mode must be 0600 (or stricter), like a token file.

    Errors name the file and the key of the config that points at it, and never quote a
    value from the file."""
    name = str(path)
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(name, key, "is not a regular file")
            data = f.read(MAX_CREDENTIALS_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(name, key, "credentials file not found") from None
    except PermissionError:
        raise ConfigError(name, key, "permission denied: the credentials file must be "
                                     "readable by the user running scan-ledger") from None
    except IsADirectoryError:
        raise ConfigError(name, key, "is a directory, expected a credentials file") from None
    except OSError as exc:
        raise ConfigError(name, key, f"cannot read: {exc.strerror or exc}") from exc
    if st.st_mode & 0o077:
        raise ConfigError(name, key, f"is accessible to other users (mode "
                                     f"{stat.S_IMODE(st.st_mode):03o}); chmod 600 it")
    if len(data) > MAX_CREDENTIALS_BYTES:
        raise ConfigError(name, key, f"larger than {MAX_CREDENTIALS_BYTES} bytes")
    try:
        parsed: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(name, key, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError:
        # The parser's message may quote the line, and the line may hold a secret.
        raise ConfigError(name, key, "not valid TOML (expected lines like "
                                     "api_key = \"...\")") from None
    wanted = CREDENTIAL_KEYS[kind]
    for k in parsed:
        if k not in wanted:
            raise ConfigError(name, k, f"unknown key for a {kind} connector; expected "
                                       f"{', '.join(wanted)}")
    out: dict[str, str] = {}
    for k in wanted:
        v = parsed.get(k)
        if v is None:
            raise ConfigError(name, k, f"required for a {kind} connector")
        if not isinstance(v, str) or not v:
            raise ConfigError(name, k, "expected a non-empty string")
        out[k] = v
    return out
