"""The agent's HTTPS client refuses a ledger whose certificate it cannot verify.

A self-signed certificate for 127.0.0.1 fronts the real ledger (a TLS terminator on
127.0.0.1), behind a recording TCP relay that keeps every byte the agent sends. With
``verify`` on and no ``ca_bundle`` the SyncLoop reports a verification failure, keeps its
queue, and the token never crosses the wire (not even encrypted: the handshake fails first).
With ``ca_bundle`` set to that certificate it syncs, and the token is still never in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.capture import Station
from agent.config import parse_config
from agent.journal import Journal, JournalWriter
from agent.sync import SyncLoop
from drivers.base import RawScan
from ledger.server import LedgerServer
from tests.security.conftest import TIMEOUT


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (the cryptography package is not a dependency,
    so the openssl command makes them)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@dataclass
class Front:
    """TLS terminator -> ledger, and a relay in front of it that records the raw bytes."""

    url: str
    seen: bytearray = field(default_factory=bytearray)
    handshakes_ok: int = 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                record: bytearray | None = None) -> None:
    try:
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tls_front(ledger_url: str, cert: Path, key: Path) -> AsyncIterator[Front]:
    host, port = ledger_url.removeprefix("http://").split(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tasks: set[asyncio.Task[Any]] = set()
    front = Front("")

    async def terminate(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        front.handshakes_ok += 1
        try:
            lr, lw = await asyncio.open_connection(host, int(port))
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, lw), _pipe(lr, w))

    async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection("127.0.0.1", tls_port)
        await asyncio.gather(_pipe(r, tw, front.seen), _pipe(tr, w))

    def spawn(fn: Any) -> Any:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            t = asyncio.current_task()
            assert t is not None
            tasks.add(t)
            try:
                await fn(r, w)
            finally:
                tasks.discard(t)
        return handler

    loop = asyncio.get_running_loop()
    quiet = loop.get_exception_handler()
    # a refused handshake is the point of the test, not an error of the server
    loop.set_exception_handler(lambda lp, ctx: None)
    tls = await asyncio.start_server(spawn(terminate), "127.0.0.1", 0, ssl=ctx)
    tls_port = tls.sockets[0].getsockname()[1]
    raw = await asyncio.start_server(spawn(relay), "127.0.0.1", 0)
    front.url = f"https://127.0.0.1:{raw.sockets[0].getsockname()[1]}"
    try:
        yield front
    finally:
        for srv in (raw, tls):
            srv.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for srv in (raw, tls):
            await srv.wait_closed()
        loop.set_exception_handler(quiet)


@pytest.mark.parametrize("trust", [False, True], ids=["unknown-cert", "ca_bundle"])
async def test_tls_verification(tmp_path: Path, trust: bool,
                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = self_signed(tmp_path)
    with LedgerServer(tmp_path / "ledger.db") as srv:
        token = srv.add_station("dock-1", "WH1")
        token_file = tmp_path / "dock-1.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        async with tls_front(srv.url, cert, key) as front:
            ledger: dict[str, Any] = {"url": front.url, "token_file": str(token_file),
                                      "timeout": 5.0, "max_backoff": 0.2}
            if trust:
                ledger["ca_bundle"] = str(cert)
            cfg = parse_config({
                "station": "dock-1", "site": "WH1", "location": "DOCK-1",
                "database": str(tmp_path / "journal.db"), "ledger": ledger,
                "scanners": [{"name": "h", "driver": "serial", "port": "/dev/null"}],
            }, "dock-1.toml")
            writer = JournalWriter(Journal(cfg.database, cfg.station, cfg.site))
            station = Station(cfg, writer)
            await station.start()
            sync = SyncLoop(cfg, writer, backoff_base=0.02)
            station.listeners.append(sync.on_capture)
            task = asyncio.create_task(sync.run())
            try:
                o = await station.handle(RawScan("h", "4006381333931", b"4006381333931"))
                assert o.status == "accepted"
                deadline = time.monotonic() + TIMEOUT
                while True:
                    counts = await writer.call(lambda j: j.counts())
                    if trust and counts.get("pending", 0) == 0:
                        break
                    if not trust and "CERTIFICATE_VERIFY_FAILED" in (
                            sync.stats.last_error or ""):
                        break
                    assert time.monotonic() < deadline, sync.stats.last_error
                    await asyncio.sleep(0.02)
                if not trust:
                    await asyncio.sleep(0.5)  # more retries, all refused
                    counts = await writer.call(lambda j: j.counts())
                    assert counts.get("pending") == 1, "the movement is kept queued"
                    assert "certificate verify failed" in (sync.stats.last_error or "")
            finally:
                await sync.close()
                await asyncio.wait_for(task, TIMEOUT)
                await writer.close()
            seen = bytes(front.seen)
        assert srv.service is not None
        stored = srv.call(srv.service.events, "dock-1", 10).body["events"]
    assert seen, "the agent did reach the relay"
    assert seen.startswith(b"\x16\x03"), "a TLS handshake, not plain HTTP"
    assert token.encode() not in seen and b"Bearer" not in seen and b"POST" not in seen
    assert token not in caplog.text
    if trust:
        assert [e["item"] for e in stored] == ["04006381333931"]
    else:
        assert stored == [], "nothing reached the ledger"
        assert front.handshakes_ok == 0, "no TLS session was ever established"
