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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ledger.alerts import WebhookNotifier
from ledger.config import LedgerConfig
from ledger.engine import Change, Ledger
from ledger.errors import LedgerError, StationError, StoreError
from ledger.events import (
    Movement,
    digest_of,
    format_time,
    now_us,
    parse_json,
    parse_time,
    validate_event,
)
from ledger.store import Contact, NewEvent, StationRecord, Store, StoredEvent, open_store

if TYPE_CHECKING:
    from ledger.pgstore import PgStore

__all__ = ["LedgerService", "Reply", "hash_token", "new_token", "valid_station_name"]

log = logging.getLogger("ledger")
T = TypeVar("T")


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
        self.engine = self._new_engine()
        self.notifier: WebhookNotifier | None = None
        self._closed = False
        # On PostgreSQL: the sites this process owns (None: every site, one process).
        self.advertise_url = advertise_url
        self.member_id = secrets.randbelow(2**31 - 2) + 1
        self.owned: set[str] | None = None
        self._orphaned: dict[str, float] = {}
        self._handed: dict[str, float] = {}  # sites handed over, when
        self._broken = False
        self._tender: threading.Thread | None = None
        self._stop = threading.Event()

    def _new_engine(self) -> Ledger:
        return Ledger(self.config.allow_negative,
                      duplicate_window_us=int(self.config.duplicate_window_s * 1_000_000))

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
        return self

    def close(self) -> None:
        """Stop alerts, then the worker, then close the database; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._tender is not None:
            self._tender.join(30)
        if self.notifier is not None:
            self.notifier.close()
        if self._executor is not None:
            if self._store is not None:
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
        self._store = self._store_factory(self.db_path)
        if self._leases() is not None:
            self._join()
        else:
            self._rebuild()

    def _leases(self) -> PgStore | None:
        """The store as a holder of site leases (PostgreSQL), or None (SQLite)."""
        store = self._store
        return store if hasattr(store, "claim_site") else None  # type: ignore[return-value]

    @staticmethod
    def _replay(engine: Ledger, log_: Any) -> int:
        """Feed stored events (applied ones in recorded order, then held) to ``engine``."""
        n = 0
        for stored in log_:
            m = validate_event(parse_json(stored.body), stored.station, stored.site)
            if not isinstance(m, Movement):
                log.error("event %s in the log no longer validates (%s); skipped",
                          stored.event_id, m)
                continue
            if stored.applied_seq is None:
                engine.restore_held(m)
            else:
                engine.applied_seq = stored.applied_seq - 1
                engine.submit(m, parse_time(stored.applied_at), replay=True)
                m.applied_seq = stored.applied_seq
            m.body = None
            n += 1
        return n

    def _rebuild(self) -> None:
        """Replay the event log into a fresh engine (at start, or after a failed write)."""
        engine = self._new_engine()
        n = self._replay(engine, self.store.log())
        engine.take_changes()
        self.engine = engine
        # The rebuilt history lives as long as the process: keep the cyclic GC from
        # rescanning it on every full collection.
        gc.collect()
        gc.freeze()
        now = now_us()
        out = engine.release_all(now)
        if out.released:
            at = format_time(now)
            self.store.save_batch([], [(m.event_id, seq, at) for m, seq in out.released], None)
        self._announce(engine.take_changes())
        log.info("ledger rebuilt from %d events (%d incidents, %d held)", n,
                 len(engine.incidents), len(engine.held_events()))

    # ------------------------------------------------- sites and their leases

    def _join(self) -> None:
        """Join the processes sharing the PostgreSQL database; take a fair share of sites."""
        leases = self._leases()
        assert leases is not None
        leases.join(self.member_id)
        self.owned = set()
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
                leases.release_site(site)
                self.owned.discard(site)
                self._handed[site] = now
            log.info("handed sites %s over (%d processes share %d sites)", give, members,
                     len(owners))
            self._reload()

    def _take(self, site: str) -> bool:
        """Take ``site``'s lease if it is free, and load the site; True if this process owns
        it now."""
        leases = self._leases()
        assert leases is not None and self.owned is not None
        if site in self.owned:
            return True
        if not leases.claim_site(site, self.member_id, self.advertise_url or "",
                                 format_time(now_us())):
            return False
        self.owned.add(site)
        self._orphaned.pop(site, None)
        started = time.monotonic()
        n = self._replay(self.engine, leases.site_log(site))
        self.engine.take_changes()
        self._release_covered(leases)
        log.info("took over site %s: %d events loaded in %.2f s", site, n,
                 time.monotonic() - started)
        return True

    def _release_covered(self, leases: PgStore) -> None:
        engine = self.engine
        engine.applied_seq = leases.next_block()
        now = now_us()
        out = engine.release_all(now)
        if out.released:
            at = format_time(now)
            for m, seq in out.released:
                m.applied_seq = seq
            leases.save_batch([], [(m.event_id, seq, at) for m, seq in out.released], None)
        self._announce(engine.take_changes())

    def _reload(self) -> None:
        """A fresh engine over the sites this process owns (after handing some over)."""
        leases = self._leases()
        assert leases is not None and self.owned is not None
        self.engine = self._new_engine()
        for site in sorted(self.owned):
            self._replay(self.engine, leases.site_log(site))
        self.engine.take_changes()

    def _recover(self) -> None:
        """After a failed write on PostgreSQL: a new session (the old one's leases are gone,
        and another process may have written since), then take sites again."""
        self.owned = set()
        self.engine = self._new_engine()
        with contextlib.suppress(LedgerError):
            self.store.close()
        try:
            self._store = self._store_factory(self.db_path)
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
        """Where ``site`` is served: None here, else the owning process's base URL (or "" if
        nobody can be reached right now)."""
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

    # ---------------------------------------------------------------- ingest

    def ingest(self, token: str | None, body: bytes, received: int) -> Reply:
        """``POST /v1/events`` (DESIGN section 6)."""
        if not token:
            return _error(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        station = self.store.station_by_token(hash_token(token))
        if station is None:
            return _error(401, "unknown or revoked token", **{"WWW-Authenticate": "Bearer"})
        try:
            batch = parse_json(body)
        except RecursionError:  # a deeply nested body is a client error, not a crash
            return _error(400, "malformed JSON: nested too deeply")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"malformed JSON: {exc}")
        # (the substring test first: it is much cheaper than the search it spares)
        try:
            if (b"\\u" in body and re.search(rb"\\u[dD][89abAB]", body)
                    and _lone_surrogate(batch)):
                return _error(400, "malformed JSON: a string holds a lone UTF-16 surrogate")
        except RecursionError:
            return _error(400, "malformed JSON: nested too deeply")
        shape = _batch_shape(batch)
        if shape is not None:
            return _error(400, shape)
        if batch["station"] != station.name:
            return _error(403, f"this token belongs to station {station.name!r}, "
                               f"not {batch['station']!r}")
        events = batch["events"]
        if len(events) > self.config.max_batch_events:
            return _error(413, f"{len(events)} events in one batch; at most "
                               f"{self.config.max_batch_events}")
        leases = self._leases()
        known: dict[str, StoredEvent] = {}
        if leases is not None:
            try:
                owner = self.owner_of(station.site)
                if owner is not None:
                    if not owner:
                        return _error(503, f"site {station.site} is changing hands; retry",
                                      **{"Retry-After": "1"})
                    return Reply(307, {"error": f"site {station.site} is served by {owner}"},
                                 forward=owner)
                # An event_id this process has not seen may belong to another site.
                engine_events = self.engine.events
                ids = [ev["event_id"] for ev in events if isinstance(ev, dict)
                       and isinstance(ev.get("event_id"), str)
                       and ev["event_id"] not in engine_events]
                if ids:
                    known = {e.event_id: e for e in leases.events_by_id(ids)}
                self.engine.applied_seq = leases.next_block()
            except StoreError:
                log.exception("the ledger database failed before a batch of %s", station.name)
                self._broken = True
                return _error(503, "the ledger database is unavailable; retry",
                              **{"Retry-After": "2"})
        sent_at = batch.get("sent_at")
        watermark = batch.get("watermark")
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
        released: list[tuple[str, int, str]] = []
        fresh: list[Movement] = []
        validate, submit = validate_event, engine.submit
        name, site = station.name, station.site
        for ev in events:
            m = validate(ev, name, site)
            if not isinstance(m, Movement):
                eid = ev.get("event_id") if isinstance(ev, dict) else None
                results.append({"event_id": eid if isinstance(eid, str) else None,
                                "status": "rejected", "reason": m, "warnings": []})
                continue
            if known and m.event_id in known:
                same = digest_of(known[m.event_id].body) == m.digest
                results.append({
                    "event_id": m.event_id, "status": "duplicate" if same else "rejected",
                    "reason": "already received with the same content" if same else
                    "event_id: already used by a different event (same id, different content)",
                    "warnings": []})
                continue
            out = submit(m, received)
            status = out.status
            if out.applied_seq is not None:
                m.applied_seq = out.applied_seq
            results.append({"event_id": m.event_id, "status": status, "reason": out.reason,
                            "warnings": out.warnings})
            if status == "accepted" or status == "held":
                assert m.body is not None
                rows.append(NewEvent(m.event_id, m.station, m.site, m.seq, m.type, m.item,
                                     m.occurred_at, received_at, status, out.applied_seq,
                                     received_at if out.applied_seq else None, m.body))
                fresh.append(m)
            if out.released:
                for r, seq in out.released:
                    r.applied_seq = seq
                released.extend((r.event_id, seq, received_at) for r, seq in out.released)
        contact = Contact(station.name, received_at, sent_at, watermark, offset, len(events))
        try:
            self.store.save_batch(rows, released, contact)
        except StoreError:
            log.exception("could not save a batch of %s; rebuilding from the log",
                          station.name)
            if leases is not None:
                self._recover()
            else:
                self._rebuild()
            return _error(503, "the ledger could not save this batch; retry", **{
                "Retry-After": "2"})
        for m in fresh:
            m.body = None
        self._announce(engine.take_changes())
        return Reply(200, {"server_time": format_time(now_us()), "received_at": received_at,
                           "results": results})

    def _announce(self, changes: list[Change]) -> None:
        if self.notifier is None or not changes:
            return
        confirmed = self._confirmation()
        for ch in changes:
            self.notifier.notify({
                "kind": ch.kind, "previous_class": ch.previous_class,
                "incident": self._incident_json(ch.incident.movement, ch.incident, confirmed)})

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

    def _incident_json(self, m: Movement, inc: Any, confirmed: dict[str, int]) -> dict[str, Any]:
        wm = confirmed.get(m.site)
        out: dict[str, Any] = inc.to_json(
            confirmed=wm is not None and wm > m.t,
            suspected_duplicate=self.engine.suspected_duplicate(m))
        if self.owned is not None:
            # Several processes: an incident is known by its depletion's position in
            # recorded order, the same in whichever process loads the site.
            out["id"] = m.applied_seq
        return out

    def negatives(self, status: str | None = None) -> Reply:
        if status not in (None, "open", "resolved"):
            return _error(400, f"status: must be open or resolved, got {status!r}")
        confirmed = self._confirmation()
        incidents = [self._incident_json(inc.movement, inc, confirmed)
                     for inc in self.engine.iter_incidents(status)]
        if self.owned is not None:
            incidents.sort(key=lambda i: i["id"])
        return Reply(200, {"incidents": incidents})

    def balances(self, site: str | None = None, item: str | None = None,
                 location: str | None = None, by: str | None = None) -> Reply:
        rows = self.engine.balances(site, item, location)
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
        m = self.engine.events.get(stored.event_id)
        ev["received_at"] = stored.received_at
        ev["status"] = stored.status
        ev["applied_at"] = stored.applied_at
        ev["voided_by"] = (m.voided_by if m is not None
                           else None if elsewhere is None else elsewhere.get(stored.event_id))
        return ev

    def events(self, station: str | None = None, limit: int = 100) -> Reply:
        stored = self.store.events(station, limit)
        leases = self._leases()
        elsewhere = None
        if leases is not None and self.owned is not None:
            # events of sites another process owns: what voided them is in the database
            ids = [s.event_id for s in stored if s.site not in self.owned]
            elsewhere = leases.voided_by(ids) if ids else {}
        return Reply(200, {"events": [self._event_json(s, elsewhere) for s in stored]})

    def held(self) -> Reply:
        ids = [m.event_id for m in self.engine.held_events()]
        return Reply(200, {"held": [self._event_json(s) for s in self.store.events_by_id(ids)]})

    def stations(self) -> Reply:
        now = now_us()
        return Reply(200, {"stations": [_station_json(s, now) for s in self.store.stations()]})


def _station_json(s: StationRecord, now: int) -> dict[str, Any]:
    lag = None if s.watermark is None else round((now - parse_time(s.watermark)) / 1e6, 3)
    return {
        "station": s.name, "name": s.name, "site": s.site, "created_at": s.created_at,
        "revoked": s.revoked_at is not None, "revoked_at": s.revoked_at,
        "last_contact": s.last_contact, "sent_at": s.sent_at, "watermark": s.watermark,
        "clock_offset_ms": s.clock_offset_ms, "lag_s": lag,
        "last_batch_events": s.last_batch_events,
    }


def _lone_surrogate(value: Any) -> bool:
    """Whether any string in a parsed body cannot be UTF-8 (a lone surrogate escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def _batch_shape(batch: Any) -> str | None:
    """Why a parsed body is not a batch, or None."""
    if not isinstance(batch, dict):
        return "body: expected a JSON object {station, sent_at, watermark, events}"
    station = batch.get("station")
    if not isinstance(station, str) or not station:
        return "station: required, a string"
    if not isinstance(batch.get("events"), list):
        return "events: required, an array of events"
    for field in ("sent_at", "watermark"):
        v = batch.get(field)
        if v is not None:
            try:
                parse_time(v)
            except ValueError as exc:
                return f"{field}: {exc}"
    return None
