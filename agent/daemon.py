"""The daemon: scanners -> capture -> journal, plus sync, feedback, metrics and sd_notify.

:class:`Agent` owns every long-running piece and shuts them down in a stated order:
stop reading scanners (remove readers, close devices), let the capture in flight commit,
stop the sync loop, then close the journal. ``scan-agent run`` is ``asyncio.run(run(cfg))``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.capture import Outcome, Station
from agent.clock import TimeBase, boot_id, kernel_clock_synced
from agent.config import Config
from agent.errors import AgentError, DriverError, JournalError
from agent.feedback import Feedback, build_feedback
from agent.journal import Journal, JournalReader, JournalWriter
from agent.metrics import (
    MetricsServer,
    MetricsSnapshot,
    parse_listen,
    serve_metrics,
    textfile_task,
)
from agent.notify import Notifier, watchdog_task
from drivers import open_scanner
from drivers.base import RawScan, Scanner, ScannerState, Sink

if TYPE_CHECKING:
    from agent.sync import SyncLoop

__all__ = ["Agent", "run"]

log = logging.getLogger("scan_agent")
_PRUNE_EVERY = 3600.0
_REPORT_EVERY = 5.0
_ALERTS_HELD = 50  # capture failures kept in memory while the journal cannot take them
_FIRST_OPEN_WAIT = 5.0
_IN_FLIGHT = 64  # scans per scanner read but not yet answered (their commit is pending)
_SWITCH_INTERVAL = 0.001  # seconds (see run)
# The process's CPU while operators scan: sync gets what capture leaves. It also bounds what
# a drain writes to the journal, and each capture's fsync queues behind those writes on the
# disk: the limit is a quarter core for that (docs/agent.md, "The capture path").
_SCANNING_CORES = 0.25


@dataclass
class Agent:
    """A running station. Use as ``async with Agent(cfg) as agent: await agent.wait()``."""

    config: Config
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    counters: Counter[str] = field(default_factory=Counter)
    scanner_states: dict[str, ScannerState] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    journal: Journal | None = None
    writer: JournalWriter | None = None
    reader: JournalReader | None = None
    station: Station | None = None
    sync: SyncLoop | None = None
    scanners: dict[str, Scanner] = field(default_factory=dict)
    notifier: Notifier = field(default_factory=Notifier.from_env)
    failed: str | None = None  # why the agent stopped by itself, if it did
    feedback: Feedback | None = None
    queue_gauge: dict[str, Any] = field(default_factory=dict)
    _metrics_server: MetricsServer | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _alerts_due: list[tuple[float, str]] = field(default_factory=list)
    _alerting: asyncio.Task[None] | None = None
    _state_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping_sent: bool = False
    _time_base: TimeBase = field(default_factory=lambda: TimeBase(boot_id()))
    _loop: asyncio.AbstractEventLoop | None = None  # the main loop (sync, metrics, status)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def time_base(self) -> TimeBase:
        return self.sync.time_base if self.sync is not None else self._time_base

    async def start(self) -> None:
        cfg = self.config
        journal = await asyncio.to_thread(Journal, cfg.database, cfg.station, cfg.site)
        problems = await asyncio.to_thread(journal.integrity_check)
        if problems:
            journal.close()
            raise JournalError(
                f"{cfg.database}: integrity check failed: {'; '.join(problems[:5])}. "
                "Stop the agent, copy the file aside for recovery and start with a new journal."
            )
        self.journal = journal
        self._loop = asyncio.get_running_loop()
        # The capture thread: the journal's writer, with its own event loop. The scanners, the
        # station and the answers to the scanners live there (see _read); this loop keeps
        # sync, metrics and status, whose work never delays a scan's commit or its ACK.
        self.writer = JournalWriter(journal)
        self.reader = await asyncio.to_thread(JournalReader, cfg.database)
        self.station = Station(cfg, self.writer, time_base=lambda: self.time_base,
                               ntp_synced=kernel_clock_synced)
        self.station.listeners.append(self._count)
        await self.writer.run(self.station.start())
        await self.writer.call(lambda j: j.prune(cfg.retention_days))
        me = {"agent.pid": str(os.getpid()), "agent.boot_id": boot_id(),
              "agent.started_at": repr(self.started_at)}
        await self.writer.call(lambda j: j.write_meta(me))
        await self._refresh_queue()
        self.feedback = build_feedback(cfg.feedback, log_line=False)

        if cfg.ledger is not None:
            from agent.sync import SyncLoop

            sync = self.sync = SyncLoop(cfg, self.writer, scanning_cores=_SCANNING_CORES)
            self.station.listeners.append(lambda o: self._on_main(sync.on_capture, o))
            feedback, capture_loop = self.feedback, self.writer.loop

            def warn(text: str) -> None:  # feedback is given on the capture thread only
                with contextlib.suppress(RuntimeError):
                    capture_loop.call_soon_threadsafe(feedback.warning, text)

            sync.warning_listeners.append(warn)
            self._spawn(sync.run(), "sync")

        for sc in cfg.scanners:
            scanner = open_scanner(sc.settings, on_state=self._on_scanner_state)
            self.scanners[sc.name] = scanner
            self.scanner_states[sc.name] = scanner.state
            self._spawn(self._on_capture_thread(self._read(scanner)), f"scan:{sc.name}")
        await self._first_open_attempts()
        self._spawn(self._housekeeping(), "housekeeping")
        self._spawn(self._report(), "report")
        self._spawn(watchdog_task(self.notifier, self.stopping), "watchdog")
        if cfg.metrics.textfile:
            self._spawn(textfile_task(cfg.metrics.textfile, cfg.metrics.interval,
                                      self.snapshot, self.stopping), "metrics-textfile")
        if cfg.metrics.listen:
            host, port = parse_listen(cfg.metrics.listen)
            self._metrics_server = await serve_metrics(host, port, self.snapshot)
        self.ready.set()
        self.notifier.ready(self.status_line())
        log.info("station %s (%s) ready: %d scanner(s), journal %s", cfg.station, cfg.site,
                 len(cfg.scanners), cfg.database)

    async def _first_open_attempts(self) -> None:
        """Wait until every scanner has tried to open once (connected, or failed with a
        reason), so that READY=1 and its STATUS= say how the scanners really are. A missing
        scanner does not hold the dock back: its failed attempt counts, and the wait is bounded
        for a slow network handshake (rfc2217://, tcp)."""
        initial = dict(self.scanner_states)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FIRST_OPEN_WAIT):
                while any(self.scanner_states[n] == st for n, st in initial.items()):
                    self._state_changed.clear()
                    await self._state_changed.wait()

    async def _on_capture_thread(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self.writer is not None
        await self.writer.run(coro)

    def _on_main(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` on the main loop, from whichever thread this runs on."""
        loop = self._loop
        if loop is None:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the main loop is closed: shutting down
                loop.call_soon_threadsafe(fn, *args)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Start a long-running part; if it ends while the agent runs, the agent stops."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._part_ended)
        self._tasks.append(task)

    def _part_ended(self, task: asyncio.Task[Any]) -> None:
        if self.stopping.is_set() or task.get_name() == "watchdog":
            return  # shutting down; the watchdog ends at once when systemd asks for none
        exc = None if task.cancelled() else task.exception()
        log.critical("%s stopped unexpectedly%s; stopping the agent so it is restarted",
                     task.get_name(), f": {exc!r}" if exc else "", exc_info=exc)
        self.failed = f"{task.get_name()} stopped unexpectedly"
        self.stopping.set()

    async def _refresh_queue(self) -> None:
        """Queue depth for metrics and STATUS=, read through the reading connection in a
        thread (never the loop, never the capture thread)."""
        reader = self.reader
        assert reader is not None

        def read() -> dict[str, Any]:
            pending, rejected, oldest = reader.queue_depth()
            return {"pending": pending, "rejected": rejected, "oldest_wall": oldest}

        with contextlib.suppress(AgentError):
            self.queue_gauge = await asyncio.to_thread(read)

    def snapshot(self) -> MetricsSnapshot:
        """The station's numbers, from memory (cheap enough to call on the event loop)."""
        now = time.time()
        scans = {k.removeprefix("scans_"): v for k, v in self.counters.items()
                 if k.startswith("scans_")}
        moves = {k.removeprefix("movements_"): v for k, v in self.counters.items()
                 if k.startswith("movements_")}
        q = self.queue_gauge
        best = self.time_base.best
        return MetricsSnapshot(
            station=self.config.station, site=self.config.site, scans_total=scans,
            movements_total=moves, pending=q.get("pending", 0), rejected=q.get("rejected", 0),
            oldest_pending_age_seconds=(now - q["oldest_wall"]) if q.get("oldest_wall") else None,
            last_sync_success_timestamp=self.sync.stats.last_ok if self.sync else None,
            clock_offset_seconds=(offset / 1000 if (offset := self.time_base.wall_offset_ms(
                time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME))) is not None
                else None),
            clock_basis="ledger" if best else "wall",
            scanner_connected={n: st.connected for n, st in self.scanner_states.items()},
            start_time=self.started_at,
        )

    def status_line(self) -> str:
        """One line for systemd's STATUS=: scanners up, pending, last sync."""
        up = sum(1 for st in self.scanner_states.values() if st.connected)
        parts = [f"{up}/{len(self.scanner_states)} scanners up",
                 f"{self.queue_gauge.get('pending', 0)} pending"]
        if self.sync is not None:
            last = self.sync.stats.last_ok
            parts.append("last sync " + (f"{time.time() - last:.0f}s ago" if last else "never"))
            if self.sync.stats.last_error:
                parts.append(f"sync error: {self.sync.stats.last_error}")
        return ", ".join(parts)

    async def _report(self) -> None:
        """Every few seconds: refresh the queue gauge and tell systemd how the dock is."""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), _REPORT_EVERY)
            if self.stopping.is_set():
                return
            await self._refresh_queue()
            self.notifier.status(self.status_line())

    def _count(self, o: Outcome) -> None:
        self.counters[f"scans_{o.status}"] += 1
        if o.movement_type:
            self.counters[f"movements_{o.movement_type}"] += 1
        self.counters["last_scan_at"] = int(time.time())

    def _on_scanner_state(self, st: ScannerState) -> None:
        """A driver's report (on the capture thread): kept and recorded on the main loop."""
        self._on_main(self._scanner_state_changed, st)

    def _scanner_state_changed(self, st: ScannerState) -> None:
        self.scanner_states[st.scanner] = st
        self._state_changed.set()
        if self.writer is not None and not self.stopping.is_set():
            with contextlib.suppress(AgentError, RuntimeError):
                asyncio.get_running_loop().create_task(self._save_scanner_state(st))

    async def _save_scanner_state(self, st: ScannerState) -> None:
        assert self.writer is not None
        with contextlib.suppress(AgentError):
            await self.writer.call(
                lambda j: j.set_scanner_state(st.scanner, st.connected, st.detail, time.time()))
            if not st.connected:
                await self.writer.call(
                    lambda j: j.alert(f"scanner:{st.scanner}", f"disconnected: {st.detail}"))

    async def _read(self, scanner: Scanner) -> None:
        """Capture a scanner's scans as it reads them and answer each once committed.

        Runs on the capture thread. Each scan goes to the station in the driver's own read
        callback, the moment it is framed (see :meth:`~drivers.base.ScanQueue.deliver`), and
        is answered (ACK/NAK, beep and LEDs) in the commit's own turn of the loop, in reading
        order: no queue, task or thread lies on a scan's way to its ACK. A scan does not wait
        for the previous one's commit, so a scanner that streams (a fixed reader, a quick
        operator) gets its scans committed together. At most ``_IN_FLIGHT`` wait for their
        answer; past that the driver stops reading and further scans wait in the device. If
        capture fails, the scans already read are still answered before the failure stops
        the agent: they are in the journal, and an unanswered scan is scanned again.
        """
        assert self.station is not None
        reading = _ScannerCapture(self, scanner, self.station)
        await reading.run()

    def _answered(self, outcome: Outcome) -> None:
        """Operator feedback for one answered scan (the scanner's ACK is sent already), and
        the alert of a scan that could not be saved."""
        if self.feedback is not None:
            if outcome.ok:
                self.feedback.good(outcome.note)
            else:
                self.feedback.error(outcome.reason or outcome.status)
        if outcome.status == "failed":
            self._alerts_due.append((time.time(), outcome.reason or ""))
        if self._alerts_due and (self._alerting is None or self._alerting.done()):
            self._alerting = asyncio.get_running_loop().create_task(
                self._save_alerts(), name="capture alerts")

    async def _save_alerts(self) -> None:
        """Record capture failures for ``status``. On a full disk the alert cannot be written
        either: it is kept and written once the journal takes writes again."""
        assert self.writer is not None
        due, self._alerts_due = self._alerts_due[-_ALERTS_HELD:], []

        def write(j: Journal) -> int:
            for n, (at, message) in enumerate(due):
                try:
                    j.alert("capture", message, at)
                except AgentError:
                    return n
            return len(due)

        try:
            written = await self.writer.call(write)
        except AgentError:
            written = 0
        self._alerts_due = due[written:] + self._alerts_due

    async def _housekeeping(self) -> None:
        assert self.writer is not None
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), _PRUNE_EVERY)
            if self.stopping.is_set():
                return
            try:
                n = await self.writer.call(lambda j: j.prune(self.config.retention_days))
                if n:
                    log.info("pruned %d synced movement(s) past retention", n)
            except AgentError as exc:
                log.warning("prune failed: %s", exc)

    async def wait(self) -> None:
        await self.stopping.wait()

    async def close(self) -> None:
        """Stop in order: scanners, capture in flight, sync, journal. Idempotent."""
        # Not keyed on ``stopping``: SIGTERM sets that event before close() runs.
        if not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.stopping()
        self.stopping.set()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        for scanner in self.scanners.values():
            if self.writer is not None:
                with contextlib.suppress(AgentError, DriverError, OSError):
                    await self.writer.run(scanner.close())  # it reads on the capture thread
        readers = [t for t in self._tasks if t.get_name().startswith("scan:")]
        if readers:
            _, still = await asyncio.wait(readers, timeout=5)
            for t in still:
                t.cancel()
        if self.sync is not None:
            from agent.sync import FAREWELL_S

            await self.sync.close()
            # let its last exchange (bounded) tell the ledger that nothing older is coming
            syncing = [t for t in self._tasks if t.get_name() == "sync" and not t.done()]
            if syncing:
                await asyncio.wait(syncing, timeout=FAREWELL_S + 1.0)
        if self.writer is not None and self.scanners:
            stopped = time.time()
            with contextlib.suppress(AgentError):
                await self.writer.call(lambda j: [
                    j.set_scanner_state(name, False, "agent stopped", stopped)
                    for name in self.scanners])
        for t in self._tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.writer is not None:
            await self.writer.close()
            self.writer = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.feedback is not None:
            self.feedback.close()
            self.feedback = None
        self.notifier.close()


class _Iterated:
    """A scanner that only iterates (as the :class:`~drivers.base.Scanner` protocol began),
    read into a sink the way :meth:`~drivers.base.ScanQueue.deliver` does."""

    def __init__(self, scanner: Any) -> None:
        self.scanner = scanner
        self._room = asyncio.Event()

    async def deliver(self, sink: Sink) -> None:
        async for scan in self.scanner:
            if not sink(scan):
                self._room.clear()
                await self._room.wait()

    def resume(self) -> None:
        self._room.set()


class _ScannerCapture:
    """One scanner's scans, from the driver's read callback to their answers (see
    :meth:`Agent._read`); on the capture thread."""

    def __init__(self, agent: Agent, scanner: Scanner, station: Station) -> None:
        self.agent, self.scanner, self.station = agent, scanner, station
        self.source: Any = scanner if hasattr(scanner, "deliver") else _Iterated(scanner)
        nowait = getattr(scanner, "acknowledge_nowait", None)
        self.nowait: Callable[[bool], bool] = nowait or (lambda ok: False)
        self.waiting: collections.deque[asyncio.Future[Outcome]] = collections.deque()
        self.acks: collections.deque[Outcome] = collections.deque()  # a task answers these
        self.acking: asyncio.Task[None] | None = None
        self.held = False  # the driver waits for room (the sink said it was full)
        self.idle = asyncio.Event()  # every scan read is answered
        self.idle.set()
        self.failure: BaseException | None = None
        self.task: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            try:
                await self.source.deliver(self.take)
            except asyncio.CancelledError:
                raise
            except BaseException:
                await self.idle.wait()  # the scans read are answered first
                raise
            await self.idle.wait()
        except asyncio.CancelledError:
            if self.failure is not None:
                raise self.failure from None  # an answer failed: that is why we were cancelled
            if self.acking is not None:
                self.acking.cancel()
            raise
        if self.failure is not None:
            raise self.failure

    def take(self, scan: RawScan) -> bool:
        """The sink: submit the scan now; whether there is room for another."""
        self.waiting.append(self.station.submit(scan, self.committed))
        self.idle.clear()
        self.held = len(self.waiting) + len(self.acks) >= _IN_FLIGHT
        return not self.held

    def committed(self, _: asyncio.Future[Outcome]) -> None:
        """A commit ended: answer the scans whose turn it is, in reading order."""
        waiting = self.waiting
        while waiting and waiting[0].done():
            fut = waiting.popleft()
            exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
            if exc is not None:
                self._fail(exc)
                return
            outcome = fut.result()
            if self.acks or not self.nowait(outcome.ok):
                self.acks.append(outcome)
                if self.acking is None or self.acking.done():
                    self.acking = asyncio.get_running_loop().create_task(
                        self._send_acks(), name=f"answers:{self.scanner.name}")
            else:
                self.agent._answered(outcome)
        self._room()

    async def _send_acks(self) -> None:
        """The answers to a scanner whose feedback may block (a port a thread writes)."""
        while self.acks:
            try:
                await self.scanner.acknowledge(self.acks[0].ok)
            except (AgentError, DriverError) as exc:
                log.warning("scanner %s: feedback failed: %s", self.scanner.name, exc)
            except Exception as exc:
                self._fail(exc)
                return
            self.agent._answered(self.acks.popleft())
            self._room()

    def _room(self) -> None:
        if not self.waiting and not self.acks:
            self.idle.set()
        if self.held and len(self.waiting) + len(self.acks) < _IN_FLIGHT:
            self.held = False
            self.source.resume()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            if self.task is not None:
                self.task.cancel()  # nobody answers this scanner any more: stop


async def run(config: Config) -> None:
    """``scan-agent run``: until SIGTERM or SIGINT."""
    # A thread that wants the interpreter waits up to the switch interval for a busy one to
    # let go (5 ms by default), and a scan's way to its ACK takes it a dozen times (after
    # each read, SQLite step and write): with 1 ms, sync's work delays a scan far less.
    sys.setswitchinterval(_SWITCH_INTERVAL)
    loop = asyncio.get_running_loop()
    agent = Agent(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopping.set)
    try:
        await agent.start()
        await agent.wait()
        log.info("stopping")
    finally:
        await agent.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if agent.failed:
        raise AgentError(agent.failed)  # a non-zero exit: systemd restarts the service
