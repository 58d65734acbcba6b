"""Dock configuration (DESIGN section 3): the documented file loads, every mistake gets one
message that names the file, the key and the problem."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from agent.config import (
    Config,
    GrammarConfig,
    LedgerConfig,
    load_config,
)
from agent.errors import AgentError, ConfigError
from drivers.serial import SerialScannerConfig
from drivers.tcp import TcpScannerConfig

# DESIGN section 3, verbatim: these keys must work exactly as written.
DESIGN_EXAMPLE = """\
station = "dock-3"                 # unique id of this station
site = "WH1"                       # warehouse / business unit
mode = "receipt"                   # default mode: receipt | pick | move | count
location = "DOCK-3"                # default location (receipts land here until a LOC- scan)
database = "/var/lib/scan-agent/dock-3/journal.db"

[ledger]
url = "http://127.0.0.1:8080"      # base URL of the central ledger
token_file = "/etc/scan-agent/dock-3.token"   # $CREDENTIALS_DIRECTORY/ledger-token is used when set

[[scanners]]
name = "handheld"
driver = "serial"                  # serial | evdev | tcp
port = "/dev/ttyACM0"              # serial: device path or a pyserial URL (socket://, rfc2217://)
baudrate = 9600
"""


def write(tmp_path: Path, text: str, name: str = "dock-3.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_design_example_loads_as_documented(tmp_path: Path) -> None:
    """The example in DESIGN section 3 is a contract: it must load with exactly its values."""
    cfg = load_config(write(tmp_path, DESIGN_EXAMPLE))
    assert cfg.station == "dock-3"
    assert cfg.site == "WH1"
    assert cfg.mode == "receipt"
    assert cfg.location == "DOCK-3"
    assert cfg.database == "/var/lib/scan-agent/dock-3/journal.db"
    assert cfg.ledger == LedgerConfig(url="http://127.0.0.1:8080",
                                      token_file="/etc/scan-agent/dock-3.token")
    (scanner,) = cfg.scanners
    assert isinstance(scanner.settings, SerialScannerConfig)
    assert (scanner.name, scanner.driver, scanner.settings.port, scanner.settings.baudrate) == (
        "handheld", "serial", "/dev/ttyACM0", 9600)
    assert scanner.settings.ack is None and scanner.settings.nak is None
    # "Every item scan makes exactly one movement" (DESIGN section 4): no debounce unless set
    assert scanner.debounce_ms == 0
    assert cfg.scanner("handheld") is scanner


def test_full_dock_config_with_every_section(tmp_path: Path) -> None:
    """A dock using grammar, serial ack/nak, a TCP reader and operator badges loads into
    frozen typed objects."""
    text = "require_operator = true\nretention_days = 7\n" + DESIGN_EXAMPLE + """
[grammar]
location_prefix = "BIN-"
sku_patterns = ["SKU-(?P<sku>[A-Z0-9]{4,})"]
max_qty = 500

[[scanners]]
name = "fixed-1"
driver = "tcp"
host = "10.0.0.7"
port = 23
debounce_ms = 0
mode = "count"
location = "CC-1"

[[scanners]]
name = "ackable"
driver = "serial"
port = "socket://127.0.0.1:4001"
ack = "\\u0006"
nak = "NAK"
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.require_operator is True
    assert cfg.retention_days == 7.0
    assert cfg.grammar == GrammarConfig(location_prefix="BIN-",
                                        sku_patterns=("SKU-(?P<sku>[A-Z0-9]{4,})",), max_qty=500)
    tcp = cfg.scanner("fixed-1")
    assert isinstance(tcp.settings, TcpScannerConfig)
    assert (tcp.settings.host, tcp.settings.port, tcp.debounce_ms, tcp.mode, tcp.location) == (
        "10.0.0.7", 23, 0, "count", "CC-1")
    ackable = cfg.scanner("ackable").settings
    assert isinstance(ackable, SerialScannerConfig)
    assert (ackable.ack, ackable.nak) == ("\x06", "\x15")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.station = "dock-4"  # type: ignore[misc]


def test_minimal_config_takes_documented_defaults(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    cfg = load_config(write(tmp_path, 'station = "dock-3"\nsite = "WH1"\n'))
    assert cfg == Config(path=cfg.path, station="dock-3", site="WH1",
                         database="/var/lib/scan-agent/dock-3/journal.db")
    assert cfg.mode == "receipt" and cfg.location is None and cfg.ledger is None
    assert cfg.scanners == ()


def test_database_defaults_to_systemd_state_directory(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's StateDirectory= exports STATE_DIRECTORY; the journal belongs there."""
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/scan-agent/dock-3")
    cfg = load_config(write(tmp_path, 'station = "dock-3"\nsite = "WH1"\n'))
    assert cfg.database == "/var/lib/scan-agent/dock-3/journal.db"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    cfg = load_config(write(tmp_path, 'station = "dock-3"\nsite = "WH1"\n'))
    assert cfg.database == str(tmp_path / "state" / "journal.db")


def test_relative_paths_resolve_against_the_config_files_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative database path must not depend on the directory the agent was started in."""
    confdir = tmp_path / "etc"
    confdir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(confdir, 'station = "dock-3"\nsite = "WH1"\ndatabase = "data/journal.db"\n'
                 '[ledger]\nurl = "https://ledger.example"\ntoken_file = "dock-3.token"\n')
    cfg = load_config(path)
    assert cfg.database == str(confdir / "data" / "journal.db")
    assert cfg.ledger is not None
    assert cfg.ledger.token_file == str(confdir / "dock-3.token")


def test_absolute_database_path_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    cfg = load_config(write(tmp_path, f'station = "d"\nsite = "s"\ndatabase = "{db}"\n'))
    assert cfg.database == str(db)


SERIAL = '[[scanners]]\nname = "handheld"\ndriver = "serial"\nport = "/dev/ttyACM0"\n'
HEAD = 'station = "dock-3"\nsite = "WH1"\n'
WEDGE = '[[scanners]]\nname = "wedge"\ndriver = "evdev"\ndevice = "/dev/input/event3"\n'

BAD_CONFIGS = [
    pytest.param('site = "WH1"\n', "station: required key is missing", id="missing-station"),
    pytest.param('station = "dock-3"\n', "site: required key is missing", id="missing-site"),
    pytest.param('station = 3\nsite = "WH1"\n', "station: expected a string, got a number (3)",
                 id="station-not-a-string"),
    pytest.param('station = ""\nsite = "WH1"\n', "station: must not be empty",
                 id="station-empty"),
    pytest.param('station = "dock 3"\nsite = "WH1"\n',
                 "station: 'dock 3' is not a valid id (letters, digits, '.', '_', '-'; at most 64)",
                 id="station-not-an-id"),
    pytest.param(HEAD + "require_operator = \"yes\"\n",
                 "require_operator: expected true or false, got a string ('yes')",
                 id="require-operator-not-bool"),
    pytest.param(HEAD + "retention_days = true\n",
                 "retention_days: expected a number, got a boolean",
                 id="retention-days-bool-is-not-a-number"),
    pytest.param(HEAD + "retention_days = -1\n", "retention_days: must be at least 0.0, got -1",
                 id="retention-days-negative"),
    pytest.param(HEAD + 'mode = "putaway"\n',
                 "mode: must be one of receipt, pick, move, count; got 'putaway'", id="bad-mode"),
    pytest.param(HEAD + 'location = ""\n', "location: must not be empty", id="empty-location"),
    pytest.param(HEAD + 'staion = "dock-3"\n', "staion: unknown key (did you mean 'station'?)",
                 id="unknown-top-level-key-did-you-mean"),
    pytest.param(HEAD + "colour = 3\n", "colour: unknown key", id="unknown-top-level-key"),
    pytest.param(HEAD + '[ledger]\nurl = "http://h"\ntoken_fle = "t"\n',
                 "ledger.token_fle: unknown key (did you mean 'token_file'?)",
                 id="unknown-key-in-ledger"),
    pytest.param(HEAD + 'ledger = "http://h"\n', "ledger: expected a table, got a string "
                 "('http://h')", id="ledger-not-a-table"),
    pytest.param(HEAD + '[ledger]\ntoken_file = "t"\n', "ledger.url: required key is missing",
                 id="ledger-without-url"),
    pytest.param(HEAD + '[ledger]\nurl = "ftp://ledger"\n',
                 "ledger.url: expected an http:// or https:// URL, got 'ftp://ledger'",
                 id="bad-url-scheme"),
    pytest.param(HEAD + '[ledger]\nurl = "127.0.0.1:8080"\n',
                 "ledger.url: expected an http:// or https:// URL, got '127.0.0.1:8080'",
                 id="url-without-scheme"),
    pytest.param(HEAD + '[ledger]\nurl = "http://h"\nbatch_size = "many"\n',
                 "ledger.batch_size: expected an integer, got a string ('many')",
                 id="ledger-batch-size-not-int"),
    pytest.param(HEAD + '[grammar]\nsku_patterns = ["SKU-(["]\n',
                 "grammar.sku_patterns[0]: invalid regular expression: "
                 "unterminated character set at position 5", id="bad-sku-regex"),
    pytest.param(HEAD + '[grammar]\nsku_patterns = "SKU-.*"\n',
                 "grammar.sku_patterns: expected an array of regular expressions (strings)",
                 id="sku-patterns-not-an-array"),
    pytest.param(HEAD + "[grammar]\nmax_qty = 0\n", "grammar.max_qty: must be at least 1, got 0",
                 id="max-qty-zero"),
    pytest.param(HEAD + '[grammar]\nqty_prefx = "Q-"\n',
                 "grammar.qty_prefx: unknown key (did you mean 'qty_prefix'?)",
                 id="unknown-key-in-grammar"),
    pytest.param(HEAD + '[scanners]\nname = "handheld"\n',
                 "scanners: expected an array of tables ([[scanners]])",
                 id="scanners-not-an-array"),
    pytest.param(HEAD + "scanners = [1]\n", "scanners[0]: expected a table, got a number (1)",
                 id="scanner-not-a-table"),
    pytest.param(HEAD + '[[scanners]]\ndriver = "serial"\nport = "/dev/ttyACM0"\n',
                 "scanners[0].name: required key is missing", id="scanner-without-name"),
    pytest.param(HEAD + '[[scanners]]\nname = "handheld"\n',
                 "scanners[0].driver: required key is missing", id="scanner-without-driver"),
    pytest.param(HEAD + '[[scanners]]\nname = "handheld"\ndriver = "usb"\n',
                 "scanners[0].driver: must be one of serial, evdev, tcp; got 'usb'",
                 id="bad-driver"),
    pytest.param(HEAD + SERIAL + "baud = 9600\n",
                 "scanners[0].baud: unknown key (did you mean 'baudrate'?)",
                 id="unknown-key-in-scanner"),
    pytest.param(HEAD + SERIAL + 'baudrate = "fast"\n',
                 "scanners[0].baudrate: expected an integer, got a string ('fast')",
                 id="baudrate-not-int"),
    pytest.param(HEAD + SERIAL + "baudrate = 9600.5\n",
                 "scanners[0].baudrate: expected an integer, got a number (9600.5)",
                 id="baudrate-float"),
    pytest.param(HEAD + SERIAL + "debounce_ms = -1\n",
                 "scanners[0].debounce_ms: must be at least 0, got -1", id="debounce-negative"),
    pytest.param(HEAD + SERIAL + 'mode = "putaway"\n',
                 "scanners[0].mode: must be one of receipt, pick, move, count; got 'putaway'",
                 id="bad-scanner-mode"),
    pytest.param(HEAD + SERIAL + 'parity = "X"\n',
                 "scanners[0].parity: must be one of N, E, O, M, S; got 'X'", id="bad-parity"),
    pytest.param(HEAD + SERIAL + 'terminator = "ETX"\n',
                 "scanners[0].terminator: must be auto, CR, LF, CRLF or a single character, "
                 "got 'ETX'", id="bad-terminator"),
    pytest.param(HEAD + SERIAL + "stopbits = 3\n", "scanners[0].stopbits: must be 1, 1.5 or 2",
                 id="bad-stopbits"),
    pytest.param(HEAD + SERIAL + 'encoding = "klingon"\n',
                 "scanners[0].encoding: unknown text encoding 'klingon'", id="bad-encoding"),
    pytest.param(HEAD + '[[scanners]]\nname = "handheld"\ndriver = "serial"\n',
                 "scanners[0].port: required key is missing", id="serial-without-port"),
    pytest.param(HEAD + SERIAL + '[[scanners]]\nname = "handheld"\ndriver = "tcp"\n'
                 'host = "10.0.0.7"\nport = 23\n',
                 "scanners[1].name: duplicate scanner name 'handheld'",
                 id="duplicate-scanner-name"),
    pytest.param(HEAD + '[[scanners]]\nname = "fixed"\ndriver = "tcp"\nport = 23\n',
                 "scanners[0].host: required key is missing", id="tcp-without-host"),
    pytest.param(HEAD + '[[scanners]]\nname = "fixed"\ndriver = "tcp"\nhost = "h"\n'
                 "port = 70000\n", "scanners[0].port: must be at most 65535, got 70000",
                 id="tcp-port-too-high"),
    pytest.param(HEAD + '[[scanners]]\nname = "fixed"\ndriver = "tcp"\nhost = "h"\nport = 0\n',
                 "scanners[0].port: must be at least 1, got 0", id="tcp-port-zero"),
    pytest.param(HEAD + '[[scanners]]\nname = "fixed"\ndriver = "tcp"\nhost = "h"\n'
                 'port = "23"\n', "scanners[0].port: expected an integer, got a string ('23')",
                 id="tcp-port-as-string"),
    pytest.param(HEAD + '[[scanners]]\nname = "fixed"\ndriver = "tcp"\nhost = "h"\nport = 23\n'
                 'framing = "xml"\n',
                 "scanners[0].framing: must be one of line, stx-etx; got 'xml'", id="bad-framing"),
    pytest.param(HEAD + WEDGE + 'layout = "bx"\n',
                 "scanners[0].layout: unknown keyboard layout 'bx' (no layout 'bx' in the XKB "
                 "data at /usr/share/X11/xkb); did you mean 'ba', 'bd', 'be', 'bg', 'br'? "
                 "(`scan-agent find-layout` finds the scanner's)", id="unknown-layout"),
    pytest.param(HEAD + WEDGE + 'layout = "ch(fx)"\n',
                 "scanners[0].layout: unknown keyboard layout 'ch(fx)' (no variant 'fx' of "
                 "layout 'ch' in the XKB data at /usr/share/X11/xkb); did you mean 'ch(fr)', "
                 "'ch(fr_mac)', 'ch', 'ch(de_mac)', 'ch(legacy)'? (`scan-agent find-layout` "
                 "finds the scanner's)", id="unknown-layout-variant"),
    pytest.param(HEAD + WEDGE + 'layot = "de"\n',
                 "scanners[0].layot: unknown key (did you mean 'layout'?)",
                 id="unknown-key-in-wedge"),
    pytest.param(HEAD + WEDGE + 'vendor = "0c2e"\n',
                 "scanners[0].product: vendor and product go together", id="vendor-alone"),
    pytest.param(HEAD + WEDGE + 'vendor = "xyz"\nproduct = "0b61"\n',
                 "scanners[0].vendor: expected a USB id in hex such as \"05e0\", got 'xyz'",
                 id="vendor-not-hex"),
    pytest.param(HEAD + WEDGE + 'terminator = "cr"\n',
                 "scanners[0].terminator: must be one of enter, tab, timeout; got 'cr'",
                 id="wedge-bad-terminator"),
    pytest.param(HEAD + "[metrics]\nlisten = \"9105\"\n",
                 "metrics.listen: expected HOST:PORT with a port from 1 to 65535, got '9105'",
                 id="metrics-listen-no-host"),
    pytest.param(HEAD + "[metrics]\nlisten = \"127.0.0.1:99999\"\n",
                 "metrics.listen: expected HOST:PORT with a port from 1 to 65535, "
                 "got '127.0.0.1:99999'", id="metrics-listen-port-too-big"),
    pytest.param(HEAD + "[ledger]\nurl = \"https://l\"\nca_bundle = \"/nonexistent/ca.pem\"\n",
                 "ledger.ca_bundle: /nonexistent/ca.pem: not found", id="ca-bundle-missing"),
    pytest.param(HEAD + "[feedback]\nbuzzer_pin = 99\n",
                 "feedback.buzzer_pin: must be at most 53, got 99", id="gpio-pin-out-of-range"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_CONFIGS)
def test_bad_config_gets_one_message_naming_file_key_and_problem(
        tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {problem}"
    assert info.value.file == str(path)


def test_config_error_is_a_value_error_and_an_agent_error(tmp_path: Path) -> None:
    """Callers may catch either: ValueError (a bad value) or AgentError (everything ours)."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'station = "d"\n'))
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AgentError)
    assert (info.value.key, info.value.problem) == ("site", "required key is missing")


@pytest.mark.parametrize("text", [
    pytest.param('station = "dock-3"\nsite = \n', id="missing-value"),
    pytest.param('station = "dock-3"\nstation = "dock-4"\n', id="duplicate-key"),
    pytest.param('[[scanners]\nname = "x"\n', id="unclosed-array-of-tables"),
])
def test_invalid_toml_names_file_and_position(tmp_path: Path, text: str) -> None:
    """The parser's own line and column are passed on, so the operator can find the typo."""
    with pytest.raises(tomllib.TOMLDecodeError) as parse_error:
        tomllib.loads(text)
    assert "(at line " in str(parse_error.value)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: invalid TOML: {parse_error.value}"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, expected a TOML file"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "dock.toml"
    path.write_bytes(b'station = "d\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not UTF-8 text (byte 12)"


@pytest.mark.parametrize("layout", ["us", "be", "ch(fr)", "de(nodeadkeys)", " ch( fr ) ", "uk"])
def test_any_xkb_layout_and_variant_is_accepted(tmp_path: Path, layout: str) -> None:
    """DESIGN section 3: any layout the machine's XKB data knows, variant in parentheses."""
    from drivers.evdev import EvdevScannerConfig

    text = DESIGN_EXAMPLE.split("[[scanners]]")[0] + WEDGE + f'layout = "{layout}"\n'
    settings = load_config(write(tmp_path, text)).scanner("wedge").settings
    assert isinstance(settings, EvdevScannerConfig)
    assert settings.layout == {"uk": "gb", " ch( fr ) ": "ch(fr)"}.get(layout, layout)
