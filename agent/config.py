"""Per-dock configuration: one TOML file, validated once at start into frozen objects.

Every mistake raises :class:`~agent.errors.ConfigError` naming the file, the key and the
problem; unknown keys are errors so that typos never pass silently.

>>> cfg = load_config("/etc/scan-agent/dock-3.toml")   # doctest: +SKIP
>>> cfg.station, cfg.scanners[0].driver
('dock-3', 'serial')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.errors import ConfigError
from drivers import DRIVERS, parse_scanner_config
from drivers import ScannerConfig as DriverConfig
from drivers.errors import DriverConfigError
from drivers.settings import REQUIRED, TomlTable, read_toml

__all__ = [
    "MODES",
    "Config",
    "DriverConfig",
    "FeedbackConfig",
    "GrammarConfig",
    "LedgerConfig",
    "MetricsConfig",
    "ScannerConfig",
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
    undo_max_age: float = 600.0  # seconds: CMD-UNDO never voids an older movement


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
    # seconds between two readings of the ledger's open incidents while `status` shows any
    warning_recheck: float = 60.0


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
    """One ``[[scanners]]`` table: the keys every scanner has, and its driver's own settings.

    ``settings`` is the driver's frozen config (``drivers.evdev.EvdevScannerConfig``,
    ``drivers.serial.SerialScannerConfig``, ``drivers.tcp.TcpScannerConfig``), parsed by the
    driver itself; :func:`drivers.open_scanner` takes it.
    """

    name: str
    driver: str
    settings: DriverConfig
    debounce_ms: int = 0  # off: every scan makes its movement (DESIGN section 4)
    max_length: int = 512
    mode: Mode | None = None  # overrides the dock's default mode for this scanner
    location: str | None = None  # overrides the dock's default location


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
    undo_max_age = t.number("undo_max_age", d.undo_max_age, lo=0.0)
    t.finish()
    return GrammarConfig(**prefixes, sku_patterns=tuple(pats), max_qty=max_qty,
                         max_length=max_length, undo_max_age=undo_max_age)


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
        warning_recheck=t.number("warning_recheck", 60.0, lo=1.0),
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


_SCANNER_KEYS = ("name", "driver", "debounce_ms", "max_length", "mode", "location")


def _scanner(t: TomlTable, grammar: GrammarConfig) -> ScannerConfig:
    name = t.text("name", REQUIRED)
    if len(name) > 64 or not name.isprintable():
        raise t.error("name", "must be printable text of at most 64 characters")
    driver = t.choice("driver", tuple(DRIVERS), REQUIRED)
    debounce_ms = t.integer("debounce_ms", 0, lo=0, hi=60000)
    max_length = t.integer("max_length", grammar.max_length, lo=8, hi=1 << 20)
    mode = t.choice("mode", MODES, None)
    location = t.text("location", None)
    # The rest of the table is the driver's: it parses and checks its own keys.
    own = {k: v for k, v in t.data.items() if k not in _SCANNER_KEYS}
    try:
        settings = parse_scanner_config(driver, own, name=name, max_length=max_length)
    except DriverConfigError as exc:
        raise t.error(exc.key, exc.problem) from None
    t.used.update(own)
    t.finish()
    return ScannerConfig(name=name, driver=driver, settings=settings, debounce_ms=debounce_ms,
                         max_length=max_length, mode=mode, location=location)
