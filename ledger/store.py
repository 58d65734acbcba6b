"""Where the ledger keeps things: a small :class:`Store` interface and its SQLite implementation.

All SQL of the ledger is in this module. The event log is the source of truth: every accepted
or held event with its arrival time and its position in recorded order (``applied_seq``, NULL
while held). Balances, incidents and holds are rebuilt from it at start. A PostgreSQL store
would implement the same protocol.

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
from types import MappingProxyType
from typing import NamedTuple, Protocol

from ledger.errors import StationError, StoreError

__all__ = ["Contact", "NewEvent", "OutboxEntry", "SqliteStore", "StationRecord", "Store",
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
    3: "",  # reserved
    4: "",  # reserved
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
class StoredEvent:
    event_id: str
    station: str
    site: str
    status: str
    applied_seq: int | None
    applied_at: str | None
    received_at: str
    body: str


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

    def add_station(self, name: str, site: str, token_hash: str, now: str) -> None: ...
    def revoke_station(self, name: str, now: str) -> None: ...
    def stations(self) -> list[StationRecord]: ...
    def station_by_token(self, token_hash: str) -> StationRecord | None: ...
    def save_batch(self, events: Sequence[NewEvent],
                   released: Sequence[tuple[str, int, str]], contact: Contact | None) -> None: ...
    def log(self) -> Iterator[StoredEvent]: ...
    def events(self, station: str | None, limit: int) -> list[StoredEvent]: ...
    def events_by_id(self, ids: Sequence[str]) -> list[StoredEvent]: ...
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


_STATION_COLS = ("name, site, created_at, revoked_at, last_contact, sent_at, watermark, "
                 "clock_offset_ms, last_batch_events")
_EVENT_COLS = "event_id, station, site, status, applied_seq, applied_at, received_at, body"


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

    def save_batch(self, events: Sequence[NewEvent], released: Sequence[tuple[str, int, str]],
                   contact: Contact | None) -> None:
        """Append events, mark released ones applied, note the station's contact: one
        transaction, all or nothing."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO events (event_id, station, site, seq, type, item, occurred_at, "
                "received_at, status, applied_seq, applied_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                # plain tuples: sqlite3 reads a tuple subclass's items through __getitem__
                [tuple(e) for e in events])
            self._db.executemany(
                "UPDATE events SET status = 'accepted', applied_seq = ?, applied_at = ? "
                "WHERE event_id = ?", [(seq, at, eid) for eid, seq, at in released])
            self._fill_outbox(events, released)
            if contact is not None:
                self._db.execute(
                    "UPDATE stations SET last_contact = ?, sent_at = ?, "
                    "watermark = COALESCE(?, watermark), clock_offset_ms = ?, "
                    "last_batch_events = ? WHERE name = ?",
                    (contact.last_contact, contact.sent_at, contact.watermark,
                     contact.clock_offset_ms, contact.events, contact.station))
            self._db.execute("COMMIT")
        except Exception as exc:
            # Not only sqlite3.Error: a value SQLite cannot bind (OverflowError) left the
            # transaction open, and every later batch failed with "cannot start a transaction
            # within a transaction" until a restart.
            self._rollback()
            raise StoreError(f"{self.path}: cannot save a batch: {exc}") from exc

    def log(self) -> Iterator[StoredEvent]:
        """Applied events in recorded order, then the ones still held (arrival order)."""
        try:
            yield from (StoredEvent(*r) for r in self._db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE applied_seq IS NOT NULL "
                "ORDER BY applied_seq"))
            yield from (StoredEvent(*r) for r in self._db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE applied_seq IS NULL ORDER BY rowid"))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the event log: {exc}") from exc

    def events(self, station: str | None, limit: int) -> list[StoredEvent]:
        """The newest events first, optionally of one station."""
        try:
            if station is None:
                rows = self._db.execute(
                    f"SELECT {_EVENT_COLS} FROM events ORDER BY rowid DESC LIMIT ?", (limit,))
            else:
                rows = self._db.execute(
                    f"SELECT {_EVENT_COLS} FROM events WHERE station = ? "
                    "ORDER BY rowid DESC LIMIT ?", (station, limit))
            return [StoredEvent(*r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read events: {exc}") from exc

    def events_by_id(self, ids: Sequence[str]) -> list[StoredEvent]:
        out = []
        try:
            for eid in ids:
                row = self._db.execute(f"SELECT {_EVENT_COLS} FROM events WHERE event_id = ?",
                                       (eid,)).fetchone()
                if row is not None:
                    out.append(StoredEvent(*row))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read events: {exc}") from exc
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

    def _fill_outbox(self, events: Sequence[NewEvent],
                     released: Sequence[tuple[str, int, str]]) -> None:
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
                [(seq, eid) for eid, seq, _at in released])

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


def open_store(path: str | Path) -> SqliteStore:
    """Open (creating and migrating) the SQLite ledger database at ``path``."""
    return SqliteStore(path)
