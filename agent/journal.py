"""The station's journal: every scan and movement, durable in SQLite before it is acknowledged.

All of the agent's SQL lives here. One :class:`Journal` owns one connection and is used from
one thread; :class:`JournalWriter` is the one writer: a thread (the capture thread) running
an event loop of its own, where the daemon reads its scanners and commits each scan inline,
grouping the captures that arrive together into one transaction (group commit), so four
scanners at once share each fsync; every other write waits behind the captures.
:class:`JournalReader` is a second connection for reads (WAL readers never block the writer)
and for checkpoints off the capture path.

Durability: WAL with ``synchronous=FULL``; a capture's future resolves only after COMMIT
returns (sync's results alone commit without waiting for the disk: see ``record_results``).
Schema changes are migrations keyed by ``PRAGMA user_version``.

Tables: ``scans`` (audit: one row per raw scan, accepted, rejected or debounced),
``movements`` (one row per movement; ``seq`` gap-free per station), ``sessions`` (each
scanner's session state, written in the same transaction as its scan), ``meta`` (station,
next seq, sync and clock state), ``scanners`` (connection state), ``alerts`` (recent errors),
``ledger_incidents`` (the ledger's open incidents behind this station's warnings, as sync last
read them; see :mod:`agent.incidents`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from agent.errors import JournalError, JournalFullError
from agent.session import Draft

if TYPE_CHECKING:
    # imported by _migrate only when a migration is due: a journal that is up to date (every
    # start after the first) never loads sqlite-utils, its plugins and its CLI (~3 MB, ~40 ms)
    import sqlite_utils

__all__ = [
    "SCHEMA_VERSION",
    "Capture",
    "Captured",
    "Journal",
    "JournalReader",
    "JournalWriter",
    "LedgerView",
    "Warned",
    "create_journal",
    "ledger_view",
    "movement_rows",
    "open_readonly",
    "status_rows",
    "warned_movements",
]

SCHEMA_VERSION = 3
_ALERTS_KEPT = 200
_WAIT_FOR_SCANNERS_MAX = 0.001  # seconds a group commit may wait for its scanners at most
_CHECKPOINT_EVERY = 1.0  # seconds between two checkpoints of the write-ahead log, at most
_CHECKPOINT_COMMITS = 100  # capture commits between two checkpoints, at most
_READER_CACHE_KB = 256  # page cache of a reading connection
_CHAIN_BROKEN = "an earlier scan from this scanner was not saved, and this one follows from it"
_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)

T = TypeVar("T")


class Capture(NamedTuple):
    """One raw scan and what it did, to be committed atomically (a named tuple: immutable,
    and quicker to make than a frozen dataclass, for every scan)."""

    scanner: str
    text: str
    raw: bytes
    wall_time: float
    boot_ns: int
    boot_id: str
    outcome: str  # accepted | rejected | debounced
    reason: str | None = None
    note: str | None = None
    movement: Draft | None = None
    session_state: str | None = None  # JSON of the scanner's state after this scan
    wall_offset_ms: float | None = None  # best known (ledger - wall) offset at capture
    ntp_synced: bool | None = None
    # (scanner, generation): captures of one chain were worked out one from the other (a
    # scanner's session). Once one fails, the writer refuses every capture of that scanner
    # with a generation up to the failed one's, unwritten; the station starts a new one.
    chain: tuple[str, int] | None = None


class Captured(NamedTuple):
    """What the commit assigned: the scan's audit id and the movement's seq, if any."""

    scan_id: int
    seq: int | None
    event_id: str | None


def _translate(exc: sqlite3.Error | OSError, doing: str) -> JournalError:
    full = isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == 13
    full = full or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
    full = full or "database or disk is full" in str(exc)
    if full:
        return JournalFullError(errno.ENOSPC, f"journal disk full while {doing}")
    return JournalError(f"journal error while {doing}: {exc}")


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("scans").create(
        {"id": int, "scanner": str, "wall_time": float, "boot_ns": int, "boot_id": str,
         "text": str, "raw": bytes, "outcome": str, "reason": str, "note": str,
         "event_id": str},
        pk="id", not_null={"scanner", "wall_time", "boot_ns", "boot_id", "text", "outcome"},
    )
    db.table("movements").create(
        {"seq": int, "event_id": str, "scanner": str, "type": str, "item": str, "lot": str,
         "serial": str, "expiry": str, "qty": int, "from_location": str, "to_location": str,
         "reference": str, "operator": str, "voids": str, "raw": str, "wall_time": float,
         "boot_ns": int, "boot_id": str, "wall_offset_ms": float, "ntp_synced": int,
         "state": str, "occurred_at": str, "clock": str, "body": str, "first_sent_at": float,
         "synced_at": float, "result": str, "reason": str, "warnings": str},
        pk="seq",
        not_null={"event_id", "scanner", "type", "item", "qty", "raw", "wall_time", "boot_ns",
                  "boot_id", "state"},
        defaults={"state": "pending"},
    )
    # Only quarantined rows are in this index, so capturing a movement never touches it.
    # There is deliberately no index a capture must update beyond the primary keys: each one
    # is another page written and synced with every scan. Pending rows are found from the
    # lowest pending seq (see Journal.pending); event ids are UUIDv7 and their uniqueness is
    # the ledger's to enforce.
    db.execute("CREATE INDEX movements_rejected ON movements(seq) WHERE state = 'rejected'")
    db.table("sessions").create({"scanner": str, "state": str, "updated": float}, pk="scanner",
                          not_null={"state"})
    db.table("scanners").create({"scanner": str, "connected": int, "detail": str, "since": float},
                          pk="scanner")
    db.table("alerts").create({"id": int, "at": float, "source": str, "message": str}, pk="id",
                        not_null={"at", "source", "message"})


def _migrate_v2(db: sqlite_utils.Database) -> None:
    # The ledger's open incidents behind this station's warnings, as sync last read them
    # (replaced as a whole at each reading); when and how the reading went is in meta.
    db.table("ledger_incidents").create(
        {"id": int, "depletion_event_id": str, "item": str, "location": str, "class": str,
         "balance": int, "confirmed": int, "opened_at": str},
        pk="id", not_null={"depletion_event_id", "item", "class"})
    # Only rows with warnings are in this index (a capture writes none: the ledger's result
    # adds them), so finding the newest warned movements never reads the whole table.
    db.execute("CREATE INDEX movements_warned ON movements(seq) WHERE warnings IS NOT NULL")


def _migrate_v3(db: sqlite_utils.Database) -> None:
    # A count's running total before it, for CMD-UNDO after a restart: a scanner's undo
    # history is read back from its movements (see Journal.undo_history), so the session
    # saved with every scan stays a few hundred bytes instead of kilobytes.
    db.execute("ALTER TABLE movements ADD COLUMN previous_total INTEGER")


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _migrate_v1,
                                                                  2: _migrate_v2,
                                                                  3: _migrate_v3}

# meta keys of the ledger's open incidents (see Journal.store_incidents)
_ASKED = "ledger.incidents_at"  # wall time the last reading that answered was asked
_ASKED_SEQ = "ledger.incidents_seq"  # ... about the movements up to this seq
_ASK_ERROR = "ledger.incidents_error"  # why the last reading failed (None: it did not)
_ASK_ERROR_AT = "ledger.incidents_error_at"

_INSERT_SCAN = (
    "INSERT INTO scans (id, scanner, wall_time, boot_ns, boot_id, text, raw, outcome, reason,"
    " note, event_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_MOVEMENT = (
    "INSERT INTO movements (seq, event_id, scanner, type, item, lot, serial, expiry, qty,"
    " from_location, to_location, reference, operator, voids, raw, wall_time, boot_ns, boot_id,"
    " wall_offset_ms, ntp_synced, previous_total, state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
    "?,?,?,?,?,?,"
    "'pending')"
)
_UPSERT_SESSION = (
    "INSERT INTO sessions (scanner, state, updated) VALUES (?,?,?) ON CONFLICT(scanner)"
    " DO UPDATE SET state = excluded.state, updated = excluded.updated"
)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an error) on a connection or
    cursor; see :meth:`Journal.transaction`. A class, not a generator: every scan's capture
    runs one."""

    __slots__ = ("durable", "on")

    def __init__(self, on: sqlite3.Connection | sqlite3.Cursor, durable: bool = True) -> None:
        self.on, self.durable = on, durable

    def __enter__(self) -> None:
        if not self.durable:
            self.on.execute("PRAGMA synchronous = NORMAL")
        try:
            self.on.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restore()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        try:
            if exc_type is None:
                self.on.execute("COMMIT")
            else:
                with contextlib.suppress(sqlite3.Error):
                    self.on.execute("ROLLBACK")
        finally:
            self._restore()

    def _restore(self) -> None:
        if not self.durable:
            self.on.execute("PRAGMA synchronous = FULL")


class Journal:
    """One connection to the journal file; not thread-safe (see :class:`JournalWriter`)."""

    def __init__(self, path: str | os.PathLike[str], station: str, site: str) -> None:
        self.path = str(path)
        self.station = station
        self.site = site
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"{self.path}: could not switch the journal to WAL ({mode})")
            conn.execute("PRAGMA synchronous = FULL")
            self.conn = conn
            # the capture's statements run on one cursor kept for them: Connection.execute
            # makes a new cursor for every statement, five per scan
            self._capture_cursor = conn.cursor()
            self._migrate()
            self._check_station()
            # next seq: after the highest journaled, and never below the floor that prune
            # records before it deletes (so pruning the newest rows cannot reuse a seq)
            top = self.conn.execute("SELECT max(seq) FROM movements").fetchone()[0] or 0
            self._next_seq = max(top + 1, int(self.get_meta("next_seq") or "1"))
            last_scan = self.conn.execute("SELECT max(id) FROM scans").fetchone()[0] or 0
            self._next_scan_id = last_scan + 1
            self._pending_from = 1  # the lowest seq that may be pending; found on first use
        except sqlite3.DatabaseError as exc:
            if ((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF) in _DAMAGED:
                raise JournalError(
                    f"journal error while opening {self.path}: {exc}: the journal is damaged."
                    " Stop the agent, copy the file aside for recovery and start with a new"
                    " journal.") from exc
            raise _translate(exc, f"opening {self.path}") from exc
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, f"opening {self.path}") from exc

    # -- schema ----------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema {version} is newer than this agent "
                f"understands ({SCHEMA_VERSION}); upgrade scan-agent"
            )
        if version == SCHEMA_VERSION:
            return
        import sqlite_utils

        db = sqlite_utils.Database(self.conn, execute_plugins=False)
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                MIGRATIONS[v](db)
                self.conn.execute(f"PRAGMA user_version = {v}")

    def _check_station(self) -> None:
        owner = self.get_meta("station")
        if owner is None:
            with self.transaction():
                self.set_meta("station", self.station)
                self.set_meta("site", self.site)
                self.set_meta("next_seq", "1")
        elif owner != self.station:
            raise JournalError(
                f"{self.path}: this journal belongs to station {owner!r}, not {self.station!r}; "
                "give each station its own database"
            )

    def transaction(self, durable: bool = True) -> _Transaction:
        """One write transaction (``with journal.transaction(): ...``). ``durable=False``
        commits without waiting for the disk (``synchronous = NORMAL``): safe from a crash of
        the process, and made durable by the next durable commit (which syncs the whole
        write-ahead log), but a power cut may take it back. Only for what may be lost that
        way (see ``record_results``)."""
        return _Transaction(self.conn, durable)

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: an empty list when the file is sound."""
        try:
            rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        except sqlite3.Error as exc:
            return [str(exc)]
        return [] if rows == ["ok"] else rows

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    # -- meta ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                          " SET value = excluded.value", (key, value))

    def write_meta(self, values: dict[str, str | None]) -> None:
        try:
            with self.transaction():
                for k, v in values.items():
                    self.set_meta(k, v)
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "writing state") from exc

    # -- capture ---------------------------------------------------------------------------

    def capture(self, records: Sequence[Capture]) -> list[Captured]:
        """Commit ``records`` in one transaction; all or nothing."""
        out: list[Captured] = []
        scans: list[tuple[Any, ...]] = []
        moves: list[tuple[Any, ...]] = []
        sessions: list[tuple[str, str, float]] = []
        seq, scan_id = self._next_seq, self._next_scan_id
        for r in records:
            m = r.movement
            scans.append((scan_id, r.scanner, r.wall_time, r.boot_ns, r.boot_id, r.text, r.raw,
                          r.outcome, r.reason, r.note, m.event_id if m else None))
            if m is not None:
                ntp = r.ntp_synced
                moves.append((
                    seq, m.event_id, r.scanner, m.type, m.item, m.lot, m.serial, m.expiry, m.qty,
                    m.from_location, m.to_location, m.reference, m.operator, m.voids,
                    _json_strings(m.raw), r.wall_time, r.boot_ns, r.boot_id,
                    r.wall_offset_ms, None if ntp is None else int(ntp), m.previous_total))
                out.append(Captured(scan_id, seq, m.event_id))
                seq += 1
            else:
                out.append(Captured(scan_id, None, None))
            if r.session_state is not None:
                sessions.append((r.scanner, r.session_state, r.wall_time))
            scan_id += 1
        cur = self._capture_cursor
        try:
            with _Transaction(cur):
                cur.executemany(_INSERT_SCAN, scans)
                if moves:
                    cur.executemany(_INSERT_MOVEMENT, moves)
                if sessions:
                    cur.executemany(_UPSERT_SESSION, sessions)
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "committing a scan") from exc
        self._next_seq, self._next_scan_id = seq, scan_id
        return out

    def sessions(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT scanner, state FROM sessions")}

    def undo_history(self, scanner: str, depth: int) -> list[dict[str, Any]]:
        """The ``depth`` newest movements of ``scanner`` that CMD-UNDO can still void, oldest
        first: its movements newest first, leaving out voids and what they voided (a void
        comes after what it voids, so it is met first).

        A scanner's undo history is always its newest movements less the voided ones (a
        barrier, ``MODE-``, ``USER-`` or ``CMD-RESET``, only shortens it), so the session
        saved with each scan keeps its depth, not its entries. Reads back from the newest
        movement and stops at ``depth`` found (quick for a scanner in use; one that scanned
        little reads further back). A count journaled before the count's previous total was
        kept (schema 2) ends the history: undoing it could not put its total back."""
        if depth <= 0:
            return []
        found: list[dict[str, Any]] = []
        voided: set[str] = set()
        try:
            cur = self.conn.execute(
                "SELECT event_id, type, item, qty, lot, serial, expiry, from_location,"
                " to_location, voids, boot_id, boot_ns, previous_total FROM movements"
                " WHERE scanner = ? ORDER BY seq DESC", (scanner,))
            names = [d[0] for d in cur.description]
            for row in cur:
                m = dict(zip(names, row, strict=True))
                if m["type"] == "void":
                    voided.add(m["voids"])
                elif m["event_id"] not in voided:
                    if m["type"] == "count" and m["previous_total"] is None:
                        break  # journaled before its total was kept: undo stops short of it
                    found.append(m)
                    if len(found) == depth:
                        break
            cur.close()
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading the undo history of {scanner}") from exc
        return found[::-1]

    # -- sync ------------------------------------------------------------------------------

    def pending(self, limit: int, after_seq: int = 0) -> list[dict[str, Any]]:
        """Up to ``limit`` unsynced movements in seq order (never the whole backlog).

        The scan starts at the lowest seq that can still be pending: a movement only ever
        leaves the pending state, and new ones get higher seqs, so everything below the first
        pending row found stays not pending.
        """
        start = max(after_seq + 1, self._pending_from)
        rows = _pending_rows(self.conn, start, limit)
        if start == self._pending_from:
            self._pending_from = rows[0]["seq"] if rows else self._next_seq
        return rows

    def freeze(self, stamps: Sequence[tuple[int, str, str, str, float]],
               durable: bool = True) -> None:
        """Record (seq, occurred_at, clock JSON, event JSON, first_sent_at) before a first send.

        A movement is sent as the same bytes on every retry, so the ledger can tell a replay
        (``duplicate``) from a conflict: the stamps must be durable before the batch leaves.
        A batch frozen in slices passes ``durable=False`` for all but its last slice, whose
        durable commit syncs the others with it.
        """
        try:
            with self.transaction(durable):
                self.conn.executemany(
                    "UPDATE movements SET occurred_at = ?, clock = ?, body = ?,"
                    " first_sent_at = ? WHERE seq = ? AND occurred_at IS NULL",
                    [(o, c, b, t, s) for s, o, c, b, t in stamps])
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "stamping movements for sync") from exc

    def record_results(self, results: Sequence[tuple[int, str, str | None, list[str]]],
                       now: float) -> None:
        """Store the ledger's per-event results: (seq, status, reason, warnings).

        Not waiting for the disk: a result that a power cut takes back leaves its movement
        pending, and it is sent again and answered ``duplicate`` (delivery is at least once),
        so the disk's time goes to captures. The next capture's commit makes it durable.
        """
        rows = []
        for seq, status, reason, warnings in results:
            state = "rejected" if status == "rejected" else "synced"
            rows.append((state, now, status, reason, json.dumps(warnings) if warnings else None,
                         seq))
        try:
            with self.transaction(durable=False):
                self.conn.executemany(
                    "UPDATE movements SET state = ?, synced_at = ?, result = ?, reason = ?,"
                    " warnings = ? WHERE seq = ?", rows)
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "recording sync results") from exc

    def oldest_pending(self) -> dict[str, Any] | None:
        rows = self.pending(1)
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        """Movements by sync state (pending, synced, rejected); reads the whole table."""
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT state, count(*) FROM movements GROUP BY state")}

    def queue_depth(self) -> tuple[int, int, float | None]:
        """(pending, quarantined, wall time of the oldest pending), without a full scan."""
        return _queue_depth(self.conn, self._pending_from, self.oldest_pending())

    # -- status ----------------------------------------------------------------------------

    def set_scanner_state(self, scanner: str, connected: bool, detail: str, since: float) -> None:
        try:
            with self.transaction():
                self.conn.execute(
                    "INSERT INTO scanners (scanner, connected, detail, since) VALUES (?,?,?,?)"
                    " ON CONFLICT(scanner) DO UPDATE SET connected = excluded.connected,"
                    " detail = excluded.detail, since = excluded.since",
                    (scanner, int(connected), detail, since))
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "recording scanner state") from exc

    def alert(self, source: str, message: str, at: float | None = None) -> None:
        """Keep a recent error for ``scan-agent status`` (the newest few hundred)."""
        try:
            with self.transaction():
                cur = self.conn.execute(
                    "INSERT INTO alerts (at, source, message) VALUES (?,?,?)",
                    (time.time() if at is None else at, source, message))
                self.conn.execute("DELETE FROM alerts WHERE id <= ?",
                                  (int(cur.lastrowid or 0) - _ALERTS_KEPT,))
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "recording an alert") from exc

    def store_incidents(self, asked_at: float, through_seq: int,
                        incidents: Sequence[dict[str, Any]]) -> None:
        """Keep the ledger's answer: the open incidents behind this station's warnings, as
        the ledger gave them when asked at ``asked_at`` (they replace the previous answer),
        about the movements up to ``through_seq`` (their results had come when it was asked).

        Not waiting for the disk: an answer a power cut takes back is asked again."""
        rows = [(i["id"], i["depletion_event_id"], i["item"], i["location"], i["class"],
                 i.get("balance"), int(bool(i.get("confirmed"))), i.get("opened_at"))
                for i in incidents]
        try:
            with self.transaction(durable=False):
                self.conn.execute("DELETE FROM ledger_incidents")
                self.conn.executemany(
                    'INSERT INTO ledger_incidents (id, depletion_event_id, item, location,'
                    ' "class", balance, confirmed, opened_at) VALUES (?,?,?,?,?,?,?,?)', rows)
                self.set_meta(_ASKED, repr(asked_at))
                self.set_meta(_ASKED_SEQ, str(through_seq))
                self.set_meta(_ASK_ERROR, None)
                self.set_meta(_ASK_ERROR_AT, None)
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "keeping the ledger's open incidents") from exc

    def incidents_unknown(self, at: float, why: str) -> None:
        """Asking the ledger for its open incidents failed at ``at``: the last answer stays,
        with why it is not newer."""
        self.write_meta({_ASK_ERROR: why, _ASK_ERROR_AT: repr(at)})

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete synced movements (and their audit rows) older than the retention age.

        Pending and quarantined (``rejected``) movements are never pruned.
        """
        cutoff = (time.time() if now is None else now) - retention_days * 86400
        try:
            with self.transaction():
                self.set_meta("next_seq", str(self._next_seq))
                cur = self.conn.execute(
                    "DELETE FROM movements WHERE state = 'synced' AND synced_at < ?", (cutoff,))
                n = cur.rowcount
                self.conn.execute(
                    "DELETE FROM scans WHERE wall_time < ? AND (event_id IS NULL OR event_id NOT"
                    " IN (SELECT event_id FROM movements))", (cutoff,))
        except (sqlite3.Error, OSError) as exc:
            raise _translate(exc, "pruning old movements") from exc
        return n


@dataclass(frozen=True, slots=True)
class Warned:
    """A movement the ledger answered with warnings, and what this journal knows since."""

    seq: int
    event_id: str
    type: str
    item: str
    from_location: str | None
    to_location: str | None
    warnings: tuple[str, ...]
    voided: bool  # undone at a scanner of this station since
    recounted: bool  # its item counted here since, in the bin it was taken from


def warned_movements(conn: sqlite3.Connection, limit: int) -> list[Warned]:
    """The newest ``limit`` movements with warnings from the ledger, newest first."""
    try:
        rows = conn.execute(
            "SELECT seq, event_id, type, item, from_location, to_location, warnings"
            " FROM movements WHERE warnings IS NOT NULL ORDER BY seq DESC LIMIT ?",
            (limit,)).fetchall()
        if not rows:
            return []
        first = min(r[0] for r in rows)  # a void or a count comes after what it concerns
        ids = [r[1] for r in rows]
        voided = {v for (v,) in conn.execute(
            f"SELECT voids FROM movements WHERE seq > ? AND type = 'void'"
            f" AND voids IN ({','.join('?' * len(ids))})", (first, *ids))}
        counted = {(i, loc): seq for i, loc, seq in conn.execute(
            "SELECT item, to_location, max(seq) FROM movements WHERE seq > ?"
            " AND type = 'count' GROUP BY item, to_location", (first,))}
    except sqlite3.Error as exc:
        raise _translate(exc, "reading the ledger's warnings") from exc
    return [Warned(seq=r[0], event_id=r[1], type=r[2], item=r[3], from_location=r[4],
                   to_location=r[5], warnings=tuple(json.loads(r[6])),
                   voided=r[1] in voided,
                   recounted=counted.get((r[3], r[4]), 0) > r[0])
            for r in rows]


@dataclass(frozen=True, slots=True)
class LedgerView:
    """The ledger's open incidents behind this station's warnings, as last read by sync.

    ``asked_at`` is None when the ledger never answered (or the journal predates the
    reading); the answer covers the movements up to ``through_seq`` (by seq, not by time:
    a wall clock that jumps cannot make an answer seem to cover a movement it did not);
    ``error`` says why the latest attempt failed, if it did."""

    asked_at: float | None
    through_seq: int | None
    incidents: tuple[dict[str, Any], ...]
    error: str | None
    error_at: float | None


def ledger_view(conn: sqlite3.Connection) -> LedgerView:
    """What sync last learnt from the ledger about the incidents behind this station's
    warnings (nothing from a journal of an agent older than the reading)."""
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < 2:
            return LedgerView(None, None, (), None, None)
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?,?,?,?)",
                                 (_ASKED, _ASKED_SEQ, _ASK_ERROR, _ASK_ERROR_AT)).fetchall())
        cols = ("id", "depletion_event_id", "item", "location", "class", "balance",
                "confirmed", "opened_at")
        incidents = tuple(
            {**dict(zip(cols, r, strict=True)), "confirmed": bool(r[6])}
            for r in conn.execute(
                'SELECT id, depletion_event_id, item, location, "class", balance, confirmed,'
                " opened_at FROM ledger_incidents ORDER BY id"))
    except sqlite3.Error as exc:
        raise _translate(exc, "reading the ledger's open incidents") from exc

    def number(key: str) -> float | None:
        v = meta.get(key)
        return None if v is None else float(v)

    seq = meta.get(_ASKED_SEQ)
    return LedgerView(number(_ASKED), None if seq is None else int(seq), incidents,
                      meta.get(_ASK_ERROR), number(_ASK_ERROR_AT))


def _queue_depth(conn: sqlite3.Connection, start: int,
                 oldest: dict[str, Any] | None) -> tuple[int, int, float | None]:
    try:
        pending = conn.execute(
            "SELECT count(*) FROM movements WHERE seq >= ? AND state = 'pending'",
            (start,)).fetchone()[0]
        rejected = conn.execute(
            "SELECT count(*) FROM movements WHERE state = 'rejected'").fetchone()[0]
    except sqlite3.Error as exc:
        raise _translate(exc, "counting the queue") from exc
    return int(pending), int(rejected), oldest["wall_time"] if oldest else None


def _checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
    try:
        _, log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:
        raise _translate(exc, "checkpointing the journal") from exc
    return int(log), int(copied)


def _pending_rows(conn: sqlite3.Connection, start: int, limit: int) -> list[dict[str, Any]]:
    try:
        cur = conn.execute(
            "SELECT * FROM movements WHERE seq >= ? AND state = 'pending' ORDER BY seq"
            " LIMIT ?", (start, limit))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]
    except sqlite3.Error as exc:
        raise _translate(exc, "reading movements to sync") from exc


class JournalReader:
    """A second, read-only connection to a journal, for sync's reads and the queue gauge.

    In WAL mode a reader never blocks the writer, so reading a batch of a thousand movements
    holds up no capture. Use it from one thread at a time (``asyncio.to_thread``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA busy_timeout = 5000")
            self.conn.execute("PRAGMA query_only = 1")
            # reads walk forward through the table once: a small page cache does (the
            # default 2 MB per connection would show as the agent's memory growing with
            # the backlog)
            self.conn.execute(f"PRAGMA cache_size = -{_READER_CACHE_KB}")
        except sqlite3.Error as exc:
            raise _translate(exc, f"opening {self.path} to read") from exc
        self._pending_from = 1  # as Journal.pending: the lowest seq that may be pending

    def pending(self, limit: int, after_seq: int = 0) -> list[dict[str, Any]]:
        """Up to ``limit`` unsynced movements in seq order, as :meth:`Journal.pending`."""
        start = max(after_seq + 1, self._pending_from)
        try:
            self.conn.execute("BEGIN")  # one snapshot for the rows and the newest seq
            try:
                rows = _pending_rows(self.conn, start, limit)
                top = (None if rows or start != self._pending_from else
                       self.conn.execute("SELECT max(seq) FROM movements").fetchone()[0])
            finally:
                self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _translate(exc, "reading movements to sync") from exc
        if start == self._pending_from:
            # none pending up to the newest: the next one to be captured comes after it
            self._pending_from = rows[0]["seq"] if rows else max(start, (top or 0) + 1)
        return rows

    def queue_depth(self) -> tuple[int, int, float | None]:
        """(pending, quarantined, wall time of the oldest pending), as
        :meth:`Journal.queue_depth`."""
        oldest = self.pending(1)
        return _queue_depth(self.conn, self._pending_from, oldest[0] if oldest else None)

    def warned(self, limit: int) -> list[Warned]:
        """The newest movements with the ledger's warnings (see :func:`warned_movements`)."""
        return warned_movements(self.conn, limit)

    def checkpoint(self) -> tuple[int, int]:
        """Copy the write-ahead log into the database (a passive checkpoint: it never waits
        for, nor holds up, the writer). The writer leaves this to the readers, so that no
        capture's commit ever pays for one (see :class:`JournalWriter`). Returns the log's
        length and how much of it is copied, in pages."""
        return _checkpoint(self.conn)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


def create_journal(path: str | os.PathLike[str], station: str, site: str,
                   first_seq: int) -> None:
    """Start a new journal whose first movement gets ``first_seq``.

    For a station whose journal was lost or damaged: its seqs must carry on above the last
    one the ledger has, never start again at 1. Refuses to touch an existing file.
    """
    if first_seq < 1:
        raise JournalError(f"first seq must be at least 1, got {first_seq}")
    if Path(path).exists():
        raise JournalError(f"{path}: a journal is already there; move it aside first")
    journal = Journal(path, station, site)
    try:
        journal.write_meta({"next_seq": str(first_seq)})
    finally:
        journal.close()


def status_rows(conn: sqlite3.Connection) -> dict[str, Any]:
    """What ``scan-agent status`` reads from a journal (a read-only connection): its meta
    values, movements per state, the newest seq and the oldest pending movement, scanner
    states, sessions (as stored: JSON), each scanner's last scan, the newest alerts and
    rejected scans."""
    try:
        return {
            "meta": {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")},
            "counts": {r[0]: r[1] for r in conn.execute(
                "SELECT state, count(*) FROM movements GROUP BY state")},
            "top_seq": conn.execute("SELECT max(seq) FROM movements").fetchone()[0] or 0,
            "oldest": conn.execute(
                "SELECT seq, wall_time FROM movements WHERE state = 'pending'"
                " ORDER BY seq LIMIT 1").fetchone(),
            "states": {r["scanner"]: dict(r) for r in conn.execute("SELECT * FROM scanners")},
            "sessions": {r["scanner"]: r["state"] for r in conn.execute(
                "SELECT scanner, state FROM sessions")},
            "last": {r["scanner"]: dict(r) for r in conn.execute(
                "SELECT scanner, max(wall_time) AS at, text, outcome, reason FROM scans"
                " GROUP BY scanner")},
            "alerts": [dict(r) for r in conn.execute(
                "SELECT at, source, message FROM alerts ORDER BY id DESC LIMIT 10")],
            "rejects": [dict(r) for r in conn.execute(
                "SELECT wall_time AS at, scanner, text, reason FROM scans"
                " WHERE outcome = 'rejected' ORDER BY id DESC LIMIT 10")],
        }
    except sqlite3.Error as exc:
        raise _translate(exc, "reading the journal's status") from exc


def movement_rows(conn: sqlite3.Connection, *, pending: bool, limit: int | None
                  ) -> list[dict[str, Any]]:
    """Journaled movements as ``scan-agent events`` shows them, newest first (``raw`` and
    ``warnings`` as stored: JSON)."""
    where = "WHERE state = 'pending'" if pending else ""
    try:
        return [dict(r) for r in conn.execute(
            f"SELECT seq, event_id, scanner, type, item, lot, serial, qty, from_location,"
            f" to_location, reference, operator, voids, wall_time, occurred_at, state, result,"
            f" reason, warnings, raw FROM movements {where} ORDER BY seq DESC LIMIT ?",
            (-1 if limit is None else limit,))]
    except sqlite3.Error as exc:
        raise _translate(exc, "reading movements") from exc


def open_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection for ``status`` and ``events`` while the daemon writes."""
    if not Path(path).exists():
        raise JournalError(f"{path}: no journal here yet (has the agent run with this config?)")
    try:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM meta LIMIT 1")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc}") from exc
    return conn


def _resolve(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any,
             exc: BaseException | None) -> None:
    """Settle ``fut`` on its loop from the writer thread (unless its waiter went away)."""

    def settle() -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    # a closed loop raises RuntimeError: nobody is waiting any more
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)


def _json_strings(texts: Sequence[str]) -> str:
    """``json.dumps(list(texts))``, quicker: a movement's raw scans, for every movement."""
    return "[" + ", ".join([_json_str(t) for t in texts]) + "]"


_Submitted = tuple[Capture, "asyncio.Future[Captured]",
                   "Callable[[asyncio.Future[Captured]], None] | None"]


def _settle(futs: Sequence[asyncio.Future[Any]], outcomes: Sequence[Any]) -> None:
    """Settle futures of the running loop: an exception outcome is raised by its waiter."""
    for fut, outcome in zip(futs, outcomes, strict=True):
        if fut.done():
            continue
        if isinstance(outcome, Exception):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


class JournalWriter:
    """The journal's one writer, on its own thread: the **capture thread**.

    The thread runs an asyncio event loop of its own, :attr:`loop`, and owns the journal's
    connection. The daemon runs its scanners there too (see :meth:`run`), so a scan is read,
    worked out, committed and acknowledged on this one thread: it never waits for another
    thread on its way to the ACK, and nothing the rest of the agent does (sync, metrics) holds
    the thread up for longer than one short slice.

    - ``submit(c)`` queues a capture; its future resolves once ``c`` is committed. Captures
      made in the same turn of a loop are committed together in one transaction (group
      commit): four scanners streaming at once share each fsync. Submitted on :attr:`loop`,
      the commit runs inline at the end of that turn; from another loop it crosses over and
      back (tests and tools that drive a :class:`~agent.capture.Station` from their own loop).
    - ``call(fn)`` runs ``fn(journal)`` on the thread for everything else (sync results,
      state, alerts, prune): one call per turn of the loop, and only when no capture is
      waiting, so captures always go first and wait for one call at most. Callers keep each
      call short (sync writes its results in slices).

    >>> async with JournalWriter(journal) as w:      # doctest: +SKIP
    ...     captured = await w.capture(record)
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        # SQLite copies the log into the database (a checkpoint: megabytes written and
        # synced) at the end of whichever commit finds the log past 1,000 pages, which would
        # be a capture's. So the writer checkpoints from a reading connection too, in a
        # worker thread, every _CHECKPOINT_EVERY seconds or _CHECKPOINT_COMMITS commits:
        # that copies the bulk of the log without holding up any commit, and the automatic
        # checkpoint that still comes at 1,000 pages finds little left to copy. It is kept
        # because only the writer's own checkpoint can start the log again from its
        # beginning while commits keep coming; a log that only grows makes every commit's
        # sync slower (measured: about 3x for a group of four scans).
        self._checkpointer = JournalReader(journal.path)
        self._written = False  # committed since the last checkpoint
        self._commits = 0  # capture commits since the last checkpoint
        self._checkpointing: asyncio.Future[None] | None = None
        self.loop = asyncio.new_event_loop()
        self._closed = False
        # per submitting loop: this turn's captures (each loop flushes its own)
        self._outboxes: dict[asyncio.AbstractEventLoop, list[_Submitted]] = {}
        self._calls: collections.deque[tuple[Any, ...]] = collections.deque()
        self._serving = False
        # group commit across scanners that wait for their answers (see _flush)
        self._last_group: frozenset[str] = frozenset()
        self._awaited: set[str] = set()
        self._waiting: asyncio.TimerHandle | None = None
        self._commit_s = 0.0  # a moving average of the time a capture commit takes
        # scanner -> the newest generation with a failed capture (writer thread only)
        self._broken: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    async def __aenter__(self) -> JournalWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on the capture thread's loop; await the result from any loop."""
        try:
            return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))
        except RuntimeError:  # the loop has ended (the writer was closed)
            coro.close()
            raise JournalError("journal is closed") from None

    def submit(self, record: Capture,
               then: Callable[[asyncio.Future[Captured]], None] | None = None
               ) -> asyncio.Future[Captured]:
        """Queue ``record`` for commit; the future resolves once it is committed (or failed).

        Several captures may be in flight at once: they commit in submission order.
        ``then(future)`` runs once the future is settled: on the capture thread, right after
        the commit (no turn of the loop in between), elsewhere as a done callback.
        """
        if self._closed:
            raise JournalError("journal is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Captured] = loop.create_future()
        if then is not None and loop is not self.loop:
            fut.add_done_callback(then)
            then = None
        box = self._outboxes.setdefault(loop, [])
        if not box:
            loop.call_soon(self._flush, loop)
        box.append((record, fut, then))
        if self._waiting is not None and loop is self.loop:
            self._awaited.discard(record.scanner)
            if not self._awaited:  # every scanner waited for is in: commit now
                self._waiting.cancel()
                self._waiting = None
                loop.call_soon(self._flush, loop, True)
        return fut

    async def capture(self, record: Capture) -> Captured:
        return await self.submit(record)

    def _flush(self, loop: asyncio.AbstractEventLoop, waited: bool = False) -> None:
        """Commit this loop turn's captures as one group (crossing over if need be).

        Scanners in host-acknowledge mode send their next scan only once they have their
        answer, so while one group commits, the scanners of the group before it are still
        between their ACK and their next scan: committed at once, the groups would alternate,
        each with half of the scanners. So when scanners of the previous group are missing
        from this one, the commit waits for them a little (at most half a commit's time, and
        only once: a scanner that does not come is not waited for again), the way
        PostgreSQL's ``commit_delay`` does. A lone scanner never waits.
        """
        if loop is self.loop:
            if waited:
                self._waiting = None
            elif self._waiting is not None:
                return  # a commit is already waiting for its scanners; it takes these too
        batch = self._outboxes.get(loop, [])
        if not batch:  # (empty when close() flushed it first)
            return
        if loop is self.loop:
            scanners = {c.scanner for c, _, _ in batch}
            missing = self._last_group - scanners
            delay = min(self._commit_s / 2, _WAIT_FOR_SCANNERS_MAX)
            if missing and not waited and delay > 0 and not self._closed:
                self._awaited = set(missing)
                self._waiting = loop.call_later(delay, self._flush, loop, True)
                return
            del self._outboxes[loop]
            self._last_group = frozenset(scanners)
            t0 = time.perf_counter()
            self._commit_group(batch, loop)
            self._commit_s += (time.perf_counter() - t0 - self._commit_s) / 8
            return
        del self._outboxes[loop]
        try:
            self.loop.call_soon_threadsafe(self._commit_group, batch, loop)
        except RuntimeError:  # the writer's loop is gone
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(JournalError("journal is closed"))

    def _commit_group(self, batch: list[_Submitted], loop: asyncio.AbstractEventLoop) -> None:
        self._written = True
        outcomes = self._commit([c for c, _, _ in batch])
        self._commits += 1
        if self._commits >= _CHECKPOINT_COMMITS:
            self._start_checkpoint()
        futs = [f for _, f, _ in batch]
        if loop is self.loop:
            _settle(futs, outcomes)
            for _, fut, then in batch:
                if then is not None:
                    try:  # one caller's failure must not leave the others of the group untold
                        then(fut)
                    except Exception as exc:
                        self.loop.call_exception_handler({
                            "message": "a capture's commit callback failed", "exception": exc,
                            "future": fut})
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(_settle, futs, outcomes)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(journal, *args)`` on the writer thread (sync updates, reads, prune)."""
        if self._closed:
            raise JournalError("journal is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        item = (fn, args, fut, loop)
        if loop is self.loop:
            self._enqueue(item)
        else:
            try:
                self.loop.call_soon_threadsafe(self._enqueue, item)
            except RuntimeError:
                raise JournalError("journal is closed") from None
        return await fut

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        self._calls.append(item)
        if not self._serving:
            self._serving = True
            self.loop.call_soon(self._serve)

    def _serve(self) -> None:
        """One call, then back to the loop (which reads the scanners and commits captures)
        before the next one."""
        if self._outboxes.get(self.loop):  # a capture waits: its flush is already scheduled
            self.loop.call_soon(self._serve)
            return
        fn, args, fut, loop = self._calls.popleft()
        self._written = True  # (most calls write)
        try:
            result, exc = fn(self.journal, *args), None
        except Exception as e:
            result, exc = None, e
        if loop is not self.loop:
            _resolve(loop, fut, result, exc)
        elif not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        if self._calls:
            self.loop.call_soon(self._serve)
        else:
            self._serving = False

    def _checkpoint(self) -> None:
        """Every second: checkpoint in a worker thread if anything was written."""
        self.loop.call_later(_CHECKPOINT_EVERY, self._checkpoint)
        if self._written:
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        if self._checkpointing is None or self._checkpointing.done():
            self._written, self._commits = False, 0
            self._checkpointing = self.loop.run_in_executor(None, self._checkpoint_quietly)

    def _checkpoint_quietly(self) -> None:
        with contextlib.suppress(JournalError):  # tried again next time
            self._checkpointer.checkpoint()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_later(_CHECKPOINT_EVERY, self._checkpoint)
        try:
            self.loop.run_forever()
            # what still runs on the loop (nothing, when the daemon closed its scanners)
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            self._checkpointer.close()
            self.journal.close()

    def _finish(self) -> None:
        if self._calls or self._serving or any(self._outboxes.values()):
            self.loop.call_soon(self._finish)  # queued work first
        else:
            self.loop.stop()

    def _refused(self, r: Capture) -> bool:
        chain = r.chain
        return chain is not None and chain[1] <= self._broken.get(chain[0], -1)

    def _commit(self, records: list[Capture]) -> list[Captured | Exception]:
        """Commit a group in one transaction; what failed is refused, the rest is kept."""
        if not self._broken:  # nothing is refused: the group as it is (every scan but few)
            try:
                return list(self.journal.capture(records))
            except Exception as exc:
                return self._commit_failed(records, list(range(len(records))), exc)
        live = [i for i, r in enumerate(records) if not self._refused(r)]
        try:
            captured = self.journal.capture([records[i] for i in live])
        except Exception as exc:
            return self._commit_failed(records, live, exc)
        outcomes: list[Captured | Exception | None] = [None] * len(records)  # None: refused
        for i, done in zip(live, captured, strict=True):
            outcomes[i] = done
        return [JournalError(_CHAIN_BROKEN) if o is None else o for o in outcomes]

    def _commit_failed(self, records: list[Capture], live: list[int],
                       exc: Exception) -> list[Captured | Exception]:
        """The group's transaction failed with ``exc``: what can be kept of it."""
        outcomes: list[Captured | Exception | None] = [None] * len(records)  # None: refused
        # Something in the group could not be committed: commit each scanner's captures on
        # their own, so that only the chain that failed is refused (a lone chain has already
        # been tried: it is not tried again).
        chains: dict[Any, list[int]] = {}
        for i in live:
            chains.setdefault(records[i].chain or i, []).append(i)
        for idx in chains.values():
            self._commit_chain(records, idx, outcomes, exc if len(chains) == 1 else None)
        for r, o in zip(records, outcomes, strict=True):
            if isinstance(o, Exception) and r.chain is not None:
                scanner, generation = r.chain
                self._broken[scanner] = max(generation, self._broken.get(scanner, -1))
        return [JournalError(_CHAIN_BROKEN) if o is None else o for o in outcomes]

    def _commit_chain(self, records: list[Capture], idx: list[int],
                      outcomes: list[Captured | Exception | None],
                      failure: Exception | None) -> None:
        """One chain's captures in one transaction (unless it already failed with
        ``failure``); on a bad record, those before it one by one (the ones after it were
        worked out from it and stay refused)."""
        if failure is None:
            try:
                for i, done in zip(idx, self.journal.capture([records[i] for i in idx]),
                                   strict=True):
                    outcomes[i] = done
                return
            except Exception as exc:
                failure = exc
        if isinstance(failure, JournalFullError) or len(idx) == 1:
            for i in idx:  # a full disk: no single record is to blame
                outcomes[i] = failure
            return
        for i in idx:
            try:
                outcomes[i] = self.journal.capture([records[i]])[0]
            except Exception as exc:
                outcomes[i] = exc
                return

    async def close(self) -> None:
        """Finish queued work, then close the connection and end the thread. Idempotent.

        Call it from another loop than :attr:`loop` (the daemon's main loop, a test's)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._outboxes.get(loop):  # submitted in this loop turn: they go before the end
            self._flush(loop)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._finish)
        await asyncio.to_thread(self._thread.join)
