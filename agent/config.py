"""Per-dock configuration: one TOML file, validated once at start into frozen objects.

Every mistake raises :class:`~agent.errors.ConfigError` naming the file, the key and the
problem; unknown keys are errors so that typos never pass silently.

>>> cfg = load_config("/etc/scan-agent/dock-3.toml")   # doctest: +SKIP
>>> cfg.station, cfg.scanners[0].driver
('dock-3', 'serial')
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.errors import ConfigError
from scankit.tomltable import REQUIRED, TomlTable, read_toml

__all__ = [
    "MODES",
    "Config",
    "EvdevScannerConfig",
    "FeedbackConfig",
    "GrammarConfig",
    "LedgerConfig",
    "MetricsConfig",
    "ScannerConfig",
    "SerialScannerConfig",
    "TcpScannerConfig",
    "load_config",
    "parse_config",
]

Mode = Literal["receipt", "pick", "move", "count"]
MODES: tuple[Mode, ...] = ("receipt", "pick", "move", "count")
DEFAULT_STATE_ROOT = "/var/lib/scan-agent"


@dataclass(frozen=True, slots=True)
class GrammarConfig:
    """Barcode patterns of the scan grammar; every prefix is configurable per site."""

    mode_prefix: str = "MODE-"
    location_prefix: str = "LOC-"
    qty_prefix: str = "QTY-"
    reference_prefix: str = "REF-"
    operator_prefix: str = "USER-"
    undo: str = "CMD-UNDO"
    reset: str = "CMD-RESET"
    sku_patterns: tuple[str, ...] = ()
    max_qty: int = 9999
    max_length: int = 512


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Where and how to sync (``[ledger]``)."""

    url: str
    token_file: str | None = None
    verify: bool = True
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = 10.0
    batch_size: int = 1000
    max_backoff: float = 60.0


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """Operator feedback on GPIO (``[feedback]``); pins are BCM numbers, None = not fitted."""

    buzzer_pin: int | None = None
    good_led_pin: int | None = None
    error_led_pin: int | None = None
    warning_led_pin: int | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics (``[metrics]``): a textfile for node_exporter and/or a local port."""

    textfile: str | None = None
    listen: str | None = None  # "127.0.0.1:9105"
    interval: float = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScannerConfig:
    """Keys every scanner has, whatever its driver."""

    name: str
    driver: str
    debounce_ms: int = 0  # off: every scan makes its movement (DESIGN section 4)
    max_length: int = 512
    mode: Mode | None = None  # overrides the dock's default mode for this scanner
    location: str | None = None  # overrides the dock's default location


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialScannerConfig(ScannerConfig):
    """``driver = "serial"``: USB-CDC or RS-232 scanners, or a pyserial URL."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1
    terminator: str = "auto"  # auto (CR, LF or CRLF) | CR | LF | CRLF | one character
    prefix: str = ""  # stripped from the start of each scan when present
    suffix: str = ""  # stripped from the end of each scan when present
    ack: str | None = None  # sent after a scan is committed (host-acknowledge mode)
    nak: str | None = None  # sent after a scan is rejected
    encoding: str = "utf-8"


@dataclass(frozen=True, slots=True, kw_only=True)
class EvdevScannerConfig(ScannerConfig):
    """``driver = "evdev"``: USB keyboard-wedge scanners read through /dev/input."""

    device: str | None = None
    vendor: str | None = None  # hex, e.g. "05e0"
    product: str | None = None  # hex, e.g. "1200"
    serial: str | None = None
    # A regular expression (config key "match_name") matched case-insensitively against the
    # input device's name. When device, vendor/product and match_name are all absent, the
    # scanner's own ``name`` is taken as a glob pattern for the device name (DESIGN section 3).
    name_pattern: str | None = None
    layout: str = "us"
    terminator: Literal["enter", "tab", "timeout"] = "enter"
    timeout_ms: int = 50  # inter-key gap that ends a scan when terminator = "timeout"
    grab: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpScannerConfig(ScannerConfig):
    """``driver = "tcp"``: fixed-mount readers streaming scans over TCP."""

    host: str
    port: int
    framing: Literal["line", "stx-etx"] = "line"
    trigger: str | None = None  # sent on each (re)connect, e.g. to start a reading session
    encoding: str = "utf-8"


@dataclass(frozen=True, slots=True)
class Config:
    """A validated dock configuration."""

    path: str
    station: str
    site: str
    database: str
    mode: Mode = "receipt"
    location: str | None = None
    require_operator: bool = False
    retention_days: float = 30.0
    log_level: str = "INFO"
    grammar: GrammarConfig = field(default_factory=GrammarConfig)
    ledger: LedgerConfig | None = None
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    scanners: tuple[ScannerConfig, ...] = ()

    def scanner(self, name: str) -> ScannerConfig:
        for s in self.scanners:
            if s.name == name:
                return s
        raise KeyError(name)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a dock config file; raises :class:`ConfigError`."""
    p = Path(path)
    data = read_toml(p, ConfigError)
    return parse_config(data, str(p), base_dir=p.parent)


def _path(base_dir: Path | None, v: str) -> str:
    p = Path(v).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return str(p)


def parse_config(data: Mapping[str, Any], file: str = "<config>",
                 base_dir: Path | None = None) -> Config:
    """Validate an already-parsed TOML mapping (``load_config`` without the file read)."""
    top = TomlTable(file, data, "", ConfigError)
    station = top.ident("station", REQUIRED)
    site = top.ident("site", REQUIRED)
    mode = top.choice("mode", MODES, "receipt")
    location = top.text("location", None)
    database = top.text("database", None)
    if database is None:
        state_dir = os.environ.get("STATE_DIRECTORY")
        database = str(Path(state_dir or f"{DEFAULT_STATE_ROOT}/{station}") / "journal.db")
    else:
        database = _path(base_dir, database)
    require_operator = top.flag("require_operator", False)
    retention_days = top.number("retention_days", 30.0, lo=0.0)
    log_level = top.choice("log_level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")

    grammar = _grammar(top.table("grammar"))
    ledger = _ledger(top.table("ledger"), base_dir)
    feedback = _feedback(top.table("feedback"))
    metrics = _metrics(top.table("metrics"), base_dir)

    top.used.add("scanners")
    raw_scanners = data.get("scanners", [])
    if not isinstance(raw_scanners, list):
        raise top.error("scanners", "expected an array of tables ([[scanners]])")
    scanners: list[ScannerConfig] = []
    for i, raw in enumerate(raw_scanners):
        s = _scanner(TomlTable(file, raw, f"scanners[{i}]", ConfigError), grammar)
        if any(o.name == s.name for o in scanners):
            raise ConfigError(file, f"scanners[{i}].name", f"duplicate scanner name {s.name!r}")
        scanners.append(s)
    top.finish()
    return Config(
        path=file, station=station, site=site, database=database, mode=mode, location=location,
        require_operator=require_operator, retention_days=retention_days, log_level=log_level,
        grammar=grammar, ledger=ledger, feedback=feedback, metrics=metrics,
        scanners=tuple(scanners),
    )


def _grammar(t: TomlTable | None) -> GrammarConfig:
    if t is None:
        return GrammarConfig()
    d = GrammarConfig()
    prefixes = {
        k: t.text(k, getattr(d, k))
        for k in ("mode_prefix", "location_prefix", "qty_prefix", "reference_prefix",
                  "operator_prefix", "undo", "reset")
    }
    t.used.add("sku_patterns")
    pats = t.data.get("sku_patterns", [])
    if not isinstance(pats, list) or not all(isinstance(p, str) for p in pats):
        raise t.error("sku_patterns", "expected an array of regular expressions (strings)")
    for i, p in enumerate(pats):
        try:
            re.compile(p)
        except re.error as exc:
            raise t.error(f"sku_patterns[{i}]", f"invalid regular expression: {exc}") from None
    max_qty = t.integer("max_qty", d.max_qty, lo=1)
    max_length = t.integer("max_length", d.max_length, lo=8, hi=1 << 20)
    t.finish()
    return GrammarConfig(**prefixes, sku_patterns=tuple(pats), max_qty=max_qty,
                         max_length=max_length)


def _ledger(t: TomlTable | None, base_dir: Path | None) -> LedgerConfig | None:
    if t is None:
        return None
    url = t.text("url", REQUIRED)
    if not re.match(r"^https?://[^\s/]+", url):
        raise t.error("url", f"expected an http:// or https:// URL, got {url!r}")
    opt_path = {k: t.text(k, None)
                for k in ("token_file", "ca_bundle", "client_cert", "client_key")}
    paths = {k: (_path(base_dir, v) if v else None) for k, v in opt_path.items()}
    cfg = LedgerConfig(
        url=url.rstrip("/"),
        verify=t.flag("verify", True),
        timeout=t.number("timeout", 10.0, lo=0.1),
        batch_size=t.integer("batch_size", 1000, lo=1, hi=10000),
        max_backoff=t.number("max_backoff", 60.0, lo=0.1),
        **paths,
    )
    if cfg.client_key and not cfg.client_cert:
        raise t.error("client_key", "needs client_cert as well")
    for key in ("ca_bundle", "client_cert", "client_key"):
        path = getattr(cfg, key)
        if path is not None and not os.access(path, os.R_OK):
            why = "not found" if not os.path.exists(path) else "not readable"
            raise t.error(key, f"{path}: {why}")
    t.finish()
    return cfg


def _feedback(t: TomlTable | None) -> FeedbackConfig:
    if t is None:
        return FeedbackConfig()
    pins = {k: t.integer(k, None, lo=0, hi=53)
            for k in ("buzzer_pin", "good_led_pin", "error_led_pin", "warning_led_pin")}
    t.finish()
    return FeedbackConfig(**pins)


def _metrics(t: TomlTable | None, base_dir: Path | None) -> MetricsConfig:
    if t is None:
        return MetricsConfig()
    textfile = t.text("textfile", None)
    listen = t.text("listen", None)
    if listen is not None:
        m = re.match(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})$", listen)
        if not m or not 1 <= int(m.group(2)) <= 65535:
            raise t.error("listen", f"expected HOST:PORT with a port from 1 to 65535, "
                          f"got {listen!r}")
    interval = t.number("interval", 15.0, lo=1.0)
    t.finish()
    return MetricsConfig(textfile=_path(base_dir, textfile) if textfile else None,
                         listen=listen, interval=interval)


def _unescape_control(t: TomlTable, k: str, v: str | None) -> str | None:
    # TOML already turns "\u0006" into the character; also accept the names operators use.
    names = {"ACK": "\x06", "NAK": "\x15", "BEL": "\x07", "CR": "\r", "LF": "\n"}
    if v is None:
        return None
    return names.get(v, v)


def _scanner(t: TomlTable, grammar: GrammarConfig) -> ScannerConfig:
    name = t.text("name", REQUIRED)
    if len(name) > 64 or not name.isprintable():
        raise t.error("name", "must be printable text of at most 64 characters")
    driver = t.choice("driver", ("serial", "evdev", "tcp"), REQUIRED)
    common: dict[str, Any] = dict(
        name=name,
        driver=driver,
        debounce_ms=t.integer("debounce_ms", 0, lo=0, hi=60000),
        max_length=t.integer("max_length", grammar.max_length, lo=8, hi=1 << 20),
        mode=t.choice("mode", MODES, None),
        location=t.text("location", None),
    )
    cfg: ScannerConfig
    if driver == "serial":
        terminator = t.text("terminator", "auto")
        if terminator not in ("auto", "CR", "LF", "CRLF") and len(terminator) != 1:
            raise t.error("terminator", "must be auto, CR, LF, CRLF or a single character, "
                          f"got {terminator!r}")
        cfg = SerialScannerConfig(
            **common,
            port=t.text("port", REQUIRED),
            baudrate=t.integer("baudrate", 9600, lo=50, hi=4_000_000),
            bytesize=t.integer("bytesize", 8, lo=5, hi=8),
            parity=t.choice("parity", ("N", "E", "O", "M", "S"), "N"),
            stopbits=t.number("stopbits", 1.0),
            terminator=terminator,
            prefix=t.text("prefix", "", nonempty=False),
            suffix=t.text("suffix", "", nonempty=False),
            ack=_unescape_control(t, "ack", t.text("ack", None, nonempty=False)),
            nak=_unescape_control(t, "nak", t.text("nak", None, nonempty=False)),
            encoding=_encoding(t, t.text("encoding", "utf-8")),
        )
        if cfg.stopbits not in (1.0, 1.5, 2.0):
            raise t.error("stopbits", "must be 1, 1.5 or 2")
    elif driver == "evdev":
        vendor = _hex(t, "vendor")
        product = _hex(t, "product")
        cfg = EvdevScannerConfig(
            **common,
            device=t.text("device", None),
            vendor=vendor,
            product=product,
            serial=t.text("serial", None),
            name_pattern=t.text("match_name", None),
            layout=t.text("layout", "us"),
            terminator=t.choice("terminator", ("enter", "tab", "timeout"), "enter"),
            timeout_ms=t.integer("timeout_ms", 50, lo=5, hi=5000),
            grab=t.flag("grab", True),
        )
        e: EvdevScannerConfig = cfg
        if e.device is None and e.name_pattern is None and e.vendor is None:
            # DESIGN section 3: with no device or USB ids, the scanner's name is the pattern
            # (a glob, case-insensitive) that the input device's name must match.
            object.__setattr__(cfg, "name_pattern", fnmatch.translate(name))
        if (e.vendor is None) != (e.product is None):
            raise t.error("vendor" if e.vendor is None else "product",
                          "vendor and product go together")
        if e.name_pattern is not None:
            try:
                re.compile(e.name_pattern, re.IGNORECASE)
            except re.error as exc:
                raise t.error("match_name", f"invalid regular expression: {exc}") from None
        from drivers.layouts import LAYOUTS  # small table module, no device access

        if e.layout not in LAYOUTS:
            raise t.error("layout", f"unknown layout {e.layout!r}; known: "
                          + ", ".join(sorted(LAYOUTS)))
    else:
        cfg = TcpScannerConfig(
            **common,
            host=t.text("host", REQUIRED),
            port=t.integer("port", REQUIRED, lo=1, hi=65535),
            framing=t.choice("framing", ("line", "stx-etx"), "line"),
            trigger=t.text("trigger", None, nonempty=False),
            encoding=_encoding(t, t.text("encoding", "utf-8")),
        )
    t.finish()
    return cfg


def _hex(t: TomlTable, k: str) -> str | None:
    v: str | None = t.text(k, None)
    if v is None:
        return None
    s = v.lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,4}", s):
        raise t.error(k, f"expected a USB id in hex such as \"05e0\", got {v!r}")
    return s.rjust(4, "0")


def _encoding(t: TomlTable, enc: str) -> str:
    import codecs

    try:
        codecs.lookup(enc)
    except LookupError:
        raise t.error("encoding", f"unknown text encoding {enc!r}") from None
    return enc
