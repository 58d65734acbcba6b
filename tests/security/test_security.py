"""Who may post, what is kept of a token, and hostile clients (issue 8, "Security").

Tokens: a station posts with its own bearer token only; none, a wrong one, another station's
(403) and a revoked one replayed (401) are refused, while the agent keeps its queue and logs
none of them. The ledger keeps only SHA-256 hashes. Bodies over the limit are refused with
413 before they are read whole; clients that dribble bytes do not hold the others up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.capture import Station
from agent.config import parse_config
from agent.journal import Journal, JournalWriter
from agent.sync import SyncLoop
from drivers.base import RawScan
from ledger.server import LedgerServer
from tests.ledger.factory import batch, receipt
from tests.security.conftest import TIMEOUT

LISTENING = re.compile(r"scan-ledger listening on (http://\S+)")


class LedgerProcess:
    """``scan-ledger serve`` as a real process, its standard error kept."""

    def __init__(self, db: Path, tmp: Path) -> None:
        self.db = db
        self.err_path = tmp / "ledger.stderr"
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve", "--db", str(db), "--port", "0",
             "--log-level", "debug"], stdout=subprocess.PIPE, stderr=self._err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = LISTENING.search(line)
        assert m, f"no listening line: {line!r}"
        self.url = m.group(1)

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "ledger", "station", *args, "--db",
                              str(self.db)], capture_output=True, text=True, timeout=60,
                             check=True)
        return out.stdout

    def add(self, name: str) -> str:
        return self.cli("add", name, "--site", "WH1").strip().splitlines()[-1]

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.err_path.read_text(errors="replace")


@pytest.fixture
def ledger_process(tmp_path: Path) -> Iterator[LedgerProcess]:
    lp = LedgerProcess(tmp_path / "ledger.db", tmp_path)
    try:
        yield lp
    finally:
        if not lp._err.closed:
            lp.stop()


async def _until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_tokens_own_station_only_never_logged_only_hashes_stored(
        ledger_process: LedgerProcess, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A station syncs with its token; a revoked token replayed (401), another station's
    token (403) and a made-up one (401) are refused while the queue is kept; the rotated
    token drains it. No token is in the agent's log records, the ledger's standard error,
    any HTTP answer, or the ledger's database files, which hold the hash instead."""
    caplog.set_level(logging.DEBUG)
    lp = ledger_process
    revoked = lp.add("dock-1")
    other = lp.add("dock-2")
    made_up = "st_" + "A" * 40
    token_file = tmp_path / "dock-1.token"
    token_file.write_text(revoked + "\n")
    token_file.chmod(0o600)
    cfg = parse_config({
        "station": "dock-1", "site": "WH1", "location": "DOCK-1",
        "database": str(tmp_path / "journal.db"),
        "ledger": {"url": lp.url, "token_file": str(token_file), "timeout": 5.0,
                   "max_backoff": 0.2},
        "scanners": [{"name": "h", "driver": "serial", "port": "/dev/null", "debounce_ms": 0}],
    }, "dock-1.toml")
    writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
    station = Station(cfg, writer)
    await station.start()
    sync = SyncLoop(cfg, writer, backoff_base=0.02)
    station.listeners.append(sync.on_capture)
    task = asyncio.create_task(sync.run())
    answers: list[httpx.Response] = []

    async def pending() -> int:
        counts = await writer.call(lambda j: j.counts())
        return int(counts.get("pending", 0))

    async def capture(n: int) -> None:
        for _ in range(n):
            o = await station.handle(RawScan("h", "4006381333931", b"4006381333931"))
            assert o.status == "accepted"

    async def refused_with(status: int) -> None:
        await capture(2)  # wakes the loop, which then meets the refusal
        await _until(lambda: _true(sync.stats.auth_failed
                                   and f"HTTP {status}" in (sync.stats.last_error or "")),
                     f"the ledger's {status}")
        assert await pending() >= 2, "the queue is kept while the token is refused"

    try:
        await capture(3)
        await _until(lambda: _eq(pending(), 0), "the first sync")
        # revoke and re-issue: the old token, replayed, is refused
        assert lp.cli("revoke", "dock-1").strip() == "station dock-1 revoked"
        current = lp.add("dock-1")
        await refused_with(401)
        token_file.write_text(other + "\n")  # another station's token: 403
        await refused_with(403)
        token_file.write_text(made_up + "\n")
        await refused_with(401)
        token_file.write_text(current + "\n")
        await _until(lambda: _eq(pending(), 0), "the rotated token to drain the queue")
        assert not sync.stats.auth_failed
        async with httpx.AsyncClient(base_url=lp.url, timeout=10) as http:
            body = batch([], station="dock-1")
            for token, status in ((None, 401), (made_up, 401), (revoked, 401), (other, 403),
                                  (current, 200)):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                r = await http.post("/v1/events", json=body, headers=headers)
                assert r.status_code == status, r.text
                answers.append(r)
            events = (await http.get("/v1/events?station=dock-1&limit=100")).json()["events"]
        assert len(events) == 3 + 2 * 3, "every scan reached the ledger once"
    finally:
        await sync.close()
        await asyncio.wait_for(task, TIMEOUT)
        await writer.close()
        stderr = lp.stop()

    tokens = {"revoked": revoked, "other": other, "made-up": made_up, "current": current}
    logs = "\n".join(logging.Formatter("%(name)s %(message)s").format(r)
                     for r in caplog.records)
    assert "refused this station's token (HTTP 403)" in logs  # the failures were logged
    database = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    dump = "\n".join(sqlite3.connect(lp.db).iterdump())
    for what, token in tokens.items():
        assert token not in logs, f"the {what} token is in the agent's log"
        assert token not in stderr, f"the {what} token is on the ledger's standard error"
        assert all(token not in r.text for r in answers), f"an answer echoes the {what} token"
        assert token.encode() not in database, f"the {what} token is in the ledger's files"
        assert token not in dump
    for token in (current, other):
        assert hashlib.sha256(token.encode()).hexdigest() in dump, "only the hash is kept"


async def _true(v: bool) -> bool:
    return v


async def _eq(v: Any, want: int) -> bool:
    return bool(await v == want)


# -- oversized bodies, over raw sockets -----------------------------------------------------------

LIMIT = 65536


@pytest.fixture
def small_ledger(tmp_path: Path) -> Iterator[tuple[LedgerServer, str]]:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(f"max_body_bytes = {LIMIT}\n")
    with LedgerServer(tmp_path / "ledger.db", cfg) as srv:
        yield srv, srv.add_station("dock-1", "WH1")


def _connect(srv: LedgerServer) -> socket.socket:
    host, port = srv.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    return s


def _head(token: str, **headers: str) -> bytes:
    lines = ["POST /v1/events HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}",
             "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(s: socket.socket) -> tuple[int, bytes]:
    """The status and body of one response (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)content-length: *(\d+)", head)
    want = int(m.group(1)) if m else 0
    while len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def _still_serving(srv: LedgerServer, token: str) -> None:
    r = httpx.post(srv.url + "/v1/events", json=batch([receipt(1, "OK-1", 0)]),
                   headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "accepted", r.text


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_sent(
        small_ledger: tuple[LedgerServer, str]) -> None:
    srv, token = small_ledger
    with _connect(srv) as s:
        s.sendall(_head(token, **{"Content-Length": str(100 * LIMIT)}))
        status, body = _read_response(s)  # no byte of the body was ever sent
    assert status == 413
    assert json.loads(body) == {"error": f"request body larger than {LIMIT} bytes"}
    _still_serving(srv, token)


def test_a_chunked_body_without_end_is_cut_off_with_413(
        small_ledger: tuple[LedgerServer, str]) -> None:
    """No Content-Length to trust: the server counts as it reads and answers 413 while the
    client is still sending (the body here would never end)."""
    srv, token = small_ledger
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    sent = 0
    with _connect(srv) as s:
        s.sendall(_head(token, **{"Transfer-Encoding": "chunked"}) + b"4000\r\n[" +
                  b" " * 0x3fff + b"\r\n")
        s.setblocking(False)
        deadline = time.monotonic() + TIMEOUT
        answered = False
        while not answered:
            assert time.monotonic() < deadline, f"no answer after {sent} bytes"
            with contextlib.suppress(BlockingIOError):
                answered = bool(s.recv(1, socket.MSG_PEEK))
            if not answered:
                try:
                    sent += s.send(chunk)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    time.sleep(0.005)
        s.setblocking(True)
        status, body = _read_response(s)
    assert status == 413
    assert json.loads(body) == {"error": f"request body larger than {LIMIT} bytes"}
    _still_serving(srv, token)


@pytest.mark.parametrize("length, status", [
    ("10", 400),  # shorter than the body: what is read is a truncated batch
    ("-1", 400), ("1e3", 400), ("9" * 5000, 400), ("0x10", 400),
], ids=["short", "negative", "float", "5000-digits", "hex"])
def test_a_content_length_lie_is_4xx(small_ledger: tuple[LedgerServer, str], length: str,
                                     status: int) -> None:
    srv, token = small_ledger
    body = json.dumps(batch([receipt(1, "CL-1", 0)])).encode()
    with _connect(srv) as s:
        s.sendall(_head(token, **{"Content-Length": length}) + body)
        got, _ = _read_response(s)
    assert got == status
    _still_serving(srv, token)


# -- slow clients ---------------------------------------------------------------------------------


def test_clients_dribbling_a_byte_every_100_ms_do_not_hold_up_the_others(
        small_ledger: tuple[LedgerServer, str]) -> None:
    """Ten clients send a request one byte per 100 ms; meanwhile others are served, and the
    slow requests, once complete, are answered too."""
    srv, token = small_ledger
    request = (_head(token, **{"Content-Length": "0"}) .replace(b"Content-Length: 0",
               b"Content-Length: %d" % len(b := json.dumps(batch([])).encode())) + b)
    stop = threading.Event()
    progress = [0] * 10
    statuses: list[int] = []

    def dribble(i: int) -> None:
        with _connect(srv) as s:
            pos = 0
            while pos < len(request) - 1 and not stop.is_set():
                s.sendall(request[pos:pos + 1])
                pos += 1
                progress[i] = pos
                time.sleep(0.1)
            s.sendall(request[pos:])  # then the rest at once
            statuses.append(_read_response(s)[0])

    threads = [threading.Thread(target=dribble, args=(i,), daemon=True) for i in range(10)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
            for i in range(20):
                assert http.get("/v1/health").status_code == 200
                r = http.post("/v1/events", json=batch([receipt(1, "FAST", i)]),
                              headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200
        assert all(0 < p < len(request) - 1 for p in progress), \
            "the slow clients were still mid-request while the others were served"
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert statuses == [200] * 10


@pytest.fixture
def impatient_ledger(tmp_path: Path) -> Iterator[tuple[LedgerServer, str]]:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text("body_timeout_s = 0.5\nhead_timeout_s = 0.5\n")
    with LedgerServer(tmp_path / "ledger.db", cfg) as srv:
        yield srv, srv.add_station("dock-1", "WH1")


def test_a_client_that_stalls_mid_body_gets_408_and_loses_its_connection(
        impatient_ledger: tuple[LedgerServer, str]) -> None:
    """A dribbling client must not hold a connection (and its buffer) for ever."""
    srv, token = impatient_ledger
    body = json.dumps(batch([receipt(1, "SLOW-1", 0)])).encode()
    with _connect(srv) as s:
        s.sendall(_head(token, **{"Content-Length": str(len(body))}) + body[:20])
        started = time.monotonic()
        status, answer = _read_response(s)
        waited = time.monotonic() - started
        assert s.recv(1) == b"", "the server closes the connection after a 408"
    assert status == 408
    assert json.loads(answer) == {"error": "request body not complete within 0.5 s"}
    assert waited < TIMEOUT
    _still_serving(srv, token)


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``s`` (the client sending nothing more) within ``seconds``."""
    s.settimeout(seconds)
    try:
        return s.recv(65536) == b""
    except TimeoutError:
        return False


def test_connections_that_say_nothing_are_closed_and_do_not_lock_stations_out(
        impatient_ledger: tuple[LedgerServer, str]) -> None:
    """uvicorn itself would keep a connection that never sends a byte open for ever: enough
    of them exhaust the ledger's file descriptors. The head deadline closes them."""
    srv, token = impatient_ledger
    silent = [_connect(srv) for _ in range(20)]
    try:
        _still_serving(srv, token)  # while they are open
        assert all(_closed_within(s, TIMEOUT) for s in silent)
    finally:
        for s in silent:
            s.close()
    _still_serving(srv, token)


def test_a_client_dribbling_its_request_head_gets_408_and_loses_its_connection(
        impatient_ledger: tuple[LedgerServer, str]) -> None:
    """Every byte restarts uvicorn's keep-alive timer, so a head sent a byte at a time used to
    hold its connection for as long as the client liked."""
    srv, token = impatient_ledger
    head = _head(token, **{"Content-Length": "2"})
    answer = b""
    with _connect(srv) as s:
        s.settimeout(0.05)
        started = time.monotonic()
        for i in range(len(head) - 1):  # never the whole head
            try:
                s.sendall(head[i:i + 1])
            except OSError:  # closed by the server while we were still sending
                break
            try:
                answer += s.recv(65536)
                break
            except TimeoutError:
                continue
        waited = time.monotonic() - started
        s.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b'{"error":"request head not complete within 0.5 s"}')
    assert b"connection: close" in answer
    assert waited < len(head) * 0.05 / 2, "closed long before the head could have been sent"
    _still_serving(srv, token)


def test_a_keep_alive_connection_serves_request_after_request_then_closes_when_idle(
        impatient_ledger: tuple[LedgerServer, str]) -> None:
    """The deadline runs only while a connection waits for a head: requests on one
    connection, each within the deadline of the answer before, are all served; after the
    last one, an idle connection is closed by the deadline (uvicorn's own keep-alive timer
    would wait 5 s)."""
    srv, token = impatient_ledger
    body = json.dumps(batch([])).encode()
    with _connect(srv) as s:
        for _ in range(5):
            s.sendall(_head(token, **{"Content-Length": str(len(body))}) + body)
            assert _read_response(s)[0] == 200
            time.sleep(0.3)  # idle, within the 0.5 s deadline
        started = time.monotonic()
        assert _closed_within(s, TIMEOUT)
        assert time.monotonic() - started < 4.5, "closed by the head deadline, not keep-alive"


def test_a_client_gone_mid_body_is_not_an_error_in_the_log(
        small_ledger: tuple[LedgerServer, str], caplog: pytest.LogCaptureFixture) -> None:
    """A station killed while posting is routine: no traceback, nothing kept, still serving."""
    srv, token = small_ledger
    body = json.dumps(batch([receipt(1, "GONE-1", 0)])).encode()
    with caplog.at_level(logging.INFO, logger="ledger"):
        with _connect(srv) as s:
            s.sendall(_head(token, **{"Content-Length": str(len(body))}) + body[:20])
            time.sleep(0.2)
        deadline = time.monotonic() + TIMEOUT
        while not any("went away" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    _still_serving(srv, token)
