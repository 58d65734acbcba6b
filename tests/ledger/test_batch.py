"""Batches read in reader processes (ledger/batch.py): the same answers as reading them in
the ledger's own process, whatever a batch holds, and a reader that dies costs nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.batch import Batch, Rejected, read_batch
from ledger.config import parse_config
from ledger.errors import ConfigError
from ledger.server import LedgerServer
from tests.ledger.factory import batch, pick, receipt


def _body(events: list[Any], station: str = "dock-1", **kw: Any) -> bytes:
    return json.dumps(batch(events, station=station, **kw)).encode()


def _mixed() -> list[Any]:
    good = receipt(5, "A-01", 1)
    return [
        good,
        pick(2, "A-01", 2),
        {**receipt(1, "A-02", 3), "qty": 0},             # not a valid receipt
        {**pick(1, "A-01", 4), "site": "WH2"},          # another site's event
        {**pick(1, "A-01", 5), "event_id": "nope"},     # no usable id
        "not an object",
        {**good, "qty": 6},                             # same id, other content
        pick(1, "A-03", 6, voids=None),
    ]


def test_read_batch_checks_every_event_as_the_service_does() -> None:
    events = _mixed()
    assumed = read_batch(_body(events))
    told = read_batch(_body(events), "WH1")
    assert isinstance(assumed, Batch) and isinstance(told, Batch)
    assert assumed.site == told.site == "WH1"
    assert [type(e) for e in assumed.events] == [type(e) for e in told.events]
    reasons = [e.reason for e in told.events if isinstance(e, Rejected)]
    assert any("site" in r for r in reasons) and any("event_id" in r for r in reasons)
    assert Rejected(None, "event: expected a JSON object, got a string ('not an object')") \
        in told.events


@pytest.mark.parametrize(("body", "reason"), [
    (b"{", "malformed JSON"),
    (b"[]", "body: expected a JSON object"),
    (b'{"station": "dock-1"}', "events: required"),
    (b'{"station": "dock-1", "events": [], "watermark": "soon"}', "watermark: "),
    (b'{"station": "dock-1", "events": ["\\ud800"]}', "lone UTF-16 surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
])
def test_read_batch_says_why_a_body_is_not_a_batch(body: bytes, reason: str) -> None:
    out = read_batch(body)
    assert isinstance(out, str) and reason in out


def test_too_many_events_are_counted_not_checked() -> None:
    out = read_batch(_body([receipt(1, "A-01", 1)] * 3), max_events=2)
    assert isinstance(out, Batch) and out.count == 3 and out.events == []


def _answers(url: str, token: str, bodies: list[bytes]) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for body in bodies:
            r = http.post("/v1/events", content=body,
                          headers={"Authorization": f"Bearer {token}"})
            answer = r.json()
            answer.pop("server_time", None)
            answer.pop("received_at", None)
            out.append((r.status_code, answer))
    return out


def test_a_reader_process_answers_as_the_ledger_itself(tmp_path: Path) -> None:
    """Every kind of batch, posted to a ledger that reads batches in a reader process and to
    one that reads them itself: the same statuses, results and reasons."""
    first_elsewhere = [{**pick(1, "A-01", 1), "site": "WH2"}, receipt(2, "A-01", 2)]
    mixed = _mixed()
    bodies = [
        _body(mixed),
        _body(mixed),                                  # the same again: duplicates
        _body(first_elsewhere),                        # the reader assumed the wrong site
        _body([receipt(1, "A-05", 7)], station="dock-2"),  # another station's name: 403
        _body([receipt(1, "A-05", 7)] * 11),           # over max_batch_events: 413
        b'{"station": "dock-1", "events": [',          # 400
        _body([pick(9, "A-07", 8)], watermark="2026-11-22T10:30:00.000000Z"),
    ]
    answers = []
    for readers in (1, 0):
        cfg = parse_config({"reader_processes": readers, "max_batch_events": 10})
        with LedgerServer(tmp_path / f"readers-{readers}.db", config=cfg) as srv:
            token = srv.add_station("dock-1", "WH1")
            assert srv.service is not None
            answers.append(_answers(srv.url, token, bodies))
            used = srv.service.reader._pool is not None
            assert used == (readers == 1)
    assert answers[0] == answers[1]
    assert [status for status, _ in answers[0]] == [200, 200, 200, 403, 413, 400, 200]


def test_a_reader_process_that_dies_costs_nothing(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config({"reader_processes": 1})
    with LedgerServer(tmp_path / "ledger.db", config=cfg) as srv:
        assert srv.service is not None
        token = srv.add_station("dock-1", "WH1")
        first = [receipt(3, "A-01", 1), pick(1, "A-01", 2)]
        # (a station's first batch is read by the ledger itself, the next in the reader)
        assert [s for s, _ in _answers(srv.url, token, [_body(first[:1]),
                                                        _body(first[1:])])] == [200, 200]
        pool = srv.service.reader._pool
        assert pool is not None
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="ledger"):
            later = [pick(1, "A-01", 3), receipt(1, "A-02", 4)]
            ((status, answer),) = _answers(srv.url, token, [_body(later)])
        assert status == 200
        assert [r["status"] for r in answer["results"]] == ["accepted", "accepted"]
        assert "reading batches in the ledger's own process" in caplog.text
        with httpx.Client(base_url=srv.url) as http:
            stored = http.get("/v1/events", params={"limit": 10}).json()["events"]
        assert {e["event_id"] for e in stored} == {e["event_id"] for e in first + later}


@pytest.mark.parametrize("value", [-1, "two", 1.5, 65])
def test_reader_processes_must_be_a_small_count(value: Any) -> None:
    with pytest.raises(ConfigError, match="reader_processes"):
        parse_config({"reader_processes": value})


def test_only_a_known_token_has_its_batch_read_in_a_reader(tmp_path: Path) -> None:
    """A stranger's body (any bearer token) is not read before its 401; a station's first
    batch is read by the ledger itself, the next ones in the reader."""
    cfg = parse_config({"reader_processes": 1})
    with LedgerServer(tmp_path / "ledger.db", config=cfg) as srv:
        assert srv.service is not None
        token = srv.add_station("dock-1", "WH1")
        ((status, _),) = _answers(srv.url, "nonsense", [_body([receipt(1, "A-01", 1)])])
        assert status == 401 and srv.service.reader._pool is None
        assert [s for s, _ in _answers(srv.url, token, [_body([receipt(1, "A-01", 1)])])] \
            == [200]
        assert srv.service.reader._pool is None
        assert [s for s, _ in _answers(srv.url, token, [_body([receipt(1, "A-01", 2)])])] \
            == [200]
        assert srv.service.reader._pool is not None
        srv.revoke_station("dock-1")
        assert not srv.service.known_token(token)


def test_a_reader_that_hangs_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("ledger.batch.READ_TIMEOUT_S", 1.0)
    cfg = parse_config({"reader_processes": 1})
    with LedgerServer(tmp_path / "ledger.db", config=cfg) as srv:
        assert srv.service is not None
        token = srv.add_station("dock-1", "WH1")
        _answers(srv.url, token, [_body([receipt(1, "A-01", 1)]), _body([pick(1, "A-01", 2)])])
        pool = srv.service.reader._pool
        assert pool is not None
        (pid,) = list(pool._processes)
        os.kill(pid, signal.SIGSTOP)
        try:
            with caplog.at_level(logging.WARNING, logger="ledger"):
                ((status, answer),) = _answers(srv.url, token, [_body([receipt(2, "A-01", 3)])])
            assert status == 200 and answer["results"][0]["status"] == "accepted"
            assert "TimeoutError" in caplog.text
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.add(int(entry))
    return out


def test_reader_processes_end_with_a_server_killed_outright(tmp_path: Path) -> None:
    """``scan-ledger serve`` SIGKILLed (the OOM killer, a crash): its reader process does not
    linger as an orphan (it ignores SIGTERM, so a supervisor could not stop it either)."""
    db = tmp_path / "ledger.db"
    ledger = [sys.executable, "-m", "ledger"]
    token = subprocess.run([*ledger, "station", "add", "dock-1", "--site", "WH1", "--db",
                            str(db)], capture_output=True, text=True, check=True
                           ).stdout.splitlines()[-1]
    proc = subprocess.Popen([*ledger, "serve", "--db", str(db), "--port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        answers = _answers(url, token, [_body([receipt(1, "A-01", 1)]),
                                        _body([pick(1, "A-01", 2)])])
        assert [s for s, _ in answers] == [200, 200]
        readers = _children(proc.pid)
        assert readers, "no reader process"
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)
              for pid in readers):
        assert time.monotonic() < deadline, f"reader processes {readers} outlived the server"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def test_no_reader_where_processes_cannot_be_made(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A sandbox without what a process pool needs (its locks live in /dev/shm): the ledger
    says so once and reads every batch itself."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", "/dev/shm")

    monkeypatch.setattr("ledger.batch.ProcessPoolExecutor", refuse)
    cfg = parse_config({"reader_processes": 1})
    with caplog.at_level(logging.WARNING, logger="ledger"), \
            LedgerServer(tmp_path / "ledger.db", config=cfg) as srv:
        token = srv.add_station("dock-1", "WH1")
        answers = _answers(srv.url, token, [_body([receipt(2, "A-01", 1)]),
                                            _body([pick(1, "A-01", 2)])])
        assert [s for s, _ in answers] == [200, 200]
    assert caplog.text.count("no batch reader processes (PermissionError") == 1
