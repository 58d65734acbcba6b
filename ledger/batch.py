"""Reading a posted batch: JSON, its shape, and every event checked (DESIGN sections 5-6).

Pure, and the larger part of what ingest costs per event, so the server runs it in a pool
of worker processes (:class:`BatchReader`) while the ledger's own thread applies the batch
before: the two overlap on different cores instead of taking turns under one interpreter
lock. The service checks what the reader assumed (the token's station, its site) and reads
the batch again itself when an assumption does not hold, so the answers are the same
whichever way a batch was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from ledger.events import Movement, parse_json, parse_time, validate_event

__all__ = ["Batch", "BatchReader", "Rejected", "default_workers", "lone_surrogate", "read_batch"]

log = logging.getLogger("ledger")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A posted event that is not one: its id (if it has a usable one) and why."""

    event_id: str | None
    reason: str


@dataclass(slots=True)
class Batch:
    """A well-formed batch, its events checked as events of ``station`` at ``site``.

    ``events`` is empty when the batch holds more than the reader was told to check (the
    service answers 413 without looking at them)."""

    station: str
    site: str | None
    sent_at: str | None
    watermark: str | None
    count: int
    events: list[Movement | Rejected]


_SURROGATE = re.compile(rb"\\u[dD][89abAB]")


def read_batch(body: bytes, site: str | None = None, max_events: int = 10_000
               ) -> Batch | str:
    """A batch, or why the body is not one (the reason a 400 answer gives).

    Each event is checked as an event of the batch's own station at ``site``; without a
    ``site``, at the site its first event names (the service reads the batch again if the
    station's registered site is another)."""
    try:
        batch = parse_json(body)
    except RecursionError:  # a deeply nested body is a client error, not a crash
        return "malformed JSON: nested too deeply"
    except (ValueError, UnicodeDecodeError) as exc:
        return f"malformed JSON: {exc}"
    # (the substring test first: it is much cheaper than the search it spares)
    try:
        if b"\\u" in body and _SURROGATE.search(body) and lone_surrogate(batch):
            return "malformed JSON: a string holds a lone UTF-16 surrogate"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    shape = _batch_shape(batch)
    if shape is not None:
        return shape
    station: str = batch["station"]
    raw: list[Any] = batch["events"]
    if site is None:
        first = raw[0] if raw else None
        named = first.get("site") if isinstance(first, dict) else None
        site = named if isinstance(named, str) else ""
    out: list[Movement | Rejected] = []
    if len(raw) <= max_events:
        for ev in raw:
            m = validate_event(ev, station, site)
            if isinstance(m, Movement):
                out.append(m)
            else:
                eid = ev.get("event_id") if isinstance(ev, dict) else None
                out.append(Rejected(eid if isinstance(eid, str) else None, m))
    return Batch(station, site, batch.get("sent_at"), batch.get("watermark"), len(raw), out)


def lone_surrogate(value: Any) -> bool:
    """Whether any string in a parsed body cannot be UTF-8 (a lone surrogate escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(lone_surrogate(k) or lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(lone_surrogate(v) for v in value)
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


def default_workers() -> int:
    """One reader process where there is a second core for it; none on a single core
    (there, reading in a process of its own would only add the copying)."""
    return 1 if len(os.sched_getaffinity(0)) >= 2 else 0


def _worker_init(server: int) -> None:
    # The server stops its workers itself, after its last request: a SIGTERM or Ctrl-C
    # sent to the whole group (systemd, a terminal) must not take them first. A server that
    # dies without stopping them (SIGKILL, the OOM killer) leaves them to this watch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == server:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


#: a batch not read within this long means a reader that hangs: read them in-process
READ_TIMEOUT_S = 60.0


class BatchReader:
    """:func:`read_batch` in ``workers`` processes of their own (started on first use, with
    ``spawn``: never a fork of the threaded server). With no workers, or once the pool has
    failed, the caller reads batches itself (``read`` returns None)."""

    def __init__(self, workers: int, max_events: int) -> None:
        self.workers = workers
        self.max_events = max_events
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._broken = workers <= 0
        self._closed = False

    def _get(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._broken or self._closed:
                return None
            if self._pool is None:
                try:
                    self._pool = ProcessPoolExecutor(
                        self.workers, mp_context=multiprocessing.get_context("spawn"),
                        initializer=_worker_init, initargs=(os.getpid(),))
                except (OSError, ImportError) as exc:  # e.g. no /dev/shm for its locks
                    log.warning("no batch reader processes (%s: %s); reading batches in the "
                                "ledger's own process", type(exc).__name__, exc)
                    self._broken = True
            return self._pool

    def warm(self) -> None:
        """Start the workers now, in the background (a batch that comes before they are
        up waits for them)."""
        pool = self._get()
        if pool is not None:
            with contextlib.suppress(OSError, RuntimeError):  # read() finds out and says so
                pool.submit(default_workers)

    async def read(self, body: bytes) -> Batch | str | None:
        pool = self._get()
        if pool is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                pool, read_batch, body, None, self.max_events), READ_TIMEOUT_S)
        except (BrokenProcessPool, RuntimeError, OSError, TimeoutError) as exc:
            # A worker died (killed, out of memory), hangs, or the pool is shutting down:
            # the service reads the batches itself from now on.
            with self._lock:
                if not self._broken and not self._closed:
                    log.warning("the batch reader processes failed (%s%s); reading "
                                "batches in the ledger's own process", type(exc).__name__,
                                f": {exc}" if str(exc) else "")
                self._broken = True
                pool, self._pool = self._pool, None
            if pool is not None:
                _stop(pool)
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a failed pool without waiting for it: its processes are killed (one may hang)."""
    processes = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes.values():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            proc.kill()
