"""Sync against a ledger that answers strangely, on a real HTTP server on 127.0.0.1.

Regressions: a null server_time, odd warnings or a Retry-After in other digits ended the sync
task for good without a log line; a clock probe claimed a watermark of "now" while movements
were still queued; a batch refused for its envelope got a good movement quarantined.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.capture import Station
from agent.clock import format_utc, parse_utc
from agent.config import parse_config
from agent.journal import Journal, JournalWriter
from agent.sync import SyncLoop
from drivers.base import RawScan

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]]


def good(batch: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    now = format_utc(time.time_ns())
    results = [{"event_id": e["event_id"], "status": "accepted"} for e in batch["events"]]
    return 200, {}, json.dumps({"server_time": now, "results": results}).encode()


@dataclass
class ScriptedLedger:
    """Answers each POST with the next function of ``script`` (then with ``good``)."""

    script: list[Answer] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                batch = json.loads(await reader.readexactly(length))
                self.batches.append(batch)
                answer = self.script.pop(0) if self.script else good
                status, headers, body = answer(batch)
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                             f"Content-Type: application/json\r\n{extra}\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def ledger() -> AsyncIterator[ScriptedLedger]:
    led = ScriptedLedger()
    await led.start()
    yield led
    await led.close()


async def make(tmp_path: Path, ledger: ScriptedLedger, **ledger_keys: Any
               ) -> tuple[JournalWriter, Station, SyncLoop]:
    (tmp_path / "token").write_text("t0k3n")
    (tmp_path / "token").chmod(0o600)
    cfg = parse_config({
        "station": "dock-1", "site": "WH1", "location": "DOCK-1",
        "database": str(tmp_path / "journal.db"),
        "ledger": {"url": f"http://127.0.0.1:{ledger.port}", "token_file": str(tmp_path / "token"),
                   "timeout": 2.0, "max_backoff": 0.2, **ledger_keys},
        "scanners": [{"name": "h", "driver": "serial", "port": "/dev/null", "debounce_ms": 0}],
    }, "dock-1.toml")
    writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
    station = Station(cfg, writer)
    await station.start()
    sync = SyncLoop(cfg, writer, backoff_base=0.01, rng=random.Random(1))
    station.listeners.append(sync.on_capture)
    return writer, station, sync


async def scan(station: Station, *texts: str) -> None:
    for t in texts:
        assert (await station.handle(RawScan("h", t, t.encode()))).status == "accepted"


async def until(check: Callable[[], Any], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.parametrize("answer", [
    lambda b: (200, {}, b'{"server_time": null, "results": []}'),
    lambda b: (200, {}, json.dumps({"server_time": format_utc(time.time_ns()), "results": [
        {"event_id": e["event_id"], "status": "accepted", "warnings": 5}
        for e in b["events"]]}).encode()),
    lambda b: (503, {"Retry-After": "\u00b2"}, b"{}"),
    lambda b: (200, {}, b"[1, 2"),
], ids=["null-server-time", "warnings-not-a-list", "retry-after-superscript", "broken-json"])
async def test_a_strange_answer_never_stops_sync(tmp_path: Path, ledger: ScriptedLedger,
                                                 answer: Answer) -> None:
    writer, station, sync = await make(tmp_path, ledger)
    ledger.script = [answer, answer]
    task = asyncio.create_task(sync.run())
    try:
        await scan(station, "4006381333931", "5901234123457")
        await until(lambda: sync.stats.sent == 2)
        assert not task.done()
        assert (await writer.call(lambda j: j.counts())) == {"synced": 2}
    finally:
        await sync.close()
        await asyncio.wait_for(task, 10)
        await writer.close()


async def test_a_bad_ca_bundle_is_reported_and_retried_not_fatal(
        tmp_path: Path, ledger: ScriptedLedger) -> None:
    """(A missing one is refused by the config check; one that breaks later is this.)"""
    (tmp_path / "ca.pem").write_text("not a certificate")
    writer, station, sync = await make(tmp_path, ledger, ca_bundle=str(tmp_path / "ca.pem"))
    task = asyncio.create_task(sync.run())
    try:
        await scan(station, "4006381333931")
        await until(lambda: sync.stats.last_error is not None)
        assert "cannot load the TLS files (ca_bundle " in (sync.stats.last_error or "")
        assert str(tmp_path / "ca.pem") in (sync.stats.last_error or "")
        await asyncio.sleep(0.5)
        assert not task.done() and sync.stats.sent == 0
    finally:
        await sync.close()
        await asyncio.wait_for(task, 10)
        await writer.close()


async def test_a_clock_probe_claims_no_watermark_while_movements_are_queued(
        tmp_path: Path, ledger: ScriptedLedger) -> None:
    writer, station, sync = await make(tmp_path, ledger, batch_size=2)
    await scan(station, *["4006381333931"] * 5)
    task = asyncio.create_task(sync.run())
    try:
        await until(lambda: sync.stats.sent == 5)
    finally:
        await sync.close()
        await asyncio.wait_for(task, 10)
    rows = await writer.call(lambda j: j.conn.execute(
        "SELECT seq, occurred_at FROM movements ORDER BY seq").fetchall())
    await writer.close()
    occurred = {seq: parse_utc(o) for seq, o in rows}
    probe, *batches = ledger.batches
    assert probe["events"] == [] and probe["watermark"] is None
    sent: set[int] = set()
    for b in batches:
        sent |= {e["seq"] for e in b["events"]}
        if b["watermark"] is not None:
            unsent = [occurred[s] for s in occurred if s not in sent]
            assert all(parse_utc(b["watermark"]) < o for o in unsent), b


async def test_a_refused_envelope_is_retried_not_blamed_on_the_event(
        tmp_path: Path, ledger: ScriptedLedger) -> None:
    """A 400 about the batch's own fields must not quarantine a good movement."""
    def refuse(batch: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        return 400, {}, b'{"error": "sent_at: out of range"}'

    writer, station, sync = await make(tmp_path, ledger, batch_size=1)
    await scan(station, "4006381333931")
    ledger.script = [good, refuse, refuse]  # probe ok; the batch and the bare envelope refused
    task = asyncio.create_task(sync.run())
    try:
        await until(lambda: sync.stats.sent == 1)
        assert sync.stats.rejected == 0
        assert (await writer.call(lambda j: j.counts())) == {"synced": 1}
    finally:
        await sync.close()
        await asyncio.wait_for(task, 10)
        await writer.close()
