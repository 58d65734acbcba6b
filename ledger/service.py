"""The ledger as a service: store + engine + stations + alerts, owned by one worker thread.

Every operation runs on a single dedicated thread (``ledger-writer``), so ingest has exactly
one writer, reads see a consistent engine, and the event loop never waits on SQLite or on the
engine. :meth:`LedgerService.call` hands an operation to that thread from async code.

The HTTP layer (:mod:`ledger.app`) is a thin translation of these methods; the CLI and
:class:`~ledger.server.LedgerServer` use the same ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ledger.alerts import WebhookNotifier
from ledger.batch import Batch, BatchReader, default_workers, lone_surrogate, read_batch
from ledger.config import LedgerConfig
from ledger.connectors.forwarder import Forwarder, make_adapter
from ledger.engine import BEFORE_HORIZON, Change, Incident, Ledger, Settlement
from ledger.errors import FilterError, LedgerError, ManagerError, StationError, StoreError
from ledger.events import (
    Movement,
    digest_of,
    format_time,
    now_us,
    parse_json,
    parse_time,
    validate_event,
)
from ledger.filters import IncidentFilter, parse_filter
from ledger.history import Arrival, BalanceHistory, balance_history, touches
from ledger.stationflags import station_flags
from ledger.store import (
    Checkpoint,
    Contact,
    NewEvent,
    NoteRecord,
    Release,
    SettledIncident,
    StationRecord,
    Store,
    StoredEvent,
    open_store,
)

if TYPE_CHECKING:
    from ledger.pgstore import PgStore

__all__ = ["MAX_NOTE", "LedgerService", "Reply", "hash_token", "merge_lists", "new_token",
           "valid_station_name"]

log = logging.getLogger("ledger")
T = TypeVar("T")
MAX_NOTE = 2000  # characters in a manager's note
_NOTE_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tab and line feed are fine

#: the least number of events in memory before settling (and between snapshots). Settling
#: and the snapshot after it cost in proportion to what memory holds (every open incident,
#: every bin's recent legs), so doing them rarely keeps them a small share of ingest; the
#: price is memory for that many events and, after a crash, their replay at start
#: (docs/ledger.md gives the figures).
SETTLE_MIN = 50_000
#: a page of GET /v1/negatives when the client gives no limit
DEFAULT_INCIDENTS = 1000


def new_token() -> str:
    """32 random bytes, URL-safe base64: a station's bearer token."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the database keeps instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def valid_station_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) is not None


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, independent of the web framework."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None
    forward: str | None = None  # another process owns the site: ask it (its base URL)


def _error(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, {"error": message}, headers or None)


def merge_lists(name: str, bodies: Sequence[dict[str, Any]], key: Callable[[Any], Any],
                limit: int | None = None) -> dict[str, Any]:
    """One answer from the same read asked of several processes (each answering for the
    sites it owns): the rows of list ``name`` in ``key`` order, each once; a paged list
    (``limit``) is cut to a page again, ``next`` naming the last incident kept.

    >>> merge_lists("incidents", [{"incidents": [{"id": 1}, {"id": 7}], "next": None},
    ...                           {"incidents": [{"id": 3}, {"id": 7}], "next": "p3"}],
    ...             lambda i: i["id"], limit=2)
    {'incidents': [{'id': 1}, {'id': 3}], 'next': 'p3'}
    """
    rows: dict[Any, dict[str, Any]] = {}
    for body in bodies:
        for row in body[name]:
            rows[key(row)] = row
    merged = [rows[k] for k in sorted(rows)]
    out = {**bodies[0], name: merged}
    if limit is not None and "next" in bodies[0]:
        more = len(merged) > limit or any(b.get("next") for b in bodies)
        out[name] = merged = merged[:limit]
        out["next"] = _make_cursor(merged[-1]["id"]) if more and merged else None
    return out


@dataclass(slots=True)
class _Part:
    """One site's engine and settling counters (several processes: one per site owned)."""

    engine: Ledger
    settle_at: int = SETTLE_MIN
    snapshot_every: int = SETTLE_MIN
    since_snapshot: int = 0


class LedgerService:
    """Owns the store and the engine; every method runs on the worker thread.

    >>> with LedgerService("ledger.db", LedgerConfig()) as svc:   # doctest: +SKIP
    ...     token = svc.run(svc.add_station, "dock-3", "WH1")
    """

    # Several processes on one PostgreSQL database (DESIGN section 12): how often each one
    # looks at the site leases, and how long a site may stay without an owner before a
    # process that already has its fair share takes it anyway.
    TEND_INTERVAL_S = 1.0
    ORPHAN_GRACE_S = 2.0

    def __init__(self, db_path: str | Path, config: LedgerConfig | None = None, *,
                 store_factory: Callable[[str | Path], Store] = open_store,
                 advertise_url: str | None = None) -> None:
        self.db_path = db_path
        self.config = config or LedgerConfig()
        self._store_factory = store_factory
        self._executor: ThreadPoolExecutor | None = None
        self._store: Store | None = None
        # On PostgreSQL, several processes (DESIGN section 12): the sites this process owns,
        # each with its own engine (None: one process, one engine for every site). The
        # service works on one site's part at a time: _use(site) makes it current.
        self.advertise_url = advertise_url
        self.member_id = secrets.randbelow(2**31 - 2) + 1
        self.owned: set[str] | None = None
        self._parts: dict[str, _Part] = {}
        self._current: str | None = None
        self._orphaned: dict[str, float] = {}
        self._handed: dict[str, float] = {}  # sites handed over, when
        self._broken = False
        self._tender: threading.Thread | None = None
        self._stop = threading.Event()
        self.engine = self._new_engine()
        self.notifier: WebhookNotifier | None = None
        self.forwarders: list[Forwarder] = []
        # Posted batches are read (JSON, every event checked) in processes of their own
        # while this one applies the batch before (ledger/batch.py).
        self._tokens: set[str] = set()  # hashes of tokens that posted, while valid
        readers = self.config.reader_processes
        self.reader = BatchReader(default_workers() if readers is None else readers,
                                  self.config.max_batch_events)
        self._closed = False
        # Settling (DESIGN section 10): memory is settled when it holds at least
        # ``_settle_at`` events (twice what the last settling kept, and at least
        # SETTLE_MIN), and a snapshot follows at the latest every ``_snapshot_every`` events
        # applied, so a crash replays at most that many at start.
        self._settle_at = SETTLE_MIN
        self._snapshot_every = SETTLE_MIN
        self._since_snapshot = 0

    def _new_engine(self) -> Ledger:
        engine = Ledger(self.config.allow_negative,
                        duplicate_window_us=int(self.config.duplicate_window_s * 1_000_000))
        engine.ids_by_position = self.owned is not None
        return engine

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LedgerService:
        """Open the database and rebuild the engine from the event log."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        try:
            self.run(self._open)
        except BaseException:
            self.close()
            raise
        if self.owned is not None:
            self._tender = threading.Thread(target=self._tend_loop, name="ledger-leases",
                                            daemon=True)
            self._tender.start()
        if self.config.webhook_url:
            self.notifier = WebhookNotifier(self.config.webhook_url,
                                            timeout=self.config.webhook_timeout_s,
                                            max_attempts=self.config.webhook_max_attempts)
        self.forwarders = [Forwarder(c, make_adapter(c), self.run, lambda: self.store).start()
                           for c in self.config.connectors]
        return self

    def close(self) -> None:
        """Stop alerts, then the worker, then close the database; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.reader.close()
        for f in self.forwarders:  # they use the worker: stop them first
            f.close()
        self._stop.set()
        if self._tender is not None:
            self._tender.join(30)
        if self.notifier is not None:
            self.notifier.close()
        if self._executor is not None:
            if self._store is not None:
                try:
                    self._executor.submit(self._checkpoint_at_stop).result()
                except LedgerError:
                    log.exception("no snapshot at stop; the next start replays the log "
                                  "since the last one")
                self._executor.submit(self._store.close).result()
            self._executor.shutdown(wait=True)

    def __enter__(self) -> LedgerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread and wait for it (for sync callers)."""
        if self._executor is None:
            raise LedgerError("the ledger service is not started")
        return self._executor.submit(fn, *args).result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread without blocking the event loop."""
        if self._executor is None:
            raise LedgerError("the ledger service is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def store(self) -> Store:
        if self._store is None:
            raise LedgerError("the ledger service is not started")
        return self._store

    def _open(self) -> None:
        self._store = self._open_store()
        if self._leases() is not None:
            self._join()
        else:
            self._rebuild()

    def _open_store(self) -> Store:
        """The store, told which connector forwards which site (it fills their outbox in
        each batch's transaction)."""
        store = self._store_factory(self.db_path)
        try:
            store.set_connector_routes(
                [(c.name, site) for c in self.config.connectors for site in c.sites])
        except BaseException:
            store.close()
            raise
        return store

    def _leases(self) -> PgStore | None:
        """The store as a holder of site leases (PostgreSQL), or None (SQLite)."""
        store = self._store
        return store if hasattr(store, "claim_site") else None  # type: ignore[return-value]

    def _rebuild(self) -> None:
        """Load the snapshot and replay the log after it (at start, or after a failed
        write); without a usable snapshot, replay the whole log, then settle and take one."""
        store = self.store
        snap = store.snapshot()
        engine: Ledger | None = None
        gc.disable()  # building many long-lived objects: no collection can free any
        try:
            if snap is not None:
                try:
                    engine = Ledger.restore(snap.state, self.config.allow_negative,
                                            self._window_us())
                except Exception:  # not fatal: the log is the source of truth
                    log.exception("the snapshot of %s cannot be read; replaying the whole "
                                  "log", snap.taken_at)
                if engine is None:
                    snap = None
            if engine is None:
                engine = self._new_engine()
            n = self._replay(engine, store.log(snap))
        finally:
            gc.enable()
        engine.take_changes()
        self.engine = engine
        for site, horizon in store.horizons().items():
            engine.set_horizon(site, parse_time(horizon))
        horizons: dict[str, str] = {}
        for site in {s.site for s in store.stations()}:
            horizons.update(self._advance_horizon(site))
        self._release_and_save(engine, store, n, snap is None, horizons)
        # What is in memory lives long: keep the cyclic GC from rescanning it on every
        # full collection.
        gc.collect()
        gc.freeze()
        self._announce(engine.take_changes())
        log.info("ledger loaded: %s, %d events replayed after it (%d in memory, %d incidents, "
                 "%d held)", "a snapshot" if snap is not None else "no snapshot", n,
                 len(engine.events), len(engine.incidents), len(engine.held_events()))

    def _window_us(self) -> int:
        return int(self.config.duplicate_window_s * 1_000_000)

    def _replay(self, engine: Ledger, log_: Any) -> int:
        """Apply stored events as the log says they went; returns how many."""
        n = 0
        for stored in log_:
            m = self._movement(stored)
            if m is None:
                continue
            n += 1
            if stored.applied_seq is None:
                engine.restore_held(m)
                continue
            now = parse_time(stored.applied_at)
            if engine.replay_release(m.event_id, m.t, now, stored.applied_seq):
                continue
            target = None
            if m.type == "void" and m.voids not in engine.events:
                target = self._settled_target(m.voids, m.event_id)
            engine.applied_seq = stored.applied_seq - 1
            engine.submit(m, now, replay=True, settled_target=target)
        return n

    def _movement(self, stored: StoredEvent) -> Movement | None:
        """A stored event as the engine takes it: at the time it took effect, with its
        before_horizon flag."""
        m = validate_event(parse_json(stored.body), stored.station, stored.site)
        if not isinstance(m, Movement):
            log.error("event %s in the log no longer validates (%s); skipped",
                      stored.event_id, m)
            return None
        m.body = None
        if stored.effective_at is not None:
            m.t = parse_time(stored.effective_at)
        if stored.warnings is not None and BEFORE_HORIZON in json.loads(stored.warnings):
            m.before_horizon = True
        return m

    def _settled_target(self, target_id: str | None, void_id: str) -> Movement | None:
        """The target of a void that is no longer in memory, as the store has it (None if
        the store has none). Its ``voided_by`` is the store's, unless that is this void
        itself (a replay)."""
        if target_id is None:
            return None
        rows = self.store.events_by_id([target_id])
        if not rows:
            return None
        return self._settled(rows[0], void_id)

    def _settled(self, row: StoredEvent, void_id: str) -> Movement | None:
        m = self._movement(row)
        if m is None:
            return None
        m.voided_by = row.voided_by if row.voided_by != void_id else None
        if row.reversal is not None:
            m.reversal = tuple((loc, occ, rec) for loc, occ, rec in json.loads(row.reversal))
        return m

    # ------------------------------------------------- sites and their leases

    def _use(self, site: str) -> Ledger:
        """Several processes: make ``site``'s part (engine, settling counters) the current
        one, and return its engine. One process: the one engine."""
        if self.owned is None or self._current == site:
            return self.engine
        cur = self._parts.get(self._current or "")
        if cur is not None:
            cur.engine, cur.settle_at = self.engine, self._settle_at
            cur.snapshot_every, cur.since_snapshot = self._snapshot_every, self._since_snapshot
        part = self._parts[site]
        self.engine, self._settle_at = part.engine, part.settle_at
        self._snapshot_every, self._since_snapshot = part.snapshot_every, part.since_snapshot
        self._current = site
        return self.engine

    def _each_site(self) -> Iterator[str | None]:
        """Every engine in turn, made current: each site owned (several processes), or the
        one engine (None)."""
        if self.owned is None:
            yield None
            return
        for site in sorted(self._parts):
            self._use(site)
            yield site

    def _engine_of(self, site: str) -> Ledger | None:
        if self.owned is None:
            return self.engine
        if site == self._current:
            return self.engine
        part = self._parts.get(site)
        return None if part is None else part.engine

    def _join(self) -> None:
        """Join the processes sharing the PostgreSQL database; take a fair share of sites."""
        leases = self._leases()
        assert leases is not None
        leases.join(self.member_id)
        self.owned = set()
        self._parts = {}
        self._current = None
        self.engine = self._new_engine()
        self._orphaned = {}
        self._tend()

    def _tend(self) -> None:
        """Look at the leases (on the worker thread): take sites nobody owns, up to a fair
        share at once and any that stayed without an owner for ORPHAN_GRACE_S; hand back
        sites beyond a fair share when another process has joined."""
        leases = self._leases()
        assert leases is not None and self.owned is not None
        if self._broken:
            self._recover()
            return
        owners = leases.site_owners()
        members = leases.members()
        share = -(-len(owners) // members)
        now = time.monotonic()
        free = [s for s, o in owners.items() if not o.held]
        self._orphaned = {s: self._orphaned.get(s, now) for s in free}
        for site in free:
            if len(self.owned) < share or now - self._orphaned[site] >= self.ORPHAN_GRACE_S:
                self._take(site)
        excess = len(self.owned) - share
        if excess > 0 and members > 1:
            give = sorted(self.owned)[-excess:]
            for site in give:
                self._use(site)
                if self._since_snapshot:  # the next owner loads from here
                    self.store.save_batch([], [], None,
                                          checkpoint=self._maybe_checkpoint(force=True))
                leases.release_site(site)
                self.owned.discard(site)
                del self._parts[site]
                self._current = None
                self._handed[site] = now
            log.info("handed sites %s over (%d processes share %d sites)", give, members,
                     len(owners))

    def _take(self, site: str) -> bool:
        """Take ``site``'s lease if it is free, and load the site as a start loads the
        ledger (its snapshot, then the log after it); True if this process owns it now."""
        leases = self._leases()
        assert leases is not None and self.owned is not None
        if site in self.owned:
            return True
        if not leases.claim_site(site, self.member_id, self.advertise_url or "",
                                 format_time(now_us())):
            return False
        started = time.monotonic()
        snap = leases.site_snapshot(site)
        engine: Ledger | None = None
        if snap is not None:
            try:
                engine = Ledger.restore(snap.state, self.config.allow_negative,
                                        self._window_us())
            except Exception:  # not fatal: the log is the truth
                log.exception("the snapshot of site %s cannot be read; replaying its log",
                              site)
            if engine is None:
                snap = None
        if engine is None:
            engine = self._new_engine()
        n = self._replay(engine, leases.site_log(site, snap))
        engine.take_changes()
        self.owned.add(site)
        self._orphaned.pop(site, None)
        self._parts[site] = _Part(engine)
        self._use(site)
        horizon = leases.horizons().get(site)
        if horizon is not None:
            engine.set_horizon(site, parse_time(horizon))
        horizons = self._advance_horizon(site)
        engine.applied_seq = leases.next_block()
        self._release_and_save(engine, leases, n, snap is None, horizons)
        self._announce(engine.take_changes())
        log.info("took site %s: %s, %d events replayed after it, in %.2f s", site,
                 "a snapshot" if snap is not None else "no snapshot", n,
                 time.monotonic() - started)
        return True

    def _recover(self) -> None:
        """After a failed write on PostgreSQL: a new session (the old one's leases are gone,
        and another process may have written since), then take sites again."""
        self.owned = set()
        self._parts = {}
        self._current = None
        self.engine = self._new_engine()
        with contextlib.suppress(LedgerError):
            self.store.close()
        try:
            self._store = self._open_store()
            self._broken = False
            self._join()
        except StoreError:
            self._broken = True
            log.exception("cannot reconnect to the ledger database; retrying")

    def _tend_loop(self) -> None:
        while not self._stop.wait(self.TEND_INTERVAL_S):
            try:
                self.run(self._tend_safely)
            except Exception:  # never let the lease keeper die
                log.exception("looking after the site leases failed")

    def _tend_safely(self) -> None:
        if self._stop.is_set():
            return
        try:
            self._tend()
        except StoreError:
            log.exception("the site leases could not be read; reconnecting")
            self._broken = True
            self._recover()

    def peers(self) -> list[str]:
        """Base URLs of the other processes that own sites now (for reads that span every
        site); empty for one process."""
        leases = self._leases()
        if leases is None or self.owned is None:
            return []
        urls = {o.url for s, o in leases.site_owners().items()
                if o.held and s not in self.owned and o.url}
        return sorted(u for u in urls if u != self.advertise_url)

    def owner_of(self, site: str) -> str | None:
        """Where ``site`` is served: None here (taking it if nobody owns it), else the
        owning process's base URL, or "" if nobody can take it right now."""
        if self.owned is None or site in self.owned:
            return None
        if self._broken:
            self._recover()
        handed = self._handed.get(site)
        if handed is not None and time.monotonic() - handed < self.ORPHAN_GRACE_S:
            pass  # just handed over: leave it to the process that joined
        elif self._take(site):
            return None
        leases = self._leases()
        assert leases is not None
        owner = leases.site_owners().get(site)
        return owner.url if owner is not None and owner.held and owner.url else ""

    # ------------------------------------------------------------- settling

    def _release_and_save(self, engine: Ledger, store: Store, replayed: int, no_snapshot: bool,
                          horizons: dict[str, str]) -> None:
        """After loading (a start, or taking a site over): release what the loaded stock now
        covers, settle and snapshot when the load replayed anything, and store it at once."""
        now = now_us()
        out = engine.release_all(now)
        at = format_time(now)
        released = [Release(m.event_id, seq, at, m.effective_at) for m, seq in out.released]
        self._since_snapshot = replayed
        checkpoint = self._maybe_checkpoint(force=no_snapshot or replayed > 0)
        if released or checkpoint is not None or horizons:
            store.save_batch([], released, None, horizons=horizons, checkpoint=checkpoint)

    def _maybe_checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Settle every site up to its horizon when memory has grown enough, and take a
        snapshot when settling did or enough events were applied since the last one."""
        engine = self.engine
        settled: list[Settlement] = []
        if force or len(engine.events) >= self._settle_at:
            settled = [engine.settle(site, horizon) for site, horizon in engine.horizon.items()]
            self._settle_at = max(SETTLE_MIN, 2 * len(engine.events))
            self._snapshot_every = max(SETTLE_MIN, len(engine.events))
        if not (force or settled or self._since_snapshot >= self._snapshot_every):
            return None
        self._since_snapshot = 0
        incidents = [SettledIncident(inc.id, inc.movement.site, inc.status,
                                     json.dumps(self._settled_json(inc, dup)))
                     for st in settled for inc, dup in st.incidents]
        events = [(m.event_id, m.voided_by,
                   None if m.reversal is None else json.dumps(m.reversal))
                  for st in settled for m in st.events]
        return Checkpoint(engine.applied_seq, format_time(now_us()), engine.snapshot(),
                          incidents, events, site=self._current)

    @staticmethod
    def _settled_json(inc: Incident, suspected_duplicate: bool) -> dict[str, Any]:
        out = inc.to_json(confirmed=True, suspected_duplicate=suspected_duplicate)
        del out["confirmed"]
        return out

    def _checkpoint_at_stop(self) -> None:
        """At a clean stop: a snapshot of what was applied since the last one, so the next
        start replays nothing (of each site owned, with several processes)."""
        for _site in self._each_site():
            if self._since_snapshot == 0:
                continue
            self.store.save_batch([], [], None, checkpoint=self._maybe_checkpoint(force=True))

    # -------------------------------------------------------------- stations

    def add_station(self, name: str, site: str) -> str:
        """Register a station; returns its token (only the hash is stored)."""
        if not valid_station_name(name):
            raise StationError(f"{name!r} is not a valid station id (letters, digits, '.', "
                               "'_', '-'; at most 64)")
        if not valid_station_name(site):
            raise StationError(f"{site!r} is not a valid site id")
        token = new_token()
        self.store.add_station(name, site, hash_token(token), format_time(now_us()))
        return token

    def revoke_station(self, name: str) -> None:
        self.store.revoke_station(name, format_time(now_us()))
        self._tokens.clear()

    def known_token(self, token: str | None) -> bool:
        """Whether ``token`` is one a station posted with and that was valid then (from any
        thread: a set's membership test). Only a known token's batches are read in a reader
        process; a revoked one still gets its 401 from :meth:`ingest`."""
        return bool(token) and hash_token(token or "") in self._tokens

    # ---------------------------------------------------------------- ingest

    def ingest(self, token: str | None, body: bytes, received: int,
               read: Batch | str | None = None) -> Reply:
        """``POST /v1/events`` (DESIGN section 6). ``read`` is the body as
        :func:`~ledger.batch.read_batch` read it elsewhere (a reader process), if it was."""
        if not token:
            return _error(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        token_hash = hash_token(token)
        station = self.store.station_by_token(token_hash)
        if station is None:
            self._tokens.discard(token_hash)
            return _error(401, "unknown or revoked token", **{"WWW-Authenticate": "Bearer"})
        leases = self._leases()
        if leases is not None:
            # Several processes: the site's owner decides, before anything is parsed here.
            try:
                owner = self.owner_of(station.site)
                if owner is not None:
                    if not owner:
                        return _error(503, f"site {station.site} is changing hands; retry",
                                      **{"Retry-After": "1"})
                    return Reply(307, {"error": f"site {station.site} is served by {owner}"},
                                 forward=owner)
                self._use(station.site).applied_seq = leases.next_block()
            except StoreError:
                log.exception("the ledger database failed before a batch of %s", station.name)
                self._broken = True
                return _error(503, "the ledger database is unavailable; retry",
                              **{"Retry-After": "2"})
        self._tokens.add(token_hash)  # (its site is served here)
        if read is None or (read.__class__ is Batch and read.site != station.site):
            read = read_batch(body, station.site, self.config.max_batch_events)
        if not isinstance(read, Batch):
            return _error(400, read)
        if read.station != station.name:
            return _error(403, f"this token belongs to station {station.name!r}, "
                               f"not {read.station!r}")
        if read.count > self.config.max_batch_events:
            return _error(413, f"{read.count} events in one batch; at most "
                               f"{self.config.max_batch_events}")
        sent_at = read.sent_at
        watermark = read.watermark
        if (watermark is not None and station.watermark is not None
                and parse_time(watermark) <= parse_time(station.watermark)):
            # Never backwards: what a station once said it has sent stays sent (a batch
            # replayed after a lost answer carries its old watermark).
            watermark = None
        offset = None if sent_at is None else (received - parse_time(sent_at)) / 1000.0

        engine = self.engine
        received_at = format_time(received)
        results: list[dict[str, Any]] = []
        rows: list[NewEvent] = []
        released: list[Release] = []
        voided: list[tuple[str, str]] = []
        fresh: list[Movement] = []
        submit = engine.submit
        name, site = station.name, station.site
        # Ids the engine no longer holds (settled history) are looked up in the store's
        # index: a duplicate is known however old, a void finds its settled target.
        in_memory = engine.events
        checked = read.events
        wanted = []
        for m in checked:
            if m.__class__ is Movement:
                assert isinstance(m, Movement)
                if m.event_id not in in_memory:
                    wanted.append(m.event_id)
                if m.voids is not None and m.voids not in in_memory:
                    wanted.append(m.voids)
        stored = {r.event_id: r for r in self.store.events_by_id(wanted)} if wanted else {}
        targets: dict[str, Movement | None] = {}
        for m in checked:
            if not isinstance(m, Movement):
                results.append({"event_id": m.event_id, "status": "rejected",
                                "reason": m.reason, "warnings": []})
                continue
            known = stored.get(m.event_id)
            if known is not None and m.event_id not in in_memory:
                if digest_of(known.body) == m.digest:
                    results.append({"event_id": m.event_id, "status": "duplicate",
                                    "reason": "already received with the same content",
                                    "warnings": []})
                else:
                    results.append({"event_id": m.event_id, "status": "rejected",
                                    "reason": "event_id: already used by a different event "
                                              "(same id, different content)", "warnings": []})
                continue
            target = None
            if m.type == "void" and m.voids in stored and m.voids not in in_memory:
                if m.voids not in targets:
                    targets[m.voids] = self._settled(stored[m.voids], m.event_id)
                target = targets[m.voids]
            out = submit(m, received, settled_target=target)
            status = out.status
            results.append({"event_id": m.event_id, "status": status, "reason": out.reason,
                            "warnings": out.warnings})
            if status == "accepted" or status == "held":
                assert m.body is not None
                rows.append(NewEvent(m.event_id, m.station, m.site, m.seq, m.type, m.item,
                                     m.occurred_at, received_at, status, out.applied_seq,
                                     received_at if out.applied_seq else None, m.body,
                                     m.effective_at,
                                     json.dumps(out.warnings) if out.warnings else None))
                fresh.append(m)
            if out.voided_settled is not None:
                voided.append((out.voided_settled, m.event_id))
            if out.released:
                released.extend(Release(r.event_id, seq, received_at, r.effective_at)
                                for r, seq in out.released)
        contact = Contact(station.name, received_at, sent_at, watermark, offset, read.count)
        for m in fresh:
            m.body = None  # (rows hold it) not in memory, nor in the snapshot
        horizons = self._advance_horizon(site, name, watermark)
        self._since_snapshot += len(rows) + len(released)
        try:
            checkpoint = self._maybe_checkpoint()
            self.store.save_batch(rows, released, contact, voided=voided, horizons=horizons,
                                  checkpoint=checkpoint)
        except StoreError:
            log.exception("could not save a batch of %s; rebuilding from the log",
                          station.name)
            if leases is not None:
                self._recover()
            else:
                self._rebuild()
            return _error(503, "the ledger could not save this batch; retry", **{
                "Retry-After": "2"})
        self._wake_connectors()
        self._announce(engine.take_changes())
        return Reply(200, {"server_time": format_time(now_us()), "received_at": received_at,
                           "results": results})

    def _advance_horizon(self, site: str, station: str | None = None,
                         watermark: str | None = None) -> dict[str, str]:
        """The site's horizon after this batch (DESIGN section 10): the earliest watermark
        of its stations that are not revoked, one that never posted counting from its
        registration; only ever forward. Returns what to store if it moved.

        A site none of whose stations has sent a watermark yet has no horizon: its first
        events may well be older than the registrations (a dock that captured before it was
        registered, a history imported at once), and there is nothing to settle yet."""
        low: int | None = None
        posted = False
        for s in self.store.stations():
            if s.site != site or s.revoked_at is not None:
                continue
            mark = watermark if s.name == station and watermark is not None else s.watermark
            posted = posted or mark is not None
            t = parse_time(mark if mark is not None else s.created_at)
            low = t if low is None else min(low, t)
        if posted and low is not None and self.engine.set_horizon(site, low):
            return {site: format_time(low)}
        return {}
    def _wake_connectors(self) -> None:
        for f in self.forwarders:
            f.wake()

    def connectors(self) -> Reply:
        """``GET /v1/connectors``: per connector, forwarded / pending / unmapped and the last
        error (docs/connectors.md)."""
        counts = self.store.outbox_counts()
        out = []
        for f in self.forwarders:
            c = f.config
            n = counts.get(c.name, {})
            unmapped = self.store.outbox_open(c.name, "unmapped", 100)
            out.append({
                "name": c.name, "kind": c.kind, "url": c.url, "sites": list(c.sites),
                "forwarded": n.get("forwarded", 0), "pending": n.get("pending", 0),
                "unmapped": n.get("unmapped", 0), **f.status(),
                "unmapped_events": [{"event_id": e.event_id, "reason": e.reason}
                                    for e in unmapped],
            })
        return Reply(200, {"connectors": out})

    def _announce(self, changes: list[Change]) -> None:
        if self.notifier is None or not changes:
            return
        shown = self.incidents_json([ch.incident for ch in changes])
        for ch, inc in zip(changes, shown, strict=True):
            self.notifier.notify({"kind": ch.kind, "previous_class": ch.previous_class,
                                  "incident": inc})

    # ----------------------------------------------------------------- reads

    def _confirmation(self) -> dict[str, int]:
        """site -> the oldest watermark over its active stations (absent if one has none)."""
        low: dict[str, int | None] = {}
        for s in self.store.stations():
            if s.revoked_at is not None:
                continue
            wm = None if s.watermark is None else parse_time(s.watermark)
            if s.site not in low:
                low[s.site] = wm
            else:
                cur = low[s.site]
                low[s.site] = None if cur is None or wm is None else min(cur, wm)
        return {site: wm for site, wm in low.items() if wm is not None}

    def incidents_json(self, incidents: list[Incident]) -> list[dict[str, Any]]:
        """Incidents as JSON (section 8), with ``item_name`` and ``notes`` (section 11)."""
        confirmed = self._confirmation()
        names = self.store.item_names({inc.movement.item or "" for inc in incidents})
        # Notes are few (people write them): for a long list, one read of them all is
        # cheaper than looking each incident up.
        notes = ({} if not incidents else self.store.notes(
            None if len(incidents) > 500 else [inc.id for inc in incidents]))
        out = []
        for inc in incidents:
            m = inc.movement
            wm = confirmed.get(m.site)
            j: dict[str, Any] = inc.to_json(
                confirmed=wm is not None and wm > m.t,
                suspected_duplicate=self._suspected_duplicate(m),
                item_name=names.get(m.item or ""))
            j["notes"] = [_note_json(n) for n in notes.get(inc.id, ())]
            out.append(j)
        return out

    def _suspected_duplicate(self, m: Movement) -> bool:
        engine = self._engine_of(m.site)
        return engine is not None and engine.suspected_duplicate(m)

    def _find_incident(self, incident_id: int) -> Incident | None:
        """The incident in memory (any site this process owns), its site's engine made
        current; None if no engine here holds it."""
        for _site in self._each_site():
            inc = self.engine.incidents.get(incident_id)
            if inc is not None:
                return inc
        return None

    def filter_of(self, query: dict[str, str]) -> IncidentFilter:
        """The incident filter of a request's query (raises FilterError, an HTTP 400)."""
        stations = self.store.stations()
        return parse_filter(query, sites={s.site for s in stations} | set(self.config.sites),
                            stations={s.name for s in stations})

    def filtered(self, filt: IncidentFilter | None, status: str | None = None) -> list[Incident]:
        """The incidents that pass a filter (all of them for None), oldest first."""
        incs = [inc for _site in self._each_site()
                for inc in self.engine.iter_incidents(status)]
        if not filt:
            return list(incs)
        zone = self.config.zone
        return [inc for inc in incs if filt.matches(
            site=inc.movement.site, cls=inc.cls, status=inc.status,
            station=inc.movement.station, opened_at=inc.opened_at, zone=zone)]

    def negatives(self, status: str | None = None, query: dict[str, str] | None = None,
                  limit: int = DEFAULT_INCIDENTS, after: str | None = None) -> Reply:
        """``GET /v1/negatives``: the incidents that pass the query's filter (all for None), in
        id order, ``limit`` at a time; ``next`` is the cursor of the following page (None on
        the last). Settled incidents come from the store, the others from memory."""
        if status not in (None, "open", "resolved"):
            return _error(400, f"status: must be open or resolved, got {status!r}")
        try:
            filt = None if query is None else self.filter_of(query)
        except FilterError as exc:
            return _error(400, str(exc))
        start = _cursor(after)
        if start is None:
            return _error(400, f"after: not a cursor this ledger gave: {after!r}")
        page = self._incident_page(filt, status, start, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return Reply(200, {"incidents": [body for _id, body in page],
                           "next": _make_cursor(page[-1][0]) if more else None})

    def filtered_json(self, filt: IncidentFilter | None,
                      status: str | None = None) -> list[dict[str, Any]]:
        """Every incident that passes ``filt``, settled or not, as JSON, oldest first."""
        return [body for _id, body in self._incident_page(filt, status, 0, None)]

    def _incident_page(self, filt: IncidentFilter | None, status: str | None, start: int,
                       count: int | None) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``count`` incidents (every one for None) with an id above ``start`` that
        pass ``filt``, as (id, JSON), in id order: settled ones and those in memory."""
        page = self._settled_matching(filt, status, start, count)
        mine = sorted((inc for inc in self.filtered(filt, status) if inc.id > start),
                      key=lambda inc: inc.id)
        if count is not None:
            mine = mine[:count]
        page += zip([inc.id for inc in mine], self.incidents_json(mine), strict=True)
        page.sort(key=lambda p: p[0])
        return page if count is None else page[:count]

    def _settled_matching(self, filt: IncidentFilter | None, status: str | None, start: int,
                          count: int | None) -> list[tuple[int, dict[str, Any]]]:
        found: list[tuple[int, dict[str, Any]]] = []
        batch = 1000 if count is None else max(count, 100)
        zone = self.config.zone
        while count is None or len(found) < count:
            rows = self.store.settled_incidents(start, batch, status)
            if not rows:
                break
            start = rows[-1].id
            bodies = [(r.id, json.loads(r.body)) for r in rows]
            if filt:
                stations: dict[str, str] = {}
                if filt.station is not None:
                    stations = {e.event_id: e.station for e in self.store.events_by_id(
                        [b["depletion_event_id"] for _id, b in bodies])}
                bodies = [(i, b) for i, b in bodies if filt.matches(
                    site=b["site"], cls=b["class"], status=b["status"],
                    station=stations.get(b["depletion_event_id"], ""),
                    opened_at=parse_time(b["opened_at"]), zone=zone)]
            found += bodies
            if len(rows) < batch:
                break
        if count is not None:
            found = found[:count]
        return self._settled_rows_json(found)

    def _settled_rows_json(self, rows: list[tuple[int, dict[str, Any]]]
                      ) -> list[tuple[int, dict[str, Any]]]:
        """A settled incident's stored JSON with what may have changed since it settled:
        ``confirmed``, ``item_name`` and ``notes``."""
        if not rows:
            return rows
        confirmed = self._confirmation()
        names = self.store.item_names({b.get("item") or "" for _id, b in rows})
        notes = self.store.notes(None if len(rows) > 500 else [i for i, _b in rows])
        for i, body in rows:
            wm = confirmed.get(body["site"])
            body["confirmed"] = wm is not None and wm > parse_time(body["occurred_at"])
            body["item_name"] = names.get(body.get("item") or "")
            body["notes"] = [_note_json(n) for n in notes.get(i, ())]
        return rows

    def _settled_incident(self, incident_id: int) -> dict[str, Any] | None:
        rows = self.store.settled_incidents(incident_id - 1, 1, None)
        if not rows or rows[0].id != incident_id:
            return None
        ((_id, body),) = self._settled_rows_json([(rows[0].id, json.loads(rows[0].body))])
        return body

    def incident(self, incident_id: int) -> Reply:
        """``GET /v1/negatives/{id}``: one incident, with its story and the location's balance
        over time in both orders (what the incident page shows)."""
        inc = self._find_incident(incident_id)
        if inc is None:
            return self._settled_incident_reply(incident_id)
        (j,) = self.incidents_json([inc])
        m = inc.movement
        by = None if inc.resolved_by is None else self.engine.events.get(inc.resolved_by)
        history = self._history(inc)
        stored = {s.event_id: s for s in self.store.events_by_id(
            [m.event_id] + ([by.event_id] if by is not None else []))}
        confirmed = self._confirmation()
        waiting = [s.name for s in self.store.stations()
                   if s.site == m.site and s.revoked_at is None
                   and (s.watermark is None or parse_time(s.watermark) <= m.t)]

        def event(eid: str | None) -> dict[str, Any] | None:
            return None if eid is None or eid not in stored else self._event_json(stored[eid])

        dep_posted = next((p.balance for p in history.recorded if p.event_id == m.event_id),
                          None)
        return Reply(200, {
            "incident": j, "depletion": event(m.event_id),
            "resolved_by": event(None if by is None else by.event_id),
            "recorded_balance_when_posted": dep_posted,
            "site_watermark": (None if m.site not in confirmed
                               else format_time(confirmed[m.site])),
            "waiting_for": waiting,
            "history": {name: [{"t": format_time(p.t), "balance": p.balance,
                                "event_id": p.event_id} for p in pts]
                        for name, pts in (("recorded", history.recorded),
                                          ("occurrence", history.occurrence))},
        })

    def _settled_incident_reply(self, incident_id: int) -> Reply:
        """An incident behind its site's horizon: its JSON and events from the store. The
        balance over time is not drawn: the events before the horizon are settled out of
        memory (their effect lives on in the balance at the horizon)."""
        j = self._settled_incident(incident_id)
        if j is None:
            return _error(404, f"no incident {incident_id}")
        ids = [j["depletion_event_id"]] + ([j["resolved_by_event_id"]]
                                           if j.get("resolved_by_event_id") else [])
        stored = {s.event_id: s for s in self.store.events_by_id(ids)}
        confirmed = self._confirmation()

        def event(eid: str | None) -> dict[str, Any] | None:
            return None if eid is None or eid not in stored else self._event_json(stored[eid])

        return Reply(200, {
            "incident": j, "depletion": event(j["depletion_event_id"]),
            "resolved_by": event(j.get("resolved_by_event_id")),
            "recorded_balance_when_posted": None,
            "site_watermark": (None if j["site"] not in confirmed
                               else format_time(confirmed[j["site"]])),
            "waiting_for": [], "settled": True,
            "history": {"recorded": [], "occurrence": []},
        })

    def _history(self, inc: Incident) -> BalanceHistory:
        m = inc.movement
        site, item, loc = m.site, m.item or "", inc.location
        target = self.engine.events.get
        # One pass over the events in memory (the chart is read rarely; ingest never pays).
        ms = [e for e in self.engine.events.values()
              if e.site == site and (e.item == item or e.type == "void")
              and touches(e, site, item, loc, target)]
        arrivals = {s.event_id: Arrival(s.applied_seq, parse_time(s.applied_at))
                    for s in self.store.events_by_id([e.event_id for e in ms])
                    if s.applied_seq is not None and s.applied_at is not None}
        return balance_history(ms, arrivals, loc, target)

    def event_summaries(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """What the page says of events (type, quantity, bins, station, time), from memory."""
        out = {}
        for eid in ids:
            m = next((e for _site in self._each_site()
                      if (e := self.engine.events.get(eid)) is not None), None)
            if m is not None:
                out[eid] = {"event_id": eid, "type": m.type, "qty": m.qty, "station": m.station,
                            "from_location": m.from_location, "to_location": m.to_location,
                            "occurred_at": m.occurred_at}
        return out

    def item_names(self, items: list[str]) -> dict[str, str]:
        return self.store.item_names(items)

    # ---------------------------------------------------------- items, notes

    def import_items(self, names: list[tuple[str, str]]) -> tuple[int, int]:
        """Add or update item names; returns (added, updated)."""
        return self.store.put_items(names, format_time(now_us()))

    def add_manager(self, name: str) -> str:
        """Register a manager; returns the token (only its hash is stored)."""
        if not valid_station_name(name):
            raise ManagerError(f"{name!r} is not a valid manager name (letters, digits, '.', "
                               "'_', '-'; at most 64)")
        token = new_token()
        self.store.add_manager(name, hash_token(token), format_time(now_us()))
        return token

    def add_note(self, token: str | None, incident_id: int, body: bytes) -> Reply:
        """``POST /v1/negatives/{id}/notes`` with a manager's token and ``{"text": ...}``."""
        if not token:
            return _error(401, "a note needs a manager's bearer token",
                          **{"WWW-Authenticate": "Bearer"})
        digest = hash_token(token)
        manager = self.store.manager_by_token(digest)
        if manager is None:
            if self.store.station_by_token(digest) is not None:
                return _error(403, "a station's token cannot add notes; use a manager's token "
                                   "(scan-ledger manager add)")
            return _error(401, "unknown or revoked token", **{"WWW-Authenticate": "Bearer"})
        inc = self._find_incident(incident_id)
        if inc is None and self._settled_incident(incident_id) is None:
            return _error(404, f"no incident {incident_id}")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return _error(400, f"malformed JSON: {exc}")
        if not isinstance(data, dict) or set(data) != {"text"}:
            return _error(400, 'body: expected {"text": "..."} and nothing else')
        text = data["text"]
        if not isinstance(text, str) or not text.strip():
            return _error(400, "text: required, a non-empty string")
        text = text.strip().replace("\r\n", "\n")
        if len(text) > MAX_NOTE:
            return _error(400, f"text: {len(text)} characters; at most {MAX_NOTE}")
        if _NOTE_CONTROL.search(text) or lone_surrogate(text):
            return _error(400, "text: holds a control character (only tabs and line breaks "
                               "are allowed)")
        if inc is not None:
            depletion = inc.movement.event_id
        else:
            settled = self._settled_incident(incident_id)
            assert settled is not None  # looked up above, on this same thread
            depletion = settled["depletion_event_id"]
        note = self.store.add_note(incident_id, depletion, manager.name, text,
                                   format_time(now_us()))
        return Reply(201, {"note": _note_json(note)})

    def balances(self, site: str | None = None, item: str | None = None,
                 location: str | None = None, by: str | None = None) -> Reply:
        rows = sorted(row for _site in self._each_site()
                      for row in self.engine.balances(site, item, location))
        if by is None or by == "location":
            return Reply(200, {"balances": [
                {"site": s, "item": i, "location": loc, "on_hand": bal, "recorded": rec}
                for s, i, loc, bal, rec in rows]})
        if by != "item":
            return _error(400, f"by: must be location or item, got {by!r}")
        totals: dict[tuple[str, str], list[int]] = {}
        for s, i, _loc, bal, rec in rows:
            t = totals.setdefault((s, i), [0, 0])
            t[0] += bal
            t[1] += rec
        return Reply(200, {"balances": [
            {"site": s, "item": i, "location": None, "on_hand": v[0], "recorded": v[1]}
            for (s, i), v in sorted(totals.items())]})

    def _event_json(self, stored: StoredEvent,
                    elsewhere: dict[str, str] | None = None) -> dict[str, Any]:
        ev: dict[str, Any] = json.loads(stored.body)
        engine = self._engine_of(stored.site)
        m = None if engine is None else engine.events.get(stored.event_id)
        ev["received_at"] = stored.received_at
        ev["status"] = stored.status
        ev["applied_at"] = stored.applied_at
        ev["effective_at"] = stored.effective_at if m is None else m.effective_at
        ev["warnings"] = [] if stored.warnings is None else json.loads(stored.warnings)
        ev["voided_by"] = stored.voided_by if m is None else m.voided_by
        if m is None and elsewhere:  # a site another process owns: the store says
            ev["voided_by"] = ev["voided_by"] or elsewhere.get(stored.event_id)
        return ev

    def events(self, station: str | None = None, limit: int = 100,
               after: str | None = None) -> Reply:
        """``GET /v1/events``: the newest first, ``limit`` at a time, settled or not;
        ``next`` is the cursor of the following (older) page, None on the last."""
        before = None
        if after:
            before = _cursor(after)
            if before is None:
                return _error(400, f"after: not a cursor this ledger gave: {after!r}")
        stored = self.store.events(station, limit + 1, before)
        more = len(stored) > limit
        stored = stored[:limit]
        leases = self._leases()
        elsewhere = None
        if leases is not None and self.owned is not None:
            ids = [s.event_id for s in stored if s.site not in self.owned]
            elsewhere = leases.voided_by(ids) if ids else {}
        return Reply(200, {"events": [self._event_json(s, elsewhere) for s in stored],
                           "next": _make_cursor(stored[-1].rowid) if more else None})

    def held(self) -> Reply:
        """``GET /v1/held``: held depletions in occurrence order (the order of release)."""
        held = sorted((m for _site in self._each_site() for m in self.engine.held_events()),
                      key=lambda m: m.key)
        rows = {s.event_id: s for s in self.store.events_by_id([m.event_id for m in held])}
        return Reply(200, {"held": [self._event_json(rows[m.event_id]) for m in held
                                    if m.event_id in rows]})

    def stations(self) -> Reply:
        now = now_us()
        records = self.store.stations()
        flags = station_flags(records, now)
        return Reply(200, {"stations": [_station_json(s, now) | {"flags": flags[s.name]}
                                        for s in records]})


def _note_json(n: NoteRecord) -> dict[str, Any]:
    return {"id": n.id, "author": n.author, "text": n.text, "created_at": n.created_at}


def _make_cursor(position: int) -> str:
    """An opaque page cursor: clients hand it back as it is."""
    return f"p{position}"


def _cursor(raw: str | None) -> int | None:
    """The position a cursor names (0 for none), or None if it is not one of ours."""
    if raw is None or raw == "":
        return 0
    digits = raw[1:]
    if raw[:1] != "p" or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(digits)


def _station_json(s: StationRecord, now: int) -> dict[str, Any]:
    lag = None if s.watermark is None else round((now - parse_time(s.watermark)) / 1e6, 3)
    return {
        "station": s.name, "name": s.name, "site": s.site, "created_at": s.created_at,
        "revoked": s.revoked_at is not None, "revoked_at": s.revoked_at,
        "last_contact": s.last_contact, "sent_at": s.sent_at, "watermark": s.watermark,
        "clock_offset_ms": s.clock_offset_ms, "lag_s": lag,
        "last_batch_events": s.last_batch_events,
    }


