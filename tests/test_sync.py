"""Sync against the real reference ledger on 127.0.0.1, through a proxy that misbehaves.

Every scenario ends the same way: the ledger's balances equal what the station captured,
exactly, and each movement is stored once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.capture import Station
from agent.clock import format_utc, parse_utc
from agent.config import Config, parse_config
from agent.faultproxy import FaultProxy
from agent.journal import Journal, JournalWriter, LedgerView, ledger_view
from agent.status import format_status, status
from agent.sync import SyncLoop, backoff_delay, retry_after
from drivers.base import RawScan
from ledger.server import LedgerServer
from tests.ledger.factory import batch, event

GTINS = ["04006381333931", "00000096385074", "09501101020917", "00012345678905"]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LedgerServer]:
    with LedgerServer(tmp_path / "ledger.db") as srv:
        yield srv


@dataclass
class Rig:
    cfg: Config
    writer: JournalWriter
    station: Station
    sync: SyncLoop
    proxy: FaultProxy
    ledger: LedgerServer
    token_file: Path
    expected: Counter[tuple[str, str]]
    task: asyncio.Task[None] | None = None

    async def receive(self, n: int, seed: int = 1) -> None:
        """Capture ``n`` receipts of random items and quantities at DOCK-1."""
        rng = random.Random(seed)
        for _ in range(n):
            gtin = rng.choice(GTINS)
            qty = rng.randint(1, 5)
            for text in (f"QTY-{qty}", gtin):
                o = await self.station.handle(RawScan("h", text, text.encode()))
                assert o.status == "accepted", o
            self.expected[(gtin, "DOCK-1")] += qty

    def start(self) -> None:
        self.task = asyncio.create_task(self.sync.run())

    async def stop(self) -> None:
        await self.sync.close()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)

    async def counts(self) -> dict[str, int]:
        return await self.writer.call(lambda j: j.counts())

    async def wait_drained(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.counts()).get("pending", 0) == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"still pending after {timeout}s: {await self.counts()}; "
                             f"last error {self.sync.stats.last_error}")

    async def ledger_get(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.ledger.url) as c:
            r = await c.get(path)
            r.raise_for_status()
            return r.json()

    async def assert_ledger_matches(self) -> None:
        balances = (await self.ledger_get("/v1/balances?site=WH1"))["balances"]
        got = {(b["item"], b["location"]): b["on_hand"] for b in balances if b["on_hand"]}
        assert got == {k: v for k, v in self.expected.items() if v}
        events = (await self.ledger_get("/v1/events?station=dock-1&limit=10000"))["events"]
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids)), "an event was stored twice"
        journal = await self.writer.call(lambda j: j.conn.execute(
            "SELECT count(*) FROM movements WHERE state = 'synced'").fetchone()[0])
        assert len(ids) == journal


@pytest.fixture
async def rig(tmp_path: Path, ledger: LedgerServer) -> AsyncIterator[Rig]:
    token = ledger.add_station("dock-1", site="WH1")
    token_file = tmp_path / "dock-1.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    async with FaultProxy(ledger.url) as proxy:
        proxy.faults.seed = 7
        cfg = parse_config({
            "station": "dock-1", "site": "WH1", "location": "DOCK-1",
            "database": str(tmp_path / "journal.db"),
            "ledger": {"url": proxy.url, "token_file": str(token_file), "timeout": 1.0,
                       "max_backoff": 0.4, "batch_size": 100, "warning_recheck": 1.0},
            "scanners": [{"name": "h", "driver": "serial", "port": "/dev/null",
                          "debounce_ms": 0}],
        }, "dock-1.toml")
        writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
        station = Station(cfg, writer)
        await station.start()
        sync = SyncLoop(cfg, writer, backoff_base=0.02, rng=random.Random(3))
        station.listeners.append(sync.on_capture)
        r = Rig(cfg, writer, station, sync, proxy, ledger, token_file, Counter())
        try:
            yield r
        finally:
            await r.stop()
            await writer.close()


async def test_ledger_down_then_up_loses_nothing(rig: Rig) -> None:
    """A dock offline for the whole shift keeps every scan and delivers it on return."""
    rig.proxy.faults.down = True
    rig.start()
    await rig.receive(60)
    await asyncio.sleep(0.5)
    counts = await rig.counts()
    assert counts == {"pending": 60}
    assert rig.sync.stats.last_error is not None and "unreachable" in rig.sync.stats.last_error
    rig.proxy.faults.down = False
    await rig.wait_drained()
    await rig.assert_ledger_matches()


async def test_thirty_percent_server_errors(rig: Rig) -> None:
    rig.proxy.faults.error_rate = 0.3
    # A drain can take only a handful of requests: drawn at random, none might fail (0.7**6
    # is 12 %). This seed fails the first two, and a fair share after them.
    rig.proxy._rng = random.Random(4)
    rig.start()
    await rig.receive(150, seed=2)
    await rig.wait_drained()
    assert rig.proxy.counts.injected > 0
    await rig.assert_ledger_matches()


async def test_reset_after_commit_is_a_duplicate_counted_once(rig: Rig) -> None:
    """The ledger committed but the answer was lost: the retry comes back ``duplicate``."""
    rig.start()
    await rig.receive(1, seed=3)
    await rig.wait_drained()  # clock sampled: from here on every request carries events
    rig.proxy.faults.reset_after_commit_rate = 0.5
    for i in range(40):  # one batch per scan, so about half of them lose their answer
        await rig.receive(1, seed=100 + i)
        await asyncio.sleep(0.02)
    await rig.wait_drained()
    assert rig.proxy.counts.injected > 0
    assert rig.sync.stats.duplicate > 0
    await rig.assert_ledger_matches()


async def test_truncated_answers(rig: Rig) -> None:
    rig.proxy.faults.truncate_rate = 0.4
    rig.start()
    await rig.receive(50, seed=4)
    await rig.wait_drained()
    await rig.assert_ledger_matches()


async def test_slow_answers_past_the_timeout(rig: Rig) -> None:
    """Answers slower than the 1 s timeout: the station retries; nothing doubles."""
    rig.start()
    await rig.receive(1, seed=5)
    await rig.wait_drained()  # a fresh clock sample: the next batch goes out at once
    rig.expected.clear()
    rig.proxy.faults.delay = 1.5
    await rig.receive(20, seed=5)
    await asyncio.sleep(2.5)
    assert "timed out" in (rig.sync.stats.last_error or "")
    rig.proxy.faults.delay = 0
    await rig.wait_drained()
    assert rig.sync.stats.duplicate > 0
    rig.expected = Counter()
    await rig.receive(0)
    balances = (await rig.ledger_get("/v1/balances?site=WH1"))["balances"]
    total = sum(b["on_hand"] for b in balances)
    captured = await rig.writer.call(lambda j: j.conn.execute(
        "SELECT sum(qty) FROM movements").fetchone()[0])
    assert total == captured


async def test_429_retry_after_is_honoured(rig: Rig) -> None:
    rig.proxy.faults.status = 429
    rig.proxy.faults.status_count = 2
    rig.proxy.faults.retry_after = "1"
    await rig.receive(10, seed=6)
    t0 = time.monotonic()
    rig.start()
    await rig.wait_drained()
    assert time.monotonic() - t0 >= 1.9  # two Retry-After waits of one second each
    assert rig.proxy.counts.injected == 2
    await rig.assert_ledger_matches()


async def test_poison_event_in_batch_of_500_is_quarantined(rig: Rig) -> None:
    """A 400 batch is bisected down to the one event the ledger cannot take."""
    rig.sync._batch = 500
    await rig.receive(500, seed=8)
    poison = await rig.writer.call(lambda j: j.conn.execute(
        "SELECT seq, event_id, item, qty, to_location FROM movements WHERE seq = 321"
    ).fetchone())
    rig.proxy.faults.poison = poison[1]
    rig.start()
    await rig.wait_drained()
    counts = await rig.counts()
    assert counts == {"synced": 499, "rejected": 1}
    row = await rig.writer.call(lambda j: j.conn.execute(
        "SELECT state, reason FROM movements WHERE seq = 321").fetchone())
    assert row[0] == "rejected" and "invalid event in batch" in row[1]
    rig.expected[(poison[2], poison[4])] -= poison[3]
    await rig.assert_ledger_matches()


async def test_event_the_ledger_rejects_is_quarantined_not_blocking(rig: Rig) -> None:
    """A movement the ledger refuses by itself (status ``rejected``) is kept, the rest flow."""
    await rig.receive(5, seed=9)
    await rig.writer.call(lambda j: j.conn.execute(
        "UPDATE movements SET qty = -3 WHERE seq = 2"))
    bad = await rig.writer.call(lambda j: j.conn.execute(
        "SELECT item FROM movements WHERE seq = 2").fetchone()[0])
    rig.start()
    await rig.wait_drained()
    assert (await rig.counts()) == {"synced": 4, "rejected": 1}
    # the captured quantity of seq 2 never reached the ledger
    qty = await rig.writer.call(lambda j: j.conn.execute(
        "SELECT raw FROM movements WHERE seq = 2").fetchone()[0])
    rig.expected[(bad, "DOCK-1")] -= int(json.loads(qty)[0].removeprefix("QTY-"))
    await rig.assert_ledger_matches()


async def test_revoked_token_keeps_the_queue_and_recovers_on_rotation(rig: Rig) -> None:
    rig.ledger.revoke_station("dock-1")
    rig.start()
    await rig.receive(10, seed=10)
    await asyncio.sleep(0.5)
    assert rig.sync.stats.auth_failed
    assert "token" in (rig.sync.stats.last_error or "")
    assert (await rig.counts()) == {"pending": 10}
    new_token = rig.ledger.add_station("dock-1", site="WH1")
    rig.token_file.write_text(new_token)
    await rig.wait_drained()
    assert not rig.sync.stats.auth_failed
    await rig.assert_ledger_matches()


async def test_token_never_in_logs_or_errors(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    token = rig.token_file.read_text().strip()
    rig.ledger.revoke_station("dock-1")
    rig.start()
    await rig.receive(3, seed=11)
    await asyncio.sleep(0.5)
    alerts = await rig.writer.call(lambda j: j.conn.execute(
        "SELECT group_concat(message) FROM alerts").fetchone()[0])
    assert token not in caplog.text
    assert token not in (alerts or "")
    assert token not in (rig.sync.stats.last_error or "")


async def test_watermark_and_clock_sample_from_each_exchange(rig: Rig) -> None:
    rig.start()
    await rig.receive(3, seed=12)
    await rig.wait_drained()
    best = rig.sync.time_base.best
    assert best is not None
    # the ledger said when each batch reached it: its hold is out of the round trip
    assert all(s.received_ns is not None for s in rig.sync.time_base.samples)
    assert any(s.held_ns > 0 for s in rig.sync.time_base.samples)
    assert best.rtt_ns == best.t3_boot_ns - best.t0_boot_ns - best.held_ns
    stations = (await rig.ledger_get("/v1/stations"))
    text = json.dumps(stations)
    assert "dock-1" in text
    rows = await rig.writer.call(lambda j: j.conn.execute(
        "SELECT occurred_at, clock FROM movements").fetchall())
    for occurred, clock in rows:
        assert occurred.endswith("Z")
        assert json.loads(clock)["basis"] == "ledger"
        assert json.loads(clock)["synced"] is True


async def test_a_lone_docks_negative_is_confirmed_a_moment_after_it_syncs(rig: Rig) -> None:
    """The batch carrying a movement promises only up to a margin before it, so the ledger
    cannot confirm its incident from that batch; the next exchange must come once the
    margin has passed, not at the next 30 s heartbeat."""
    rig.start()
    for text in ("MODE-PICK", "LOC-A-01", GTINS[0]):  # a pick from an empty bin
        out = await rig.station.handle(RawScan("h", text, text.encode()))
        assert out.status == "accepted", out
    await rig.wait_drained()
    started = time.monotonic()
    while True:
        (inc,) = (await rig.ledger_get("/v1/negatives"))["incidents"]
        if inc["confirmed"]:
            break
        assert time.monotonic() - started < 10, "still provisional: no catch-up exchange"
        await asyncio.sleep(0.1)
    assert inc["class"] == "item"


async def _pick_from_an_empty_bin(rig: Rig) -> None:
    for text in ("MODE-PICK", "LOC-A-01", GTINS[0]):
        out = await rig.station.handle(RawScan("h", text, text.encode()))
        assert out.status == "accepted", out
    await rig.wait_drained()


async def _view_until(rig: Rig, done: Any) -> LedgerView:
    """The journal's record of the ledger's open incidents, once ``done`` holds of it."""
    deadline = time.monotonic() + 10
    while True:
        view = await rig.writer.call(lambda j: ledger_view(j.conn))
        if done(view):
            return view
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)


async def test_a_failed_reading_keeps_the_last_answer_with_its_age(rig: Rig) -> None:
    """The ledger answers which incidents are open, then stops answering reads (its batches
    still go through): status keeps the last answer, says how old it is and why it is not
    newer, and the next reading that succeeds takes over."""
    rig.start()
    await _pick_from_an_empty_bin(rig)
    first = await _view_until(rig, lambda v: v.asked_at is not None)
    (inc,) = first.incidents
    assert (inc["class"], inc["location"], inc["item"]) == ("item", "A-01", GTINS[0])

    rig.proxy.faults.status, rig.proxy.faults.status_count = 503, 10**6
    rig.proxy.faults.status_method = "GET"
    failed = await _view_until(rig, lambda v: v.error is not None)
    assert failed.error == "ledger answered HTTP 503: injected"
    assert (failed.asked_at, failed.incidents) == (first.asked_at, first.incidents)
    assert rig.sync.stats.last_error is None, "a failed reading is not a failed sync"
    assert failed.error_at is not None and first.asked_at is not None
    later = failed.error_at + 30  # status read half a minute after the failure
    s = status(rig.cfg, now=later)
    assert s["ledger_asked"]["basis"] == "ledger"
    assert s["ledger_asked"]["age_s"] == pytest.approx(later - first.asked_at, abs=0.2)
    (w,) = s["ledger_warnings"]
    assert [i["id"] for i in w["incidents"]] == [inc["id"]]
    text = format_status(s, now=later)
    assert (f"ledger warnings that still hold (negatives as the ledger answered, asked "
            f"{later - first.asked_at:.0f}s"
            " ago):") in text
    assert "  (asking again failed 30s ago: ledger answered HTTP 503: injected; shown as the" \
           " ledger last answered)" in text

    rig.proxy.faults.status_count = 0
    again = await _view_until(rig, lambda v: v.error is None)
    assert again.asked_at is not None and again.asked_at > first.asked_at
    (now_inc,) = again.incidents
    assert now_inc["id"] == inc["id"]
    assert now_inc["confirmed"], "the newer answer: the station's watermark passed it since"


async def test_a_ledger_never_asked_leaves_the_journals_view_and_says_why(rig: Rig) -> None:
    """Reads refused from the start: status shows the warning as the journal knows it, and
    says the ledger could not be asked (and why), not that it is still open there."""
    rig.proxy.faults.status, rig.proxy.faults.status_count = 503, 10**6
    rig.proxy.faults.status_method = "GET"
    rig.start()
    await _pick_from_an_empty_bin(rig)
    view = await _view_until(rig, lambda v: v.error is not None)
    assert (view.asked_at, view.incidents) == (None, ())
    s = status(rig.cfg)
    assert s["ledger_asked"]["basis"] == "journal"
    assert s["ledger_warnings"] == [{"seq": 1, "warnings": [
        "negative balance at A-01: -1 (class item)"], "checked": False, "incidents": []}]
    assert view.error_at is not None
    assert ("ledger warnings, as the ledger answered each movement (less what this station"
            " undid or recounted since):\n  (asking the ledger which still hold failed 30s"
            " ago: ledger answered HTTP 503: injected)\n  seq 1: negative balance at A-01: -1"
            " (class item)\n") in format_status(s, now=view.error_at + 30) + "\n"


async def test_asking_stops_once_nothing_it_shows_is_open(rig: Rig) -> None:
    """The ledger is asked after a warned batch and then at the recheck interval only while
    an incident behind a warning is open: once none is, a quiet station sends nothing
    until its next heartbeat."""
    rig.start()
    await _pick_from_an_empty_bin(rig)
    await _view_until(rig, lambda v: len(v.incidents) == 1)
    # the bin is counted (at this station): the ledger resolves the incident
    for text in ("MODE-COUNT", "LOC-A-01", "QTY-0", GTINS[0]):
        out = await rig.station.handle(RawScan("h", text, text.encode()))
        assert out.status == "accepted", out
    await rig.wait_drained()
    assert status(rig.cfg)["ledger_warnings"] == [], "the count here settles it at once"
    await _view_until(rig, lambda v: v.incidents == ())
    await asyncio.sleep(1.5)  # the exchange that follows a batch (see _CATCH_UP) goes first
    quiet = rig.proxy.counts.requests
    await asyncio.sleep(2.5)  # two recheck intervals
    assert rig.proxy.counts.requests == quiet


async def test_a_station_started_again_asks_once_about_the_warnings_it_kept(rig: Rig) -> None:
    """Stopped overnight while another dock's late receipt resolved its negative: at start
    the station asks the ledger about the warnings its journal holds, with no new scan."""
    rig.start()
    await _pick_from_an_empty_bin(rig)
    await _view_until(rig, lambda v: len(v.incidents) == 1)
    await rig.stop()
    (pick,) = (await rig.ledger_get("/v1/events?station=dock-1"))["events"]
    token = rig.ledger.add_station("dock-2", site="WH1")
    early = format_utc(parse_utc(pick["occurred_at"]) - 60 * 10**9)
    receipt = event("receipt", qty=1, to="A-01", item=GTINS[0], station="dock-2", seq=1,
                    occurred_at=early)
    async with httpx.AsyncClient(base_url=rig.ledger.url) as http:
        r = await http.post("/v1/events", json=batch([receipt], station="dock-2"),
                            headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    assert status(rig.cfg)["ledger_warnings"] != [], "the last answer, until asked again"

    rig.sync = SyncLoop(rig.cfg, rig.writer, backoff_base=0.02, rng=random.Random(3))
    rig.start()
    await _view_until(rig, lambda v: v.incidents == ())
    assert status(rig.cfg)["ledger_warnings"] == []


def test_backoff_is_capped_full_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 0.5, 10.0, rng) for n in range(1, 200)]
    assert all(0 <= d <= 10.0 for d in delays)
    assert max(delays[10:]) > 5  # grows to the cap ...
    assert min(delays[10:]) < 5  # ... with full jitter below it


@pytest.mark.parametrize(("header", "expected"), [
    ("3", 3.0), ("0", 0.0), (None, None), ("soon", None), ("100000", 600.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
], ids=["seconds", "zero", "absent", "garbage", "capped", "date-in-past"])
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    assert retry_after(header, time.time()) == expected


async def test_while_operators_scan_the_process_keeps_within_a_quarter_core(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain's writes hold up the captures' fsyncs: for 2 s after a scan, sync paces the
    process to the daemon's scanning budget (a quarter core), and gets the whole machine's
    budget back once the dock is quiet."""
    from agent import daemon
    from agent import sync as sync_module
    from agent.capture import Outcome

    monkeypatch.setattr(sync_module, "available_cores", lambda: 2.0)
    cfg = parse_config({
        "station": "dock-1", "site": "WH1", "location": "DOCK-1",
        "database": str(tmp_path / "journal.db"),
        "ledger": {"url": "http://127.0.0.1:9", "token_file": str(tmp_path / "token")},
        "scanners": [{"name": "h", "driver": "serial", "port": "/dev/null"}],
    }, "dock-1.toml")
    writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
    try:
        sync = SyncLoop(cfg, writer, scanning_cores=daemon._SCANNING_CORES)
        await sync._pace()
        assert sync._pacer.cores == 2.0
        sync.on_capture(Outcome("h", "04006381333931", "accepted", seq=1))
        await sync._pace()
        assert sync._pacer.cores == 0.25
        sync._last_scan -= sync_module._SCANNING_FOR + 0.1  # the last scan, 2 s ago
        await sync._pace()
        assert sync._pacer.cores == 2.0
    finally:
        await writer.close()


def _page(incidents: Any, nxt: Any = None) -> bytes:
    return json.dumps({"incidents": incidents, "next": nxt}).encode()


_OPEN = {"id": 1, "depletion_event_id": "e", "item": GTINS[0], "location": "A-01",
         "class": "item", "status": "open", "balance": -1, "confirmed": False}


@pytest.mark.parametrize(("body", "why"), [
    (b'{"incidents": [{"id": 1e400}], "next": null}', "ledger answer unreadable"),
    (b"[" * 200_000 + b"]" * 200_000, "ledger answer unreadable: RecursionError"),
    (_page([{**_OPEN, "id": 2**64}]), "id: expected a positive integer"),
    (_page([_OPEN] * 1001), "at most 1000 incidents in a page"),
    (_page([_OPEN], ""), "next: expected a cursor or null"),
    (b'{"incidents": [' + b'{"x": "' + b"y" * (5 << 20) + b'"}], "next": null}',
     "ledger answer larger than"),
])
async def test_a_malformed_answer_is_a_failed_reading_not_a_failed_sync(
        rig: Rig, body: bytes, why: str) -> None:
    """Whatever the ledger's answer to a reading holds (an id no integer can be, nesting
    deep enough to exhaust the parser, a page longer than asked or larger than 4 MB, a
    cursor that is no cursor), the reading fails with why, the
    sync of movements goes on at its pace, and nothing of the answer is kept."""
    rig.proxy.faults.status, rig.proxy.faults.status_count = 200, 10**6
    rig.proxy.faults.status_method, rig.proxy.faults.body = "GET", body
    rig.start()
    await _pick_from_an_empty_bin(rig)
    view = await _view_until(rig, lambda v: v.error is not None)
    assert why in (view.error or ""), view.error
    assert (view.asked_at, view.incidents) == (None, ())
    assert rig.sync.stats.last_error is None, "a failed reading is not a failed sync"
    started = time.monotonic()
    out = await rig.station.handle(RawScan("h", GTINS[1], GTINS[1].encode()))
    assert out.status == "accepted", out
    await rig.wait_drained()
    assert time.monotonic() - started < 2, "a movement waited behind the readings"


async def _sync_times(rig: Rig) -> list[float]:
    """Seconds from capture to synced, for a few movements 0.3 s apart."""
    waited = []
    for gtin in GTINS[1:4] * 2:
        started = time.monotonic()
        out = await rig.station.handle(RawScan("h", gtin, gtin.encode()))
        assert out.status == "accepted", out
        await rig.wait_drained()
        waited.append(time.monotonic() - started)
        await asyncio.sleep(0.3)
    return waited


async def test_a_slow_reading_holds_no_movement_back(rig: Rig) -> None:
    """The ledger takes its time over reads (3 s, past the 1 s timeout: every reading fails
    after a second, and the next starts a second later, so one is under way half of the
    time): movements captured meanwhile are sent as soon as without the readings, never
    after one (which would add up to a second)."""
    rig.start()
    await _pick_from_an_empty_bin(rig)
    await _view_until(rig, lambda v: v.asked_at is not None)
    alone = await _sync_times(rig)
    rig.proxy.faults.delay, rig.proxy.faults.delay_method = 3.0, "GET"
    await _view_until(rig, lambda v: v.error is not None)
    beside = await _sync_times(rig)
    assert max(beside) < max(alone) + 0.5, f"waited for a reading: {beside} vs {alone}"
