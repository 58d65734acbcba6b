"""Store-and-forward to the central ledger (DESIGN sections 6 and 7).

:class:`SyncLoop` wakes when a movement is captured, waits a few milliseconds so that what
arrived together travels together, and drains the journal in ``seq`` order in batches over
one kept-alive HTTP connection. A movement is marked synced only from the ledger's per-event
result. Capture never waits for sync: the loop reads the journal through the writer thread.

Failures: connection errors, timeouts and 5xx back off exponentially with full jitter (capped);
429/503 honour ``Retry-After``; 413 halves the batch; 400 bisects the batch to isolate the
poison event, which is quarantined (``rejected``, kept, never blocking the rest); 401/403 are
reported loudly and retried slowly while the queue is kept.

Each exchange is also a clock sample (:mod:`agent.clock`); a movement's ``occurred_at`` is
fixed the first time it is sent and reused on every retry, so a replay is a ``duplicate``.

The ledger's warnings about negatives can stop being true after the fact (another dock's
receipt resolves the incident). So after a round whose results carried such a warning, and
then every ``warning_recheck`` seconds while the journal shows any still open, the loop reads
the site's open incidents behind them (``GET /v1/negatives``, with the station's own token)
and keeps the answer in the journal for ``scan-agent status`` (:mod:`agent.incidents`). A
reading that fails keeps the last answer, and when it was had; it never holds up the sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.budget import Pacer, available_cores
from agent.capture import Outcome
from agent.clock import Sample, TimeBase, boot_id, format_utc, parse_utc, stamp
from agent.config import Config, LedgerConfig
from agent.errors import AgentError, JournalError, SyncError
from agent.grammar import printable
from agent.incidents import WINDOW, about_incidents, query, relevant, to_ask
from agent.journal import Journal, JournalReader, JournalWriter

__all__ = ["SyncLoop", "SyncStats", "backoff_delay", "event_json", "retry_after"]

log = logging.getLogger("scan_agent.sync")

_LINGER = 0.005  # seconds to let scans that arrive together share a batch
# Movements per write transaction when sync stamps a batch or records its results while
# operators scan: each slice holds the journal's one writer (the capture thread) for about a
# millisecond, so a scan never waits behind a thousand-row update. The same count bounds the
# work done on the event loop between two of its turns (building events, reading results).
# When nobody scans, a batch is one transaction each way (fewer commits, a faster drain).
_SLICE = 100
_CORES_EVERY = 10.0  # seconds between two readings of the CPU quota (it can change live)
_SCANNING_FOR = 2.0  # seconds after a scan during which the station counts as scanning
_PACE_MAX = 0.25  # seconds sync waits at most at a time: slowed, never stopped
_HEARTBEAT = 30.0  # seconds between exchanges when idle (watermark and clock)
_PROBE_AGE_NS = 30 * 10**9  # refresh the clock before stamping if the base is older
_RETRY_AFTER_MAX = 600.0
_WATERMARK_MARGIN_NS = 10**9  # unsent events are promised only up to 1 s before their stamp
# After sending movements, one more exchange once the margin has passed: the batch's own
# watermark stops short of its newest movements, and the ledger confirms their incidents
# only once a watermark passes them (a single-dock site would otherwise wait a heartbeat).
_CATCH_UP = _WATERMARK_MARGIN_NS / 1e9 + 0.25
# A clean stop's last exchange may take this long at most (systemd's stop timeout is 30 s).
FAREWELL_S = 5.0
_ASK_PAGE = 1000  # open incidents per page when asking the ledger which still stand
_ASK_PAGES = 10  # pages at most: a site with more open incidents is not read every minute
_ASK_PAGE_BYTES = 4 << 20  # a page of the ledger's incidents larger than this is refused
_ASK_DEADLINE_S = 60.0  # one reading of the ledger's open incidents, all its pages


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, base * 2**n)]."""
    return rng.uniform(0.0, min(cap, base * (2 ** min(attempt, 30))))


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    v = value.strip()
    if v.isascii() and v.isdigit():
        return min(float(v), _RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - now), _RETRY_AFTER_MAX)


def event_json(row: dict[str, Any], station: str, site: str) -> dict[str, Any]:
    """The DESIGN section 5 event for a journaled (and stamped) movement row."""
    return {
        "event_id": row["event_id"], "station": station, "site": site,
        "scanner": row["scanner"], "seq": row["seq"], "type": row["type"], "item": row["item"],
        "lot": row["lot"], "serial": row["serial"], "qty": row["qty"],
        "from_location": row["from_location"], "to_location": row["to_location"],
        "occurred_at": row["occurred_at"], "reference": row["reference"],
        "operator": row["operator"], "voids": row["voids"],
        "clock": json.loads(row["clock"]), "raw": json.loads(row["raw"]),
    }


@dataclass
class SyncStats:
    """What ``status`` and the metrics show about sync."""

    batches: int = 0
    sent: int = 0
    accepted: int = 0
    duplicate: int = 0
    held: int = 0
    rejected: int = 0
    last_ok: float | None = None
    last_error: str | None = None
    auth_failed: bool = False
    warnings: list[str] = field(default_factory=list)


class _Retry(Exception):
    def __init__(self, delay: float | None, why: str) -> None:
        super().__init__(why)
        self.delay = delay


class SyncLoop:
    """The station's sync to the ledger; ``run()`` until ``close()``."""

    def __init__(
        self,
        config: Config,
        writer: JournalWriter,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        backoff_base: float = 0.5,
        token_reader: Callable[[LedgerConfig], str | None] | None = None,
        clock: Callable[[], tuple[int, int]] | None = None,
        scanning_cores: float | None = None,
    ) -> None:
        if config.ledger is None:
            raise SyncError("no [ledger] in the configuration")
        self.config = config
        self.ledger: LedgerConfig = config.ledger
        self.writer = writer
        self.time_base = TimeBase(boot_id())
        self.stats = SyncStats()
        self.warning_listeners: list[Callable[[str], None]] = []
        self._transport = transport
        self._rng = rng or random.Random()
        self._backoff_base = backoff_base
        self._token_reader = token_reader or _default_token_reader
        self._clock = clock or _now
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._final = False  # the last exchange of a clean stop: drain despite close()
        self._batch = self.ledger.batch_size
        self._client: httpx.AsyncClient | None = None
        self._reader: JournalReader | None = None  # sync's own connection, for its reads
        # sync spends only the CPU that capture leaves (see agent.budget)
        self._pacer = Pacer(available_cores())
        self._cores = self._pacer.cores
        self._last_scan = float("-inf")  # monotonic time of the last scan captured
        self._scanning_cores = scanning_cores
        self._cores_read = time.monotonic()
        # monotonic time the ledger's open incidents are next to be read (None: nothing the
        # journal shows needs them); at start, once, for the warnings a previous run kept
        self._ask_due: float | None = 0.0
        self._asking: asyncio.Task[None] | None = None
        # readings have their own connection: the sync's one is never held by a slow read
        self._ask_client: httpx.AsyncClient | None = None

    async def _pace(self) -> None:
        """Wait while the process has used more than sync's share of its CPU budget."""
        now = time.monotonic()
        if now - self._cores_read > _CORES_EVERY:
            self._cores_read = now
            self._cores = await asyncio.to_thread(available_cores)
        # While operators scan, the daemon (which passes scanning_cores) stays within that
        # much CPU, so that sync never holds the interpreter long enough to delay a scan, nor
        # writes so much to the journal that a capture's fsync waits behind it on the disk: a
        # backlog drains more slowly while a dock works, at full speed when it is quiet.
        cores = self._cores
        if self._scanning_cores is not None and now - self._last_scan < _SCANNING_FOR:
            cores = min(cores, self._scanning_cores)
        self._pacer.cores = cores
        delay = self._pacer.due()
        if delay > 0:
            await asyncio.sleep(min(delay, _PACE_MAX))

    def _slice(self, n: int) -> int:
        """How many of ``n`` movements to handle in one go (see _SLICE)."""
        scanning = time.monotonic() - self._last_scan < _SCANNING_FOR
        return max(1, min(_SLICE, n) if scanning else n)

    # -- wiring ----------------------------------------------------------------------------

    def on_capture(self, outcome: Outcome) -> None:
        """Capture listener: a new movement wakes the loop; any scan slows sync down for a
        while (see _pace)."""
        self._last_scan = time.monotonic()
        if outcome.seq is not None:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        self._closed.set()
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync until ``close()``. Nothing that goes wrong in one round ends the loop."""
        attempt = 0
        catch_up: float | None = None  # when to exchange again after sending movements
        self._wake.set()  # drain whatever the journal holds at start
        try:
            while not self._closed.is_set():
                wait = (_HEARTBEAT if catch_up is None
                        else max(0.0, catch_up - time.monotonic()))
                if self._ask_due is not None and (self._asking is None
                                                  or self._asking.done()):
                    wait = min(wait, max(0.0, self._ask_due - time.monotonic()))
                woke = await self._sleep(wait, wake=True)
                if self._closed.is_set():
                    break
                if woke:
                    await asyncio.sleep(_LINGER)
                try:
                    if self._client is None:
                        self._client = self._make_client()
                    started = time.monotonic()
                    if await self.drain():
                        # from the end of the round: what it sent was read before then
                        catch_up = time.monotonic() + _CATCH_UP
                    elif catch_up is not None and started >= catch_up:
                        catch_up = None  # this exchange's watermark passed what was sent
                    if (self._ask_due is not None and time.monotonic() >= self._ask_due
                            and (self._asking is None or self._asking.done())):
                        # a task of its own: a slow ledger never holds movements back
                        self._ask_due = None
                        self._asking = asyncio.create_task(self._ask_incidents(),
                                                           name="sync-incidents")
                except Exception as exc:
                    # _Retry: the ledger or the network. JournalError: the journal could not
                    # take the results (disk full); the ledger answers the replay as
                    # duplicates. Anything else is a defect or a bad setting: it is logged in
                    # full, and sync goes on trying rather than stop for good.
                    attempt += 1
                    given = exc.delay if isinstance(exc, _Retry) else None
                    if isinstance(exc, SyncError):  # a setting to fix: retried slowly
                        given = self.ledger.max_backoff
                    elif not isinstance(exc, _Retry | JournalError):
                        log.exception("sync round failed")
                        given = self.ledger.max_backoff
                    delay = given if given is not None else backoff_delay(
                        attempt, self._backoff_base, self.ledger.max_backoff, self._rng)
                    await self._note_error(_describe(exc))
                    self._wake.clear()
                    await self._sleep(delay, wake=False)
                    self._wake.set()
                else:
                    attempt = 0
            if self.stats.last_error is None:
                await self._farewell()
        finally:
            if self._asking is not None and not self._asking.done():
                self._asking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._asking
            if self._client is not None:
                await self._client.aclose()
                self._client = None
            if self._ask_client is not None:
                await self._ask_client.aclose()
                self._ask_client = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    async def _farewell(self) -> None:
        """A clean stop's last exchange: whatever is still queued, and a watermark of now.

        Scanners are closed before sync stops, so nothing older can come from this station
        until it starts again, and its next movements are newer still. Telling the ledger so
        lets it confirm the incidents of the day (every station's watermark past them)
        instead of keeping them provisional until the station is back. Skipped when the last
        round failed (the ledger is unreachable: the stop must not wait for it), and bounded
        by :data:`FAREWELL_S` when it is tried.
        """
        self._final = True
        try:
            async with asyncio.timeout(min(self.ledger.timeout, FAREWELL_S)):
                if self._client is None:
                    self._client = self._make_client()
                await self.drain()
        except Exception as exc:  # best effort: the ledger keeps the last watermark it had
            log.info("no last exchange at stop (%s); the ledger keeps the earlier watermark",
                     _describe(exc) if not isinstance(exc, TimeoutError) else "timed out")
        else:
            log.info("last exchange at stop: the ledger has everything captured until now")
        finally:
            self._final = False

    async def _sleep(self, seconds: float, *, wake: bool) -> bool:
        """Sleep, ending early on close (and on a wake when ``wake``). True if woken."""
        waiters = [asyncio.ensure_future(self._closed.wait())]
        if wake:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            done, _ = await asyncio.wait(waiters, timeout=seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if wake:
            self._wake.clear()
        return bool(done)

    def _make_client(self) -> httpx.AsyncClient:
        import ssl

        try:
            return self._build_client()
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f"{k} {v}" for k, v in (
                ("ca_bundle", self.ledger.ca_bundle), ("client_cert", self.ledger.client_cert),
                ("client_key", self.ledger.client_key)) if v)
            raise SyncError(f"cannot load the TLS files ({files}): "
                            f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
                            ) from exc

    def _build_client(self) -> httpx.AsyncClient:
        cert: Any = None
        if self.ledger.client_cert:
            cert = ((self.ledger.client_cert, self.ledger.client_key) if self.ledger.client_key
                    else self.ledger.client_cert)
        verify: Any = self.ledger.verify
        if self.ledger.verify and self.ledger.ca_bundle:
            import ssl

            verify = ssl.create_default_context(cafile=self.ledger.ca_bundle)
        if cert is not None and verify is not False:
            import ssl

            ctx = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
            ctx.load_cert_chain(*(cert if isinstance(cert, tuple) else (cert,)))
            verify = ctx
        timeout = httpx.Timeout(self.ledger.timeout, connect=min(5.0, self.ledger.timeout))
        return httpx.AsyncClient(
            base_url=self.ledger.url, timeout=timeout, verify=verify, transport=self._transport,
            headers={"User-Agent": "scan-agent/1"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def drain(self) -> bool:
        """Send everything pending, batch by batch; raises ``_Retry`` on a failure. Returns
        whether any movement was sent (else it was a heartbeat).

        The next batch is read and stamped on the journal's thread while the current one is
        on the wire, so a backlog drains at the pace of the slower side, not of both added.
        """
        await self._ensure_time_base()
        sent_any = False
        nxt: asyncio.Task[tuple[list[dict[str, Any]], str | None]] | None = None
        try:
            nxt = asyncio.ensure_future(self._prepare(after_seq=0))
            while not self._closed.is_set() or self._final:
                batch, watermark = await nxt
                nxt = None
                if not batch:
                    if not sent_any:  # heartbeat: a clock sample, and the watermark
                        await self._exchange([], watermark)
                    break
                nxt = asyncio.ensure_future(self._prepare(after_seq=batch[-1]["seq"]))
                await self._send(batch, watermark)
                sent_any = True
        finally:
            if nxt is not None:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
        return sent_any

    async def _prepare(self, after_seq: int) -> tuple[list[dict[str, Any]], str | None]:
        """The next batch after ``after_seq``, stamped, and the watermark to send with it."""
        limit = self._batch
        await self._pace()
        _, asof_boot = self._clock()  # before the read: later captures are not covered
        if self._reader is None:
            self._reader = await asyncio.to_thread(JournalReader, self.writer.journal.path)
        # Read through sync's own connection in a thread: a WAL reader holds up no writer,
        # so reading a thousand movements never delays a capture.
        rows = await asyncio.to_thread(self._reader.pending, limit + 1, after_seq)
        batch, rest = rows[:limit], rows[limit:]
        await self._freeze(batch)
        return batch, self._watermark(rest[0] if rest else None, asof_boot)

    async def _ensure_time_base(self) -> None:
        _, now_boot = self._clock()
        age = self.time_base.age_ns(now_boot)
        if age is None or age > _PROBE_AGE_NS:
            await self._exchange([], None)  # a clock probe claims nothing

    async def _freeze(self, rows: list[dict[str, Any]]) -> None:
        """Fix occurred_at, clock and the event's JSON of never-sent rows, in the journal."""
        stamps: list[tuple[int, str, str, str, float]] = []
        now = time.time()
        station, site = self.config.station, self.config.site
        step = self._slice(len(rows))
        for n, row in enumerate(rows):
            if n and n % step == 0:
                await self._pace()  # the loop turns between slices of the work
                await asyncio.sleep(0)
            if row["occurred_at"] is None:
                occurred, clock = stamp(row, self.time_base)
                row["occurred_at"], row["clock"] = occurred, json.dumps(clock)
                row["body"] = json.dumps(event_json(row, station, site), separators=(",", ":"))
                stamps.append((row["seq"], occurred, row["clock"], row["body"], now))
            elif row["body"] is None:  # stamped but its JSON not kept: rebuild the same bytes
                row["body"] = json.dumps(event_json(row, station, site), separators=(",", ":"))
        step = self._slice(len(stamps))
        for k in range(0, len(stamps), step):  # each slice in a transaction of its own
            part = stamps[k:k + step]
            await self._pace()
            # the last slice's durable commit makes all of them durable before the send
            await self.writer.call(Journal.freeze, part, k + step >= len(stamps))

    def _watermark(self, more: dict[str, Any] | None, asof_boot_ns: int) -> str | None:
        """Everything captured before this time has now been sent (DESIGN section 6).

        ``more`` is the oldest movement still queued after this batch (None: nothing was
        queued when the journal was read at ``asof_boot_ns``). Only the ledger's time base
        backs a claim: without it, or for a movement dated by an earlier boot's wall clock,
        the answer is None (no new claim; the ledger keeps the station's previous one). The
        margin covers a capture still committing when the journal was read, and a stamp that
        moves by a round trip before it is frozen.
        """
        if more is None:
            ledger_ns = self.time_base.ledger_ns(asof_boot_ns)
            return None if ledger_ns is None else format_utc(ledger_ns - _WATERMARK_MARGIN_NS)
        if more["occurred_at"] is not None:
            basis = json.loads(more["clock"] or "{}").get("basis")
            return str(more["occurred_at"]) if basis == "ledger" else None
        if more["boot_id"] != self.time_base.boot_id or self.time_base.best is None:
            return None
        occurred, _ = stamp(more, self.time_base)
        return format_utc(parse_utc(occurred) - _WATERMARK_MARGIN_NS)

    async def _send(self, rows: list[dict[str, Any]], watermark: str | None) -> None:
        """Send ``rows``; on 413 split, on 400 bisect down to the poison event."""
        try:
            await self._exchange(rows, watermark)
        except _Split as s:
            if len(rows) == 1:
                # Before blaming the event, check the envelope alone: a batch the ledger
                # refuses for its own fields is retried (and reported), never quarantined.
                try:
                    await self._exchange([], None)
                except _Split as envelope:
                    raise _Retry(self.ledger.max_backoff,
                                 f"ledger refuses this station's batches: {envelope.reason}"
                                 ) from None
                await self._quarantine(rows[0], s.reason)
                return
            if s.status == 413:
                self._batch = max(1, len(rows) // 2)
                log.warning("ledger says batch too large; sending at most %d", self._batch)
            mid = len(rows) // 2
            # the first half's watermark: the second half's first movement is still queued
            await self._send(rows[:mid], self._watermark(rows[mid], 0))
            await self._send(rows[mid:], watermark)

    async def _quarantine(self, row: dict[str, Any], reason: str) -> None:
        why = f"refused by the ledger: {reason}"
        log.error("movement seq %s (%s) quarantined: %s", row["seq"], row["event_id"], why)
        await self.writer.call(lambda j: j.record_results([(row["seq"], "rejected", why, [])],
                                                          time.time()))
        await self.writer.call(lambda j: j.alert("sync", f"seq {row['seq']} quarantined: {why}"))
        self.stats.rejected += 1

    async def _exchange(self, rows: Sequence[dict[str, Any]], watermark: str | None) -> None:
        assert self._client is not None
        await self._pace()
        token = self._token()
        wall_ns, t0 = self._clock()
        # sent_at is the station's own wall clock, so the ledger shows how far off each Pi's
        # clock is; occurred_at never depends on it. A clock that is plainly unset (before
        # 2020, as on a Pi that booted with no time source) is not sent at all. Each event
        # goes as the JSON frozen at its first send, byte for byte.
        sent_at = format_utc(wall_ns) if _PLAUSIBLE_NS[0] < wall_ns < _PLAUSIBLE_NS[1] else None
        head = json.dumps({"station": self.config.station, "sent_at": sent_at,
                           "watermark": watermark}, separators=(",", ":"))
        body = head[:-1] + ',"events":[' + ",".join(r["body"] for r in rows) + "]}"
        try:
            resp = await self._client.post(
                "/v1/events", content=body.encode(),
                headers={"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json"})
        except httpx.TimeoutException as exc:
            raise _Retry(None, f"ledger timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise _Retry(None, f"ledger unreachable: {type(exc).__name__}: {exc}") from exc
        wall3, t3 = self._clock()
        status = resp.status_code
        if status in (401, 403):
            self.stats.auth_failed = True
            msg = (f"ledger refused this station's token (HTTP {status}): check the token "
                   "for station " + self.config.station)
            log.error("%s; %d movement(s) kept queued", msg, len(rows))
            raise _Retry(self.ledger.max_backoff, msg)
        if status in (429, 503):
            delay = retry_after(resp.headers.get("Retry-After"), time.time())
            raise _Retry(delay, f"ledger busy (HTTP {status})")
        if status in (400, 413, 422) and rows:
            raise _Split(status, _reason(resp))
        if status != 200:
            raise _Retry(None, f"ledger answered HTTP {status}: {_reason(resp)}")
        try:
            data = resp.json()
            server_ns = parse_utc(str(data["server_time"]))
            received_ns = _received_ns(data)
            results = data["results"]
            if not isinstance(results, list) or len(results) != len(rows):
                raise ValueError(f"{len(results)} results for {len(rows)} events")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _Retry(None, f"ledger answer unreadable: {printable(str(exc), 200)}"
                         ) from exc
        self.time_base = self.time_base.add(Sample(t0, t3, server_ns, wall3, received_ns))
        self.stats.auth_failed = False
        await self._record(rows, results)

    async def _record(self, rows: Sequence[dict[str, Any]], results: list[Any]) -> None:
        out: list[tuple[int, str, str | None, list[str]]] = []
        step = self._slice(len(rows))
        for n, (row, res) in enumerate(zip(rows, results, strict=True)):
            if n and n % step == 0:
                await self._pace()
                await asyncio.sleep(0)
            st = res.get("status") if isinstance(res, dict) else None
            if st not in ("accepted", "duplicate", "held", "rejected") or (
                    res.get("event_id") not in (None, row["event_id"])):
                raise _Retry(None, f"ledger result for seq {row['seq']} unreadable: {res!r}")
            # the ledger's words reach logs, status and terminals: no control bytes
            given = res.get("warnings") or []
            warnings = [printable(str(w), 400)  # (a 256-character location fits whole)
                        for w in (given if isinstance(given, list) else [given])]
            reason = None if res.get("reason") is None else printable(str(res["reason"]), 300)
            out.append((row["seq"], st, reason, warnings))
            setattr(self.stats, st, getattr(self.stats, st) + 1)
            for w in warnings:
                if about_incidents(w):  # ask which incidents stand once this round is over
                    self._ask_due = time.monotonic()
                self.stats.warnings = [*self.stats.warnings, w][-20:]
                log.warning("ledger warning for seq %s: %s", row["seq"], w)
                for fn in self.warning_listeners:
                    fn(w)
            if st == "rejected":
                log.error("ledger rejected seq %s (%s): %s", row["seq"], row["event_id"], reason)
        now = time.time()
        summary = self.time_base.summary(*self._clock())
        meta = {"sync.last_ok": repr(now), "sync.offset_ms": str(summary["offset_ms"]),
                "sync.rtt_ms": str(summary["rtt_ms"]), "sync.basis": summary["basis"],
                "sync.last_error": None}
        # In slices, each a transaction: a movement is marked synced by its own slice's
        # commit; one cut off by a crash is sent again and answered duplicate.
        step = self._slice(len(out))
        for k in range(step, len(out), step):
            part = out[k - step:k]
            await self._pace()
            await self.writer.call(Journal.record_results, part, now)
        last = out[(len(out) - 1) // step * step:] if out else []
        await self.writer.call(lambda j: (j.record_results(last, now) if last else None,
                                          j.write_meta(meta)))
        self.stats.last_ok = now
        self.stats.last_error = None
        if rows:
            self.stats.batches += 1
            self.stats.sent += len(rows)
            log.info("synced %d movement(s) (seq %s-%s)", len(rows), rows[0]["seq"],
                     rows[-1]["seq"])

    # -- which warnings still hold -----------------------------------------------------------

    async def _ask_incidents(self) -> None:
        """Read the ledger's open incidents behind the warnings the journal shows, and keep
        them there for ``status``. Never raises: a failed reading leaves the last answer in
        place (with why), and is tried again at the next recheck."""
        every = self.ledger.warning_recheck
        asked_at = time.time()
        try:
            async with asyncio.timeout(_ASK_DEADLINE_S):
                if self._reader is None:
                    self._reader = await asyncio.to_thread(JournalReader,
                                                           self.writer.journal.path)
                warned = await asyncio.to_thread(self._reader.warned, WINDOW)
                asked = to_ask(warned)
                if not asked:
                    self._next_ask(None)
                    return
                await self._pace()
                found = await self._open_incidents(
                    query(self.config.station, self.config.site, asked))
                keep = relevant(found, asked)
                # the answer covers the warned movements read (their results had come):
                # sync sends in seq order, so every movement up to the newest of them too
                await self.writer.call(Journal.store_incidents, asked_at, warned[0].seq, keep)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # _Unanswered: the ledger, the network or its answer. A deadline passed, the
            # journal could not take the answer, or anything else: the same, said as it is.
            why = (str(exc) if isinstance(exc, _Unanswered | AgentError)
                   else f"no answer within {_ASK_DEADLINE_S:g} s"
                   if isinstance(exc, TimeoutError) else _describe(exc))
            log.info("could not ask the ledger which warnings still hold: %s", why)
            with contextlib.suppress(Exception):
                await self.writer.call(Journal.incidents_unknown, time.time(), why)
            self._next_ask(time.monotonic() + every)
        else:
            # while any is open, status shows it: ask again later; else until new warnings
            self._next_ask(time.monotonic() + every if keep else None)
            log.debug("ledger: %d open incident(s) behind %d warned movement(s)", len(keep),
                      len(asked))

    def _next_ask(self, due: float | None) -> None:
        """After a reading: the next at ``due`` (None: once new warnings come), unless a
        warning that came during the reading asked for one sooner."""
        if self._ask_due is not None and (due is None or self._ask_due <= due):
            return
        self._ask_due = due
        if due is not None:
            self._wake.set()  # the loop sleeps until then (with the heartbeat that goes)

    async def _open_incidents(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every incident the ledger lists for ``params``, page by page; raises
        ``_Unanswered``."""
        try:
            token = self._token()
            if self._ask_client is None:
                self._ask_client = self._make_client()
        except (_Retry, SyncError) as exc:
            raise _Unanswered(str(exc)) from None
        client = self._ask_client
        out: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(_ASK_PAGES):
            page = {**params, "limit": str(_ASK_PAGE), **({"after": after} if after else {})}
            try:
                async with client.stream(
                        "GET", "/v1/negatives", params=page,
                        headers={"Authorization": f"Bearer {token}"}) as resp:
                    data = await _read_capped(resp, _ASK_PAGE_BYTES)
            except httpx.TimeoutException as exc:
                raise _Unanswered(f"ledger timed out ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise _Unanswered(f"ledger unreachable: {type(exc).__name__}: {exc}") from exc
            if data is None:
                raise _Unanswered(f"ledger answer larger than {_ASK_PAGE_BYTES} bytes")
            if resp.status_code != 200:
                raise _Unanswered(f"ledger answered HTTP {resp.status_code}: "
                                  f"{_reason_of(resp.status_code, data)}")
            try:
                body = await asyncio.to_thread(json.loads, data)  # (off the loop)
                listed = body["incidents"]
                if not isinstance(listed, list) or len(listed) > _ASK_PAGE:
                    raise ValueError(f"expected at most {_ASK_PAGE} incidents in a page")
                out += [_incident(i) for i in listed]
                after = body["next"]
                if after is not None and not (isinstance(after, str) and after):
                    raise ValueError(f"next: expected a cursor or null, got {after!r:.40}")
            except Exception as exc:  # whatever the body holds: nothing of it is kept
                raise _Unanswered(f"ledger answer unreadable: "
                                  f"{printable(f'{type(exc).__name__}: {exc}', 200)}"
                                  ) from exc
            if after is None:
                return out
        raise _Unanswered(f"more than {_ASK_PAGES * _ASK_PAGE} open incidents at site "
                          f"{self.config.site}; see the ledger's page")

    async def _note_error(self, why: str) -> None:
        if why != self.stats.last_error:
            log.warning("sync: %s", why)
            with contextlib.suppress(AgentError):
                await self.writer.call(lambda j: (j.write_meta({"sync.last_error": why}),
                                                  j.alert("sync", why)))
        self.stats.last_error = why

    def _token(self) -> str:
        try:
            token = self._token_reader(self.ledger)
        except AgentError as exc:
            raise _Retry(self.ledger.max_backoff, str(exc)) from exc
        if not token:
            raise _Retry(self.ledger.max_backoff, "no ledger token configured (set token_file "
                         "or the ledger-token credential)")
        return token


class _Unanswered(Exception):
    """The ledger could not say which incidents are open (a reading, not a sync, failed)."""


def _incident(raw: Any) -> dict[str, Any]:
    """The parts of one of the ledger's incidents that ``status`` shows; its words reach
    terminals, so no control bytes (raises on a malformed one)."""
    if not isinstance(raw, dict) or raw.get("status") != "open":
        raise ValueError(f"not an open incident: {printable(repr(raw), 100)}")
    balance = raw.get("balance")
    ident = raw["id"]
    if not isinstance(ident, int) or isinstance(ident, bool) or not 0 < ident < 2**63:
        raise ValueError(f"id: expected a positive integer, got {printable(repr(ident), 40)}")
    return {
        "id": ident, "depletion_event_id": printable(str(raw["depletion_event_id"]), 100),
        "item": printable(str(raw["item"]), 300),
        # whole: it is matched against the warnings' text (the ledger allows 256 characters)
        "location": None if raw["location"] is None else printable(str(raw["location"]), 300),
        "class": printable(str(raw["class"]), 20),
        "balance": balance if isinstance(balance, int) and abs(balance) < 2**63 else None,
        "confirmed": raw.get("confirmed") is True,
        "opened_at": printable(str(raw["opened_at"]), 40) if raw.get("opened_at") else None,
    }


class _Split(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _describe(exc: Exception) -> str:
    if isinstance(exc, _Retry | JournalError | SyncError):
        return str(exc)
    return printable(f"{type(exc).__name__}: {exc}", 300)


_PLAUSIBLE_NS = (1_577_836_800 * 10**9, 4_102_444_800 * 10**9)  # 2020-01-01 .. 2100-01-01


async def _read_capped(resp: httpx.Response, cap: int) -> bytes | None:
    """The body of a streamed answer, or None once it passes ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _reason_of(status: int, data: bytes) -> str:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return f"HTTP {status}"
    if isinstance(body, dict):
        for k in ("error", "detail", "reason", "message"):
            if k in body:
                return printable(str(body[k]), 200)
    return f"HTTP {status}"


def _reason(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        if isinstance(data, dict):
            for k in ("error", "detail", "reason", "message"):
                if k in data:
                    return printable(str(data[k]), 200)
    except ValueError:
        pass
    return f"HTTP {resp.status_code}"


def _now() -> tuple[int, int]:
    return time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _default_token_reader(cfg: LedgerConfig) -> str | None:
    from agent.credentials import read_token

    return read_token(cfg)


def _received_ns(answer: dict[str, Any]) -> int | None:
    """When the ledger says the batch reached it (``received_at``), if it says so readably:
    the time base uses it to leave the ledger's own time with the batch out of the round trip
    (DESIGN's answer has only ``server_time``; this ledger adds it)."""
    received = answer.get("received_at")
    if not isinstance(received, str):
        return None
    try:
        return parse_utc(received)
    except ValueError:
        return None
