"""Prometheus text output, the atomic textfile and the local /metrics endpoint."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest

from agent.errors import AgentError
from agent.metrics import (
    CONTENT_TYPE,
    MetricsSnapshot,
    parse_listen,
    render_prometheus,
    serve_metrics,
    textfile_task,
    write_textfile,
)

SAMPLE = MetricsSnapshot(
    station="dock-3",
    site="WH1",
    scans_total={"accepted": 120, "rejected": 3},
    movements_total={"receipt": 100, "pick": 17},
    pending=4,
    rejected=1,
    oldest_pending_age_seconds=12.5,
    last_sync_success_timestamp=1763806530.25,
    clock_offset_seconds=-0.0375,
    clock_basis="ntp",
    scanner_connected={"handheld": True, "fixed\"mount\\1\n": False},
    start_time=1763800000.0,
)

EXPECTED = r"""# HELP scan_agent_up 1 while the scan agent runs.
# TYPE scan_agent_up gauge
scan_agent_up{site="WH1",station="dock-3"} 1
# HELP scan_agent_start_time_seconds When the agent started, in Unix seconds.
# TYPE scan_agent_start_time_seconds gauge
scan_agent_start_time_seconds{site="WH1",station="dock-3"} 1763800000.0
# HELP scan_agent_scans_total Scans read, by outcome.
# TYPE scan_agent_scans_total counter
scan_agent_scans_total{outcome="accepted",site="WH1",station="dock-3"} 120
scan_agent_scans_total{outcome="rejected",site="WH1",station="dock-3"} 3
# HELP scan_agent_movements_total Movements committed to the journal, by type.
# TYPE scan_agent_movements_total counter
scan_agent_movements_total{site="WH1",station="dock-3",type="pick"} 17
scan_agent_movements_total{site="WH1",station="dock-3",type="receipt"} 100
# HELP scan_agent_pending_events Events in the journal not yet accepted by the ledger.
# TYPE scan_agent_pending_events gauge
scan_agent_pending_events{site="WH1",station="dock-3"} 4
# HELP scan_agent_rejected_events Events the ledger rejected (quarantined, kept).
# TYPE scan_agent_rejected_events gauge
scan_agent_rejected_events{site="WH1",station="dock-3"} 1
# HELP scan_agent_oldest_pending_age_seconds Age of the oldest unsynced event (0 when none).
# TYPE scan_agent_oldest_pending_age_seconds gauge
scan_agent_oldest_pending_age_seconds{site="WH1",station="dock-3"} 12.5
# HELP scan_agent_last_sync_success_timestamp_seconds Last successful sync, Unix time (0 = never).
# TYPE scan_agent_last_sync_success_timestamp_seconds gauge
scan_agent_last_sync_success_timestamp_seconds{site="WH1",station="dock-3"} 1763806530.25
# HELP scan_agent_clock_offset_seconds Ledger time minus local time (absent until known).
# TYPE scan_agent_clock_offset_seconds gauge
scan_agent_clock_offset_seconds{site="WH1",station="dock-3"} -0.0375
# HELP scan_agent_clock_basis What the event times are based on (1 for the current basis).
# TYPE scan_agent_clock_basis gauge
scan_agent_clock_basis{basis="ntp",site="WH1",station="dock-3"} 1
# HELP scan_agent_scanner_connected 1 when the scanner is open, 0 while it is missing.
# TYPE scan_agent_scanner_connected gauge
scan_agent_scanner_connected{scanner="fixed\"mount\\1\n",site="WH1",station="dock-3"} 0
scan_agent_scanner_connected{scanner="handheld",site="WH1",station="dock-3"} 1
"""


# A small parser for the text format 0.0.4, strict enough to catch malformed output.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL},?)*)\}})? (\S+)$")
_META = re.compile(rf"^# (HELP|TYPE) ({_NAME}) (.*)$")

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """Samples by (name, labels) and the TYPE of each family; raises on any malformed line."""
    assert text.endswith("\n")
    samples: Series = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            m = _META.match(line)
            assert m, f"bad comment line: {line!r}"
            kind, name, rest = m.groups()
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "untyped", "histogram", "summary")
                assert name not in types, f"second TYPE for {name}"
                types[name] = rest
            else:
                helped.add(name)
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name, label_text, value = m.group(1), m.group(2) or "", m.group(m.lastindex or 0)
        labels = frozenset(
            (k, v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
            for k, v in re.findall(_LABEL, label_text)
        )
        assert name in types, f"sample before its TYPE: {name}"
        assert (name, labels) not in samples, f"duplicate series {name}{set(labels)}"
        samples[(name, labels)] = float(value)
    assert helped == set(types)
    return samples, types


def series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset({"station": "dock-3", "site": "WH1", **labels}.items())


def test_render_exact() -> None:
    assert render_prometheus(SAMPLE) == EXPECTED


def test_render_parses_back() -> None:
    samples, types = parse_exposition(render_prometheus(SAMPLE))
    assert types["scan_agent_scans_total"] == "counter"
    assert all(name.startswith("scan_agent_") for name in types)
    assert samples[series("scan_agent_pending_events")] == 4
    assert samples[series("scan_agent_clock_offset_seconds")] == -0.0375
    assert samples[series("scan_agent_scanner_connected", scanner='fixed"mount\\1\n')] == 0
    assert samples[series("scan_agent_movements_total", type="receipt")] == 100


def test_render_fresh_station() -> None:
    """Unknown values: never synced is 0, an unknown clock offset is left out (not 0)."""
    text = render_prometheus(MetricsSnapshot(station="dock-9", site="WH2", start_time=5.0))
    samples, _ = parse_exposition(text)
    labels = frozenset({"station": "dock-9", "site": "WH2"}.items())
    assert samples[("scan_agent_last_sync_success_timestamp_seconds", labels)] == 0
    assert samples[("scan_agent_oldest_pending_age_seconds", labels)] == 0
    assert not any(name == "scan_agent_clock_offset_seconds" for name, _ in samples)
    assert "# TYPE scan_agent_clock_offset_seconds gauge\n" in text


def test_write_textfile_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "dock-3.prom"
    write_textfile(target, "old 1\n")
    with target.open() as reader:  # a collector reading during the update
        first_inode = os.fstat(reader.fileno()).st_ino
        write_textfile(target, EXPECTED)
        assert reader.read() == "old 1\n"  # still the complete old file, never a mix
    assert target.read_text() == EXPECTED
    assert target.stat().st_ino != first_inode  # renamed over, not rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dock-3.prom"]  # no temp left


def test_write_textfile_error(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "dock-3.prom"
    with pytest.raises(AgentError, match=r"^cannot write metrics textfile .*dock-3\.prom: "):
        write_textfile(target, "x 1\n")


async def test_textfile_task_writes_until_stopped(tmp_path: Path) -> None:
    target = tmp_path / "dock-3.prom"
    pending = [0]

    def snapshot() -> MetricsSnapshot:
        pending[0] += 1
        return MetricsSnapshot(station="dock-3", site="WH1", pending=pending[0])

    stop = asyncio.Event()
    task = asyncio.create_task(textfile_task(target, 0.05, snapshot, stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    samples, _ = parse_exposition(target.read_text())
    assert samples[series("scan_agent_pending_events")] == pending[0] >= 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9105", ("127.0.0.1", 9105)), ("[::1]:9105", ("::1", 9105)),
     ("localhost:0", ("localhost", 0))],
    ids=["ipv4", "ipv6", "name"],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9105", ":9105", "host:", "host:99999", "host:x"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_listen(value)


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    return status, headers, body


async def test_endpoint_serves_metrics() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: SAMPLE) as server:
        assert server.port > 0
        status, headers, body = await http(
            server.port, b"GET /metrics HTTP/1.1\r\nHost: pi\r\nAccept: */*\r\n\r\n")
        assert status == 200
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        assert body.decode() == EXPECTED

        status, headers, body = await http(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) == len(EXPECTED)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
    ids=["root", "other-path", "post", "garbage", "oversized"],
)
async def test_endpoint_refuses(request_bytes: bytes, status: int) -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: SAMPLE) as server:
        got, _, _ = await http(server.port, request_bytes)
    assert got == status


async def test_endpoint_survives_a_silent_client() -> None:
    """A client that connects and sends nothing must not stop others being served."""
    async with await serve_metrics("127.0.0.1", 0, lambda: SAMPLE) as server:
        _, idle = await asyncio.open_connection("127.0.0.1", server.port)
        status, _, _ = await http(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == 200
        idle.close()
        await idle.wait_closed()


async def test_endpoint_bind_error() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: SAMPLE) as server:
        with pytest.raises(AgentError, match=rf"^cannot serve metrics on 127.0.0.1:{server.port}"):
            await serve_metrics("127.0.0.1", server.port, lambda: SAMPLE)
