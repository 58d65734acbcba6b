"""Where the ledger keeps things: a small :class:`Store` interface and its SQLite implementation.

All SQL of the ledger is in this module. The event log is the source of truth: every accepted
or held event with its arrival time and its position in recorded order (``applied_seq``, NULL
while held), when it took effect if not at its ``occurred_at`` and the warnings it got. Beside
it (DESIGN section 10): each site's horizon, the incidents that are settled (behind the
horizon and resolved: they can no longer change), and one snapshot of the engine's memory,
written in the same transaction as the batch it follows, with the position in the log it
stands for. At start the ledger loads the snapshot and replays only the log after it; without
one (a database from before snapshots) it replays the whole log once. The PostgreSQL store
(:mod:`ledger.pgstore`) implements the same protocol.

One writer: the service calls a store from a single thread. Other processes (``scan-ledger
station add`` while the server runs) open their own connection; SQLite's WAL and busy timeout
make that safe, and the server reads stations from the database on every request, so a revoked
token is refused at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, Self

from ledger.errors import StationError, StoreError

__all__ = ["Checkpoint", "Contact", "NewEvent", "Release", "SettledIncident", "Snapshot",
           "SqliteStore", "StationRecord", "Store", "StoredEvent", "open_store"]

SCHEMA_VERSION = 3

_MIGRATIONS = {
    1: """
    CREATE TABLE stations (
        name TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        last_contact TEXT,
        sent_at TEXT,
        watermark TEXT,
        clock_offset_ms REAL,
        last_batch_events INTEGER
    );
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        site TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        item TEXT,
        occurred_at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'held')),
        applied_seq INTEGER UNIQUE,
        applied_at TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX events_by_station ON events (station, received_at);
    CREATE INDEX events_held ON events (status) WHERE status = 'held';
    """,
    # Every event paid for this index at ingest; its one reader (a station's newest events)
    # reads the log newest first by rowid instead, which stops after ``limit`` rows of that
    # station.
    2: """
    DROP INDEX IF EXISTS events_by_station;
    """,
    # History, horizon and restart (DESIGN section 10). Events written before this keep
    # NULL in the new columns, which is what they mean: applied at occurred_at, no warning;
    # whether they were voided the engine knows from the log until they are settled.
    3: """
    ALTER TABLE events ADD COLUMN effective_at TEXT;
    ALTER TABLE events ADD COLUMN warnings TEXT;
    ALTER TABLE events ADD COLUMN voided_by TEXT;
    ALTER TABLE events ADD COLUMN reversal TEXT;
    CREATE TABLE horizons (
        site TEXT PRIMARY KEY,
        horizon TEXT NOT NULL
    );
    CREATE TABLE settled_incidents (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        applied_seq INTEGER NOT NULL,
        last_rowid INTEGER NOT NULL,
        taken_at TEXT NOT NULL,
        state BLOB NOT NULL
    );
    """,
}


@dataclass(frozen=True, slots=True)
class StationRecord:
    name: str
    site: str
    created_at: str
    revoked_at: str | None
    last_contact: str | None
    sent_at: str | None
    watermark: str | None
    clock_offset_ms: float | None
    last_batch_events: int | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    station: str
    site: str
    status: str
    applied_seq: int | None
    applied_at: str | None
    received_at: str
    body: str
    effective_at: str | None = None
    warnings: str | None = None  # JSON array, when there were any
    voided_by: str | None = None  # kept here once the event is settled
    reversal: str | None = None  # JSON: a settled count's effect, for a void
    rowid: int = 0  # position in arrival order (the cursor for paging)


class NewEvent(NamedTuple):
    """An event to append to the log (a plain tuple: cheap to build, bound as it is)."""

    event_id: str
    station: str
    site: str
    seq: int
    type: str
    item: str | None
    occurred_at: str
    received_at: str
    status: str
    applied_seq: int | None
    applied_at: str | None
    body: str
    effective_at: str | None = None
    warnings: str | None = None


class Release(NamedTuple):
    """A held event released: its position in recorded order, when, and when it takes
    effect (if not at its occurred_at)."""

    event_id: str
    applied_seq: int
    applied_at: str
    effective_at: str | None


@dataclass(frozen=True, slots=True)
class SettledIncident:
    id: int
    site: str
    status: str
    body: str  # the incident's JSON, without "confirmed"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The engine's memory after the event at ``applied_seq`` (and every row up to
    ``last_rowid`` in arrival order)."""

    applied_seq: int
    last_rowid: int
    taken_at: str
    state: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What settling writes with a batch: the snapshot, the incidents that left memory,
    and settled events' facts the log alone does not tell (event_id, voided_by, reversal)."""

    applied_seq: int
    taken_at: str
    state: bytes
    incidents: Sequence[SettledIncident] = ()
    events: Sequence[tuple[str, str | None, str | None]] = ()
    site: str | None = None  # the one site it is of (PostgreSQL, several processes)


@dataclass(frozen=True, slots=True)
class Contact:
    """What a batch tells about its station."""

    station: str
    last_contact: str
    sent_at: str | None
    watermark: str | None
    clock_offset_ms: float | None
    events: int


class Store(Protocol):
    """What the ledger needs from a database."""

    def add_station(self, name: str, site: str, token_hash: str, now: str) -> None: ...
    def revoke_station(self, name: str, now: str) -> None: ...
    def stations(self) -> list[StationRecord]: ...
    def station_by_token(self, token_hash: str) -> StationRecord | None: ...
    def save_batch(self, events: Sequence[NewEvent], released: Sequence[Release],
                   contact: Contact | None, *, voided: Sequence[tuple[str, str]] = (),
                   horizons: Mapping[str, str] | None = None,
                   checkpoint: Checkpoint | None = None) -> None: ...
    def log(self, after: Snapshot | None = None) -> Iterator[StoredEvent]: ...
    def events(self, station: str | None, limit: int,
               before: int | None = None) -> list[StoredEvent]: ...
    def events_by_id(self, ids: Sequence[str]) -> list[StoredEvent]: ...
    def horizons(self) -> dict[str, str]: ...
    def snapshot(self) -> Snapshot | None: ...
    def settled_incidents(self, after: int, limit: int,
                          status: str | None) -> list[SettledIncident]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...


_STATION_COLS = ("name, site, created_at, revoked_at, last_contact, sent_at, watermark, "
                 "clock_offset_ms, last_batch_events")
_EVENT_COLS = ("event_id, station, site, status, applied_seq, applied_at, received_at, body, "
               "effective_at, warnings, voided_by, reversal, rowid")


class SqliteStore:
    """The SQLite store (WAL). Use one instance from one thread at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Ingest appends a few hundred rows per transaction: a larger page cache and
            # fewer, larger checkpoints (about 40 MB of WAL between them) cut SQLite's share
            # of ingest by about a quarter. Every commit is still synced (synchronous=FULL).
            self._db.execute("PRAGMA cache_size=-32000")
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the ledger database: {exc}") from exc
        self._closed = False

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: database schema {version} is newer than this "
                             f"ledger ({SCHEMA_VERSION}); upgrade scan-ledger")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            self._db.execute("BEGIN IMMEDIATE")
            for stmt in _MIGRATIONS[v].split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {v}")
            self._db.execute("COMMIT")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- stations

    def add_station(self, name: str, site: str, token_hash: str, now: str) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT revoked_at FROM stations WHERE name = ?",
                                   (name,)).fetchone()
            if row is not None and row[0] is None:
                self._db.execute("ROLLBACK")
                raise StationError(f"station {name!r} already exists; revoke it first to "
                                   "issue a new token")
            self._db.execute(
                "INSERT INTO stations (name, site, token_hash, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET site = excluded.site, token_hash = "
                "excluded.token_hash, created_at = excluded.created_at, revoked_at = NULL",
                (name, site, token_hash, now))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: cannot add station {name!r}: {exc}") from exc

    def revoke_station(self, name: str, now: str) -> None:
        try:
            cur = self._db.execute(
                "UPDATE stations SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now, name))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot revoke station {name!r}: {exc}") from exc
        if cur.rowcount == 0:
            raise StationError(f"no active station named {name!r}")

    def stations(self) -> list[StationRecord]:
        try:
            rows = self._db.execute(f"SELECT {_STATION_COLS} FROM stations ORDER BY name")
            return [StationRecord(*r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read stations: {exc}") from exc

    def station_by_token(self, token_hash: str) -> StationRecord | None:
        try:
            row = self._db.execute(
                f"SELECT {_STATION_COLS} FROM stations WHERE token_hash = ? "
                "AND revoked_at IS NULL", (token_hash,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read stations: {exc}") from exc
        return None if row is None else StationRecord(*row)

    # ---------------------------------------------------------------- events

    def save_batch(self, events: Sequence[NewEvent], released: Sequence[Release],
                   contact: Contact | None, *, voided: Sequence[tuple[str, str]] = (),
                   horizons: Mapping[str, str] | None = None,
                   checkpoint: Checkpoint | None = None) -> None:
        """Append events, mark released ones applied, note the station's contact, the
        settled events a void reversed (target, void), the sites' horizons, and a
        checkpoint: one transaction, all or nothing. This is also the bulk path: a batch
        of any size is one transaction."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO events (event_id, station, site, seq, type, item, occurred_at, "
                "received_at, status, applied_seq, applied_at, body, effective_at, warnings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                # plain tuples: sqlite3 reads a tuple subclass's items through __getitem__
                [tuple(e) for e in events])
            if released:
                db.executemany(
                    "UPDATE events SET status = 'accepted', applied_seq = ?, applied_at = ?, "
                    "effective_at = ? WHERE event_id = ?",
                    [(r.applied_seq, r.applied_at, r.effective_at, r.event_id)
                     for r in released])
            if voided:
                db.executemany("UPDATE events SET voided_by = ? WHERE event_id = ?",
                               [(void, target) for target, void in voided])
            if horizons:
                db.executemany(
                    "INSERT INTO horizons (site, horizon) VALUES (?, ?) ON CONFLICT (site) "
                    "DO UPDATE SET horizon = excluded.horizon", list(horizons.items()))
            if checkpoint is not None:
                self._write_checkpoint(checkpoint)
            if contact is not None:
                db.execute(
                    "UPDATE stations SET last_contact = ?, sent_at = ?, "
                    "watermark = COALESCE(?, watermark), clock_offset_ms = ?, "
                    "last_batch_events = ? WHERE name = ?",
                    (contact.last_contact, contact.sent_at, contact.watermark,
                     contact.clock_offset_ms, contact.events, contact.station))
            db.execute("COMMIT")
        except Exception as exc:
            # Not only sqlite3.Error: a value SQLite cannot bind (OverflowError) left the
            # transaction open, and every later batch failed with "cannot start a transaction
            # within a transaction" until a restart.
            self._rollback()
            raise StoreError(f"{self.path}: cannot save a batch: {exc}") from exc

    def _write_checkpoint(self, cp: Checkpoint) -> None:
        db = self._db
        if cp.incidents:
            db.executemany(
                "INSERT OR REPLACE INTO settled_incidents (id, site, status, body) "
                "VALUES (?, ?, ?, ?)", [(i.id, i.site, i.status, i.body) for i in cp.incidents])
        if cp.events:
            db.executemany(
                "UPDATE events SET voided_by = COALESCE(?, voided_by), "
                "reversal = COALESCE(?, reversal) WHERE event_id = ?",
                [(void, rev, eid) for eid, void, rev in cp.events])
        (last,) = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()
        db.execute(
            "INSERT INTO snapshots (id, applied_seq, last_rowid, taken_at, state) "
            "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "applied_seq = excluded.applied_seq, last_rowid = excluded.last_rowid, "
            "taken_at = excluded.taken_at, state = excluded.state",
            (cp.applied_seq, last, cp.taken_at, cp.state))

    def log(self, after: Snapshot | None = None) -> Iterator[StoredEvent]:
        """Applied events in recorded order, then the ones still held (arrival order); with
        ``after``, only what the snapshot does not hold: applied after it, or arrived after
        it and still held."""
        seq, rowid = (0, 0) if after is None else (after.applied_seq, after.last_rowid)
        try:
            yield from (StoredEvent(*r) for r in self._db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE applied_seq > ? "
                "ORDER BY applied_seq", (seq,)))
            yield from (StoredEvent(*r) for r in self._db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE applied_seq IS NULL AND rowid > ? "
                "ORDER BY rowid", (rowid,)))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the event log: {exc}") from exc

    def events(self, station: str | None, limit: int,
               before: int | None = None) -> list[StoredEvent]:
        """The newest events first, optionally of one station; with ``before``, those that
        arrived before the event at that ``rowid`` (the next page)."""
        start = (1 << 62) if before is None else before
        try:
            if station is None:
                rows = self._db.execute(
                    f"SELECT {_EVENT_COLS} FROM events WHERE rowid < ? "
                    "ORDER BY rowid DESC LIMIT ?", (start, limit))
            else:
                rows = self._db.execute(
                    f"SELECT {_EVENT_COLS} FROM events WHERE station = ? AND rowid < ? "
                    "ORDER BY rowid DESC LIMIT ?", (station, start, limit))
            return [StoredEvent(*r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read events: {exc}") from exc

    def events_by_id(self, ids: Sequence[str]) -> list[StoredEvent]:
        """The stored events with these ids (those there are), through the primary key's
        index: how a duplicate is recognised however old the original is."""
        out = []
        try:
            for i in range(0, len(ids), 500):
                chunk = list(ids[i:i + 500])
                marks = ", ".join("?" * len(chunk))
                out += [StoredEvent(*r) for r in self._db.execute(
                    f"SELECT {_EVENT_COLS} FROM events WHERE event_id IN ({marks})", chunk)]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read events: {exc}") from exc
        return out

    def horizons(self) -> dict[str, str]:
        try:
            return dict(self._db.execute("SELECT site, horizon FROM horizons").fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read horizons: {exc}") from exc

    def snapshot(self) -> Snapshot | None:
        try:
            row = self._db.execute("SELECT applied_seq, last_rowid, taken_at, state "
                                   "FROM snapshots WHERE id = 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the snapshot: {exc}") from exc
        return None if row is None else Snapshot(*row)

    def settled_incidents(self, after: int, limit: int,
                          status: str | None) -> list[SettledIncident]:
        """Settled incidents with an id above ``after``, in id order."""
        try:
            if status is None:
                rows = self._db.execute(
                    "SELECT id, site, status, body FROM settled_incidents WHERE id > ? "
                    "ORDER BY id LIMIT ?", (after, limit))
            else:
                rows = self._db.execute(
                    "SELECT id, site, status, body FROM settled_incidents WHERE id > ? "
                    "AND status = ? ORDER BY id LIMIT ?", (after, status, limit))
            return [SettledIncident(*r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read incidents: {exc}") from exc

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def open_store(path: str | Path) -> Store:
    """Open (creating and migrating) the ledger database: a SQLite file at ``path``, or the
    PostgreSQL database a ``postgresql://`` URL names (:mod:`ledger.pgstore`)."""
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        from ledger.pgstore import PgStore

        store: Store = PgStore(path)
        return store
    return SqliteStore(path)
