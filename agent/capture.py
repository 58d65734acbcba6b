"""Capture: one raw scan in, one committed journal entry out, then operator feedback.

:class:`Station` is the station's capture path. For each :class:`~drivers.base.RawScan` it
checks the driver's framing verdict and the debounce window, interprets the text, applies it
to the scanner's session, commits audit row + movement + session state in one transaction,
and only then acknowledges the scan (ACK byte, beep, LED). A failed commit (disk full, I/O
error) gets a NAK and leaves the session as the last committed scan left it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from agent.clock import TimeBase, boot_id
from agent.config import Config, ScannerConfig
from agent.errors import JournalError, JournalFullError
from agent.grammar import interpret, quoted
from agent.ids import uuid7
from agent.journal import Capture, Captured, JournalWriter
from agent.session import (
    Defaults,
    Instant,
    SessionState,
    Step,
    apply,
    initial_state,
    undo_entry,
)
from drivers.base import RawScan

__all__ = ["Outcome", "Station", "debounced"]

log = logging.getLogger("scan_agent.capture")
_NTP_EVERY = 1.0  # seconds between two readings of the clock's NTP state


class Outcome(NamedTuple):
    """What one scan did, after its commit (or its failure); a named tuple (immutable, and
    quicker to make than a frozen dataclass, for every scan)."""

    scanner: str
    text: str
    status: str  # accepted | rejected | debounced | failed
    reason: str | None = None
    note: str = ""
    seq: int | None = None
    event_id: str | None = None
    movement_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("accepted", "debounced")

    def describe(self) -> str:
        text = quoted(self.text, 60)
        if self.status == "accepted":
            tail = f" (seq {self.seq})" if self.seq is not None else ""
            return f"{self.scanner}: {text} -> {self.note}{tail}"
        if self.status == "debounced":
            return f"{self.scanner}: {text} ignored: repeated read within the debounce window"
        return f"{self.scanner}: {text} {self.status}: {self.reason}"


class _Described:
    """An outcome's log line, worked out only if the line is actually logged."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def __str__(self) -> str:
        return self.outcome.describe()


def debounced(last: tuple[str, int] | None, text: str, boot_ns: int, window_ms: int) -> bool:
    """Whether ``text`` read at ``boot_ns`` repeats the previous read within the window."""
    if last is None or window_ms <= 0:
        return False
    prev_text, prev_ns = last
    return prev_text == text and 0 <= boot_ns - prev_ns < window_ms * 1_000_000


@dataclass
class _ScannerSlot:
    """A scanner's session, both as the scans read so far left it (``state``, ``last_read``:
    what the next scan is worked out from, while earlier scans may still be committing) and as
    the committed scans left it (``saved_*``), to fall back to when a commit fails."""

    cfg: ScannerConfig
    defaults: Defaults
    state: SessionState
    last_read: tuple[str, int] | None = None
    saved_state: SessionState = field(init=False)
    saved_last_read: tuple[str, int] | None = None
    chain: int = 0  # bumped after a failed commit: later scans start from the saved session
    # the session's JSON in the journal's row once the scans submitted so far commit
    # (``row``), and as the committed ones left it (``saved_row``): a scan that leaves the
    # session as it was (the next item in the same mode and bins) does not write it again
    row: str | None = None
    saved_row: str | None = None

    def __post_init__(self) -> None:
        self.saved_state = self.state


Listener = Callable[[Outcome], None]
# what a scan leaves once committed: session, last read, chain, session row
_After = tuple[SessionState, tuple[str, int] | None, int, str | None]


@dataclass
class Station:
    """The capture path of one dock station."""

    config: Config
    writer: JournalWriter
    time_base: Callable[[], TimeBase] = field(default=lambda: TimeBase(boot_id()))
    ntp_synced: Callable[[], bool | None] = field(default=lambda: None)
    listeners: list[Listener] = field(default_factory=list)
    _slots: dict[str, _ScannerSlot] = field(default_factory=dict)
    # the boot's id, read once (a reboot ends the process); the NTP state, once a second
    _boot_id: str = field(default_factory=boot_id)
    _ntp: tuple[float, bool | None] | None = None

    def _ntp_synced(self) -> bool | None:
        now = time.monotonic()
        if self._ntp is None or now - self._ntp[0] >= _NTP_EVERY:
            self._ntp = (now, self.ntp_synced())
        return self._ntp[1]

    async def start(self) -> None:
        """Restore each scanner's session from the journal (a restart keeps mode and bins)."""
        saved = await self.writer.call(lambda j: j.sessions())
        for sc in self.config.scanners:
            d = Defaults(mode=sc.mode or self.config.mode,
                         location=sc.location if sc.location is not None else self.config.location,
                         require_operator=self.config.require_operator,
                         undo_max_age_s=self.config.grammar.undo_max_age)
            state = initial_state(d)
            if sc.name in saved:
                text = saved[sc.name]
                try:
                    # its undo history: the scanner's newest movements, from the journal
                    depth = SessionState.undo_depth(text)
                    rows = await self.writer.call(
                        lambda j, name=sc.name, n=depth: j.undo_history(name, n)) if depth else []
                    state = SessionState.from_json(text, [undo_entry(r) for r in rows])
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    log.warning("%s: saved session unreadable (%s); starting fresh", sc.name, exc)
            slot = self._slots[sc.name] = _ScannerSlot(sc, d, state)
            slot.row = slot.saved_row = saved.get(sc.name)

    def session(self, scanner: str) -> SessionState:
        return self._slots[scanner].state

    async def handle(self, scan: RawScan) -> Outcome:
        """Capture one scan. Never raises for bad input; journal failures give ``failed``."""
        return await self.submit(scan)

    def submit(self, scan: RawScan,
               then: Callable[[asyncio.Future[Outcome]], None] | None = None
               ) -> asyncio.Future[Outcome]:
        """Work out one scan and queue its commit; the future gives its outcome once committed.

        ``then(future)`` is called once the outcome is settled: on the capture thread, in
        the commit's own turn of the loop (no turn in between: the daemon answers the scanner
        there), otherwise as soon as the loop gets to it.

        A scanner's next scan may be submitted before this one's commit is done: it is worked
        out from the session as this scan leaves it, and commits after it (in the same
        transaction when they arrive together). If a commit fails, the scans submitted after it
        from the same scanner fail too, unwritten, and the session falls back to what was last
        committed, so that nothing acknowledged rests on a scan that was never saved.
        """
        slot = self._slots.get(scan.scanner)
        if slot is None:
            raise KeyError(f"unknown scanner {scan.scanner!r}")
        text = scan.text
        step: Step | None = None
        if scan.error is not None:
            status, reason = "rejected", scan.error
        elif debounced(slot.last_read, text, scan.boot_ns, slot.cfg.debounce_ms):
            status, reason = "debounced", None
        else:
            token = interpret(text, self.config.grammar)
            # The event's raw list holds the scans as read (a GS1 string keeps its GS): JSON
            # escapes what needs it, and every display escapes control characters.
            step = apply(slot.state, token, slot.defaults, text, event_id=uuid7(),
                         at=Instant(self._boot_id, scan.boot_ns))
            status = "rejected" if step.rejected else "accepted"
            reason = step.rejected

        row = step.state.to_json() if step is not None and not step.rejected else slot.row
        # The offset to the ledger at this very read, from boottime: a sample's own wall
        # offset goes stale when the wall clock is stepped after it was taken.
        ledger_ns = self.time_base().ledger_ns(scan.boot_ns)
        record = Capture(
            scanner=scan.scanner, text=text, raw=scan.raw, wall_time=scan.wall_time,
            boot_ns=scan.boot_ns, boot_id=self._boot_id, outcome=status, reason=reason,
            note=step.note if step else None,
            movement=step.movement if step else None,
            session_state=row if row != slot.row else None,
            wall_offset_ms=(None if ledger_ns is None
                            else (ledger_ns - round(scan.wall_time * 1e9)) / 1e6),
            ntp_synced=self._ntp_synced(),
            chain=(scan.scanner, slot.chain),
        )
        done = asyncio.get_running_loop().create_future()
        # Only a read that commits counts for debounce: a rescan after a failed commit is kept.
        last_read = (text, scan.boot_ns) if scan.error is None else slot.last_read
        state = step.state if step is not None and not step.rejected else slot.state
        after = (state, last_read, slot.chain, row)
        try:
            self.writer.submit(record,
                               lambda f: self._committed(f, slot, record, after, done, then))
        except JournalError as exc:
            done.set_result(self._failed(scan.scanner, text, exc))
            if then is not None:
                done.get_loop().call_soon(then, done)
            return done
        slot.state, slot.last_read, slot.row = state, last_read, row
        return done

    def _committed(self, f: asyncio.Future[Captured], slot: _ScannerSlot, record: Capture,
                   after: _After,
                   done: asyncio.Future[Outcome],
                   then: Callable[[asyncio.Future[Outcome]], None] | None) -> None:
        """A submitted scan's commit ended: update the saved session, log, tell listeners."""
        try:
            self._settled(f, slot, record, after, done)
        finally:
            if then is not None:
                then(done)

    def _settled(self, f: asyncio.Future[Captured], slot: _ScannerSlot, record: Capture,
                 after: _After, done: asyncio.Future[Outcome]) -> None:
        state, last_read, chain, row = after
        exc = f.exception() if not f.cancelled() else JournalError("commit cancelled")
        if exc is not None:
            if chain == slot.chain:  # the first failure on this chain: fall back
                slot.chain += 1
                slot.state, slot.last_read = slot.saved_state, slot.saved_last_read
                slot.row = slot.saved_row
            if not isinstance(exc, JournalError):
                if not done.done():
                    done.set_exception(exc)
                return
            outcome = self._failed(record.scanner, record.text, exc)
        else:
            slot.saved_state, slot.saved_last_read, slot.saved_row = state, last_read, row
            captured = f.result()
            mv = record.movement
            outcome = Outcome(record.scanner, record.text, record.outcome, record.reason,
                              note=record.note or "", seq=captured.seq,
                              event_id=captured.event_id,
                              movement_type=mv.type if mv else None)
            if outcome.status == "rejected":
                log.warning("%s", _Described(outcome))
            else:
                log.info("%s", _Described(outcome))
            self._emit(outcome)
        if not done.done():
            done.set_result(outcome)

    def _failed(self, scanner: str, text: str, exc: JournalError) -> Outcome:
        what = "disk full" if isinstance(exc, JournalFullError) else "journal error"
        outcome = Outcome(scanner, text, "failed", f"not saved ({what}): {exc}")
        log.error("%s", _Described(outcome))
        self._emit(outcome)
        return outcome

    def _emit(self, outcome: Outcome) -> None:
        for fn in self.listeners:
            try:
                fn(outcome)
            except Exception:  # a listener never breaks capture
                log.exception("outcome listener failed")
