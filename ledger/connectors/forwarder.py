"""The connector machinery: one forwarding thread per connector, over the store's outbox.

Ingest puts every accepted (or released) movement of a connector's sites into the outbox in
the transaction that stores it (:meth:`~ledger.store.SqliteStore.save_batch`) and wakes the
connector; nothing else of ingest waits for an ERP. Each connector's thread then, in
recorded order:

1. reads the next pending entries (on the ledger's writer thread, like every store access);
2. for each, asks the adapter to ``find`` the record carrying the event id and ``post`` it
   only if there is none (exactly once, even after a crash or a lost answer), then posts the
   corrections of :mod:`ledger.connectors.plan` the same way;
3. marks it ``forwarded`` with what the ERP made, or ``unmapped`` with the reason when the
   ERP lacks the item, location or warehouse (or a void's target is not in the ERP yet).

Any other failure (ERP down, slow, refusing) stops the round where it is, records the error
and waits with capped exponential backoff and full jitter before trying the same entry again,
so order is kept. ``unmapped`` entries are tried again every ``unmapped_retry_s`` and go
through once the master data exists; none is ever dropped.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ledger.connectors.base import Adapter
from ledger.connectors.plan import (
    Adjust,
    Forwarded,
    Posted,
    Reverse,
    Transfer,
    corrections,
    effects,
    main_op,
    order_key,
    reverse_op,
)
from ledger.connectors.settings import ConnectorConfig
from ledger.errors import LedgerError, Unmapped
from ledger.events import Movement, format_time, now_us, parse_json, validate_event
from ledger.store import OutboxEntry, Store

__all__ = ["Forwarder", "make_adapter"]

log = logging.getLogger("ledger.connectors")
T = TypeVar("T")
Run = Callable[..., Any]

BATCH = 100
BACKOFF_BASE_S = 0.5
LEASE_WAIT_S = 1.0  # several processes: how often to look at the lease and the outbox


def make_adapter(config: ConnectorConfig) -> Adapter:
    """The adapter for ``config.kind`` (an unknown kind cannot pass the config check)."""
    if config.kind == "tryton":
        from ledger.connectors.tryton import TrytonAdapter
        return TrytonAdapter(config)
    if config.kind == "erpnext":
        from ledger.connectors.erpnext import ErpNextAdapter
        return ErpNextAdapter(config)
    from ledger.connectors.odoo import OdooAdapter
    return OdooAdapter(config)


@dataclass(slots=True)
class _Status:
    last_error: str | None = None
    last_error_at: str | None = None
    last_forwarded_at: str | None = None
    retry_at: float | None = None  # monotonic


def _movement(entry: OutboxEntry) -> Movement:
    m = validate_event(parse_json(entry.body), entry.station, entry.site)
    if not isinstance(m, Movement):  # the log held it valid when it was accepted
        raise LedgerError(f"event {entry.event_id} in the outbox no longer validates: {m}")
    return m


class Forwarder:
    """Forwards one connector's outbox into its ERP, on its own thread.

    ``run(fn, *args)`` runs ``fn`` on the ledger's writer thread and returns its result (the
    service's :meth:`~ledger.service.LedgerService.run`); ``store`` is the ledger's store."""

    def __init__(self, config: ConnectorConfig, adapter: Adapter, run: Run,
                 store: Callable[[], Store], *, rng: random.Random | None = None) -> None:
        self.config = config
        self.adapter = adapter
        self._run = run
        self._store = store
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status = _Status()
        self._thread: threading.Thread | None = None
        # Several processes on one PostgreSQL database: only the one holding the connector's
        # lease forwards it (claim_connector); the others wait, ready to take it over.
        self.running = False
        self._shared = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Forwarder:
        self._thread = threading.Thread(target=self._loop, name=f"connector-{self.config.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Something new is in the outbox (called after a batch is saved)."""
        self._wake.set()

    def close(self) -> None:
        """Stop forwarding; idempotent. Waits up to 10 s for an ERP call in flight, then
        leaves it (the thread is a daemon): whatever the ERP did with it, the look-up at the
        next start finds it, so nothing is posted twice and shutdown stays prompt."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(min(10.0, self.config.timeout_s + 1))
            if self._thread.is_alive():
                log.warning("connector %s: an ERP call still in flight at shutdown; left "
                            "to the next start's look-up", self.config.name)
            self._thread = None
        self.adapter.close()

    def status(self) -> dict[str, Any]:
        with self._lock:
            s = self._status
            retry = (None if s.retry_at is None
                     else max(0.0, round(s.retry_at - time.monotonic(), 1)))
            return {"running": self.running, "last_error": s.last_error,
                    "last_error_at": s.last_error_at,
                    "last_forwarded_at": s.last_forwarded_at, "retry_in_s": retry}

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        failures = 0
        next_unmapped = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.running = self._run(self._claim)
                if not self.running:  # another process forwards this connector
                    self._stop.wait(LEASE_WAIT_S)
                    continue
                more = self._round("pending") is not None
                if time.monotonic() >= next_unmapped:
                    self.retry_unmapped()
                    next_unmapped = time.monotonic() + self.config.unmapped_retry_s
                failures = 0
                with self._lock:
                    self._status.retry_at = None
            except LedgerError as exc:  # ConnectorError, StoreError: wait and retry
                failures += 1
                cap = min(self.config.retry_max_s, BACKOFF_BASE_S * 2 ** min(failures, 30))
                delay = self._rng.uniform(0, cap)
                self._error(str(exc), delay)
                log.warning("connector %s: %s; retrying in %.1f s", self.config.name, exc, delay)
                self._stop.wait(delay)
                continue
            except Exception as exc:  # a bug must not kill forwarding for good
                if self._stop.is_set():  # the service closed under a call in flight
                    return
                failures += 1
                delay = min(self.config.retry_max_s, BACKOFF_BASE_S * 2 ** min(failures, 30))
                self._error(f"internal error: {type(exc).__name__}: {exc}", delay)
                log.exception("connector %s failed", self.config.name)
                self._stop.wait(delay)
                continue
            if not more:
                wait = max(0.05, next_unmapped - time.monotonic())
                if self._shared:  # other processes fill the outbox too: no wake from them
                    wait = min(wait, LEASE_WAIT_S)
                self._wake.wait(min(wait, self.config.unmapped_retry_s))

    def _claim(self) -> bool:
        store = self._store()
        self._shared = store.shared
        return store.claim_connector(self.config.name)

    def _error(self, message: str, delay: float) -> None:
        with self._lock:
            self._status.last_error = message
            self._status.last_error_at = format_time(now_us())
            self._status.retry_at = time.monotonic() + delay

    def forward_pending(self) -> None:
        """Forward everything pending, in order, on the calling thread (the loop's step; a
        test's whole forwarding). Raises what an ERP call raised, the rest left pending."""
        while self._round("pending") is not None and not self._stop.is_set():
            pass

    def retry_unmapped(self) -> None:
        """Try every unmapped entry once more, in order."""
        after: int | None = 0
        while after is not None and not self._stop.is_set():
            after = self._round("unmapped", after)

    def _round(self, state: str, after: int = 0) -> int | None:
        """Forward a batch of the entries in ``state`` from after ``after``; the last one's
        place if the batch was full (there may be more), else None."""
        entries = self._run(self._store().outbox_open, self.config.name, state, BATCH, after)
        for entry in entries:
            if self._stop.is_set():
                return None
            self.forward(entry)
        return entries[-1].applied_seq if len(entries) == BATCH else None

    # ------------------------------------------------------------- one entry

    def forward(self, entry: OutboxEntry) -> None:
        """Put one movement into the ERP (or mark it unmapped); raises ConnectorError."""
        store = self._store()
        name = self.config.name
        now = format_time(now_us())
        try:
            m = _movement(entry)
            result, also, item, dated = self._forward(entry, m)
        except Unmapped as exc:
            if entry.state != "unmapped" or entry.reason != str(exc):
                log.info("connector %s: %s waits as unmapped: %s", name, entry.event_id, exc)
            self._run(store.outbox_mark, name, entry.applied_seq, "unmapped", str(exc), None,
                      now)
            return
        self._run(store.outbox_mark, name, entry.applied_seq, "forwarded", None,
                  json.dumps(result, sort_keys=True), now, also, item, dated)
        with self._lock:
            self._status.last_forwarded_at = now

    def _history(self, site: str, item: str | None, since: int | None) -> list[Forwarded]:
        """The item's forwarded movements dated at or after ``since`` (all if None): a
        movement's count and corrections concern only those."""
        rows = self._run(self._store().outbox_item_history, self.config.name, site, item,
                         since)
        return [Forwarded.of(_movement(r), r.result) for r in rows]

    def _once(self, op: Transfer | Adjust | Reverse) -> Posted:
        found = self.adapter.find(op)
        return found if found is not None else self.adapter.post(op)

    def _forward(self, entry: OutboxEntry, m: Movement
                 ) -> tuple[dict[str, Any], list[tuple[int, str]], str | None, int]:
        a = self.adapter
        also: list[tuple[int, str]] = []
        if m.type == "void":
            target_entry = self._run(self._store().outbox_entry, self.config.name,
                                     m.voids or "")
            if target_entry is None or target_entry.state != "forwarded":
                raise Unmapped(f"void {m.event_id} waits for {m.voids}, not in the ERP yet")
            target = Forwarded.of(_movement(target_entry), target_entry.result)
            if target.voided and target.result.get("voided_by") != m.event_id:
                return ({"skipped": f"already voided by {target.result['voided_by']}"}, also,
                        target.movement.item, target.movement.t)
            # a count's reverse sums the corrections made at it, by movements of any date
            history = self._history(target.movement.site, target.movement.item,
                                    None if target.movement.type == "count"
                                    else target.movement.t)
            rev = reverse_op(m, target, history)
            posted = self._once(rev)
            changes = effects(rev.transfer) if rev.transfer is not None else {}
            at_key = order_key(target.movement)
            dated = target.movement.t
            skip = {target.movement.event_id}
            item = target.movement.item or ""
            target.result["voided_by"] = m.event_id
            also.append((target_entry.applied_seq, json.dumps(target.result, sort_keys=True)))
            result: dict[str, Any] = {"ref": posted.ref, "reverses": target.movement.event_id,
                                      "effects": changes}
        else:
            # a count counts with the corrections made at later counts, by movements of any
            # date (see main_op)
            history = self._history(m.site, m.item,
                                    None if m.type == "count" and not a.reevaluates_counts
                                    else m.t)
            op = main_op(m, history, reevaluates_counts=a.reevaluates_counts, sees=a.sees)
            posted = self._once(op)
            if isinstance(op, Adjust):
                changes = {op.location: int(posted.delta or 0)}
            else:
                changes = effects(op)
            at_key = order_key(m)
            dated = m.t
            skip = {m.event_id}
            item = m.item or ""
            result = {"ref": posted.ref, "effects": changes}
            if posted.delta is not None:
                result["delta"] = posted.delta
        if not a.reevaluates_counts:
            fixes: dict[str, int] = {}
            for count_id, fix in corrections(m.event_id, at_key, changes, m.site, item,
                                             history, skip):
                self._once(fix)
                fixes[count_id] = fixes.get(count_id, 0) + sum(effects(fix).values())
            if fixes:
                result["corrections"] = fixes
        return result, also, item or None, dated

