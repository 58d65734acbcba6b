"""The stores on their own: schema migrations, the reads the API is built on, and which
store loads what."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ledger.store import _MIGRATIONS, SCHEMA_VERSION, NewEvent, open_store


def _event(i: int, station: str) -> NewEvent:
    at = f"2026-11-18T10:00:{i:02d}.000000Z"
    return NewEvent(f"e{i}", station, "WH1", i, "receipt", "I", at, at, "accepted", i, at, "{}")


def test_a_version_1_database_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    """Version 2 dropped the per-station index; a database made by version 1 loses it at open
    and keeps every event, and a station's newest events still come first."""
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.executescript(_MIGRATIONS[1] + "PRAGMA user_version = 1;")
    conn.close()
    store = open_store(path)
    try:
        store.add_station("dock-1", "WH1", "hash-1", "2026-11-18T10:00:00.000000Z")
        store.add_station("dock-2", "WH1", "hash-2", "2026-11-18T10:00:00.000000Z")
        store.save_batch([_event(i, "dock-1" if i % 3 else "dock-2") for i in range(1, 10)],
                         [], None)
        assert [e.event_id for e in store.events("dock-2", 2)] == ["e9", "e6"]
        assert [e.event_id for e in store.events(None, 3)] == ["e9", "e8", "e7"]
        assert len(list(store.log())) == 9
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")}
        assert "events_by_station" not in indexes
    finally:
        conn.close()


def test_postgresql_schema_is_versioned_and_migrated_as_sqlite_is(pg_cluster: Any) -> None:
    """The PostgreSQL store keeps its schema version in the database, migrates a version 1
    database at open (keeping its events), reads as the SQLite store does, and refuses a
    database made by a newer ledger."""
    import psycopg

    from ledger import pgstore
    from ledger.errors import StoreError

    url = pg_cluster.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(pgstore._MIGRATIONS[1].encode())
    with open_store(url) as store:
        assert isinstance(store, pgstore.PgStore)
        assert store.schema_version() == pgstore.SCHEMA_VERSION == SCHEMA_VERSION
        store.add_station("dock-1", "WH1", "hash-1", "2026-11-18T10:00:00.000000Z")
        store.add_station("dock-2", "WH1", "hash-2", "2026-11-18T10:00:00.000000Z")
        store.save_batch([_event(i, "dock-1" if i % 3 else "dock-2") for i in range(1, 10)],
                         [], None)
        assert [e.event_id for e in store.events("dock-2", 2)] == ["e9", "e6"]
        assert [e.event_id for e in store.events(None, 3)] == ["e9", "e8", "e7"]
        assert [e.event_id for e in store.events_by_id(["e3", "nope", "e1"])] == ["e3", "e1"]
        assert len(list(store.log())) == 9
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match=r"database schema 99 is newer than this ledger"):
        open_store(url)


def test_postgresql_store_keeps_every_character_of_an_event(pg_cluster: Any) -> None:
    """Events go to PostgreSQL through COPY's text format: backslashes, tabs, newlines,
    carriage returns, NULLs and non-ASCII come back exactly as they went in."""
    url = pg_cluster.create_database()
    tricky = 'x\\y\tz\nw\rv \\N é 漢 "q"'
    ev = NewEvent("e\\1", "dock\t1", "WH1", 2**62, "receipt", tricky, "t0", "t1", "held",
                  None, None, '{"raw":["a\\\\tb","c\\nd"],"x":"' + tricky + '"}')
    with open_store(url) as store:
        store.save_batch([ev], [], None)
        (got,) = store.events_by_id(["e\\1"])
        assert (got.event_id, got.station, got.body, got.applied_seq) == (
            ev.event_id, ev.station, ev.body, None)
        import psycopg

        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT item, seq FROM events").fetchone() == (tricky, 2**62)


def test_postgresql_store_keeps_item_names_managers_and_notes_that_never_change(
        pg_cluster: Any) -> None:
    """The manager's page on PostgreSQL: item names added and updated, managers added,
    refused twice and revoked, notes kept in order and refused any edit or delete by the
    database itself."""
    import psycopg

    from ledger.errors import ManagerError

    url = pg_cluster.create_database()
    at = "2026-11-18T10:00:00.000000Z"
    with open_store(url) as store:
        assert store.put_items([("I1", "Mug"), ("I2", "Kettle")], at) == (2, 0)
        assert store.put_items([("I1", "Mug 0.3 l"), ("I2", "Kettle"), ("I3", "Pot")],
                               at) == (1, 1)
        assert store.item_names(["I1", "I3", "nope", "I1"]) == {"I1": "Mug 0.3 l", "I3": "Pot"}
        assert store.item_names([]) == {}
        store.add_manager("anna", "hash-a", at)
        with pytest.raises(ManagerError, match="already exists"):
            store.add_manager("anna", "hash-b", at)
        manager = store.manager_by_token("hash-a")
        assert manager is not None and manager.name == "anna"
        n1 = store.add_note(7, "e7", "anna", "first", at)
        n2 = store.add_note(7, "e7", "anna", "second", at)
        store.add_note(9, "e9", "anna", "other", at)
        assert n1.id < n2.id
        assert [n.text for n in store.notes([7])[7]] == ["first", "second"]
        assert sorted(store.notes()) == [7, 9] and store.notes([]) == {}
        store.revoke_manager("anna", at)
        assert store.manager_by_token("hash-a") is None
        with pytest.raises(ManagerError, match="no active manager"):
            store.revoke_manager("anna", at)
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in ("UPDATE notes SET text = 'changed'", "DELETE FROM notes",
                    "TRUNCATE notes"):
            with pytest.raises(psycopg.errors.RaiseException, match="never"):
                conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (3,)


def test_postgresql_outbox_is_filled_in_the_batch_transaction(pg_cluster: Any) -> None:
    """Connector routes and the outbox on PostgreSQL: a new route takes the site's history,
    each accepted or released event of a routed site gets its row in the batch's own
    transaction (a batch that fails leaves none), marks and counts read back."""
    from ledger.errors import StoreError
    from ledger.store import Release

    url = pg_cluster.create_database()
    with open_store(url) as store:
        store.save_batch([_event(1, "dock-1")], [], None)  # before any route
        store.set_connector_routes([("erp", "WH1")])
        assert [e.event_id for e in store.outbox_open("erp", "pending", 10)] == ["e1"]
        held = NewEvent("h1", "dock-1", "WH1", 5, "receipt", "I", "t", "t", "held", None,
                        None, "{}")
        store.save_batch([_event(2, "dock-1"), held], [], None)
        store.save_batch([], [Release("h1", 40, "t", None)], None)
        other = NewEvent("x1", "dock-9", "WH2", 1, "receipt", "I", "t", "t", "accepted", 50,
                         "t", "{}")
        store.save_batch([other], [], None)  # WH2 has no connector
        assert [e.event_id for e in store.outbox_open("erp", "pending", 10)] == [
            "e1", "e2", "h1"]
        with pytest.raises(StoreError):  # the same event again: the whole batch fails
            store.save_batch([_event(3, "dock-1"), _event(2, "dock-1")], [], None)
        assert len(store.outbox_open("erp", "pending", 10)) == 3
        store.outbox_mark("erp", 1, "forwarded", None, "doc-1", "t", item="I",
                          occurred_us=1000)
        store.outbox_mark("erp", 2, "unmapped", "no such bin", None, "t")
        assert store.outbox_counts() == {"erp": {"forwarded": 1, "unmapped": 1, "pending": 1}}
        entry = store.outbox_entry("erp", "e1")
        assert entry is not None and (entry.state, entry.result) == ("forwarded", "doc-1")
        assert [e.event_id for e in store.outbox_item_history("erp", "WH1", "I")] == ["e1"]
        assert store.outbox_item_history("erp", "WH1", "I", since_us=2000) == []
        assert store.claim_connector("erp")
        with open_store(url) as second:  # another process: the connector is taken
            assert not second.claim_connector("erp")
    with open_store(url) as third:  # the first one's session ended: free again
        assert third.claim_connector("erp")


def test_postgresql_read_only_open_creates_nothing(pg_cluster: Any) -> None:
    """``create=False`` on a database without the ledger's tables is an error naming it,
    and the database stays empty."""
    import psycopg

    from ledger import pgstore
    from ledger.errors import StoreError

    url = pg_cluster.create_database()
    with pytest.raises(StoreError, match="no ledger database there") as err:
        open_store(url, create=False)
    assert pgstore.redact_url(url) in str(err.value)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone() == (0,)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    with pytest.raises(StoreError, match="not a ledger database"):
        open_store(url, create=False)
    url2 = pg_cluster.create_database()
    open_store(url2).close()
    with open_store(url2, create=False) as store:
        assert store.stations() == []


def test_a_sqlite_ledger_and_the_agent_never_load_the_postgresql_driver(tmp_path: Path) -> None:
    """psycopg loads the system's libpq when imported: a dock, the demo and a SQLite ledger
    must run where libpq is not installed, so only a ``postgresql://`` URL may import it."""
    import subprocess
    import sys

    code = (
        "import sys, pathlib\n"
        "import agent.daemon, agent.demo, agent.cli, ledger.cli\n"
        "from ledger.server import LedgerServer\n"
        "with LedgerServer(pathlib.Path(sys.argv[1])) as srv:\n"
        "    srv.add_station('dock-1', 'WH1')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ledger.db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_postgresql_gives_up_on_a_vanished_machine_within_the_takeover_time(
        pg_cluster: Any) -> None:
    """A machine that vanishes closes no socket: the server must drop its session (and with
    it the site leases) through keepalives or the user timeout soon enough that another
    process serves its sites within 10 s: the settings as the server sees them."""
    from ledger import pgstore
    from ledger.service import LedgerService

    with pgstore.PgStore(pg_cluster.create_database()) as store:
        rows = store._db.execute(
            "SELECT name, setting::int * CASE unit WHEN 's' THEN 1000 ELSE 1 END "
            "FROM pg_settings WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', "
            "'tcp_keepalives_count', 'tcp_user_timeout')").fetchall()
    got = dict(rows)
    probes = (got["tcp_keepalives_idle"]
              + got["tcp_keepalives_count"] * got["tcp_keepalives_interval"])
    assert probes > 0 and got["tcp_user_timeout"] > 0, got
    worst = max(probes, got["tcp_user_timeout"]) + LedgerService.TEND_INTERVAL_S * 1000
    assert worst < 10_000, got
