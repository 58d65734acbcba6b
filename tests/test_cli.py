"""The command line (DESIGN section 9): check-config, status, events, and --help everywhere.
Through click's runner, and once as the installed console script."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from agent.capture import Station
from agent.cli import main
from agent.config import load_config
from agent.journal import Journal, JournalWriter
from drivers.base import RawScan

SCAN_AGENT = Path(sys.executable).with_name("scan-agent")
EAN = "4006381333931"


def write_config(tmp_path: Path, db: Path | None = None) -> Path:
    path = tmp_path / "dock-3.toml"
    path.write_text(f"""\
station = "dock-3"
site = "WH1"
mode = "receipt"
location = "DOCK-3"
database = "{db or tmp_path / 'journal.db'}"

[ledger]
url = "http://127.0.0.1:8080"
token_file = "{tmp_path / 'dock-3.token'}"

[[scanners]]
name = "handheld"
driver = "serial"
port = "/dev/ttyACM0"

[[scanners]]
name = "fixed"
driver = "tcp"
host = "127.0.0.1"
port = 4001
""", encoding="utf-8")
    token = tmp_path / "dock-3.token"
    token.write_text("st_0123456789abcdef\n")
    token.chmod(0o600)
    return path


async def _shift(config: Path) -> list[str]:
    """A short shift: receipts, a move, rejections; returns the movements' event ids."""
    cfg = load_config(config)
    writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
    station = Station(cfg, writer)
    await station.start()
    ids: list[str] = []
    boot = 10**12
    script = [("handheld", "REF-PO-1"), ("handheld", EAN), ("handheld", "hello"),
              ("handheld", "QTY-5"), ("handheld", "96385074"), ("fixed", "MODE-MOVE"),
              ("fixed", "LOC-A-01"), ("fixed", "LOC-B-02"), ("fixed", EAN), ("fixed", "QTY-2"),
              ("fixed", EAN), ("fixed", "4006381333932")]
    for scanner, text in script:
        boot += 10**9
        out = await station.handle(RawScan(scanner, text, text.encode(), time.time(), boot))
        if out.event_id:
            ids.append(out.event_id)
    # The ledger accepted the first movement and quarantined the second.
    await writer.call(lambda j: j.record_results(
        [(1, "accepted", None, []), (2, "rejected", "unknown item", ["check the item"])],
        time.time()))
    await writer.call(lambda j: j.alert("sync", "ledger unreachable: connection refused"))
    await writer.close()
    return ids


@pytest.fixture
def shift(tmp_path: Path) -> tuple[Path, list[str]]:
    config = write_config(tmp_path)
    return config, asyncio.run(_shift(config))


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- check-config ----------------------------------------------------------------------------


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = invoke("check-config", str(path))
    assert result.exit_code == 0
    assert result.stdout == (f"{path}: OK: station dock-3, site WH1, handheld (serial), "
                             "fixed (tcp)\n")
    assert result.stderr == ""


@pytest.mark.parametrize(("text", "message"), [
    pytest.param('station = "dock-3"\nsite = "WH1"\nstaion = "x"\n',
                 "staion: unknown key (did you mean 'station'?)", id="typo"),
    pytest.param('site = "WH1"\n', "station: required key is missing", id="missing-station"),
    pytest.param('station = "dock-3"\nsite = "WH1"\n[[scanners]]\nname = "h"\ndriver = "serial"\n',
                 "scanners[0].port: required key is missing", id="serial-without-port"),
    pytest.param("station = \n", "invalid TOML: Invalid value (at line 1, column 11)",
                 id="invalid-toml"),
])
def test_check_config_rejects_a_bad_file_with_one_message(tmp_path: Path, text: str,
                                                          message: str) -> None:
    path = tmp_path / "dock-3.toml"
    path.write_text(text, encoding="utf-8")
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"scan-agent: {path}: {message}\n"


@pytest.mark.parametrize(("setup", "problem"), [
    pytest.param(lambda t: t.unlink(), "token file not found", id="token-file-missing"),
    pytest.param(lambda t: t.write_text("\n"), "token file is empty", id="token-file-empty"),
    pytest.param(lambda t: (t.unlink(), t.mkdir()), "is a directory, expected a token file",
                 id="token-file-a-directory"),
])
def test_check_config_fails_on_a_token_file_the_agent_cannot_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Any, problem: str) -> None:
    """check-config passed a dock whose token file was missing or empty; the agent then
    failed every sync. One message names the config file, the key and the token file."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = write_config(tmp_path)
    token = tmp_path / "dock-3.token"
    setup(token)
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"scan-agent: {path}: ledger.token_file: {token}: {problem}\n"


def test_check_config_fails_on_an_unreadable_token_file(tmp_path: Path) -> None:
    """As the user who runs it: as root, the check runs as nobody (root reads any file)."""
    work = Path(tempfile.mkdtemp(prefix="check-config-"))
    try:
        work.chmod(0o755)
        path = write_config(work)
        path.chmod(0o644)
        token = work / "dock-3.token"
        token.chmod(0o000)
        cmd = [str(SCAN_AGENT), "check-config", str(path)]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                              env=env)
    finally:
        shutil.rmtree(work)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"scan-agent: {path}: ledger.token_file: {token}: permission denied: the token file "
        "must be readable by the user running scan-agent (under systemd, pass it as the "
        "credential 'ledger-token')\n")


def test_check_config_fails_on_a_ledger_without_any_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace(f'token_file = "{tmp_path / "dock-3.token"}"\n',
                                             ""))
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"scan-agent: {path}: ledger.token_file: required with [ledger]: the ledger refuses a "
        "station without its token (not set, nor is the systemd credential 'ledger-token' "
        "passed)\n")


def test_check_config_checks_the_credential_when_systemd_passes_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the unit ($CREDENTIALS_DIRECTORY set) the daemon reads the credential, not
    token_file: check-config checks what the daemon will read."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = write_config(tmp_path)
    (creds / "ledger-token").write_text("")
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert result.stderr == (f"scan-agent: {path}: $CREDENTIALS_DIRECTORY/ledger-token: "
                             f"{creds / 'ledger-token'}: token file is empty\n")
    (creds / "ledger-token").write_text("st_0123456789abcdef\n")
    (tmp_path / "dock-3.token").unlink()  # not read when the credential is there
    assert invoke("check-config", str(path)).exit_code == 0


def test_check_config_fails_on_a_dock_without_scanners(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    text = path.read_text()
    path.write_text(text[:text.index("[[scanners]]")])
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"scan-agent: {path}: scanners: no scanners: a dock reads at least one; add a "
        "[[scanners]] table (`scan-agent devices` lists candidates)\n")


@pytest.mark.parametrize(("textfile", "warned"), [
    pytest.param("/tmp/dock-3.prom", True, id="private-tmp-of-the-unit"),
    pytest.param("/var/lib/node_exporter/textfile/dock-3.prom", True, id="read-only-there"),
    pytest.param("/var/lib/scan-agent/metrics/../dock-3.prom", True, id="dot-dot-out"),
    pytest.param("/var/lib/scan-agent/metrics/dock-3.prom", False, id="the-units-path"),
])
def test_check_config_warns_of_a_metrics_path_the_shipped_unit_cannot_write(
        tmp_path: Path, textfile: str, warned: bool) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace(
        "[[scanners]]", f'[metrics]\ntextfile = "{textfile}"\n\n[[scanners]]', 1))
    result = invoke("check-config", str(path))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{path}: OK: station dock-3")
    if warned:
        assert result.stderr == (
            f"scan-agent: warning: {path}: metrics.textfile: {textfile} cannot be written by "
            "the shipped unit scan-agent@.service (only /var/lib/scan-agent/metrics/ is "
            "writable for metrics there); use /var/lib/scan-agent/metrics/dock-3.prom, or add "
            "the path to ReadWritePaths= in a drop-in\n")
    else:
        assert result.stderr == ""


def test_the_metrics_path_check_follows_the_shipped_unit() -> None:
    """check-config's idea of the writable metrics directory is the unit's ReadWritePaths."""
    from agent.preflight import UNIT_METRICS_DIR

    unit = (Path(__file__).parent.parent / "systemd" / "scan-agent@.service").read_text()
    writable = [line.split("=", 1)[1].lstrip("-") for line in unit.splitlines()
                if line.startswith("ReadWritePaths=")]
    assert writable == [UNIT_METRICS_DIR]


def test_check_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    result = invoke("check-config", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"scan-agent: {path}: file not found\n"


@pytest.mark.parametrize(("valid", "code"), [pytest.param(True, 0, id="valid"),
                                             pytest.param(False, 2, id="bad")])
def test_installed_console_script_check_config(tmp_path: Path, valid: bool, code: int) -> None:
    """The console script systemd and operators run, as a real process."""
    path = write_config(tmp_path)
    if not valid:
        path.write_text(path.read_text().replace('port = "/dev/ttyACM0"',
                                                 'port = "/dev/ttyACM0"\nbaudrate = "fast"'))
    proc = subprocess.run([str(SCAN_AGENT), "check-config", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == code
    if valid:
        assert proc.stdout.startswith(f"{path}: OK: station dock-3")
        assert proc.stderr == ""
    else:
        assert proc.stdout == ""
        assert proc.stderr == (f"scan-agent: {path}: scanners[0].baudrate: expected an integer,"
                               " got a string ('fast')\n")


# -- status ----------------------------------------------------------------------------------


def test_status_json_reports_queue_scanners_and_recent_errors(
        shift: tuple[Path, list[str]]) -> None:
    """Regression: next_seq was read from a meta row only prune writes, so status said 1 on
    a journal holding four movements."""
    config, ids = shift
    result = invoke("status", "--config", str(config), "--json")
    assert result.exit_code == 3, "the agent is not running"
    s = json.loads(result.stdout)
    assert (s["station"], s["site"], s["ledger"]) == ("dock-3", "WH1", "http://127.0.0.1:8080")
    assert len(ids) == 4
    assert s["queue"]["pending"] == 2
    assert s["queue"]["rejected"] == 1
    assert s["queue"]["synced"] == 1
    assert s["queue"]["next_seq"] == 5
    assert s["queue"]["oldest_pending_age_s"] is not None
    rejected = [(r["scanner"], r["text"], r["reason"]) for r in s["recent_rejections"]]
    assert rejected == [
        ("fixed", "4006381333932", "invalid GTIN check digit in 4006381333932: expected 1, got 2"),
        ("handheld", "hello", "unknown barcode 'hello'"),
    ], "newest first"
    assert [e["message"] for e in s["recent_errors"]] == ["ledger unreachable: connection refused"]
    assert s["ledger_warnings"] == [{"seq": 2, "warnings": ["check the item"],
                                     "checked": False, "incidents": []}]
    assert s["ledger_asked"] == {"basis": "journal", "at": None, "age_s": None,
                                 "error": None, "error_at": None}, "the ledger never asked"
    by_name = {sc["name"]: sc for sc in s["scanners"]}
    assert (by_name["handheld"]["mode"], by_name["handheld"]["to_location"],
            by_name["handheld"]["reference"]) == ("receipt", "DOCK-3", "PO-1")
    assert (by_name["fixed"]["mode"], by_name["fixed"]["from_location"],
            by_name["fixed"]["to_location"]) == ("move", "A-01", "B-02")
    assert by_name["fixed"]["last_scan"]["outcome"] == "rejected"
    assert by_name["handheld"]["last_scan"]["text"] == "96385074"


def test_status_text(shift: tuple[Path, list[str]]) -> None:
    config, _ = shift
    result = invoke("status", "--config", str(config))
    assert result.exit_code == 3, result.stderr
    out = result.stdout
    assert out.startswith("station dock-3 (site WH1)")
    assert "queue:  2 pending, 1 rejected (quarantined), 1 synced" in out
    assert "mode=move from=A-01 to=B-02" in out
    assert "recent rejected scans:" in out
    assert "handheld: 'hello': unknown barcode 'hello'" in out
    assert "sync: ledger unreachable: connection refused" in out
    assert ("ledger warnings, as the ledger answered each movement (less what this station"
            " undid or recounted since):\n  (the ledger not asked yet which still hold)\n"
            "  seq 2: check the item") in out


def test_status_before_the_first_run_says_so_and_creates_nothing(tmp_path: Path) -> None:
    """A dock configured but never started is a normal state to look at, not an error:
    the configured scanners, an empty queue, and why there is nothing more."""
    db = tmp_path / "never" / "journal.db"
    config = write_config(tmp_path, db)
    result = invoke("status", "--config", str(config))
    assert result.exit_code == 3, "not running, as `systemctl is-active` says"
    assert result.stdout.startswith("station dock-3 (site WH1)   agent NOT RUNNING\n"
                                    f"journal {db} (not created yet: the agent has not run "
                                    "with this config)\n")
    assert "queue:  0 pending, 0 rejected (quarantined), 0 synced" in result.stdout
    as_json = invoke("status", "--config", str(config), "--json")
    assert as_json.exit_code == 3, as_json.stderr
    s = json.loads(as_json.stdout)
    assert (s["running"], s["queue"]["pending"], s["sync"]["last_ok"]) == (False, 0, None)
    assert {sc["detail"] for sc in s["scanners"]} == {"agent has not run yet"}
    events = invoke("events", "--config", str(config), "--json")
    assert (events.exit_code, json.loads(events.stdout)) == (0, [])
    assert not db.exists() and not db.parent.exists()


def test_status_with_a_bad_config_is_the_config_message(tmp_path: Path) -> None:
    path = tmp_path / "dock.toml"
    path.write_text('station = "d"\n')
    result = invoke("status", "--config", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"scan-agent: {path}: site: required key is missing\n"


# -- events ----------------------------------------------------------------------------------


def test_events_json_newest_first(shift: tuple[Path, list[str]]) -> None:
    config, ids = shift
    result = invoke("events", "--config", str(config), "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["seq"] for r in rows] == [4, 3, 2, 1]
    assert [r["event_id"] for r in rows] == ids[::-1]
    assert [(r["type"], r["qty"], r["state"]) for r in rows] == [
        ("move", 2, "pending"), ("move", 1, "pending"), ("receipt", 5, "rejected"),
        ("receipt", 1, "synced")]
    assert rows[0]["raw"] == ["QTY-2", EAN]
    assert rows[1]["raw"] == ["LOC-A-01", "LOC-B-02", EAN]
    assert (rows[0]["from_location"], rows[0]["to_location"]) == ("A-01", "B-02")
    assert rows[2]["warnings"] == ["check the item"]
    assert rows[3]["warnings"] == []


def test_events_pending_only(shift: tuple[Path, list[str]]) -> None:
    config, ids = shift
    result = invoke("events", "--config", str(config), "--json", "--pending")
    assert result.exit_code == 0, result.stderr
    assert [r["event_id"] for r in json.loads(result.stdout)] == [ids[3], ids[2]]


def test_events_limit(shift: tuple[Path, list[str]]) -> None:
    config, _ = shift
    result = invoke("events", "--config", str(config), "--json", "-n", "1")
    assert [r["seq"] for r in json.loads(result.stdout)] == [4]


def test_events_lists_the_whole_journal_unless_limited(tmp_path: Path) -> None:
    """DESIGN section 9: `events` is the journal, newest first; it stopped at 50."""
    config = write_config(tmp_path)

    async def scans() -> None:
        cfg = load_config(config)
        writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
        station = Station(cfg, writer)
        await station.start()
        for i in range(120):
            await station.handle(RawScan("handheld", EAN, EAN.encode(), time.time(),
                                         10**12 + i * 10**9))
        await writer.close()

    asyncio.run(scans())
    rows = json.loads(invoke("events", "--config", str(config), "--json").stdout)
    assert [r["seq"] for r in rows] == list(range(120, 0, -1))
    rows = json.loads(invoke("events", "--config", str(config), "--json", "--limit", "7").stdout)
    assert [r["seq"] for r in rows] == list(range(120, 113, -1))


def test_events_text_newest_first(shift: tuple[Path, list[str]]) -> None:
    config, _ = shift
    result = invoke("events", "--config", str(config))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["seq", "time", "(local)", "type"]
    assert [int(line.split()[0]) for line in lines[1:]] == [4, 3, 2, 1]
    assert "rejected" in lines[3] and "unknown item" in lines[3]


def test_events_on_an_empty_journal(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cfg = load_config(config)
    Journal(cfg.database, cfg.station, cfg.site).close()
    assert invoke("events", "--config", str(config)).stdout == "(no movements)\n"
    assert json.loads(invoke("events", "--config", str(config), "--json").stdout) == []


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: main {command}")
    doc = main.commands[command].help
    assert doc, f"{command} has no help text"
    assert " ".join(doc.split()) in " ".join(result.stdout.split())


def test_top_level_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "check-config", "status", "events", "devices", "demo"):
        assert f"  {command}" in result.stdout


def _run_briefly(tmp_path: Path, stream: str | None) -> list[str]:
    """`scan-agent run` for two seconds with standard error to a file; its lines. ``stream``
    is the JOURNAL_STREAM to set: "self" for the file itself (as systemd sets it)."""
    cfg = tmp_path / "dock.toml"
    cfg.write_text(f'station = "d1"\nsite = "WH1"\ndatabase = "{tmp_path / "j.db"}"\n'
                   '[[scanners]]\nname = "h"\ndriver = "tcp"\nhost = "127.0.0.1"\nport = 9\n')
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    with open(tmp_path / "stderr", "w+") as err:
        st = os.fstat(err.fileno())
        if stream is not None:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}" if stream == "self" else stream
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                 str(cfg)], env=env, stderr=err, text=True)
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        err.seek(0)
        return err.read().splitlines()


def test_log_lines_carry_journal_priorities_and_no_time_under_systemd(tmp_path: Path) -> None:
    """Under systemd (JOURNAL_STREAM names standard error) warnings are tagged <4> so
    journalctl -p works, and no line carries a second timestamp beside the journal's."""
    lines = _run_briefly(tmp_path, "self")
    assert any(line.startswith("<6>INFO scan_agent: station d1") for line in lines), lines
    assert any(line.startswith("<4>WARNING") and "cannot connect" in line for line in lines)


@pytest.mark.parametrize("stream", [None, "8:12345"], ids=["foreground", "inherited-elsewhere"])
def test_log_lines_carry_the_time_outside_the_journal(tmp_path: Path,
                                                      stream: str | None) -> None:
    """In the foreground (or with a JOURNAL_STREAM inherited from a service but standard
    error sent elsewhere) the lines had no time at all."""
    lines = _run_briefly(tmp_path, stream)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
    assert any(re.match(stamp + "INFO scan_agent: station d1", line) for line in lines), lines
    assert all(re.match(stamp + r"[A-Z]+ ", line) for line in lines if line.strip()), lines


def test_new_journal_carries_on_from_the_given_seq(tmp_path: Path) -> None:
    """A replacement journal must not reuse the station's seqs from 1."""
    from click.testing import CliRunner

    from agent.cli import main
    from agent.journal import Journal

    cfg = tmp_path / "dock.toml"
    cfg.write_text(f'station = "d1"\nsite = "WH1"\ndatabase = "{tmp_path / "j.db"}"\n')
    r = CliRunner().invoke(main, ["new-journal", "--config", str(cfg), "--first-seq", "4712"])
    assert r.exit_code == 0, r.output
    j = Journal(tmp_path / "j.db", "d1", "WH1")
    assert j._next_seq == 4712
    j.close()
    again = CliRunner().invoke(main, ["new-journal", "--config", str(cfg), "--first-seq", "9"])
    assert again.exit_code == 1
    assert "a journal is already there; move it aside first" in again.output


_WITHOUT_XKB = """
import sys
class NoXkb:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "xkbcommon":
            raise ImportError("No module named 'xkbcommon'")
sys.meta_path.insert(0, NoXkb())
from agent.cli import main
sys.argv = ["scan-agent", *sys.argv[1:]]
main()
"""


def test_a_wedge_dock_without_the_wedge_extra_is_told_what_to_install(tmp_path: Path) -> None:
    """The xkbcommon binding is an extra (it builds from source): a dock with a keyboard-wedge
    scanner on a machine without it fails check-config with one message naming the key and the
    extra, and the layout finder says the same, instead of a traceback. The calibration
    barcode needs only python-barcode: it prints anywhere."""
    token = tmp_path / "dock.token"
    token.write_text("secret\n")
    token.chmod(0o600)
    cfg = tmp_path / "dock.toml"
    cfg.write_text(
        'station = "d1"\nsite = "WH1"\nlocation = "DOCK"\n'
        f'database = "{tmp_path / "j.db"}"\n'
        f'[ledger]\nurl = "http://127.0.0.1:1"\ntoken_file = "{token}"\n'
        '[[scanners]]\nname = "wedge"\ndriver = "evdev"\nlayout = "be"\n')
    run = [sys.executable, "-c", _WITHOUT_XKB]
    checked = subprocess.run([*run, "check-config", str(cfg)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 2
    assert "scanners[0].driver: 'evdev' cannot run here" in checked.stderr
    assert "scan-agent[wedge]" in checked.stderr
    assert "Traceback" not in checked.stderr
    found = subprocess.run([*run, "find-layout", "--recording", str(tmp_path / "x.rec")],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 1
    assert "scan-agent[wedge]" in found.stderr
    assert "Traceback" not in found.stderr
    barcode = subprocess.run([*run, "calibration-barcode", "-o", str(tmp_path / "c.svg")],
                             capture_output=True, text=True, timeout=60)
    assert barcode.returncode == 0, barcode.stderr
    assert (tmp_path / "c.svg").read_bytes().startswith(b"<?xml")
