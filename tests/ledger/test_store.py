"""The SQLite store on its own: schema migrations and the reads the API is built on."""

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
