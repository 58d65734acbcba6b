"""The whole capture path end to end: bytes into a real pseudo-terminal, the real serial
driver inside a running :class:`~agent.daemon.Agent`, ACK/NAK bytes back on the pty, and
movements and audit rows read from the SQLite journal file (DESIGN sections 3-5).

The scanner is in host-acknowledge mode (``ack = "\\u0006"``, ``nak = "\\u0015"``), so every
scan written to the master side gets exactly one byte back once its fate is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import tty
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import daemon
from agent.config import load_config
from agent.daemon import Agent
from drivers.base import RawScan, ScannerState

TIMEOUT = 10.0  # only to turn a hang into a failure; never a pass/fail threshold
ACK, NAK = b"\x06", b"\x15"
GS = "\x1d"

EAN13 = "4006381333931"
ITEM = "04006381333931"
OTHER = "5901234123457"
OTHER_ITEM = "05901234123457"


def write_config(tmp_path: Path, port: str, *, mode: str = "receipt",
                 require_operator: bool = False, debounce_ms: int = 0,
                 location: str | None = "DOCK-1") -> Path:
    path = tmp_path / "dock-1.toml"
    where = "" if location is None else f'location = "{location}"'
    path.write_text(f"""\
station = "dock-1"
site = "WH1"
mode = "{mode}"
{where}
database = "{tmp_path / 'journal.db'}"
require_operator = {str(require_operator).lower()}

[grammar]
sku_patterns = ['SKU-(?P<sku>[0-9]{{6}})']

[[scanners]]
name = "handheld"
driver = "serial"
port = "{port}"
baudrate = 9600
ack = "\\u0006"
nak = "\\u0015"
debounce_ms = {debounce_ms}
""", encoding="utf-8")
    return path


@dataclass
class Dock:
    """A running agent and the scanner's end of its pseudo-terminal."""

    agent: Agent
    master: int
    database: Path
    written: list[bytes] = field(default_factory=list)

    async def send(self, data: str | bytes) -> bytes:
        """Write one scan (CR-terminated) and return the one byte the agent answers with."""
        raw = data.encode() if isinstance(data, str) else data
        self.written.append(raw)
        os.write(self.master, raw + b"\r")
        return await self.read_reply()

    async def scan_all(self, scans: Sequence[str | bytes]) -> str:
        """Each scan in turn, each after the previous one's answer: 'A' for ACK, 'N' for NAK."""
        out = []
        for s in scans:
            reply = await self.send(s)
            assert reply in (ACK, NAK), f"unexpected reply {reply!r} to {s!r}"
            out.append("A" if reply == ACK else "N")
        return "".join(out)

    async def read_reply(self) -> bytes:
        """The next byte the agent writes back (ACK or NAK)."""
        return await asyncio.wait_for(self._read_byte(), TIMEOUT)

    async def _read_byte(self) -> bytes:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if not got.done():
                got.set_result(os.read(self.master, 1))

        loop.add_reader(self.master, readable)
        try:
            return await got
        finally:
            loop.remove_reader(self.master)

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of the journal file, through a read-only connection of our own."""
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    def movements(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM movements ORDER BY seq")

    def audit(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM scans ORDER BY id")

    def session(self) -> dict[str, Any]:
        (row,) = self.rows("SELECT state FROM sessions WHERE scanner = 'handheld'")
        state: dict[str, Any] = json.loads(row["state"])
        return state


DockFactory = Callable[..., contextlib.AbstractAsyncContextManager[Dock]]


@pytest.fixture
def running_dock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DockFactory:
    """``async with running_dock(**config) as dock``: an Agent reading a fresh pty."""
    # The in-process agent must not notify a systemd that happens to run the test suite.
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    @contextlib.asynccontextmanager
    async def start(**config: Any) -> AsyncIterator[Dock]:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        try:
            cfg = load_config(write_config(tmp_path, os.ttyname(slave), **config))
            async with Agent(cfg) as agent:
                await asyncio.wait_for(_connected(agent), TIMEOUT)
                yield Dock(agent, master, Path(cfg.database))
        finally:
            os.close(master)
            os.close(slave)

    return start


async def _connected(agent: Agent) -> None:
    while not agent.scanner_states["handheld"].connected:
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Move:
    """The fields of a movement row a grammar case cares about."""

    type: str
    item: str
    qty: int = 1
    from_location: str | None = None
    to_location: str | None = None
    lot: str | None = None
    serial: str | None = None
    expiry: str | None = None
    reference: str | None = None
    operator: str | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Move:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Case:
    scans: list[str]
    replies: str
    movements: list[Move]
    config: dict[str, Any] = field(default_factory=dict)


GRAMMAR_CASES = {
    "receipt-lands-at-the-dock-default": Case(
        [EAN13], "A", [Move("receipt", ITEM, to_location="DOCK-1")]),
    "receipt-LOC-sets-the-to-location": Case(
        ["LOC-A-01", EAN13], "AA", [Move("receipt", ITEM, to_location="A-01")]),
    "MODE-PICK-LOC-sets-the-from-location": Case(
        ["MODE-PICK", "LOC-B-02", EAN13], "AAA", [Move("pick", ITEM, from_location="B-02")]),
    "pick-dock-default-is-the-from-location": Case(
        [EAN13], "A", [Move("pick", ITEM, from_location="DOCK-1")], {"mode": "pick"}),
    "MODE-MOVE-first-LOC-from-second-to": Case(
        ["MODE-MOVE", "LOC-A-01", "LOC-B-02", EAN13], "AAAA",
        [Move("move", ITEM, from_location="A-01", to_location="B-02")]),
    "move-third-LOC-starts-a-new-pair": Case(
        ["MODE-MOVE", "LOC-A-01", "LOC-B-02", EAN13, "LOC-C-03", "LOC-D-04", OTHER],
        "AAAAAAA",
        [Move("move", ITEM, from_location="A-01", to_location="B-02"),
         Move("move", OTHER_ITEM, from_location="C-03", to_location="D-04")]),
    "move-pair-stays-for-following-items": Case(
        ["MODE-MOVE", "LOC-A-01", "LOC-B-02", EAN13, OTHER], "AAAAA",
        [Move("move", ITEM, from_location="A-01", to_location="B-02"),
         Move("move", OTHER_ITEM, from_location="A-01", to_location="B-02")]),
    "MODE-COUNT-sends-the-running-total": Case(
        ["MODE-COUNT", "LOC-C-01", EAN13, EAN13, "QTY-5", EAN13, OTHER], "AAAAAAA",
        [Move("count", ITEM, 1, to_location="C-01"), Move("count", ITEM, 2, to_location="C-01"),
         Move("count", ITEM, 7, to_location="C-01"),
         Move("count", OTHER_ITEM, 1, to_location="C-01")]),
    "count-restarts-per-bin": Case(
        ["MODE-COUNT", "LOC-C-01", EAN13, "LOC-C-02", EAN13], "AAAAA",
        [Move("count", ITEM, 1, to_location="C-01"),
         Move("count", ITEM, 1, to_location="C-02")]),
    "MODE-RECEIPT-after-pick": Case(
        ["MODE-PICK", "MODE-RECEIPT", "LOC-R-1", EAN13], "AAAA",
        [Move("receipt", ITEM, to_location="R-1")], {"mode": "pick"}),
    "MODE-switch-puts-the-default-location-back": Case(
        ["MODE-PICK", "LOC-P-1", EAN13, "MODE-RECEIPT", EAN13, "MODE-PICK", OTHER], "AAAAAAA",
        [Move("pick", ITEM, from_location="P-1"), Move("receipt", ITEM, to_location="DOCK-1"),
         Move("pick", OTHER_ITEM, from_location="DOCK-1")]),
    "count-LOC-again-starts-a-new-count": Case(
        ["MODE-COUNT", "LOC-A-07", EAN13, EAN13, "LOC-A-07", EAN13, EAN13, EAN13], "AAAAAAAA",
        [Move("count", ITEM, 1, to_location="A-07"), Move("count", ITEM, 2, to_location="A-07"),
         Move("count", ITEM, 1, to_location="A-07"), Move("count", ITEM, 2, to_location="A-07"),
         Move("count", ITEM, 3, to_location="A-07")]),
    "count-QTY-0-records-an-empty-bin": Case(
        ["MODE-COUNT", "LOC-A-07", "QTY-0", EAN13], "AAAA",
        [Move("count", ITEM, 0, to_location="A-07")]),
    "QTY-applies-to-the-next-item-only": Case(
        ["QTY-12", EAN13, EAN13], "AAA",
        [Move("receipt", ITEM, 12, to_location="DOCK-1"),
         Move("receipt", ITEM, 1, to_location="DOCK-1")]),
    "REF-attached-until-changed": Case(
        ["REF-PO-1", EAN13, OTHER, "REF-PO-2", EAN13], "AAAAA",
        [Move("receipt", ITEM, to_location="DOCK-1", reference="PO-1"),
         Move("receipt", OTHER_ITEM, to_location="DOCK-1", reference="PO-1"),
         Move("receipt", ITEM, to_location="DOCK-1", reference="PO-2")]),
    "USER-attached-to-following-movements": Case(
        ["USER-u17", EAN13, OTHER], "AAA",
        [Move("receipt", ITEM, to_location="DOCK-1", operator="u17"),
         Move("receipt", OTHER_ITEM, to_location="DOCK-1", operator="u17")]),
    "require_operator-refuses-items-until-USER": Case(
        [EAN13, "USER-u17", EAN13], "NAA",
        [Move("receipt", ITEM, to_location="DOCK-1", operator="u17")],
        {"require_operator": True}),
    "CMD-RESET-restores-defaults-clears-qty-and-ref": Case(
        ["MODE-PICK", "LOC-B-02", "QTY-3", "REF-PO-9", "CMD-RESET", EAN13], "AAAAAA",
        [Move("receipt", ITEM, to_location="DOCK-1")]),
    "CMD-RESET-keeps-the-operator": Case(
        ["USER-u17", "REF-PO-9", "CMD-RESET", EAN13], "AAAA",
        [Move("receipt", ITEM, to_location="DOCK-1", operator="u17")]),
    "GTIN-8": Case(["96385074"], "A", [Move("receipt", "00000096385074", to_location="DOCK-1")]),
    "GTIN-12": Case(
        ["036000291452"], "A", [Move("receipt", "00036000291452", to_location="DOCK-1")]),
    "GTIN-13": Case([EAN13], "A", [Move("receipt", ITEM, to_location="DOCK-1")]),
    "GTIN-14": Case(
        ["10614141000019"], "A", [Move("receipt", "10614141000019", to_location="DOCK-1")]),
    "GTIN-13-with-AIM-id": Case(
        ["]E0" + EAN13], "A", [Move("receipt", ITEM, to_location="DOCK-1")]),
    "GS1-element-string-AIM-GS-lot-serial-expiry": Case(
        [f"]C101{ITEM}17261231104711{GS}21SN-9"], "A",
        [Move("receipt", ITEM, to_location="DOCK-1", lot="4711", serial="SN-9",
              expiry="2026-12-31")]),
    "GS1-count-AI-37-multiplies-QTY": Case(
        ["QTY-5", f"]C102{ITEM}{GS}3712"], "AA",
        [Move("receipt", ITEM, 60, to_location="DOCK-1")]),
    "GS1-without-AIM-id-split-by-GS": Case(
        [f"01{ITEM}10L-1{GS}21S-2"], "A",
        [Move("receipt", ITEM, to_location="DOCK-1", lot="L-1", serial="S-2")]),
    "site-SKU-pattern": Case(
        ["SKU-123456"], "A", [Move("receipt", "123456", to_location="DOCK-1")]),
}


@pytest.mark.parametrize("case", list(GRAMMAR_CASES.values()), ids=list(GRAMMAR_CASES))
async def test_grammar_row_makes_its_movements(running_dock: DockFactory, case: Case) -> None:
    """Every row of the DESIGN section 4 grammar, from pty bytes to journaled movements."""
    async with running_dock(**case.config) as dock:
        assert await dock.scan_all(case.scans) == case.replies
        rows = dock.movements()
        audit = dock.audit()
    assert [Move.of(r) for r in rows] == case.movements
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), "gap-free from 1"
    assert [a["text"] for a in audit] == case.scans, "one audit row per raw scan, in order"
    assert [a["outcome"] for a in audit] == [
        "accepted" if r == "A" else "rejected" for r in case.replies]
    movement_ids = {r["event_id"] for r in rows}
    assert {a["event_id"] for a in audit if a["event_id"]} == movement_ids, \
        "each movement's audit row points at it"
    assert all(r["state"] == "pending" for r in rows)


@pytest.mark.parametrize("case", list(GRAMMAR_CASES.values()), ids=list(GRAMMAR_CASES))
async def test_grammar_row_streamed_in_one_write(running_dock: DockFactory, case: Case) -> None:
    """The same rows with every scan sent at once, as a streaming reader does: each scan builds
    on the ones read before it although none of them has committed yet, and the replies come
    back in order."""
    async with running_dock(**case.config) as dock:
        os.write(dock.master, b"".join(t.encode() + b"\r" for t in case.scans))
        replies = [await dock.read_reply() for _ in case.scans]
        rows = dock.movements()
        audit = dock.audit()
    assert "".join("A" if r == ACK else "N" for r in replies) == case.replies
    assert [Move.of(r) for r in rows] == case.movements
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert [a["text"] for a in audit] == case.scans


async def test_movement_raw_holds_its_context_scans(running_dock: DockFactory) -> None:
    """The event's ``raw`` list: the scans that set its context, then the item scan."""
    async with running_dock() as dock:
        await dock.scan_all(["REF-PO-1", "LOC-A-01", EAN13, OTHER])
        rows = dock.movements()
    assert [json.loads(r["raw"]) for r in rows] == [["REF-PO-1", "LOC-A-01", EAN13], [OTHER]]


async def test_undo_appends_a_void_of_the_last_movement(running_dock: DockFactory) -> None:
    """CMD-UNDO voids the scanner's last movement by appending; nothing is deleted."""
    async with running_dock() as dock:
        assert await dock.scan_all(["REF-PO-7", "QTY-4", EAN13, OTHER, "CMD-UNDO", "CMD-UNDO",
                                    "CMD-UNDO"]) == "AAAAAAN"
        rows = dock.movements()
        last = dock.audit()[-1]
    first, second, void2, void1 = rows
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert (void2["type"], void2["voids"], void2["item"], void2["qty"]) == (
        "void", second["event_id"], OTHER_ITEM, 1)
    assert (void1["type"], void1["voids"], void1["item"], void1["qty"]) == (
        "void", first["event_id"], ITEM, 4)
    assert (first["type"], second["type"]) == ("receipt", "receipt"), "voided rows stay"
    assert (last["outcome"], last["reason"]) == ("rejected", "nothing to undo on this scanner")


async def test_undo_of_a_count_restores_the_running_total(running_dock: DockFactory) -> None:
    async with running_dock() as dock:
        await dock.scan_all(["MODE-COUNT", "LOC-C-01", EAN13, EAN13, "CMD-UNDO", EAN13])
        rows = dock.movements()
    assert [(r["type"], r["qty"]) for r in rows] == [
        ("count", 1), ("count", 2), ("void", 2), ("count", 2)]
    assert rows[2]["voids"] == rows[1]["event_id"]


@dataclass(frozen=True)
class Rejection:
    setup: list[str]
    bad: bytes
    reason: str
    text: str  # what the audit row keeps (escaped for bytes that are not text)
    config: dict[str, Any] = field(default_factory=dict)


NOWHERE = {"location": None}  # a dock with no default location


REJECTIONS = {
    "unknown-barcode": Rejection([], b"hello", "unknown barcode 'hello'", "hello"),
    "bad-check-digit": Rejection(
        [], b"4006381333932", "invalid GTIN check digit in 4006381333932: expected 1, got 2",
        "4006381333932"),
    "no-location-yet-pick": Rejection(
        ["MODE-PICK"], EAN13.encode(), "no location yet: scan LOC-<code> first", EAN13,
        NOWHERE),
    "no-location-yet-receipt": Rejection(
        ["MODE-RECEIPT"], EAN13.encode(), "no location yet: scan LOC-<code> first", EAN13,
        NOWHERE),
    "no-location-yet-move": Rejection(
        ["MODE-MOVE"], EAN13.encode(), "no location yet: scan LOC-<from> then LOC-<to> first",
        EAN13),
    "no-bin-yet-count": Rejection(
        ["MODE-COUNT"], EAN13.encode(), "no bin yet: scan LOC-<bin> before counting", EAN13,
        NOWHERE),
    "move-without-a-to-location": Rejection(
        ["MODE-MOVE", "LOC-A-01"], EAN13.encode(),
        "move without a to-location: scan LOC-<to> first", EAN13),
    "move-to-the-same-location": Rejection(
        ["MODE-MOVE", "LOC-A-01"], b"LOC-A-01",
        "move to the same location A-01: scan a different to-location", "LOC-A-01"),
    "control-character-BEL": Rejection(
        [], b"4006381\x07333931", "non-text bytes: control character 0x07 at byte 7",
        "4006381\\x07333931"),
    "control-character-ESC-sequence": Rejection(
        [], b"LOC-\x1b[2JA", "non-text bytes: control character 0x1B at byte 4",
        "LOC-\\x1b[2JA"),
    "over-long-input": Rejection(
        [], b"7" * 600, "over-long scan: more than 512 bytes", "7" * 512),
    "non-UTF-8-bytes": Rejection(
        [], b"AB\xff\xfeCD", "non-text bytes: invalid utf-8 at byte 2", "AB\\xff\\xfeCD"),
    "QTY-zero-outside-count-mode": Rejection(
        [], b"QTY-0", "quantity must be at least 1 (QTY-0 is for counting an empty bin, in "
        "count mode)", "QTY-0"),
    "QTY-over-the-maximum": Rejection(
        [], b"QTY-10000", "quantity 10000 is over this site's maximum of 9999", "QTY-10000"),
    "unknown-mode": Rejection(
        [], b"MODE-SHIP", "unknown mode 'SHIP' (known: RECEIPT, PICK, MOVE, COUNT)",
        "MODE-SHIP"),
    "bad-GS1-GTIN": Rejection(
        [], f"]C10104006381333932{GS}10L".encode(),
        "invalid GTIN in GS1 data: Invalid GTIN check digit for '04006381333932': "
        "Expected 1, got 2.",
        f"]C10104006381333932{GS}10L"),
}


@pytest.mark.parametrize("case", list(REJECTIONS.values()), ids=list(REJECTIONS))
async def test_rejection_naks_audits_the_reason_and_makes_no_movement(
        running_dock: DockFactory, case: Rejection) -> None:
    """A bad scan: one NAK, the raw scan and its reason in the audit, no movement, the
    session untouched, and the next scan is captured normally."""
    async with running_dock(**case.config) as dock:
        assert await dock.scan_all(case.setup) == "A" * len(case.setup)
        session_before = dock.session() if case.setup else None
        assert await dock.send(case.bad) == NAK
        bad = dock.audit()[-1]
        assert dock.movements() == []
        if case.setup:
            assert dock.session() == session_before
        assert await dock.scan_all(["CMD-RESET", "LOC-DOCK-1", EAN13]) == "AAA", \
            "capture goes on"
        audit = dock.audit()
        rows = dock.movements()
    assert (bad["outcome"], bad["reason"], bad["text"], bad["event_id"]) == (
        "rejected", case.reason, case.text, None)
    assert bad["raw"] == case.bad[:512], "the bytes as read are kept for the audit"
    assert len(audit) == len(case.setup) + 4, "exactly one audit row for the bad scan"
    assert [(r["seq"], r["type"], r["to_location"]) for r in rows] == [(1, "receipt", "DOCK-1")]


async def test_over_long_scan_discards_its_tail_up_to_the_terminator(
        running_dock: DockFactory) -> None:
    """The bytes past the limit are not glued to the next scan or framed as one of their own."""
    async with running_dock() as dock:
        os.write(dock.master, b"9" * 2000 + b"\r" + EAN13.encode() + b"\r")
        assert await dock.read_reply() == NAK
        assert await dock.read_reply() == ACK
        audit = dock.audit()
    assert [(a["outcome"], len(a["text"])) for a in audit] == [("rejected", 512), ("accepted", 13)]


async def test_same_barcode_twice_within_the_window_is_debounced(
        running_dock: DockFactory) -> None:
    """An accidental double read: good-read signal, audit row 'debounced', no movement."""
    async with running_dock(debounce_ms=60_000) as dock:
        assert await dock.scan_all([EAN13, EAN13, "QTY-2", EAN13, EAN13]) == "AAAAA"
        audit = dock.audit()
        rows = dock.movements()
    assert [(a["text"], a["outcome"]) for a in audit] == [
        (EAN13, "accepted"), (EAN13, "debounced"), ("QTY-2", "accepted"), (EAN13, "accepted"),
        (EAN13, "debounced")]
    assert [(r["seq"], r["qty"]) for r in rows] == [(1, 1), (2, 2)]


async def test_same_barcode_after_the_window_counts_again(running_dock: DockFactory) -> None:
    async with running_dock(debounce_ms=100) as dock:
        assert await dock.send(EAN13) == ACK
        await asyncio.sleep(0.25)  # past the window: a deliberate second unit
        assert await dock.send(EAN13) == ACK
        rows = dock.movements()
    assert [r["seq"] for r in rows] == [1, 2]


async def test_crlf_and_lf_terminators_frame_one_scan_each(running_dock: DockFactory) -> None:
    """Scanners end scans with CR, LF or CRLF; a CRLF pair is one terminator, not two."""
    async with running_dock() as dock:
        os.write(dock.master, b"LOC-A-01\r\n" + EAN13.encode() + b"\n" + OTHER.encode() + b"\r\n")
        assert [await dock.read_reply() for _ in range(3)] == [ACK, ACK, ACK]
        audit = dock.audit()
    assert [a["text"] for a in audit] == ["LOC-A-01", EAN13, OTHER]


# -- a reader that fails --------------------------------------------------------------------------


class _FailingScanner:
    """A scanner whose reading breaks after a few scans (a driver fault): the stand-in for a
    driver bug, which the real drivers never show (they reconnect)."""

    def __init__(self, name: str, texts: Sequence[str]) -> None:
        self.name, self.texts = name, texts
        self.answers: list[bool] = []
        self.state = ScannerState(name, True, "fake")

    def __aiter__(self) -> AsyncIterator[RawScan]:
        return self._scans()

    async def _scans(self) -> AsyncIterator[RawScan]:
        for text in self.texts:
            yield RawScan(self.name, text, text.encode())
        raise OSError("the driver broke")

    async def acknowledge(self, ok: bool) -> None:
        self.answers.append(ok)

    async def close(self) -> None:
        pass


async def test_a_failing_reader_still_answers_what_it_read_and_stops_the_agent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scans read before the reader broke are in the journal: they must get their ACK, or
    the operator scans them again and they count twice."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    made: list[_FailingScanner] = []

    def open_failing(sc: Any, on_state: Any = None) -> _FailingScanner:
        made.append(_FailingScanner(sc.name, ["LOC-A-01", EAN13, OTHER]))
        return made[-1]

    monkeypatch.setattr(daemon, "open_scanner", open_failing)
    cfg = load_config(write_config(tmp_path, "/dev/null"))
    agent = Agent(cfg)
    try:
        await agent.start()
        await asyncio.wait_for(agent.wait(), TIMEOUT)
    finally:
        await asyncio.wait_for(agent.close(), TIMEOUT)
    assert made[0].answers == [True, True, True]
    assert agent.failed == "scan:handheld stopped unexpectedly"
    conn = sqlite3.connect(cfg.database)
    try:
        assert conn.execute("SELECT count(*) FROM movements").fetchone()[0] == 2
    finally:
        conn.close()


class _SlowToAnswerScanner:
    """A scanner whose answers take a while to send (a port written from a worker thread, a
    slow adapter), scanning faster than that."""

    def __init__(self, name: str, texts: Sequence[str]) -> None:
        self.name, self.texts = name, texts
        self.answers: list[bool] = []
        self.state = ScannerState(name, True, "fake")
        self.most_unanswered = 0  # the most scans read and not answered, as each is read
        self._closed = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[RawScan]:
        return self._scans()

    async def _scans(self) -> AsyncIterator[RawScan]:
        for n, text in enumerate(self.texts):
            self.most_unanswered = max(self.most_unanswered, n + 1 - len(self.answers))
            yield RawScan(self.name, text, text.encode())
        await self._closed.wait()

    async def acknowledge(self, ok: bool) -> None:
        await asyncio.sleep(0.02)
        self.answers.append(ok)

    async def close(self) -> None:
        self._closed.set()


async def _run_slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    scanner: _SlowToAnswerScanner) -> Agent:
    """Run an agent on ``scanner`` until every scan is answered (or the agent stops)."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(daemon, "open_scanner", lambda sc, on_state=None: scanner)
    cfg = load_config(write_config(tmp_path, "/dev/null"))
    agent = Agent(cfg)
    try:
        await agent.start()
        async with asyncio.timeout(TIMEOUT):
            while len(scanner.answers) < len(scanner.texts) and not agent.stopping.is_set():
                await asyncio.sleep(0.01)
    finally:
        await asyncio.wait_for(agent.close(), TIMEOUT)
    return agent


async def test_answers_slower_than_the_scans_hold_the_reader_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader waits while _IN_FLIGHT scans wait for their answer: what a scanner sends
    meanwhile waits in the driver (and the device), not in the agent's memory."""
    monkeypatch.setattr(daemon, "_IN_FLIGHT", 3)
    scanner = _SlowToAnswerScanner("handheld", ["LOC-A-01"] + [EAN13] * 19)
    agent = await _run_slow(tmp_path, monkeypatch, scanner)
    assert scanner.answers == [True] * 20
    # the scans waiting, the one being answered, the one just read before the reader waits
    assert scanner.most_unanswered <= 3 + 2, scanner.most_unanswered
    assert agent.failed is None


async def test_a_scan_the_station_cannot_take_stops_the_agent_after_answering_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the capture path (here: submit raising on the third scan) must stop the agent
    so that it is restarted, once the scans before it are answered; not hang it."""
    real = daemon.Station.submit
    calls = 0

    def submit(self: Any, scan: RawScan, then: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("a bug in the capture path")
        return real(self, scan, then)

    monkeypatch.setattr(daemon.Station, "submit", submit)
    scanner = _SlowToAnswerScanner("handheld", ["LOC-A-01", EAN13, OTHER, EAN13])
    agent = await _run_slow(tmp_path, monkeypatch, scanner)
    assert scanner.answers == [True, True]
    assert agent.failed == "scan:handheld stopped unexpectedly"


class _EndsThenFailsToAnswer(_SlowToAnswerScanner):
    """Stops reading after its scans (as if closed), then its feedback raises."""

    async def _scans(self) -> AsyncIterator[RawScan]:
        for text in self.texts:
            yield RawScan(self.name, text, text.encode())

    async def acknowledge(self, ok: bool) -> None:
        await asyncio.sleep(0.02)
        raise RuntimeError("feedback exploded")


async def test_a_failure_while_the_last_scans_are_answered_is_the_reason_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Reading has ended and the agent waits for the last answers when one fails: that
    failure is what stops the agent, not a bare cancellation."""
    scanner = _EndsThenFailsToAnswer("handheld", ["LOC-A-01", EAN13])
    with caplog.at_level(logging.CRITICAL, logger="scan_agent"):
        agent = await _run_slow(tmp_path, monkeypatch, scanner)
    assert agent.failed == "scan:handheld stopped unexpectedly"
    assert any("feedback exploded" in r.getMessage() for r in caplog.records), caplog.text
