"""The ledger's PostgreSQL store: the :class:`~ledger.store.Store` protocol on PostgreSQL, and
the site leases that let several ``scan-ledger serve`` processes share one database.

All of the ledger's PostgreSQL SQL is in this module (the SQLite SQL is in
:mod:`ledger.store`); the engine and the service see only the protocol.

The driver is psycopg 3: the maintained PostgreSQL adapter for Python, typed, with pipelined
``executemany`` and libpq underneath, so the connection takes a libpq URL, passfile, service
file and ``PG*`` environment variables exactly as ``psql`` does. Its plain ``psycopg`` package
is pure Python over the system's libpq (Debian's ``libpq5``), so it installs on a Raspberry Pi
(armv7 or arm64) without a compiler; ``psycopg[binary]`` is faster but has no armv7 wheels.

Site leases are session-level advisory locks, one per site (``pg_try_advisory_lock``), held
on the same connection that writes the site's events. Why locks, not a lease row with a
heartbeat and an expiry:

* fencing comes free: a process can only commit on the connection that holds the lock, so
  once PostgreSQL has dropped that session (and with it the lock) the old owner cannot write
  anything more, however late it wakes up; a lease row needs a fencing token checked by
  every write;
* a process killed by SIGKILL closes its socket in the kernel, PostgreSQL ends the session at
  once and the lock is free in milliseconds, where a lease row waits for its expiry;
* a machine that vanishes (power, network) sends nothing: the session sets TCP keepalives and
  ``tcp_user_timeout`` so that the server gives up on it within about 8 s (the next batch
  for one of its sites is then served by another process: within 10 s), and
  ``idle_session_timeout`` ends a session that stopped talking (a frozen process), while a
  live owner touches its session every second.

Which process owns a site, and where to reach it, is in the ``sites`` table (written by the
owner after it took the lock; trusted only while the lock is held).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ledger.errors import ManagerError, StationError, StoreError
from ledger.store import (
    Checkpoint,
    Contact,
    ManagerRecord,
    NewEvent,
    NoteRecord,
    OutboxEntry,
    Release,
    SettledIncident,
    Snapshot,
    StationRecord,
    StoredEvent,
)

__all__ = ["PgStore", "SiteOwner", "redact_url"]

import orjson
import psycopg  # only a postgresql:// --db imports this module

SCHEMA_VERSION = 5

# How soon the server gives up on a session whose machine vanished (and frees its leases):
# idle for KEEPALIVE_IDLE_S, then KEEPALIVE_COUNT unanswered probes KEEPALIVE_INTERVAL_S
# apart, or data unacknowledged for USER_TIMEOUT_MS: 8 s either way, inside the 10 s
# within which another process must serve the sites. (A live owner talks every second.)
KEEPALIVE_IDLE_S = 2
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 8000

# The advisory-lock key space: (class, key) pairs; classes picked so that they do not collide
# with anything else a DBA is likely to lock in the same database.
_SITE_LOCK = 0x5CA1ED
_MEMBER_LOCK = 0x5CA1EE
_MIGRATION_LOCK = 0x5CA1EF
_CONNECTOR_LOCK = 0x5CA1F0

# Numbered as the SQLite migrations are (ledger.store): a number that adds a table there adds
# its twin here. The tables behind the site leases exist only here.
_MIGRATIONS: dict[int, str] = {
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
        clock_offset_ms DOUBLE PRECISION,
        last_batch_events INTEGER
    );
    CREATE TABLE events (
        arrival BIGINT GENERATED ALWAYS AS IDENTITY,
        event_id TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        site TEXT NOT NULL,
        seq BIGINT NOT NULL,
        type TEXT NOT NULL,
        item TEXT,
        occurred_at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'held')),
        applied_seq BIGINT,
        applied_at TEXT,
        body TEXT NOT NULL,
        voids TEXT  -- a void's target: any process can say what voided an event
    );
    CREATE INDEX events_voided ON events (voids) WHERE voids IS NOT NULL;
    CREATE INDEX events_by_arrival ON events (arrival);
    CREATE UNIQUE INDEX events_by_site ON events (site, applied_seq);
    CREATE INDEX events_held ON events (site, arrival) WHERE status = 'held';
    -- a site's lease is the advisory lock (class, lock_key); owner_* say who took it last
    CREATE TABLE sites (
        site TEXT PRIMARY KEY,
        lock_key INTEGER GENERATED ALWAYS AS IDENTITY UNIQUE,
        owner_id INTEGER,
        owner_url TEXT,
        owned_since TEXT
    );
    -- recorded order across processes: each batch takes a fresh block of 2^24 positions
    CREATE SEQUENCE applied_block;
    """,
    2: """
    -- (SQLite's version 2 dropped an index this schema never had)
    """,
    # History, horizon and restart (DESIGN section 10), as SQLite's version 3; a snapshot
    # is of one site's engine (each site is loaded by the process that owns it).
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
        id BIGINT PRIMARY KEY,
        site TEXT NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        site TEXT PRIMARY KEY,
        applied_seq BIGINT NOT NULL,
        last_rowid BIGINT NOT NULL,
        taken_at TEXT NOT NULL,
        state BYTEA NOT NULL
    );
    """,
    # The manager's page, as SQLite's version 4: item names, manager tokens, notes. A note
    # is never edited or deleted: the triggers refuse it whoever asks, this program included.
    4: """
    CREATE TABLE items (
        item TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE managers (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE notes (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        incident_id BIGINT NOT NULL,
        depletion_event_id TEXT NOT NULL,
        author TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX notes_by_incident ON notes (incident_id);
    CREATE FUNCTION notes_never_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            RAISE EXCEPTION 'a note is never edited';
        END IF;
        RAISE EXCEPTION 'a note is never deleted';
    END $$;
    CREATE TRIGGER notes_never_edited BEFORE UPDATE ON notes
        FOR EACH ROW EXECUTE FUNCTION notes_never_changed();
    CREATE TRIGGER notes_never_deleted BEFORE DELETE ON notes
        FOR EACH ROW EXECUTE FUNCTION notes_never_changed();
    CREATE TRIGGER notes_never_truncated BEFORE TRUNCATE ON notes
        FOR EACH STATEMENT EXECUTE FUNCTION notes_never_changed();
    """,
    # ERP connectors, as SQLite's version 5: routes and the outbox, filled in the
    # transaction that accepts (or releases) an event.
    5: """
    CREATE TABLE connector_sites (
        connector TEXT NOT NULL,
        site TEXT NOT NULL,
        PRIMARY KEY (connector, site)
    );
    CREATE TABLE connector_outbox (
        connector TEXT NOT NULL,
        applied_seq BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        site TEXT NOT NULL,
        item TEXT,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'unmapped', 'forwarded')),
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        forwarded_at TEXT,
        occurred_us BIGINT,
        result TEXT,
        PRIMARY KEY (connector, applied_seq)
    );
    CREATE INDEX connector_outbox_open ON connector_outbox (connector, state, applied_seq)
        WHERE state != 'forwarded';
    CREATE INDEX connector_outbox_item ON connector_outbox (connector, site, item, occurred_us)
        WHERE state = 'forwarded';
    """,
}
BLOCK = 1 << 24

_STATION_COLS = ("name, site, created_at, revoked_at, last_contact, sent_at, watermark, "
                 "clock_offset_ms, last_batch_events")
_EVENT_COLS = ("event_id, station, site, status, applied_seq, applied_at, received_at, body, "
               "effective_at, warnings, voided_by, reversal, arrival")


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(v: object) -> str:
    if v is None:
        return "\\N"
    return str(v).translate(_COPY_ESCAPES)


def _copy_long(v: str) -> str:
    """A long field (an event's JSON): serialized JSON holds no raw tab, newline or CR, so
    doubling its backslashes is all it needs, several times quicker than a translation."""
    if "\t" in v or "\n" in v or "\r" in v:
        return v.translate(_COPY_ESCAPES)
    return v.replace("\\", "\\\\")


def _copy_text(events: Sequence[NewEvent]) -> str:
    """Rows in COPY's text format (backslash, tab, newline and CR escaped; ``\\N`` for
    NULL), built at once: psycopg's pure-Python row writer costs about 35 µs a row, this
    a tenth of it. The last column is a void's target, from its body."""
    f, esc, null, long = _copy_field, _COPY_ESCAPES, "\\N", _copy_long
    return "".join(
        f"{e.event_id.translate(esc)}\t{e.station.translate(esc)}\t{e.site.translate(esc)}"
        f"\t{e.seq}\t{e.type.translate(esc)}\t{f(e.item)}\t{e.occurred_at.translate(esc)}"
        f"\t{e.received_at.translate(esc)}\t{e.status}\t{f(e.applied_seq)}\t{f(e.applied_at)}"
        f"\t{long(e.body)}\t{f(e.effective_at)}"
        f"\t{null if e.warnings is None else long(e.warnings)}\t"
        f"{f(orjson.loads(e.body).get('voids')) if e.type == 'void' else null}\n"
        for e in events)


def redact_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return re.sub(r"(postgres(?:ql)?://[^:/@]*):[^@/]*@", r"\1:***@", url)


class SiteOwner(tuple[str | None, int | None, bool]):
    """(owner_url, owner_id, held): who last took a site and whether its lock is held now."""

    __slots__ = ()

    @property
    def url(self) -> str | None:
        return self[0]

    @property
    def owner_id(self) -> int | None:
        return self[1]

    @property
    def held(self) -> bool:
        return self[2]


class PgStore:
    """The PostgreSQL store. Use one instance from one thread at a time (the service's
    worker); its one connection also holds this process's site leases."""

    shared = True  # several processes

    # site -> the connectors that forward it (none until set_connector_routes)
    _routes: Mapping[str, tuple[str, ...]] = MappingProxyType({})

    def __init__(self, url: str, *, create: bool = True,
                 idle_session_timeout_s: float = 20.0) -> None:
        self.url = url
        self.shown = redact_url(url)
        self.idle_session_timeout_s = idle_session_timeout_s
        self._closed = False
        self._connectors: set[str] = set()
        self._db = self._connect()
        try:
            if not create:
                self._require_ledger()
            self._migrate()
        except psycopg.Error as exc:
            self._db.close()
            raise StoreError(f"{self.shown}: cannot prepare the ledger database: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            # Client-side keepalives notice a server that vanished; the settings below make
            # the server notice a client that vanished (so its leases are freed).
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=10, keepalives=1,
                                 keepalives_idle=KEEPALIVE_IDLE_S,
                                 keepalives_interval=KEEPALIVE_INTERVAL_S,
                                 keepalives_count=KEEPALIVE_COUNT)
        except psycopg.Error as exc:
            raise StoreError(f"{self.shown}: cannot connect to the ledger database: "
                             f"{str(exc).strip()}") from exc
        try:
            db.execute(f"SET tcp_keepalives_idle = {KEEPALIVE_IDLE_S}; "
                       f"SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S}; "
                       f"SET tcp_keepalives_count = {KEEPALIVE_COUNT}; "
                       f"SET tcp_user_timeout = {USER_TIMEOUT_MS}; "
                       "SET synchronous_commit = on")
            # unless the URL (options=-c idle_session_timeout=...) or the role sets another
            row = db.execute("SHOW idle_session_timeout").fetchone()
            if row is not None and row[0] == "0":
                idle_ms = int(self.idle_session_timeout_s * 1000)
                db.execute(f"SET idle_session_timeout = {idle_ms}")
        except psycopg.Error as exc:
            db.close()
            raise StoreError(f"{self.shown}: cannot configure the session: {exc}") from exc
        return db

    def _require_ledger(self) -> None:
        """A database without the ledger's tables is an error naming it (commands that only
        read, or change an existing ledger, never create one)."""
        row = self._db.execute("SELECT to_regclass('schema_version') IS NOT NULL, "
                               "to_regclass('stations') IS NOT NULL").fetchone()
        if row is None or (not row[0] and not row[1]):
            raise StoreError(f"{self.shown}: no ledger database there (nothing was created; "
                             "'scan-ledger serve' or 'scan-ledger station add' makes one)")
        if not row[1]:
            raise StoreError(f"{self.shown}: not a ledger database (it has no stations table)")

    def _migrate(self) -> None:
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (0)")
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.shown}: database schema {version} is newer than this "
                                 f"ledger ({SCHEMA_VERSION}); upgrade scan-ledger")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                script = _MIGRATIONS[v]
                if any(line.strip() and not line.strip().startswith("--")
                       for line in script.splitlines()):
                    db.execute(script.encode())  # several statements: the simple protocol
                db.execute("UPDATE schema_version SET version = %s", (v,))

    def schema_version(self) -> int:
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self.shown}: {what}: {str(exc).strip()}")

    # -------------------------------------------------------------- stations

    def add_station(self, name: str, site: str, token_hash: str, now: str) -> None:
        try:
            with self._db.transaction():
                row = self._db.execute("SELECT revoked_at FROM stations WHERE name = %s "
                                       "FOR UPDATE", (name,)).fetchone()
                if row is not None and row[0] is None:
                    raise StationError(f"station {name!r} already exists; revoke it first to "
                                       "issue a new token")
                self._db.execute(
                    "INSERT INTO stations (name, site, token_hash, created_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                    "site = excluded.site, token_hash = excluded.token_hash, "
                    "created_at = excluded.created_at, revoked_at = NULL",
                    (name, site, token_hash, now))
                self._db.execute("INSERT INTO sites (site) VALUES (%s) ON CONFLICT DO NOTHING",
                                 (site,))
        except psycopg.Error as exc:
            raise self._fail(f"cannot add station {name!r}", exc) from exc

    def revoke_station(self, name: str, now: str) -> None:
        try:
            cur = self._db.execute(
                "UPDATE stations SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL",
                (now, name))
        except psycopg.Error as exc:
            raise self._fail(f"cannot revoke station {name!r}", exc) from exc
        if cur.rowcount == 0:
            raise StationError(f"no active station named {name!r}")

    def stations(self) -> list[StationRecord]:
        try:
            rows = self._db.execute(f"SELECT {_STATION_COLS} FROM stations ORDER BY name")
            return [StationRecord(*r) for r in rows]
        except psycopg.Error as exc:
            raise self._fail("cannot read stations", exc) from exc

    def station_by_token(self, token_hash: str) -> StationRecord | None:
        try:
            row = self._db.execute(
                f"SELECT {_STATION_COLS} FROM stations WHERE token_hash = %s "
                "AND revoked_at IS NULL", (token_hash,)).fetchone()
        except psycopg.Error as exc:
            raise self._fail("cannot read stations", exc) from exc
        return None if row is None else StationRecord(*row)

    # ---------------------------------------------------------------- events

    def save_batch(self, events: Sequence[NewEvent], released: Sequence[Release],
                   contact: Contact | None, *, voided: Sequence[tuple[str, str]] = (),
                   horizons: Mapping[str, str] | None = None,
                   checkpoint: Checkpoint | None = None) -> None:
        """Append events, mark released ones applied, note the station's contact, the
        settled events a void reversed (target, void), the sites' horizons and a site's
        checkpoint: one transaction, all or nothing, committed (and synced) before this
        returns."""
        db = self._db
        try:
            with db.transaction(), db.cursor() as cur:
                if events:
                    with cur.copy("COPY events (event_id, station, site, seq, type, item, "
                                  "occurred_at, received_at, status, applied_seq, applied_at, "
                                  "body, effective_at, warnings, voids) FROM STDIN") as copy:
                        copy.write(_copy_text(events))
                if released:
                    cur.executemany(
                        "UPDATE events SET status = 'accepted', applied_seq = %s, "
                        "applied_at = %s, effective_at = %s WHERE event_id = %s",
                        [(r.applied_seq, r.applied_at, r.effective_at, r.event_id)
                         for r in released])
                if voided:
                    cur.executemany("UPDATE events SET voided_by = %s WHERE event_id = %s",
                                    [(void, target) for target, void in voided])
                if horizons:
                    cur.executemany(
                        "INSERT INTO horizons (site, horizon) VALUES (%s, %s) "
                        "ON CONFLICT (site) DO UPDATE SET horizon = excluded.horizon",
                        list(horizons.items()))
                if checkpoint is not None:
                    self._write_checkpoint(cur, checkpoint)
                self._fill_outbox(cur, events, released)
                if contact is not None:
                    cur.execute(
                        "UPDATE stations SET last_contact = %s, sent_at = %s, "
                        "watermark = COALESCE(%s, watermark), clock_offset_ms = %s, "
                        "last_batch_events = %s WHERE name = %s",
                        (contact.last_contact, contact.sent_at, contact.watermark,
                         contact.clock_offset_ms, contact.events, contact.station))
        except Exception as exc:
            # Not only psycopg.Error: a value PostgreSQL cannot take (a seq past BIGINT)
            # must not leave a transaction open either; the context manager rolled back.
            raise self._fail("cannot save a batch", exc) from exc

    @staticmethod
    def _write_checkpoint(cur: psycopg.Cursor[Any], cp: Checkpoint) -> None:
        if cp.incidents:
            cur.executemany(
                "INSERT INTO settled_incidents (id, site, status, body) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET site = excluded.site, "
                "status = excluded.status, body = excluded.body",
                [(i.id, i.site, i.status, i.body) for i in cp.incidents])
        if cp.events:
            cur.executemany(
                "UPDATE events SET voided_by = COALESCE(%s, voided_by), "
                "reversal = COALESCE(%s, reversal) WHERE event_id = %s",
                [(void, rev, eid) for eid, void, rev in cp.events])
        # Every row of the site this snapshot stands for is in this transaction's view
        # (the site has one writer), so the highest arrival seen covers them.
        cur.execute(
            "INSERT INTO snapshots (site, applied_seq, last_rowid, taken_at, state) "
            "VALUES (%s, %s, (SELECT COALESCE(MAX(arrival), 0) FROM events), %s, %s) "
            "ON CONFLICT (site) DO UPDATE SET applied_seq = excluded.applied_seq, "
            "last_rowid = excluded.last_rowid, taken_at = excluded.taken_at, "
            "state = excluded.state",
            (cp.site or "", cp.applied_seq, cp.taken_at, cp.state))

    def log(self, after: Snapshot | None = None) -> Iterator[StoredEvent]:
        """Applied events in recorded order, then the ones still held (arrival order)."""
        yield from self.site_log(None, after)

    def site_log(self, site: str | None, after: Snapshot | None = None
                 ) -> Iterator[StoredEvent]:
        """:meth:`log` of one site (or of all with None); with ``after``, only what the
        site's snapshot does not hold."""
        seq, rowid = (-1, 0) if after is None else (after.applied_seq, after.last_rowid)
        where = "" if site is None else "site = %s AND "
        args: tuple[Any, ...] = () if site is None else (site,)
        try:
            with self._db.cursor() as cur:
                cur.execute(f"SELECT {_EVENT_COLS} FROM events WHERE {where}"
                            "applied_seq > %s ORDER BY applied_seq", (*args, seq))
                rows = cur.fetchall()
                yield from (StoredEvent(*r) for r in rows)
                cur.execute(f"SELECT {_EVENT_COLS} FROM events WHERE {where}"
                            "applied_seq IS NULL AND arrival > %s ORDER BY arrival",
                            (*args, rowid))
                rows = cur.fetchall()
                yield from (StoredEvent(*r) for r in rows)
        except psycopg.Error as exc:
            raise self._fail("cannot read the event log", exc) from exc

    def events(self, station: str | None, limit: int,
               before: int | None = None) -> list[StoredEvent]:
        """The newest events first, optionally of one station; with ``before``, those that
        arrived before the event at that position (the next page)."""
        start = (1 << 62) if before is None else before
        try:
            if station is None:
                rows = self._db.execute(
                    f"SELECT {_EVENT_COLS} FROM events WHERE arrival < %s "
                    "ORDER BY arrival DESC LIMIT %s", (start, limit))
            else:
                rows = self._db.execute(
                    f"SELECT {_EVENT_COLS} FROM events WHERE station = %s AND arrival < %s "
                    "ORDER BY arrival DESC LIMIT %s", (station, start, limit))
            return [StoredEvent(*r) for r in rows]
        except psycopg.Error as exc:
            raise self._fail("cannot read events", exc) from exc

    def events_by_id(self, ids: Sequence[str]) -> list[StoredEvent]:
        """The stored events among ``ids``, in the order asked."""
        # One text parameter split by the server: psycopg's pure-Python array dumper costs
        # more than the lookup. (An id with a comma was never stored: ids are UUIDs.)
        wanted = ",".join(i for i in ids if "," not in i)
        try:
            rows = self._db.execute(f"SELECT {_EVENT_COLS} FROM events WHERE event_id = "
                                    "ANY(string_to_array(%s, ','))", (wanted,)).fetchall()
        except psycopg.Error as exc:
            raise self._fail("cannot read events", exc) from exc
        found = {r[0]: StoredEvent(*r) for r in rows}
        return [found[i] for i in ids if i in found]

    def horizons(self) -> dict[str, str]:
        try:
            return {r[0]: r[1] for r in self._db.execute(
                "SELECT site, horizon FROM horizons").fetchall()}
        except psycopg.Error as exc:
            raise self._fail("cannot read horizons", exc) from exc

    def snapshot(self) -> Snapshot | None:
        """The snapshot of the whole ledger: none here, each site has its own
        (:meth:`site_snapshot`), loaded by the process that takes the site."""
        return None

    def site_snapshot(self, site: str) -> Snapshot | None:
        try:
            row = self._db.execute("SELECT applied_seq, last_rowid, taken_at, state "
                                   "FROM snapshots WHERE site = %s", (site,)).fetchone()
        except psycopg.Error as exc:
            raise self._fail(f"cannot read the snapshot of site {site!r}", exc) from exc
        return None if row is None else Snapshot(int(row[0]), int(row[1]), row[2],
                                                 bytes(row[3]))

    def settled_incidents(self, after: int, limit: int,
                          status: str | None) -> list[SettledIncident]:
        """Settled incidents with an id above ``after``, in id order."""
        try:
            if status is None:
                rows = self._db.execute(
                    "SELECT id, site, status, body FROM settled_incidents WHERE id > %s "
                    "ORDER BY id LIMIT %s", (after, limit))
            else:
                rows = self._db.execute(
                    "SELECT id, site, status, body FROM settled_incidents WHERE id > %s "
                    "AND status = %s ORDER BY id LIMIT %s", (after, status, limit))
            return [SettledIncident(*r) for r in rows]
        except psycopg.Error as exc:
            raise self._fail("cannot read incidents", exc) from exc

    def voided_by(self, ids: Sequence[str]) -> dict[str, str]:
        """event id -> the stored void that cancels it (the first, in recorded order), for
        events of sites another process owns."""
        try:
            rows = self._db.execute(
                "SELECT DISTINCT ON (voids) voids, event_id FROM events "
                "WHERE voids = ANY(%s) ORDER BY voids, applied_seq", (list(ids),)).fetchall()
        except psycopg.Error as exc:
            raise self._fail("cannot read events", exc) from exc
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------ the manager's page

    def put_items(self, names: Sequence[tuple[str, str]], now: str) -> tuple[int, int]:
        """Insert or update item names (one transaction); returns (added, updated)."""
        try:
            with self._db.transaction(), self._db.cursor() as cur:
                known = self._names_of(item for item, _ in names)
                cur.executemany(
                    "INSERT INTO items (item, name, updated_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (item) DO UPDATE SET name = excluded.name, "
                    "updated_at = excluded.updated_at WHERE items.name != excluded.name",
                    [(item, name, now) for item, name in names])
        except psycopg.Error as exc:
            raise self._fail("cannot save item names", exc) from exc
        added = sum(1 for item, _ in names if item not in known)
        updated = sum(1 for item, name in names if item in known and known[item] != name)
        return added, updated

    def _names_of(self, items: Iterable[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(items))
        if not wanted:
            return {}
        rows = self._db.execute("SELECT item, name FROM items WHERE item = ANY(%s)",
                                (wanted,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def item_names(self, items: Iterable[str]) -> dict[str, str]:
        """The names known for these item codes (codes without one are left out)."""
        try:
            return self._names_of(items)
        except psycopg.Error as exc:
            raise self._fail("cannot read item names", exc) from exc

    def add_manager(self, name: str, token_hash: str, now: str) -> None:
        try:
            with self._db.transaction():
                row = self._db.execute("SELECT revoked_at FROM managers WHERE name = %s "
                                       "FOR UPDATE", (name,)).fetchone()
                if row is not None and row[0] is None:
                    raise ManagerError(f"manager {name!r} already exists; revoke it first to "
                                       "issue a new token")
                self._db.execute(
                    "INSERT INTO managers (name, token_hash, created_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, "
                    "created_at = excluded.created_at, revoked_at = NULL",
                    (name, token_hash, now))
        except psycopg.Error as exc:
            raise self._fail(f"cannot add manager {name!r}", exc) from exc

    def revoke_manager(self, name: str, now: str) -> None:
        try:
            cur = self._db.execute(
                "UPDATE managers SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL",
                (now, name))
        except psycopg.Error as exc:
            raise self._fail(f"cannot revoke manager {name!r}", exc) from exc
        if cur.rowcount == 0:
            raise ManagerError(f"no active manager named {name!r}")

    def manager_by_token(self, token_hash: str) -> ManagerRecord | None:
        try:
            row = self._db.execute(
                "SELECT name, created_at, revoked_at FROM managers WHERE token_hash = %s "
                "AND revoked_at IS NULL", (token_hash,)).fetchone()
        except psycopg.Error as exc:
            raise self._fail("cannot read managers", exc) from exc
        return None if row is None else ManagerRecord(*row)

    def add_note(self, incident_id: int, depletion_event_id: str, author: str, text: str,
                 now: str) -> NoteRecord:
        try:
            row = self._db.execute(
                "INSERT INTO notes (incident_id, depletion_event_id, author, text, created_at) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (incident_id, depletion_event_id, author, text, now)).fetchone()
        except psycopg.Error as exc:
            raise self._fail("cannot save a note", exc) from exc
        assert row is not None
        return NoteRecord(int(row[0]), incident_id, depletion_event_id, author, text, now)

    def notes(self, incident_ids: Iterable[int] | None = None) -> dict[int, list[NoteRecord]]:
        """Notes by incident, oldest first (of the given incidents, or all)."""
        sql = ("SELECT id, incident_id, depletion_event_id, author, text, created_at "
               "FROM notes")
        try:
            if incident_ids is None:
                rows = self._db.execute(sql + " ORDER BY id").fetchall()
            else:
                wanted = list(dict.fromkeys(incident_ids))
                rows = self._db.execute(sql + " WHERE incident_id = ANY(%s) ORDER BY id",
                                        (wanted,)).fetchall() if wanted else []
        except psycopg.Error as exc:
            raise self._fail("cannot read notes", exc) from exc
        out: dict[int, list[NoteRecord]] = {}
        for r in rows:
            out.setdefault(int(r[1]), []).append(NoteRecord(int(r[0]), int(r[1]), *r[2:]))
        return out

    # ================================================================ ERP connectors
    # As in ledger.store: routes, outbox, forwarding state. ``_fill_outbox`` is called by
    # ``save_batch`` inside its transaction, so an accepted or released movement is never
    # without its outbox row, whichever process saved it.

    def set_connector_routes(self, routes: Sequence[tuple[str, str]]) -> None:
        """Record which connector forwards which site (from the config, at start; every
        process has the same). A route that is new puts the site's whole accepted history
        in that connector's outbox."""
        try:
            with self._db.transaction(), self._db.cursor() as cur:
                # one process at a time: two starting together fill a new route once
                cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_MIGRATION_LOCK,))
                known = {(r[0], r[1]) for r in cur.execute(
                    "SELECT connector, site FROM connector_sites").fetchall()}
                for connector, site in routes:
                    if (connector, site) in known:
                        continue
                    cur.execute("INSERT INTO connector_sites (connector, site) "
                                "VALUES (%s, %s) ON CONFLICT DO NOTHING", (connector, site))
                    cur.execute(
                        "INSERT INTO connector_outbox (connector, applied_seq, event_id, "
                        "site, item) SELECT %s, applied_seq, event_id, site, item FROM events "
                        "WHERE site = %s AND applied_seq IS NOT NULL ON CONFLICT DO NOTHING",
                        (connector, site))
                for connector, site in known - set(routes):
                    cur.execute("DELETE FROM connector_sites WHERE connector = %s "
                                "AND site = %s", (connector, site))
        except psycopg.Error as exc:
            raise self._fail("cannot set connector routes", exc) from exc
        by_site: dict[str, list[str]] = {}
        for connector, site in routes:
            by_site.setdefault(site, []).append(connector)
        self._routes = {site: tuple(cs) for site, cs in by_site.items()}

    def _fill_outbox(self, cur: psycopg.Cursor[Any], events: Sequence[NewEvent],
                     released: Sequence[Release]) -> None:
        if not self._routes:
            return
        routes = self._routes
        rows = [(c, e.applied_seq, e.event_id, e.site, e.item) for e in events
                if e.applied_seq is not None and e.site in routes for c in routes[e.site]]
        if rows:
            cur.executemany(
                "INSERT INTO connector_outbox (connector, applied_seq, event_id, site, item) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)
        if released:
            cur.executemany(
                "INSERT INTO connector_outbox (connector, applied_seq, event_id, site, item) "
                "SELECT c.connector, %s, e.event_id, e.site, e.item FROM events e "
                "JOIN connector_sites c ON c.site = e.site WHERE e.event_id = %s "
                "ON CONFLICT DO NOTHING",
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
                "ON e.event_id = o.event_id WHERE o.connector = %s AND o.state = %s "
                "AND o.applied_seq > %s ORDER BY o.applied_seq LIMIT %s",
                (connector, state, after, limit)).fetchall()
        except psycopg.Error as exc:
            raise self._fail("cannot read the outbox", exc) from exc
        return [OutboxEntry(*r) for r in rows]

    def outbox_mark(self, connector: str, applied_seq: int, state: str, reason: str | None,
                    result: str | None, now: str, also: Sequence[tuple[int, str]] = (),
                    item: str | None = None, occurred_us: int | None = None) -> None:
        """Record how an entry went (see :meth:`ledger.store.SqliteStore.outbox_mark`)."""
        try:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute(
                    "UPDATE connector_outbox SET state = %s, reason = %s, result = %s, "
                    "attempts = attempts + 1, item = COALESCE(item, %s), "
                    "occurred_us = COALESCE(%s, occurred_us), "
                    "forwarded_at = CASE WHEN %s = 'forwarded' THEN %s "
                    "ELSE forwarded_at END WHERE connector = %s AND applied_seq = %s",
                    (state, reason, result, item, occurred_us, state, now, connector,
                     applied_seq))
                if also:
                    cur.executemany(
                        "UPDATE connector_outbox SET result = %s WHERE connector = %s "
                        "AND applied_seq = %s", [(r, connector, seq) for seq, r in also])
        except psycopg.Error as exc:
            raise self._fail("cannot update the outbox", exc) from exc

    def outbox_item_history(self, connector: str, site: str, item: str | None,
                            since_us: int | None = None) -> list[OutboxEntry]:
        """The forwarded entries of one item at one site, dated at or after ``since_us`` if
        given (for counts and their corrections)."""
        try:
            rows = self._db.execute(
                f"SELECT {self._OUTBOX_COLS} FROM connector_outbox o JOIN events e "
                "ON e.event_id = o.event_id WHERE o.connector = %s AND o.site = %s "
                "AND o.item IS NOT DISTINCT FROM %s AND o.state = 'forwarded' "
                "AND o.occurred_us >= %s ORDER BY o.applied_seq",
                (connector, site, item, -(2**62) if since_us is None else since_us)
            ).fetchall()
        except psycopg.Error as exc:
            raise self._fail("cannot read the outbox", exc) from exc
        return [OutboxEntry(*r) for r in rows]

    def outbox_entry(self, connector: str, event_id: str) -> OutboxEntry | None:
        try:
            row = self._db.execute(
                f"SELECT {self._OUTBOX_COLS} FROM connector_outbox o JOIN events e "
                "ON e.event_id = o.event_id WHERE o.connector = %s AND o.event_id = %s",
                (connector, event_id)).fetchone()
        except psycopg.Error as exc:
            raise self._fail("cannot read the outbox", exc) from exc
        return None if row is None else OutboxEntry(*row)

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """connector -> state -> how many entries."""
        out: dict[str, dict[str, int]] = {}
        try:
            for connector, state, n in self._db.execute(
                    "SELECT connector, state, count(*) FROM connector_outbox "
                    "GROUP BY connector, state").fetchall():
                out.setdefault(connector, {})[state] = int(n)
        except psycopg.Error as exc:
            raise self._fail("cannot read the outbox", exc) from exc
        return out

    def claim_connector(self, connector: str) -> bool:
        """Whether this process forwards ``connector``: one process at a time does, the one
        whose session holds the connector's advisory lock (taken here if free; freed with
        the session when that process stops or dies, so another takes it over)."""
        if connector in self._connectors:
            return True
        try:
            row = self._db.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                   (_CONNECTOR_LOCK, connector)).fetchone()
        except psycopg.Error as exc:
            raise self._fail(f"cannot take the lease of connector {connector!r}", exc) from exc
        if row is not None and row[0]:
            self._connectors.add(connector)
            return True
        return False
    # ============================================================ end ERP connectors

    # ------------------------------------------------------------ site leases

    def next_block(self) -> int:
        """The start of a fresh block of recorded-order positions (each batch takes one, so
        positions never collide between processes and grow with time for every site)."""
        try:
            row = self._db.execute("SELECT nextval('applied_block')").fetchone()
        except psycopg.Error as exc:
            raise self._fail("cannot number a batch", exc) from exc
        assert row is not None
        return int(row[0]) * BLOCK

    def join(self, member_id: int) -> None:
        """Take this process's membership lock (live members are what a fair share counts)."""
        try:
            self._db.execute("SELECT pg_advisory_lock(%s, %s)", (_MEMBER_LOCK, member_id))
        except psycopg.Error as exc:
            raise self._fail("cannot join the ledger's processes", exc) from exc

    def members(self) -> int:
        """How many ledger processes hold a session on this database now."""
        try:
            row = self._db.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = "
                "current_database()) AND classid = %s AND objsubid = 2",
                (_MEMBER_LOCK,)).fetchone()
        except psycopg.Error as exc:
            raise self._fail("cannot count the ledger's processes", exc) from exc
        return max(1, int(row[0]) if row else 1)

    def site_owners(self) -> dict[str, SiteOwner]:
        """Every site known (from its stations) with its owner, if its lease is held."""
        try:
            rows = self._db.execute(
                "SELECT s.site, s.owner_url, s.owner_id, l.pid IS NOT NULL FROM sites s "
                "LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = "
                "current_database()) AND l.classid = %s AND l.objid = s.lock_key "
                "AND l.objsubid = 2 ORDER BY s.site", (_SITE_LOCK,)).fetchall()
        except psycopg.Error as exc:
            raise self._fail("cannot read the site leases", exc) from exc
        return {r[0]: SiteOwner((r[1], r[2], bool(r[3]))) for r in rows}

    def claim_site(self, site: str, member_id: int, url: str, now: str) -> bool:
        """Take ``site``'s lease if nobody holds it; True if this session holds it now."""
        try:
            self._db.execute("INSERT INTO sites (site) VALUES (%s) ON CONFLICT DO NOTHING",
                             (site,))
            row = self._db.execute(
                "SELECT pg_try_advisory_lock(%s, lock_key) FROM sites WHERE site = %s",
                (_SITE_LOCK, site)).fetchone()
            if row is None or not row[0]:
                return False
            self._db.execute("UPDATE sites SET owner_id = %s, owner_url = %s, owned_since = %s "
                             "WHERE site = %s", (member_id, url, now, site))
        except psycopg.Error as exc:
            raise self._fail(f"cannot take the lease of site {site!r}", exc) from exc
        return True

    def release_site(self, site: str) -> None:
        """Give ``site``'s lease back (a clean shutdown; closing the session does it too)."""
        try:
            self._db.execute(
                "SELECT pg_advisory_unlock(%s, lock_key) FROM sites WHERE site = %s",
                (_SITE_LOCK, site))
        except psycopg.Error as exc:
            raise self._fail(f"cannot release site {site!r}", exc) from exc
