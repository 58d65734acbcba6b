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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, Protocol, Self

from ledger.errors import ManagerError, StationError, StoreError

__all__ = ["Checkpoint", "Contact", "ManagerRecord", "NewEvent", "NoteRecord", "OutboxEntry",
           "Release", "SettledIncident", "Snapshot", "SqliteStore", "StationRecord", "Store",
           "StoredEvent", "open_store"]

SCHEMA_VERSION = 5

# ---- ERP connectors: schema (version 5); the rest of their SQL is in the block at the end --
# The outbox holds, per connector, every movement it must forward, keyed by the event's place
# in recorded order; rows are added in the transaction that accepts (or releases) the event.
_CONNECTOR_SCHEMA = """
    CREATE TABLE connector_sites (
        connector TEXT NOT NULL,
        site TEXT NOT NULL,
        PRIMARY KEY (connector, site)
    );
    CREATE TABLE connector_outbox (
        connector TEXT NOT NULL,
        applied_seq INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        site TEXT NOT NULL,
        item TEXT,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'unmapped', 'forwarded')),
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        forwarded_at TEXT,
        occurred_us INTEGER,
        result TEXT,
        PRIMARY KEY (connector, applied_seq)
    ) WITHOUT ROWID;
    CREATE INDEX connector_outbox_open ON connector_outbox (connector, state, applied_seq)
        WHERE state != 'forwarded';
    CREATE INDEX connector_outbox_item ON connector_outbox (connector, site, item, occurred_us)
        WHERE state = 'forwarded';
"""

# A migration is one script (split at ";") or a tuple of statements (a trigger's body holds
# semicolons of its own).
_MIGRATIONS: dict[int, str | tuple[str, ...]] = {
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
    # The manager's page: item names, manager tokens, notes on incidents. A note is never
    # edited or deleted: the triggers refuse it whoever asks, this program included.
    4: (
        """CREATE TABLE items (
            item TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE managers (
            name TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )""",
        """CREATE TABLE notes (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL,
            depletion_event_id TEXT NOT NULL,
            author TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX notes_by_incident ON notes (incident_id)",
        """CREATE TRIGGER notes_never_edited BEFORE UPDATE ON notes
        BEGIN SELECT RAISE(ABORT, 'a note is never edited'); END""",
        """CREATE TRIGGER notes_never_deleted BEFORE DELETE ON notes
        BEGIN SELECT RAISE(ABORT, 'a note is never deleted'); END""",
    ),
    5: _CONNECTOR_SCHEMA,
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
class ManagerRecord:
    name: str
    created_at: str
    revoked_at: str | None


@dataclass(frozen=True, slots=True)
class NoteRecord:
    """A manager's note on an incident: kept as written, never edited or deleted."""

    id: int
    incident_id: int
    depletion_event_id: str
    author: str
    text: str
    created_at: str


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


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One movement a connector forwards (or has forwarded), with the event as stored."""

    connector: str
    applied_seq: int
    event_id: str
    state: str
    attempts: int
    reason: str | None
    result: str | None
    station: str
    site: str
    body: str


class Store(Protocol):
    """What the ledger needs from a database."""

    # whether several ledger processes may write the database at once (PostgreSQL)
    shared: bool

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
    def put_items(self, names: Sequence[tuple[str, str]], now: str) -> tuple[int, int]: ...
    def item_names(self, items: Iterable[str]) -> dict[str, str]: ...
    def add_manager(self, name: str, token_hash: str, now: str) -> None: ...
    def revoke_manager(self, name: str, now: str) -> None: ...
    def manager_by_token(self, token_hash: str) -> ManagerRecord | None: ...
    def add_note(self, incident_id: int, depletion_event_id: str, author: str, text: str,
                 now: str) -> NoteRecord: ...
    def notes(self, incident_ids: Iterable[int] | None = None) -> dict[int, list[NoteRecord]]: ...
    def close(self) -> None: ...
    # ERP connectors (the block at the end of SqliteStore)
    def set_connector_routes(self, routes: Sequence[tuple[str, str]]) -> None: ...
    def outbox_open(self, connector: str, state: str, limit: int,
                    after: int = 0) -> list[OutboxEntry]: ...
    def outbox_mark(self, connector: str, applied_seq: int, state: str, reason: str | None,
                    result: str | None, now: str, also: Sequence[tuple[int, str]] = (),
                    item: str | None = None, occurred_us: int | None = None) -> None: ...
    def outbox_item_history(self, connector: str, site: str, item: str | None,
                            since_us: int | None = None) -> list[OutboxEntry]: ...
    def outbox_entry(self, connector: str, event_id: str) -> OutboxEntry | None: ...
    def outbox_counts(self) -> dict[str, dict[str, int]]: ...
    def claim_connector(self, connector: str) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...


_STATION_COLS = ("name, site, created_at, revoked_at, last_contact, sent_at, watermark, "
                 "clock_offset_ms, last_batch_events")
_EVENT_COLS = ("event_id, station, site, status, applied_seq, applied_at, received_at, body, "
               "effective_at, warnings, voided_by, reversal, rowid")


class SqliteStore:
    """The SQLite store (WAL). Use one instance from one thread at a time."""

    shared = False  # one process

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = str(path)
        if not create and not Path(self.path).is_file():
            # A typo must not look like an empty ledger (nor leave a file behind).
            raise StoreError(f"{self.path}: no ledger database there (nothing was created; "
                             "'scan-ledger serve' or 'scan-ledger station add' makes one)")
        try:
            target = self.path if create else f"{Path(self.path).resolve().as_uri()}?mode=rw"
            self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                                       timeout=10.0, uri=not create)
            if not create and self._db.execute(
                    "SELECT count(*) FROM sqlite_schema WHERE name = 'stations'"
                    ).fetchone()[0] == 0:
                self._db.close()
                raise StoreError(f"{self.path}: not a ledger database (it has no stations "
                                 "table)")
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
            script = _MIGRATIONS[v]
            for stmt in script.split(";") if isinstance(script, str) else script:
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
            self._fill_outbox(events, released)
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
    # ------------------------------------------------------ the manager's page

    def put_items(self, names: Sequence[tuple[str, str]], now: str) -> tuple[int, int]:
        """Insert or update item names (one transaction); returns (added, updated)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            known = self._names_of(item for item, _ in names)
            self._db.executemany(
                "INSERT INTO items (item, name, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (item) DO UPDATE SET name = excluded.name, "
                "updated_at = excluded.updated_at WHERE name != excluded.name",
                [(item, name, now) for item, name in names])
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: cannot save item names: {exc}") from exc
        added = sum(1 for item, _ in names if item not in known)
        updated = sum(1 for item, name in names if item in known and known[item] != name)
        return added, updated

    def _names_of(self, items: Iterable[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(items))
        out: dict[str, str] = {}
        for i in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            chunk = wanted[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            out.update(self._db.execute(
                f"SELECT item, name FROM items WHERE item IN ({marks})", chunk).fetchall())
        return out

    def item_names(self, items: Iterable[str]) -> dict[str, str]:
        """The names known for these item codes (codes without one are left out)."""
        try:
            return self._names_of(items)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read item names: {exc}") from exc

    def add_manager(self, name: str, token_hash: str, now: str) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT revoked_at FROM managers WHERE name = ?",
                                   (name,)).fetchone()
            if row is not None and row[0] is None:
                self._db.execute("ROLLBACK")
                raise ManagerError(f"manager {name!r} already exists; revoke it first to "
                                   "issue a new token")
            self._db.execute(
                "INSERT INTO managers (name, token_hash, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, "
                "created_at = excluded.created_at, revoked_at = NULL",
                (name, token_hash, now))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: cannot add manager {name!r}: {exc}") from exc

    def revoke_manager(self, name: str, now: str) -> None:
        try:
            cur = self._db.execute(
                "UPDATE managers SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now, name))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot revoke manager {name!r}: {exc}") from exc
        if cur.rowcount == 0:
            raise ManagerError(f"no active manager named {name!r}")

    def manager_by_token(self, token_hash: str) -> ManagerRecord | None:
        try:
            row = self._db.execute(
                "SELECT name, created_at, revoked_at FROM managers WHERE token_hash = ? "
                "AND revoked_at IS NULL", (token_hash,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read managers: {exc}") from exc
        return None if row is None else ManagerRecord(*row)

    def add_note(self, incident_id: int, depletion_event_id: str, author: str, text: str,
                 now: str) -> NoteRecord:
        try:
            cur = self._db.execute(
                "INSERT INTO notes (incident_id, depletion_event_id, author, text, created_at) "
                "VALUES (?, ?, ?, ?, ?)", (incident_id, depletion_event_id, author, text, now))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot save a note: {exc}") from exc
        assert cur.lastrowid is not None
        return NoteRecord(cur.lastrowid, incident_id, depletion_event_id, author, text, now)

    def notes(self, incident_ids: Iterable[int] | None = None) -> dict[int, list[NoteRecord]]:
        """Notes by incident, oldest first (of the given incidents, or all)."""
        sql = ("SELECT id, incident_id, depletion_event_id, author, text, created_at "
               "FROM notes")
        try:
            if incident_ids is None:
                rows = self._db.execute(sql + " ORDER BY id").fetchall()
            else:
                rows = []
                wanted = list(dict.fromkeys(incident_ids))
                for i in range(0, len(wanted), 500):
                    chunk = wanted[i:i + 500]
                    rows += self._db.execute(
                        f"{sql} WHERE incident_id IN ({', '.join('?' * len(chunk))}) "
                        "ORDER BY id", chunk).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read notes: {exc}") from exc
        out: dict[int, list[NoteRecord]] = {}
        for r in rows:
            out.setdefault(r[1], []).append(NoteRecord(*r))
        return out

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


    # ================================================================ ERP connectors
    # Everything the connectors keep (ledger/connectors/): routes, outbox, forwarding state.
    # The only link to ingest is ``_fill_outbox``, called by ``save_batch`` inside its
    # transaction, so an accepted or released movement is never without its outbox row.

    # site -> the connectors that forward it (none until set_connector_routes)
    _routes: Mapping[str, tuple[str, ...]] = MappingProxyType({})

    def set_connector_routes(self, routes: Sequence[tuple[str, str]]) -> None:
        """Record which connector forwards which site (from the config, at start). A route
        that is new puts the site's whole accepted history in that connector's outbox."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            known = set(self._db.execute("SELECT connector, site FROM connector_sites"))
            for connector, site in routes:
                if (connector, site) in known:
                    continue
                self._db.execute("INSERT INTO connector_sites (connector, site) VALUES (?, ?)",
                                 (connector, site))
                self._db.execute(
                    "INSERT OR IGNORE INTO connector_outbox (connector, applied_seq, event_id, "
                    "site, item) SELECT ?, applied_seq, event_id, site, item FROM events "
                    "WHERE site = ? AND applied_seq IS NOT NULL", (connector, site))
            for connector, site in known - set(routes):
                self._db.execute("DELETE FROM connector_sites WHERE connector = ? AND site = ?",
                                 (connector, site))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: cannot set connector routes: {exc}") from exc
        by_site: dict[str, list[str]] = {}
        for connector, site in routes:
            by_site.setdefault(site, []).append(connector)
        self._routes = {site: tuple(cs) for site, cs in by_site.items()}

    def _fill_outbox(self, events: Sequence[NewEvent], released: Sequence[Release]) -> None:
        if not self._routes:
            return
        routes = self._routes
        rows = [(c, e.applied_seq, e.event_id, e.site, e.item) for e in events
                if e.applied_seq is not None and e.site in routes for c in routes[e.site]]
        if rows:
            self._db.executemany(
                "INSERT OR IGNORE INTO connector_outbox (connector, applied_seq, event_id, site, "
                "item) VALUES (?, ?, ?, ?, ?)", rows)
        if released:
            self._db.executemany(
                "INSERT OR IGNORE INTO connector_outbox (connector, applied_seq, event_id, site, "
                "item) SELECT c.connector, ?, e.event_id, e.site, e.item FROM events e "
                "JOIN connector_sites c ON c.site = e.site WHERE e.event_id = ?",
                [(r.applied_seq, r.event_id) for r in released])

    _OUTBOX_COLS = ("o.connector, o.applied_seq, o.event_id, o.state, o.attempts, o.reason, "
                    "o.result, e.station, e.site, e.body")

    def outbox_open(self, connector: str, state: str, limit: int,
                    after: int = 0) -> list[OutboxEntry]:
        """The connector's entries in ``state`` (pending or unmapped), in recorded order,
        from after ``applied_seq`` ``after``."""
        try:
            rows = self._db.execute(
                f"SELECT {self._OUTBOX_COLS} FROM connector_outbox o JOIN events e "
                "ON e.event_id = o.event_id WHERE o.connector = ? AND o.state = ? "
                "AND o.applied_seq > ? ORDER BY o.applied_seq LIMIT ?",
                (connector, state, after, limit))
            return [OutboxEntry(*r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the outbox: {exc}") from exc

    def outbox_mark(self, connector: str, applied_seq: int, state: str, reason: str | None,
                    result: str | None, now: str, also: Sequence[tuple[int, str]] = (),
                    item: str | None = None, occurred_us: int | None = None) -> None:
        """Record how an entry went; ``also``: other entries' new results (a voided target),
        ``item``: the entry's item when the event has none (a void: its target's),
        ``occurred_us``: when its effect in the ERP is dated (for history look-ups)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE connector_outbox SET state = ?, reason = ?, result = ?, "
                "attempts = attempts + 1, item = COALESCE(item, ?), "
                "occurred_us = COALESCE(?, occurred_us), "
                "forwarded_at = CASE WHEN ? = 'forwarded' THEN ? "
                "ELSE forwarded_at END WHERE connector = ? AND applied_seq = ?",
                (state, reason, result, item, occurred_us, state, now, connector,
                 applied_seq))
            self._db.executemany(
                "UPDATE connector_outbox SET result = ? WHERE connector = ? AND applied_seq = ?",
                [(r, connector, seq) for seq, r in also])
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: cannot update the outbox: {exc}") from exc

    def outbox_item_history(self, connector: str, site: str, item: str | None,
                            since_us: int | None = None) -> list[OutboxEntry]:
        """The forwarded entries of one item at one site, dated at or after ``since_us`` if
        given (for counts and their corrections)."""
        try:
            rows = self._db.execute(
                f"SELECT {self._OUTBOX_COLS} FROM connector_outbox o JOIN events e "
                "ON e.event_id = o.event_id WHERE o.connector = ? AND o.site = ? "
                "AND o.item IS ? AND o.state = 'forwarded' AND o.occurred_us >= ? "
                "ORDER BY o.applied_seq",
                (connector, site, item, -(2**62) if since_us is None else since_us))
            return [OutboxEntry(*r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the outbox: {exc}") from exc

    def outbox_entry(self, connector: str, event_id: str) -> OutboxEntry | None:
        try:
            row = self._db.execute(
                f"SELECT {self._OUTBOX_COLS} FROM connector_outbox o JOIN events e "
                "ON e.event_id = o.event_id WHERE o.connector = ? AND o.event_id = ?",
                (connector, event_id)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the outbox: {exc}") from exc
        return None if row is None else OutboxEntry(*row)

    def claim_connector(self, connector: str) -> bool:
        """Whether this process forwards ``connector``: always, on SQLite (one process)."""
        return True

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """connector -> state -> how many entries."""
        out: dict[str, dict[str, int]] = {}
        try:
            for connector, state, n in self._db.execute(
                    "SELECT connector, state, count(*) FROM connector_outbox "
                    "GROUP BY connector, state"):
                out.setdefault(connector, {})[state] = n
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the outbox: {exc}") from exc
        return out
    # ============================================================ end ERP connectors


def open_store(path: str | Path, *, create: bool = True) -> Store:
    """Open (creating and migrating) the ledger database: a SQLite file at ``path``, or the
    PostgreSQL database a ``postgresql://`` URL names (:mod:`ledger.pgstore`).

    With ``create=False`` (commands that only read, or change an existing ledger) a database
    that holds no ledger is a :class:`StoreError` naming it, and nothing is created."""
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        from ledger.pgstore import PgStore

        store: Store = PgStore(path, create=create)
        return store
    return SqliteStore(path, create=create)
