"""Crashes: the daemon and the ledger killed with SIGKILL at random moments.

A scan counts as acknowledged when the scanner got its ACK byte. Whatever the moment of the
kill, every acknowledged scan is in the journal exactly once, ``seq`` stays gap-free, each
scanner's session carries over the restart, and every journaled movement reaches the ledger
exactly once. Unacknowledged scans may or may not be there, but never twice.
"""

from __future__ import annotations

import asyncio
import random
import select
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.capture import Station
from agent.config import parse_config
from agent.journal import Journal, JournalWriter
from agent.sync import SyncLoop
from drivers.base import RawScan
from ledger.server import LedgerServer
from tests.faults.rig import (
    DEFAULT_LOCATION,
    SKU_PATTERN,
    AgentProcess,
    LedgerProcess,
    PtyScanner,
    add_station,
    assert_exactly_once,
    journal_pending,
    journal_rows,
    ledger_balances,
    movement_totals,
    token_file,
    write_config,
)

pytestmark = pytest.mark.slow

RUNS = 50
SCANNERS = 4
IN_FLIGHT = 4  # scans a scanner sends ahead of their answers
PACE = 0.03  # seconds between a scanner's scans: a brisk operator, bounded event count
ITEMS = "ABCD"


class Shift:
    """Unique scans for each scanner: mostly items, now and then a new location."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counter = 0

    def next(self, scanner: str) -> str:
        self.counter += 1
        if self.rng.random() < 0.1:
            return f"LOC-{scanner.upper()}-{self.counter}"
        return f"SKU-{self.rng.choice(ITEMS)}-{scanner.upper()}N{self.counter}"


@pytest.fixture
def scanners() -> Iterator[list[PtyScanner]]:
    made = [PtyScanner(f"s{i}") for i in range(1, SCANNERS + 1)]
    try:
        yield made
    finally:
        for s in made:
            s.close()


def _stream(agent: AgentProcess, scanners: list[PtyScanner], shift: Shift,
            until: float | None, first_answer_timeout: float = 60.0) -> int:
    """Stream scans from every scanner until ``until`` (or, when None, a first answer plus a
    random spell, which the caller's kill ends). Returns the answers read."""
    answers = 0
    next_send = {s.name: 0.0 for s in scanners}
    started = time.monotonic()
    while True:
        now = time.monotonic()
        if until is not None and now >= until:
            return answers
        if until is None and answers == 0 and now - started > first_answer_timeout:
            raise AssertionError(f"no scan answered within {first_answer_timeout} s of start:\n"
                                 f"{agent.tail()}")
        if not agent.alive():
            raise AssertionError(f"agent exited by itself (rc {agent.proc and agent.proc.poll()})"
                                 f":\n{agent.tail()}")
        for s in scanners:
            if len(s.outstanding) < IN_FLIGHT and now >= next_send[s.name]:
                s.send(shift.next(s.name))
                next_send[s.name] = now + PACE
        select.select([s.master for s in scanners], [], [], PACE / 3)
        got = sum(s.collect() for s in scanners)
        if until is None and answers == 0 and got:
            return got
        answers += got


def _check_journal(db: Path, scanners: list[PtyScanner]) -> list[dict[str, object]]:
    """Every acknowledged scan once, nothing twice, sessions carried over each restart."""
    scans = journal_rows(db, "scans", "id")
    movements = journal_rows(db, "movements", "seq")
    texts = Counter(str(s["text"]) for s in scans)
    twice = [t for t, n in texts.items() if n > 1]
    assert not twice, f"scans journaled twice: {twice[:5]}"
    for s in scanners:
        missing = [t for t in s.acked if texts[t] != 1]
        assert not missing, f"{s.name}: acknowledged scans missing: {missing[:5]}"
        assert not s.naked, f"{s.name}: valid scans refused: {s.naked[:5]}"
        assert s.stray == 0, f"{s.name}: {s.stray} answer byte(s) with no scan outstanding"
    by_event = {m["event_id"]: m for m in movements}
    assert len(by_event) == len(movements)
    # Each scanner's location survives every crash: an item lands where its scanner's
    # last journaled LOC- scan put it, even when that scan came before a restart.
    where: dict[str, str] = {}
    for row in scans:
        name, text = str(row["scanner"]), str(row["text"])
        assert row["outcome"] == "accepted", row
        if text.startswith("LOC-"):
            where[name] = text.removeprefix("LOC-")
            assert row["event_id"] is None
            continue
        m = by_event[row["event_id"]]
        assert (m["type"], m["item"], m["qty"], m["scanner"]) == (
            "receipt", text.split("-")[1], 1, name)
        assert m["to_location"] == where.get(name, DEFAULT_LOCATION), (text, m)
        assert m["raw"].endswith(f'"{text}"]')
    assert len(movements) == sum(1 for r in scans if r["event_id"] is not None)
    return movements


def test_daemon_killed_at_random_moments(tmp_path: Path, scanners: list[PtyScanner]) -> None:
    """50 SIGKILLs of ``scan-agent run`` while 4 scanners stream and sync drains."""
    rng = random.Random(20261122)
    shift = Shift(rng)
    db = tmp_path / "journal.db"
    with LedgerServer(tmp_path / "ledger.db") as ledger:
        tokens = token_file(tmp_path / "dock-1.token", ledger.add_station("dock-1", "WH1"))
        config = write_config(tmp_path / "dock-1.toml", {
            "station": "dock-1", "site": "WH1", "location": DEFAULT_LOCATION,
            "database": str(db), "log_level": "INFO",
            "grammar": {"sku_patterns": [SKU_PATTERN]},
            "ledger": {"url": ledger.url, "token_file": str(tokens), "timeout": 5.0,
                       "max_backoff": 0.5, "batch_size": 50},
            "scanners": [s.scanner_config() for s in scanners],
        })
        agent = AgentProcess(config, tmp_path / "agent.log")
        killed_in_startup = 0
        for run in range(RUNS):
            with agent:
                if run % 8 == 5:
                    # during start-up: imports, migrations, integrity check, session restore
                    got = _stream(agent, scanners, shift,
                                  time.monotonic() + rng.uniform(0.0, 0.7))
                    killed_in_startup += got == 0
                else:
                    _stream(agent, scanners, shift, None)
                    _stream(agent, scanners, shift, time.monotonic() + rng.uniform(0.0, 1.5))
                agent.kill()
            for s in scanners:
                s.after_crash()

        # A last, undisturbed run: the backlog drains and the scanners go quiet.
        with agent:
            _stream(agent, scanners, shift, None)
            _stream(agent, scanners, shift, time.monotonic() + 0.5)
            deadline = time.monotonic() + 120
            while any(s.outstanding for s in scanners) or journal_pending(db):
                assert time.monotonic() < deadline, f"backlog not drained:\n{agent.tail()}"
                select.select([s.master for s in scanners], [], [], 0.05)
                for s in scanners:
                    s.collect()
            assert agent.stop() == 0, agent.tail()

        movements = _check_journal(db, scanners)
        delivery = assert_exactly_once(db, ledger.url, "dock-1")
        assert ledger_balances(ledger.url) == movement_totals(delivery.movements)

    acked = sum(len(s.acked) for s in scanners)
    unanswered = sum(len(s.unanswered) for s in scanners)
    journaled = {str(r["text"]) for r in journal_rows(db, "scans", "id")}
    kept = sum(1 for s in scanners for t in s.unanswered if t in journaled)
    print(f"\n{RUNS} kills ({killed_in_startup} in start-up): {acked} scans acknowledged, "
          f"{unanswered} unanswered at a kill ({kept} of them journaled), "
          f"{len(movements)} movements, each once at the ledger")
    assert acked > RUNS * 10, "too few scans to mean anything"


# -- the ledger killed mid-batch ---------------------------------------------------------


LEDGER_KILLS = 10
BACKLOG = 4000


async def _capture_backlog(station: Station, n: int, rng: random.Random,
                           expected: Counter[tuple[str, str]]) -> None:
    """``n`` movements from 4 scanners at once (group commit keeps this quick)."""
    async def scanner(name: str, count: int) -> None:
        loc = DEFAULT_LOCATION
        for i in range(count):
            if i % 10 == 0:
                loc = f"BIN-{rng.randint(1, 20)}"
                o = await station.handle(RawScan(name, f"LOC-{loc}", b""))
                assert o.status == "accepted", o
            qty = rng.randint(1, 9)
            o = await station.handle(RawScan(name, f"QTY-{qty}", b""))
            assert o.status == "accepted", o
            item = rng.choice(ITEMS)
            o = await station.handle(RawScan(name, f"SKU-{item}-{name.upper()}N{i}", b""))
            assert o.status == "accepted", o
            expected[(item, loc)] += qty

    await asyncio.gather(*(scanner(f"s{k}", n // 4) for k in range(1, 5)))


async def _pending(writer: JournalWriter) -> int:
    return int((await writer.call(lambda j: j.counts())).get("pending", 0))


class _KillMidBatch(httpx.AsyncBaseTransport):
    """The agent's real HTTP transport; when armed, the next batch with events triggers a
    SIGKILL of the ledger a random few milliseconds after it is sent: while the ledger
    reads, ingests, commits or answers it."""

    def __init__(self, ledger: LedgerProcess, rng: random.Random) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.ledger = ledger
        self.rng = rng
        self.armed = False
        self.fired = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and b'"events":[{' in request.content:
            self.armed = False
            asyncio.get_running_loop().call_later(self.rng.uniform(0.0, 0.06), self._kill)
        return await self.inner.handle_async_request(request)

    def _kill(self) -> None:
        self.ledger.kill()
        self.fired.set()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_ledger_killed_mid_batch(tmp_path: Path) -> None:
    """``scan-ledger serve`` SIGKILLed while it handles a batch of the agent's backlog,
    restarted on the same port and database each time: every movement is stored once."""
    rng = random.Random(7)
    ledger_db = tmp_path / "ledger.db"
    tokens = token_file(tmp_path / "dock-1.token", add_station(ledger_db, "dock-1"))
    ledger = LedgerProcess(ledger_db, tmp_path / "ledger.log")
    ledger.start()
    try:
        cfg = parse_config({
            "station": "dock-1", "site": "WH1", "location": DEFAULT_LOCATION,
            "database": str(tmp_path / "journal.db"),
            "grammar": {"sku_patterns": [SKU_PATTERN]},
            "ledger": {"url": ledger.url, "token_file": str(tokens), "timeout": 5.0,
                       "max_backoff": 0.3, "batch_size": 100},
            "scanners": [{"name": f"s{k}", "driver": "serial", "port": "/dev/null",
                          "debounce_ms": 0} for k in range(1, 5)],
        }, "dock-1.toml")
        ledger.stop()  # the backlog builds up while the ledger is away
        writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
        expected: Counter[tuple[str, str]] = Counter()
        killer = _KillMidBatch(ledger, rng)
        sync = SyncLoop(cfg, writer, transport=killer, backoff_base=0.02,
                        rng=random.Random(3))
        task: asyncio.Task[None] | None = None
        try:
            station = Station(cfg, writer)
            await station.start()
            await _capture_backlog(station, BACKLOG, rng, expected)
            task = asyncio.create_task(sync.run())
            kills = 0
            while kills < LEDGER_KILLS and await _pending(writer):
                await asyncio.to_thread(ledger.start)
                killer.fired.clear()
                killer.armed = True
                deadline = time.monotonic() + 60
                while not killer.fired.is_set() and await _pending(writer):
                    assert time.monotonic() < deadline, f"no batch sent: {sync.stats}"
                    await asyncio.sleep(0.01)
                if killer.fired.is_set():
                    kills += 1
                    await asyncio.sleep(rng.uniform(0.0, 0.3))  # down for a moment
            killer.armed = False
            assert kills >= LEDGER_KILLS // 2, f"the backlog drained after {kills} kills"
            await asyncio.to_thread(ledger.start)
            deadline = time.monotonic() + 120
            while await _pending(writer):
                assert time.monotonic() < deadline, f"not drained: {sync.stats}"
                await asyncio.sleep(0.05)
        finally:
            await sync.close()
            if task is not None:
                await asyncio.wait_for(task, 30)
            await writer.close()

        delivery = await asyncio.to_thread(assert_exactly_once, cfg.database, ledger.url,
                                           "dock-1")
        assert len(delivery.movements) == BACKLOG
        balances = await asyncio.to_thread(ledger_balances, ledger.url)
        assert balances == {k: v for k, v in expected.items() if v}
        print(f"\nledger killed {kills} times mid-batch, started {ledger.starts} times; "
              f"{sync.stats.accepted} accepted, {sync.stats.duplicate} answered duplicate "
              f"(committed before a kill), {BACKLOG} stored once")
    finally:
        ledger.kill()
