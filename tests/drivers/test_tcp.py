"""The TCP driver against a real reader simulator: a server on 127.0.0.1 that drops and returns."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from drivers.base import RawScan, Scanner, ScannerState, boottime_ns
from drivers.errors import DriverError
from drivers.tcp import TcpScanner, TcpScannerConfig
from tests.drivers.states import States

TIMEOUT = 10.0  # only to turn a hang into a failure; never a pass/fail threshold

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class FixedMountReader:
    """A fixed-mount reader: serves scans on 127.0.0.1, can drop off and come back on its port."""

    def __init__(self) -> None:
        self.port = 0
        self.connections: asyncio.Queue[Stream] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self.connections.put((reader, writer))

    async def connection(self) -> Stream:
        return await asyncio.wait_for(self.connections.get(), TIMEOUT)

    async def stop(self, *, reset: bool = False) -> None:
        """Power off: stop listening and drop every connection (with a RST if ``reset``)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            await writer.wait_closed()
        self._writers.clear()


@pytest.fixture
async def reader() -> AsyncIterator[FixedMountReader]:
    server = FixedMountReader()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def open_scanner(reader: FixedMountReader) -> AsyncIterator[Callable[..., Any]]:
    scanners: list[TcpScanner] = []

    async def make(**kwargs: Any) -> tuple[TcpScanner, States]:
        states = States()
        cfg = TcpScannerConfig(name="fixed", host="127.0.0.1", port=reader.port,
                               **kwargs)
        scanner = TcpScanner(cfg, on_state=states, backoff_start=0.05, backoff_cap=0.2)
        scanners.append(scanner)
        aiter(scanner)
        return scanner, states

    yield make
    for scanner in scanners:
        await scanner.close()


async def next_scan(scanner: TcpScanner) -> RawScan:
    return await asyncio.wait_for(anext(scanner), TIMEOUT)


def test_is_a_scanner() -> None:
    cfg = TcpScannerConfig(name="fixed", host="127.0.0.1", port=9)
    assert isinstance(TcpScanner(cfg), Scanner)


@pytest.mark.parametrize(("wire", "texts"), [
    (b"LOC-A-01\r\n]E04006381333931\r\n", ["LOC-A-01", "]E04006381333931"]),
    (b"LOC-A-01\r]E04006381333931\n", ["LOC-A-01", "]E04006381333931"]),
    (b"]d2010400638133393110LOT7\x1d21SN1\n", ["]d2010400638133393110LOT7\x1d21SN1"]),
], ids=["crlf", "cr-and-lf", "gs1-with-gs"])
async def test_line_framing(open_scanner: Callable[..., Any], reader: FixedMountReader,
                            wire: bytes, texts: list[str]) -> None:
    scanner, _ = await open_scanner()
    _, writer = await reader.connection()
    before = boottime_ns()
    writer.write(wire)
    got = [await next_scan(scanner) for _ in texts]
    assert [(s.scanner, s.text, s.error) for s in got] == [("fixed", t, None) for t in texts]
    assert all(before <= s.boot_ns <= boottime_ns() for s in got)


async def test_stx_etx_framing(open_scanner: Callable[..., Any], reader: FixedMountReader) -> None:
    scanner, _ = await open_scanner(framing="stx-etx")
    _, writer = await reader.connection()
    writer.write(b"\x02LOC-A-01\x03\r\n\x02]C1010400638133393110L\x1d21S\x03\x02NUL\x00\x03")
    got = [await next_scan(scanner) for _ in range(3)]
    assert [(s.text, s.error) for s in got] == [
        ("LOC-A-01", None),
        ("]C1010400638133393110L\x1d21S", None),
        ("NUL\\x00", "non-text bytes: control character 0x00 at byte 3"),
    ]


async def test_over_long_scan(open_scanner: Callable[..., Any], reader: FixedMountReader) -> None:
    scanner, _ = await open_scanner(max_length=8)
    _, writer = await reader.connection()
    writer.write(b"X" * 100_000 + b"\nOK\n")
    bad, good = await next_scan(scanner), await next_scan(scanner)
    assert (bad.text, bad.error) == ("X" * 8, "over-long scan: more than 8 bytes")
    assert (good.text, good.error) == ("OK", None)


async def test_a_reader_faster_than_the_station_is_slowed_down_not_dropped(
    open_scanner: Callable[..., Any], reader: FixedMountReader
) -> None:
    """Over TCP the driver stops reading while the station is behind (TCP then holds the
    reader back): what waits for the station stays within the limit, and every scan
    arrives, in order."""
    scanner, _ = await open_scanner()
    scanner._queue.limit = 5
    _, writer = await reader.connection()
    texts = [f"S{i:05d}" for i in range(3000)]
    writer.write(b"".join(t.encode() + b"\n" for t in texts))
    await writer.drain()
    async def full() -> None:
        while len(scanner._queue) < 5:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(full(), TIMEOUT)
    for _ in range(20):  # the station away a while longer: nothing taken, nothing more read
        await asyncio.sleep(0.01)
        assert len(scanner._queue) == 5
    got = [await next_scan(scanner) for _ in texts]
    assert [s.text for s in got] == texts
    assert scanner._queue.dropped == 0


async def test_close_while_the_station_is_behind_still_delivers_what_was_read(
    open_scanner: Callable[..., Any], reader: FixedMountReader
) -> None:
    scanner, _ = await open_scanner()
    scanner._queue.limit = 5
    _, writer = await reader.connection()
    texts = [f"S{i:03d}" for i in range(100)]
    writer.write(b"".join(t.encode() + b"\n" for t in texts))  # one segment, one read
    await writer.drain()

    async def full() -> None:
        while len(scanner._queue) < 5:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(full(), TIMEOUT)
    await scanner.close()
    assert [s.text async for s in scanner] == texts


async def test_trigger_is_sent_on_every_connect(
    open_scanner: Callable[..., Any], reader: FixedMountReader
) -> None:
    _, states = await open_scanner(trigger="<T>\r\n")
    stream, _ = await reader.connection()
    assert await asyncio.wait_for(stream.readexactly(5), TIMEOUT) == b"<T>\r\n"
    await reader.stop()
    await states.wait(lambda s: "lost" in s.detail)
    await reader.start()
    stream, _ = await reader.connection()
    assert await asyncio.wait_for(stream.readexactly(5), TIMEOUT) == b"<T>\r\n"


@pytest.mark.parametrize(("reset", "why"), [
    (False, "connection closed by the reader"),
    (True, "Connection reset by peer"),
], ids=["eof", "reset"])
async def test_reader_drops_and_returns_on_the_same_port(
    open_scanner: Callable[..., Any], reader: FixedMountReader, reset: bool, why: str
) -> None:
    """No scan sent after the reader's return is lost, and a cut-off scan is not glued on."""
    scanner, states = await open_scanner()
    _, writer = await reader.connection()
    writer.write(b"LOC-A-01\r\n")
    assert (await next_scan(scanner)).text == "LOC-A-01"
    assert scanner.state.connected

    writer.write(b"LOC-CUT-")
    await writer.drain()
    await reader.stop(reset=reset)
    lost = await states.wait(lambda s: not s.connected)
    assert lost.detail == f"127.0.0.1:{reader.port} lost: {why}"
    refused = await states.wait(lambda s: s.detail.startswith("cannot connect"))
    assert refused.detail == f"cannot connect to 127.0.0.1:{reader.port}: Connection refused"
    await scanner.acknowledge(True)  # a no-op, even while disconnected

    await reader.start()
    _, writer = await reader.connection()
    after = [f"AFTER-{i}" for i in range(50)]
    writer.write(b"".join(s.encode() + b"\r\n" for s in after))  # at once, on connect
    got = [await next_scan(scanner) for _ in after]
    assert [(s.text, s.error) for s in got] == [(s, None) for s in after]
    assert [s.connected for s in states.seen if s.connected] == [True, True]


async def test_close_is_idempotent_and_prompt_while_reconnecting(reader: FixedMountReader) -> None:
    await reader.stop()  # nobody listening: the driver is in its backoff loop
    states = States()
    cfg = TcpScannerConfig(name="fixed", host="127.0.0.1", port=reader.port)
    scanner = TcpScanner(cfg, on_state=states, backoff_start=5.0, backoff_cap=5.0)
    pending = asyncio.ensure_future(anext(scanner))
    await states.wait(lambda s: s.detail.startswith("cannot connect"))
    await asyncio.wait_for(asyncio.gather(scanner.close(), scanner.close()), TIMEOUT)
    await scanner.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, TIMEOUT)
    assert scanner.state == ScannerState("fixed", False, "closed")


async def test_close_closes_the_connection(
    open_scanner: Callable[..., Any], reader: FixedMountReader
) -> None:
    scanner, _ = await open_scanner()
    stream, _ = await reader.connection()
    async with scanner:
        pass
    assert await asyncio.wait_for(stream.read(), TIMEOUT) == b""  # the reader sees EOF
    assert [s async for s in scanner] == []


def test_unencodable_trigger_fails_at_construction() -> None:
    cfg = TcpScannerConfig(name="fixed", host="h", port=1, trigger="§",
                           encoding="ascii")
    with pytest.raises(DriverError, match="scanner 'fixed': trigger '§' cannot be"):
        TcpScanner(cfg)
