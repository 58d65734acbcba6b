"""The operator's grammar end to end, as the ledger sees it: bytes into a real
pseudo-terminal read by the real serial driver in a running :class:`~agent.daemon.Agent`,
which syncs to a real ledger on 127.0.0.1 (DESIGN sections 4, 5 and 8).

Each test is one thing an operator relies on: a ``MODE-`` scan lands movements at the dock's
default location again; scanning a bin again starts a new count of it; ``QTY-0`` counts an
empty bin, and that count resolves an ``item`` negative; ``CMD-UNDO`` never reaches past a
mode switch nor past its age limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.clock import format_utc, parse_utc
from agent.config import load_config
from agent.daemon import Agent
from agent.status import format_status, status
from ledger.server import LedgerServer
from tests.ledger.factory import batch, event
from tests.test_e2e_serial import ACK, NAK, TIMEOUT, Dock, _connected

EAN13 = "4006381333931"
ITEM = "04006381333931"
OTHER = "5901234123457"
OTHER_ITEM = "05901234123457"


class LedgerDock(Dock):
    """A running agent on a pty, syncing to ``url``."""

    url: str = ""
    server: LedgerServer | None = None
    read_token: str | None = None  # the ledger's, when its config sets one

    async def ledger(self, path: str, **params: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.read_token}"} if self.read_token else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=5, headers=headers) as http:
            resp = await http.get(path, params=params)
            resp.raise_for_status()
            body: dict[str, Any] = resp.json()
            return body

    async def synced(self, n: int) -> list[dict[str, Any]]:
        """The station's events at the ledger once ``n`` have arrived, in seq order."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            events = (await self.ledger("/v1/events", station="dock-1"))["events"]
            if len(events) >= n or time.monotonic() > deadline:
                assert len(events) == n, events
                return sorted(events, key=lambda e: e["seq"])
            if self.agent.sync is not None:
                self.agent.sync.wake()
            await asyncio.sleep(0.05)

    async def on_hand(self, item: str, location: str) -> int | None:
        rows = (await self.ledger("/v1/balances", item=item, location=location))["balances"]
        return rows[0]["on_hand"] if rows else None

    async def incidents(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = (await self.ledger("/v1/negatives"))["incidents"]
        return out


DockFactory = Callable[..., contextlib.AbstractAsyncContextManager[LedgerDock]]


@pytest.fixture
def dock_with_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DockFactory:
    """``async with dock_with_ledger(grammar=...) as dock``: an agent reading a fresh pty and
    syncing to a ledger of its own."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)

    @contextlib.asynccontextmanager
    async def start(grammar: str = "", sync: str = "",
                    ledger_config: str = "") -> AsyncIterator[LedgerDock]:
        """``sync``: more keys of the dock's ``[ledger]``; ``ledger_config``: the ledger's
        TOML configuration."""
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        (tmp_path / "ledger.toml").write_text(ledger_config, encoding="utf-8")
        try:
            with LedgerServer(tmp_path / "ledger.db", tmp_path / "ledger.toml") as ledger:
                token = ledger.add_station("dock-1", site="WH1")
                (tmp_path / "token").write_text(token + "\n")
                (tmp_path / "token").chmod(0o600)
                path = tmp_path / "dock-1.toml"
                path.write_text(f"""\
station = "dock-1"
site = "WH1"
mode = "receipt"
location = "DOCK-1"
database = "{tmp_path / 'journal.db'}"

[ledger]
url = "{ledger.url}"
token_file = "{tmp_path / 'token'}"
{sync}

[grammar]
{grammar}

[[scanners]]
name = "handheld"
driver = "serial"
port = "{os.ttyname(slave)}"
ack = "\\u0006"
nak = "\\u0015"
""", encoding="utf-8")
                cfg = load_config(path)
                async with Agent(cfg) as agent:
                    await asyncio.wait_for(_connected(agent), TIMEOUT)
                    dock = LedgerDock(agent, master, Path(cfg.database))
                    dock.url, dock.server = ledger.url, ledger
                    dock.read_token = ledger.config.read_token
                    yield dock
        finally:
            os.close(master)
            os.close(slave)

    return start


async def test_mode_switch_lands_movements_at_the_default_location_again(
        dock_with_ledger: DockFactory) -> None:
    """After MODE-PICK then MODE-RECEIPT, receipts were refused ("no location yet") until a
    LOC- scan: a MODE- scan puts the dock's default location back in the mode's slot."""
    async with dock_with_ledger() as dock:
        assert await dock.scan_all(["QTY-5", EAN13, "MODE-PICK", EAN13, "MODE-RECEIPT",
                                    EAN13]) == "AAAAAA"
        events = await dock.synced(3)
        assert [(e["type"], e["qty"], e["from_location"], e["to_location"]) for e in events] == [
            ("receipt", 5, None, "DOCK-1"), ("pick", 1, "DOCK-1", None),
            ("receipt", 1, None, "DOCK-1")]
        assert await dock.on_hand(ITEM, "DOCK-1") == 5


async def test_scanning_the_bin_again_starts_a_new_count(dock_with_ledger: DockFactory) -> None:
    """A-07 was counted at 2; going back to it counted 3 more and reported 5. Scanning the
    bin's LOC- starts a new count: the ledger's on-hand is the recount's 3."""
    async with dock_with_ledger() as dock:
        assert await dock.scan_all(["MODE-COUNT", "LOC-A-07", EAN13, EAN13, "LOC-A-07",
                                    EAN13, EAN13, EAN13]) == "AAAAAAAA"
        events = await dock.synced(5)
        assert [e["qty"] for e in events] == [1, 2, 1, 2, 3]
        assert await dock.on_hand(ITEM, "A-07") == 3


async def test_a_count_of_an_empty_bin_resolves_an_item_negative(
        dock_with_ledger: DockFactory) -> None:
    """A pick from a bin that never had the item is an ``item`` negative; the only honest fix
    was undoing the pick. Now QTY-0 then the item counts the bin empty: the ledger takes the
    count of 0 and it resolves the incident like any count."""
    async with dock_with_ledger() as dock:
        assert await dock.scan_all(["MODE-PICK", "LOC-A-07", EAN13]) == "AAA"
        (pick,) = await dock.synced(1)
        deadline = time.monotonic() + TIMEOUT
        while not (incidents := await dock.incidents()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        (inc,) = incidents
        assert (inc["class"], inc["status"], inc["depletion_event_id"]) == (
            "item", "open", pick["event_id"])
        warned = await _warnings(dock)
        assert warned == [{"seq": 1, "warnings": ["negative balance at A-07: -1 (class item)"]}]
        assert await dock.scan_all(["MODE-COUNT", "LOC-A-07", "QTY-0", EAN13]) == "AAAA"
        count = (await dock.synced(2))[1]
        assert (count["type"], count["qty"], count["to_location"]) == ("count", 0, "A-07")
        (inc,) = await dock.incidents()
        assert (inc["status"], inc["resolved_by_event_id"]) == ("resolved", count["event_id"])
        assert await dock.on_hand(ITEM, "A-07") == 0
        assert await _warnings(dock) == [], "status shows what is still true"


async def _warnings(dock: LedgerDock) -> list[dict[str, Any]]:
    """``scan-agent status``'s ledger warnings, once the station has its results."""
    deadline = time.monotonic() + TIMEOUT
    while dock.rows("SELECT seq FROM movements WHERE state = 'pending'"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return [{"seq": w["seq"], "warnings": w["warnings"]}
            for w in status(dock.agent.config)["ledger_warnings"]]


async def test_status_drops_the_warning_of_an_undone_pick(dock_with_ledger: DockFactory) -> None:
    """`status` kept showing the negative of a pick the operator had undone."""
    async with dock_with_ledger() as dock:
        assert await dock.scan_all(["MODE-PICK", "LOC-A-07", EAN13, OTHER]) == "AAAA"
        await dock.synced(2)
        assert [w["seq"] for w in await _warnings(dock)] == [2, 1]
        assert await dock.send("CMD-UNDO") == ACK
        await dock.synced(3)
        assert [w["seq"] for w in await _warnings(dock)] == [1]


async def test_status_drops_a_negative_that_another_docks_receipt_resolved(
        dock_with_ledger: DockFactory) -> None:
    """`status` kept showing a negative after a receipt at another dock had resolved it at
    the ledger: the station's own journal cannot see that. Its sync now asks the ledger,
    with the station's own token (the ledger here protects reads with a read token), which
    incidents behind its warnings are still open, and status shows only those."""
    async with dock_with_ledger(sync="warning_recheck = 2",
                                ledger_config='read_token = "s3cret"\n') as dock:
        assert await dock.scan_all(["MODE-PICK", "LOC-A-07", EAN13]) == "AAA"
        (pick,) = await dock.synced(1)
        (inc,) = await dock.incidents()
        assert (inc["class"], inc["status"]) == ("item", "open")

        s = await _status_until(dock, lambda s: s["ledger_asked"]["basis"] == "ledger")
        assert s["ledger_asked"]["age_s"] < 1, "asked at once after the warned batch"
        (w,) = s["ledger_warnings"]
        assert w == {"seq": 1, "warnings": ["negative balance at A-07: -1 (class item)"],
                     "checked": True, "incidents": [{"id": inc["id"], "class": "item",
                                                     "location": "A-07", "balance": -1,
                                                     "confirmed": inc["confirmed"]}]}
        text = format_status(s)
        assert "ledger warnings that still hold (negatives as the ledger answered, asked " in text
        assert (f"seq 1: negative balance at A-07: -1 (class item)  [incident {inc['id']} "
                f"open, class item, ") in text

        # dock-2 took the item into A-07 before the pick, and its receipt arrives now
        assert dock.server is not None
        token = dock.server.add_station("dock-2", site="WH1")
        before = parse_utc(pick["occurred_at"]) - 60 * 10**9
        receipt = event("receipt", qty=1, to="A-07", item=ITEM, station="dock-2", seq=1,
                        occurred_at=format_utc(before))
        async with httpx.AsyncClient(base_url=dock.url, timeout=5) as http:
            resp = await http.post("/v1/events", json=batch([receipt], station="dock-2"),
                                   headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        (inc,) = await dock.incidents()
        assert (inc["status"], inc["resolved_by_event_id"]) == ("resolved",
                                                                receipt["event_id"])

        # until the station asks again (every 2 s here), it shows the last answer, and
        # when it was had; from the next answer on, the warning is gone
        again = status(dock.agent.config)
        assert (again["ledger_warnings"], again["ledger_asked"]["at"]) == (
            s["ledger_warnings"], s["ledger_asked"]["at"])
        s = await _status_until(dock, lambda n: n["ledger_asked"]["at"] > again[
            "ledger_asked"]["at"])
        assert s["ledger_warnings"] == []
        assert "ledger warnings" not in format_status(s)

        # the installed command, in a process of its own, says the same
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("scan-agent")), "status", "--config",
            dock.agent.config.path, "--json", stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        shown = json.loads(out)
        assert (shown["ledger_warnings"], shown["ledger_asked"]["basis"]) == ([], "ledger")


async def _status_until(dock: LedgerDock,
                        done: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """``scan-agent status`` once ``done`` holds of it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        s = status(dock.agent.config)
        if done(s):
            return s
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.05)


async def test_undo_stops_at_a_mode_switch(dock_with_ledger: DockFactory) -> None:
    """Three CMD-UNDO scans once walked back across mode changes and voided a receipt made
    earlier, silently: undo stops at the scanner's last MODE- scan with a NAK."""
    async with dock_with_ledger() as dock:
        assert await dock.scan_all(["QTY-4", EAN13, "MODE-PICK", OTHER]) == "AAAA"
        assert await dock.send("CMD-UNDO") == ACK
        assert await dock.send("CMD-UNDO") == NAK
        assert await dock.send("CMD-UNDO") == NAK
        reasons = [r["reason"] for r in dock.audit()[-2:]]
        assert reasons == ["nothing to undo on this scanner"] * 2
        receipt, pick, void = await dock.synced(3)
        assert (void["type"], void["voids"]) == ("void", pick["event_id"])
        assert await dock.on_hand(ITEM, "DOCK-1") == 4, "the receipt before MODE-PICK stands"
        assert receipt["type"] == "receipt"


async def test_undo_stops_at_its_age_limit(dock_with_ledger: DockFactory) -> None:
    """``[grammar] undo_max_age``: a movement older than that is never voided by CMD-UNDO."""
    async with dock_with_ledger(grammar="undo_max_age = 1.0") as dock:
        assert await dock.scan_all(["QTY-4", EAN13]) == "AA"
        await asyncio.sleep(1.3)
        assert await dock.send("CMD-UNDO") == NAK
        assert dock.audit()[-1]["reason"] == (
            "nothing to undo: the last movement on this scanner is older than 1 second")
        await dock.synced(1)
        assert await dock.on_hand(ITEM, "DOCK-1") == 4
        assert dock.movements()[-1]["type"] == "receipt", "no void was made"


async def test_a_clean_stop_tells_the_ledger_nothing_older_is_coming(
        dock_with_ledger: DockFactory, tmp_path: Path) -> None:
    """With a station stopped for the night, the day's incidents stayed provisional for
    ever: its watermark never moved past them. A clean stop's last exchange moves it to the
    stop, so the ledger confirms what no station can still explain."""
    async with dock_with_ledger() as dock:
        assert dock.server is not None
        token = dock.server.add_station("dock-2", site="WH1")
        (tmp_path / "token-2").write_text(token)
        (tmp_path / "token-2").chmod(0o600)
        master, slave = os.openpty()
        tty.setraw(slave)
        try:
            (tmp_path / "dock-2.toml").write_text(
                f'station = "dock-2"\nsite = "WH1"\nlocation = "DOCK-2"\n'
                f'database = "{tmp_path / "journal-2.db"}"\n'
                f'[ledger]\nurl = "{dock.url}"\ntoken_file = "{tmp_path / "token-2"}"\n'
                f'[[scanners]]\nname = "h"\ndriver = "serial"\n'
                f'port = "{os.ttyname(slave)}"\n')
            other = Agent(load_config(tmp_path / "dock-2.toml"))
            await other.start()
            try:
                deadline = time.monotonic() + TIMEOUT
                while not await _watermark(dock, "dock-2"):
                    assert time.monotonic() < deadline, "dock-2 never reached the ledger"
                    await asyncio.sleep(0.05)
                assert await dock.scan_all(["MODE-PICK", "LOC-A-07", EAN13]) == "AAA"
                await dock.synced(1)
                await asyncio.sleep(1.5)  # past the watermark's margin
                (inc,) = await dock.incidents()
                assert inc["confirmed"] is False, "dock-2 could still send an earlier receipt"
            finally:
                await other.close()
            (inc,) = await dock.incidents()
            assert inc["confirmed"] is True
            assert await _watermark(dock, "dock-2") > inc["opened_at"]
        finally:
            os.close(master)
            os.close(slave)


async def _watermark(dock: LedgerDock, station: str) -> str | None:
    stations = (await dock.ledger("/v1/stations"))["stations"]
    wm: str | None = next(s["watermark"] for s in stations if s["station"] == station)
    return wm
