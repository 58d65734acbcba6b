"""Shared parts of the bad-input and security suite.

:class:`LiveAgent` runs a real :class:`~agent.daemon.Agent` on its own event loop in a thread,
so that a synchronous hypothesis test can throw thousands of inputs at one daemon that stays
up for the whole run (a daemon that survives only one example each proves less). The oracle
:func:`is_item_scan` decides independently of :mod:`agent.grammar` whether a scan may make a
movement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.capture import Outcome
from agent.config import Config
from agent.daemon import Agent

TIMEOUT = 20.0  # only turns a hang into a failure; never a pass/fail threshold

#: C0 controls, DEL and C1 controls: none may reach a log line or a terminal raw.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
GS = "\x1d"
AIM = re.compile(r"^\][A-Za-z][0-9A-Za-z]")

VALID_GTINS = ["4006381333931", "96385074", "036000291452", "10614141000019"]
SKU_PATTERN = "SKU-(?P<sku>[0-9]{6})"


def assert_clean(text: str, where: str) -> None:
    """No control character (newline included: one record, one line) in ``text``."""
    m = CONTROL.search(text)
    assert m is None, f"raw control byte 0x{ord(m.group()):02x} in {where}: {text[:300]!r}"


def assert_clean_lines(text: str, where: str) -> None:
    """Multi-line output: no control character other than the line breaks."""
    for line in text.split("\n"):
        assert_clean(line, where)


def _check_digit_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits[:-1])):
        total += int(d) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10 == int(digits[-1])


def is_item_scan(text: str) -> bool:
    """Whether ``text`` is an item barcode by DESIGN section 4, decided without the grammar:
    a GTIN-8/12/13/14 with a valid check digit, a GS1 element string with a valid GTIN in AI
    01/02 (as parsed by ``biip``), or the site SKU pattern; an AIM identifier may lead."""
    import biip

    if not text or len(text) > 512:
        return False
    body = text[3:] if AIM.match(text) else text
    if CONTROL.search(body.replace(GS, "")):
        return False
    if GS not in body and body.isascii() and body.isdigit() and len(body) in (8, 12, 13, 14):
        return _check_digit_ok(body)
    if re.fullmatch(SKU_PATTERN, body):
        return True
    if GS in body or body.startswith(("01", "02")) or text.startswith(("]C1", "]e0", "]d2",
                                                                       "]Q3", "]J1")):
        try:
            msg = biip.parse("]C1" + body).gs1_message
        except Exception:
            return False
        if msg is None:
            return False
        gtins = [es for es in msg.element_strings if es.ai.ai in ("01", "02")]
        return bool(gtins) and all(
            es.gtin_error is None and _check_digit_ok(es.value) for es in gtins)
    return False


class LiveAgent:
    """A real Agent on an event loop of its own thread; outcomes collected as they happen."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.outcomes: list[Outcome] = []
        self._cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-agent",
                                        daemon=True)
        self.agent: Agent | None = None

    def start(self) -> LiveAgent:
        self._thread.start()
        self.agent = self.run(self._start(), timeout=TIMEOUT)
        return self

    async def _start(self) -> Agent:
        agent = Agent(self.cfg)
        await agent.start()
        assert agent.station is not None
        agent.station.listeners.append(self._heard)
        return agent

    def _heard(self, outcome: Outcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def run(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapped() -> Any:
            return fn()

        return self.run(wrapped())

    def wait_for(self, cond: Callable[[list[Outcome]], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while not cond(self.outcomes):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(o.text[:40], o.status, o.reason) for o in self.outcomes[-5:]]
                    raise AssertionError(f"timed out waiting for {what}; last outcomes {tail}")
                self._cond.wait(left)

    def wait_connected(self, scanner: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.agent is not None
            st = self.agent.scanner_states.get(scanner)
            if st is not None and st.connected:
                return
            assert time.monotonic() < deadline, f"scanner {scanner} never connected: {st}"
            time.sleep(0.01)

    def reader_alive(self, scanner: str) -> bool:
        assert self.agent is not None
        tasks = [t for t in self.agent._tasks if t.get_name() == f"scan:{scanner}"]
        return len(tasks) == 1 and not tasks[0].done()

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{self.cfg.database}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    def close(self) -> None:
        try:
            if self.agent is not None:
                self.run(self.agent.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(TIMEOUT)
            if not self._thread.is_alive():
                self.loop.close()


def check_invariants(live: LiveAgent, records: list[logging.LogRecord]) -> None:
    """What must hold after any input: every scan audited in order with its fate, every
    rejection with a reason, every movement made by an item scan (or CMD-UNDO), and no log
    record carrying a control character."""
    outcomes = list(live.outcomes)
    audit = live.rows("SELECT text, outcome, reason, event_id FROM scans ORDER BY id")
    assert len(audit) == len(outcomes), "every scan has its audit row"
    for o, a in zip(outcomes, audit, strict=True):
        assert (a["outcome"], a["reason"]) == (o.status, o.reason)
        if o.status == "rejected":
            assert o.reason, f"rejection without a reason: {o.text[:60]!r}"
    for o in outcomes:
        if o.movement_type is None:
            continue
        if o.movement_type == "void":
            assert AIM.sub("", o.text, count=1) == "CMD-UNDO", o.text
        else:
            assert is_item_scan(o.text), f"movement from a non-item scan {o.text[:80]!r}"
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    for rec in records:
        assert_clean(formatter.format(rec), f"log record of {rec.name}")


@pytest.fixture
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process agent must not notify a systemd that happens to run the test suite."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)


@contextlib.contextmanager
def live_agent(cfg: Config) -> Iterator[LiveAgent]:
    live = LiveAgent(cfg)
    try:
        yield live.start()
    finally:
        live.close()
