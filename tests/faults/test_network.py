"""Network faults: a scripted shift of two docks syncing through a misbehaving network.

Each dock syncs through its own :class:`~agent.faultproxy.FaultProxy` on 127.0.0.1, whose
faults change every few seconds: connections dropped before the ledger sees them, answers
lost after the ledger committed, answers slower than the agent's timeout, truncated answers,
server errors, the network down, 429 with Retry-After, and all of them mixed. At the end the
ledger's balance of every item at every location equals what was scanned, and no event is
stored twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.capture import Station
from agent.config import parse_config
from agent.faultproxy import FaultProxy, Faults
from agent.journal import Journal, JournalWriter
from agent.sync import SyncLoop
from drivers.base import RawScan
from ledger.server import LedgerServer
from tests.faults.rig import (
    SKU_PATTERN,
    assert_exactly_once,
    ledger_balances,
    token_file,
)

pytestmark = pytest.mark.slow

MOVEMENTS_PER_DOCK = 1500
PHASE_SECONDS = 2.5
TIMEOUT = 0.5  # the agent's HTTP timeout; the slow phases answer later than this
PHASES: list[tuple[str, dict[str, Any]]] = [
    ("clean", {}),
    ("connections dropped before the ledger", {"drop_rate": 0.3}),
    ("answers lost after the ledger committed", {"reset_after_commit_rate": 0.4}),
    ("answers slower than the timeout", {"delay": TIMEOUT + 0.3}),
    ("truncated answers", {"truncate_rate": 0.4}),
    ("server errors 500/502", {"error_rate": 0.3}),
    ("network down", {"down": True}),
    ("429 with Retry-After", {"status": 429, "status_count": 3, "retry_after": "1"}),
    ("everything at once", {"drop_rate": 0.1, "reset_after_commit_rate": 0.15,
                            "truncate_rate": 0.15, "error_rate": 0.1}),
    ("slow answers, half lost after commit", {"delay": TIMEOUT * 0.6,
                                              "reset_after_commit_rate": 0.5}),
]
# (text, item): valid GTIN-14s and site SKUs
ITEMS = [("04006381333931", "04006381333931"), ("00000096385074", "00000096385074"),
         ("09501101020917", "09501101020917"), ("00012345678905", "00012345678905"),
         ("SKU-B-7", "B"), ("SKU-C-9", "C")]
BINS = [f"BIN-{i}" for i in range(1, 7)]

Effect = list[tuple[tuple[str, str], int]]


@dataclass
class Dock:
    """One station of the shift, and the balances its scans must produce."""

    name: str
    station: Station
    writer: JournalWriter
    sync: SyncLoop
    proxy: FaultProxy
    database: str
    rng: random.Random
    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    undoable: list[Effect] = field(default_factory=list)
    mode: str = "receipt"
    movements: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    pending_after: dict[str, int] = field(default_factory=dict)
    error_after: dict[str, str | None] = field(default_factory=dict)

    async def scan(self, text: str) -> None:
        o = await self.station.handle(RawScan("h", text, text.encode()))
        assert o.status == "accepted", o

    def _mode(self, mode: str) -> list[str]:
        if mode == self.mode:
            return []
        self.mode = mode
        self.undoable = []  # CMD-UNDO never walks back past a MODE- scan
        return [f"MODE-{mode.upper()}"]

    def next_movement(self) -> tuple[list[str], Effect]:
        """The scans of one movement and what it does to the balances."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.08 and self.undoable:
            effect = self.undoable.pop()
            return ["CMD-UNDO"], [(k, -d) for k, d in effect]
        text, item = rng.choice(ITEMS)
        qty = rng.choice([1, 1, 1, 2, 3, 6, 12])
        qty_scan = [f"QTY-{qty}"] if qty > 1 else []
        if roll < 0.45:
            loc = f"DOCK-{self.name[-1]}"
            scans = [*self._mode("receipt"), f"LOC-{loc}", *qty_scan, text]
            effect = [((item, loc), qty)]
        elif roll < 0.85:
            dock = f"DOCK-{self.name[-1]}"
            a, b = (dock, rng.choice(BINS)) if rng.random() < 0.7 else rng.sample(BINS, 2)
            scans = [*self._mode("move"), f"LOC-{a}", f"LOC-{b}", *qty_scan, text]
            effect = [((item, a), -qty), ((item, b), qty)]
        else:
            loc = rng.choice(BINS)
            scans = [*self._mode("pick"), f"LOC-{loc}", *qty_scan, text]
            effect = [((item, loc), -qty)]
        self.undoable = [*self.undoable, effect][-20:]  # undo walks back 20 at most
        return scans, effect

    async def work_shift(self, n: int, seconds: float) -> None:
        start = time.monotonic()
        for i in range(n):
            scans, effect = self.next_movement()
            for text in scans:
                await self.scan(text)
            for key, delta in effect:
                self.expected[key] += delta
            self.movements += 1
            await asyncio.sleep(max(0.0, start + (i + 1) * seconds / n - time.monotonic()))

    async def pending(self) -> int:
        return (await self.writer.call(lambda j: j.counts())).get("pending", 0)


@pytest.fixture
async def docks(tmp_path: Path) -> AsyncIterator[tuple[LedgerServer, list[Dock]]]:
    with LedgerServer(tmp_path / "ledger.db") as ledger:
        async with AsyncExitStack() as stack:
            made: list[Dock] = []
            for k in (1, 2):
                name = f"dock-{k}"
                tokens = token_file(tmp_path / f"{name}.token", ledger.add_station(name, "WH1"))
                proxy = await stack.enter_async_context(FaultProxy(ledger.url))
                cfg = parse_config({
                    "station": name, "site": "WH1", "location": f"DOCK-{k}",
                    "database": str(tmp_path / f"{name}.db"),
                    "grammar": {"sku_patterns": [SKU_PATTERN]},
                    "ledger": {"url": proxy.url, "token_file": str(tokens),
                               "timeout": TIMEOUT, "max_backoff": 0.3, "batch_size": 40},
                    "scanners": [{"name": "h", "driver": "serial", "port": "/dev/null",
                                  "debounce_ms": 0}],
                }, f"{name}.toml")
                writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
                stack.push_async_callback(writer.close)
                station = Station(cfg, writer)
                await station.start()
                sync = SyncLoop(cfg, writer, backoff_base=0.02, rng=random.Random(k))
                station.listeners.append(sync.on_capture)
                task = asyncio.create_task(sync.run())

                async def stop(sync: SyncLoop = sync, task: asyncio.Task[None] = task) -> None:
                    await sync.close()
                    await asyncio.wait_for(task, 30)

                stack.push_async_callback(stop)
                made.append(Dock(name, station, writer, sync, proxy, cfg.database,
                                 random.Random(100 + k)))
            yield ledger, made


async def _run_phases(docks: list[Dock]) -> None:
    for phase, faults in PHASES:
        before = {d.name: d.proxy.counts.injected for d in docks}
        for k, d in enumerate(docks):
            d.proxy.faults = Faults(seed=k, **faults)
            if faults.get("down"):
                d.proxy.cut()
        await asyncio.sleep(PHASE_SECONDS)
        for d in docks:
            d.injected[phase] = d.proxy.counts.injected - before[d.name]
            d.pending_after[phase] = await d.pending()
            d.error_after[phase] = d.sync.stats.last_error
    for d in docks:
        d.proxy.faults = Faults()


async def test_long_shift_through_a_faulty_network(docks: tuple[LedgerServer, list[Dock]]
                                                   ) -> None:
    ledger, stations = docks
    shift = len(PHASES) * PHASE_SECONDS
    await asyncio.gather(_run_phases(stations),
                         *(d.work_shift(MOVEMENTS_PER_DOCK, shift) for d in stations))
    deadline = time.monotonic() + 120
    for d in stations:
        while await d.pending():
            assert time.monotonic() < deadline, f"{d.name} not drained: {d.sync.stats}"
            await asyncio.sleep(0.05)

    expected: Counter[tuple[str, str]] = Counter()
    for d in stations:
        delivery = await asyncio.to_thread(assert_exactly_once, d.database, ledger.url, d.name)
        assert len(delivery.movements) == d.movements
        expected.update(d.expected)
    balances = await asyncio.to_thread(ledger_balances, ledger.url)
    assert balances == {k: v for k, v in expected.items() if v}

    for d in stations:
        s = d.sync.stats
        print(f"\n{d.name}: {d.movements} movements, {s.batches} batches, {s.accepted} "
              f"accepted, {s.duplicate} answered duplicate; injected per phase: {d.injected}")
        # each single-fault phase did what it says (the proxy counts what it injects into
        # requests; a refused connection and a slow answer show on the agent's side)
        for phase, faults in PHASES:
            if len(faults) != 1 and "status" not in faults:
                continue
            if faults.get("down"):
                assert d.pending_after[phase] > 0, f"{d.name}: nothing queued while down"
            elif "delay" in faults:
                assert "timed out" in (d.error_after[phase] or ""), d.error_after[phase]
            elif "status" in faults:
                assert d.injected[phase] == faults["status_count"]
            else:
                assert d.injected[phase] > 0, f"{d.name}: phase {phase!r} injected nothing"
