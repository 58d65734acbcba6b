"""``scan-ledger`` as a user runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.cli import cli, main
from tests.ledger.factory import batch, pick

LEDGER = [sys.executable, "-m", "ledger"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LEDGER, *args], capture_output=True, text=True, timeout=60)


def _stored_text(db: str | Path) -> str:
    """Everything the database holds about stations, as text."""
    if isinstance(db, Path):
        return db.read_bytes().decode("latin-1")
    import psycopg

    with psycopg.connect(db) as conn:
        return repr(conn.execute("SELECT * FROM stations").fetchall())


def test_station_add_prints_the_token_alone_on_the_last_line_and_stores_a_hash(
        ledger_db: str | Path) -> None:
    db = ledger_db
    out = run("station", "add", "dock-3", "--site", "WH1", "--db", str(db))
    assert out.returncode == 0, out.stderr
    token = out.stdout.splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert "dock-3" in _stored_text(db) and token not in _stored_text(db)
    again = run("station", "add", "dock-3", "--site", "WH1", "--db", str(db))
    assert again.returncode == 1
    assert again.stderr.strip() == ("scan-ledger: station 'dock-3' already exists; revoke it "
                                    "first to issue a new token")
    listed = run("station", "list", "--db", str(db))
    assert "dock-3" in listed.stdout and "active" in listed.stdout
    assert run("station", "revoke", "dock-3", "--db", str(db)).returncode == 0
    assert run("station", "revoke", "dock-3", "--db", str(db)).stderr.strip() == (
        "scan-ledger: no active station named 'dock-3'")


@pytest.mark.parametrize("command", [["station", "list"], ["station", "list", "--json"],
                                     ["station", "revoke", "dock-3"]],
                         ids=["list", "list-json", "revoke"])
def test_commands_on_an_existing_ledger_never_create_one(tmp_path: Path,
                                                         command: list[str]) -> None:
    """``station list --db <typo>`` created an empty database and said "no stations": a
    path that holds no ledger is an error naming it, and nothing is created."""
    typo = tmp_path / "ledgr.db"
    out = run(*command, "--db", str(typo))
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.strip() == (
        f"scan-ledger: {typo}: no ledger database there (nothing was created; 'scan-ledger "
        "serve' or 'scan-ledger station add' makes one)")
    assert list(tmp_path.iterdir()) == [], "no file, no -wal, no -shm"


def test_commands_on_an_empty_postgresql_database_never_create_a_ledger(
        pg_cluster: Any) -> None:
    """The same for a ``postgresql://`` URL: an error naming the database, no table made."""
    import psycopg

    url = pg_cluster.create_database()
    for command in (["station", "list"], ["station", "revoke", "dock-3"]):
        out = run(*command, "--db", url)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.strip() == (
            f"scan-ledger: {url}: no ledger database there (nothing was created; "
            "'scan-ledger serve' or 'scan-ledger station add' makes one)")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone() == (0,)


def test_station_list_on_a_file_that_is_no_ledger_says_so(tmp_path: Path) -> None:
    other = tmp_path / "journal.db"
    other.write_bytes(b"")
    out = run("station", "list", "--db", str(other))
    assert out.returncode == 1
    assert out.stderr.strip() == (f"scan-ledger: {other}: not a ledger database (it has no "
                                  "stations table)")
    assert other.read_bytes() == b""


def test_serve_on_port_0_prints_one_parseable_line_and_stops_on_sigterm(
        ledger_db: str | Path) -> None:
    db = ledger_db
    token = run("station", "add", "dock-1", "--site", "WH1", "--db", str(db)).stdout.split()[-1]
    proc = subprocess.Popen([*LEDGER, "serve", "--db", str(db), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"scan-ledger listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert m, line
        r = httpx.post(m.group(1) + "/v1/events", json=batch([pick(1, "A", 1)]),
                       headers={"Authorization": f"Bearer {token}"})
        assert r.json()["results"][0]["warnings"] == ["negative balance at A: -1 (class item)"]
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert rest == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_tells_systemd_when_it_listens_and_when_it_stops(tmp_path: Path) -> None:
    """Under Type=notify (systemd/scan-ledger.service) `systemctl start` returns once the
    ledger really listens: READY=1 comes after the socket is bound and the log replayed."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.settimeout(20)
        proc = subprocess.Popen([*LEDGER, "serve", "--db", str(tmp_path / "l.db"), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "NOTIFY_SOCKET": path})
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            ready = systemd.recv(4096).decode().splitlines()
            assert ready == ["READY=1", f"STATUS=listening on {url}"]
            assert httpx.get(url + "/v1/health").status_code == 200
            proc.send_signal(signal.SIGTERM)
            stopping = systemd.recv(4096).decode().splitlines()
            assert stopping[0] == "STOPPING=1"
            proc.communicate(timeout=20)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_serve_with_a_bad_config_names_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text("[sites.WH1]\nallow_negative = 1\n")
    out = run("serve", "--db", str(tmp_path / "l.db"), "--port", "0", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"scan-ledger: {cfg}: sites.WH1.allow_negative: expected "
                                  "true or false, got a number (1)")
    assert out.stdout == ""


def test_station_names_are_checked(tmp_path: Path) -> None:
    assert main(["station", "add", "bad name", "--site", "WH1", "--db",
                 str(tmp_path / "l.db")]) == 2


@pytest.mark.parametrize("path", [["serve"], ["station", "add"], ["station", "list"],
                                  ["station", "revoke"], ["check-config"]],
                         ids=lambda p: "-".join(p))
def test_every_command_has_help(path: list[str]) -> None:
    group = cli
    for name in path:
        group = group.commands[name]  # type: ignore[attr-defined]
    assert group.help


def test_the_database_url_may_come_from_the_environment_and_never_shows_a_password(
        ledger_db: str | Path) -> None:
    """SCAN_LEDGER_DB stands for --db (a unit's EnvironmentFile keeps the URL off the command
    line); a PostgreSQL that refuses the connection is named without the URL's password."""
    env = {**os.environ, "SCAN_LEDGER_DB": str(ledger_db)}
    out = subprocess.run([*LEDGER, "station", "add", "dock-9", "--site", "WH1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    listed = subprocess.run([*LEDGER, "station", "list", "--json"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert '"dock-9"' in listed.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = run("station", "list", "--db", f"postgresql://ledger:s3cret@127.0.0.1:{port}/x")
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"scan-ledger: postgresql://ledger:***@127.0.0.1:{port}/x: "
                                 "cannot connect to the ledger database: "), bad.stderr
    assert "s3cret" not in bad.stderr


def test_events_and_negatives_read_every_page(ledger: Any) -> None:
    """`scan-ledger events` and `negatives` follow the `next` cursor to the last page: with a
    page of 2, all five events and all three incidents come out, in the API's order."""
    from click.testing import CliRunner

    from tests.ledger.factory import receipt

    dock = ledger.dock()
    evs = [pick(1, "A-01", 1), pick(1, "A-02", 2), receipt(4, "A-03", 3), pick(1, "A-04", 4),
           receipt(1, "A-05", 5)]
    dock.post(*evs, watermark=None)
    url = ledger.server.url
    out = CliRunner().invoke(cli, ["events", "--url", url, "--page-size", "2"])
    assert out.exit_code == 0, out.output
    got = [json.loads(line)["event_id"] for line in out.output.splitlines()]
    assert got == [e["event_id"] for e in reversed(evs)]
    out = CliRunner().invoke(cli, ["negatives", "--url", url, "--page-size", "2",
                                   "--status", "open"])
    assert out.exit_code == 0, out.output
    ids = [json.loads(line)["depletion_event_id"] for line in out.output.splitlines()]
    assert ids == [evs[0]["event_id"], evs[1]["event_id"], evs[3]["event_id"]]


def test_events_names_the_ledger_it_cannot_reach() -> None:
    out = run("events", "--url", "http://127.0.0.1:9")
    assert out.returncode == 1
    assert out.stderr.startswith("scan-ledger: http://127.0.0.1:9/v1/events: ")


def test_serve_leaves_the_time_to_the_journal(tmp_path: Path) -> None:
    """Under systemd, journald stamps every line: the ledger's own time stamp doubled it.
    With standard error on the journal stream (``$JOURNAL_STREAM`` naming it) lines carry
    none; anywhere else (a file, a terminal) they carry the time."""
    import subprocess
    import sys

    from ledger.notify import to_journal

    err = tmp_path / "err.log"
    with err.open("wb") as f:
        st = os.fstat(f.fileno())
        assert to_journal(f.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not to_journal(f.fileno(), {"JOURNAL_STREAM": "1:2"})
        assert not to_journal(f.fileno(), {})
    for journal in (True, False):
        with err.open("wb") as f:
            st = os.fstat(f.fileno())
            env = dict(os.environ)
            env.pop("JOURNAL_STREAM", None)
            if journal:
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            proc = subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve", "--db", str(tmp_path / "l.db"),
                 "--port", "0", "--log-level", "debug"],
                stderr=f, stdout=subprocess.PIPE, env=env, text=True)
            try:
                assert proc.stdout is not None
                assert "listening on" in proc.stdout.readline()
            finally:
                proc.terminate()
                proc.communicate(timeout=30)
        lines = [ln for ln in err.read_text().splitlines() if "DEBUG" in ln or "INFO" in ln]
        assert lines, err.read_text()
        stamped = [ln for ln in lines if ln[:4].isdigit()]
        assert (not stamped) if journal else stamped, lines
def test_a_postgresql_password_comes_from_the_passfile_never_the_command_line(
        pg_cluster: Any, tmp_path: Path) -> None:
    """The URL names the role, not its password: libpq finds it in PGPASSFILE (or
    ~/.pgpass, a service file, PGPASSWORD). Without one, the connection is refused with a
    message that names the database."""
    import psycopg

    from tests.pgcluster import PASSWORD_ROLE

    url = pg_cluster.create_database()
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
        conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'pw-in-a-file'")
        conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO {PASSWORD_ROLE}')
    role_url = f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{pg_cluster.port}/{dbname}"
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_cluster.port}:{dbname}:{PASSWORD_ROLE}:pw-in-a-file\n")
    passfile.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["HOME"] = str(tmp_path)  # no ~/.pgpass of the one running the tests
    refused = subprocess.run([*LEDGER, "station", "list", "--db", role_url],
                             capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"scan-ledger: {role_url}: cannot connect to the ledger "
                                     "database: "), refused.stderr
    out = subprocess.run([*LEDGER, "station", "add", "dock-1", "--site", "WH1", "--db",
                          role_url], capture_output=True, text=True, timeout=60,
                         env={**env, "PGPASSFILE": str(passfile)})
    assert out.returncode == 0, out.stderr
    # a service file names host, port, database and role; the password still from the file
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[ledger]\nhost=127.0.0.1\nport={pg_cluster.port}\ndbname={dbname}\n"
                        f"user={PASSWORD_ROLE}\n")
    listed = subprocess.run([*LEDGER, "station", "list", "--json", "--db",
                             "postgresql:///?service=ledger"], capture_output=True, text=True,
                            timeout=60, env={**env, "PGPASSFILE": str(passfile),
                                             "PGSERVICEFILE": str(services)})
    assert listed.returncode == 0, listed.stderr
    assert '"dock-1"' in listed.stdout
