"""Scans handed to a sink as they are framed (``ScanQueue.deliver``), as the daemon takes
them: in order, held back while the sink is full, within the queue's limits, to the end.
(Each driver's delivery is tested with the driver.)"""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import RawScan, ScanQueue

TIMEOUT = 10


def scan(text: str) -> RawScan:
    return RawScan("s", text, text.encode())


async def test_each_scan_reaches_the_sink_when_it_is_added_in_order() -> None:
    q = ScanQueue("s")
    got: list[str] = []
    delivering = asyncio.ensure_future(q.deliver(lambda s: got.append(s.text) is None))
    await asyncio.sleep(0)
    q.push(scan("A"))
    assert got == ["A"]  # in the adding call itself: no task, no turn of the loop
    q.offer(scan("B"))
    await q.put(scan("C"))
    assert got == ["A", "B", "C"] and len(q) == 0
    q.end()
    await asyncio.wait_for(delivering, TIMEOUT)


async def test_scans_waiting_before_delivery_go_first() -> None:
    q = ScanQueue("s")
    q.push(scan("A"))
    q.push(scan("B"))
    got: list[str] = []
    delivering = asyncio.ensure_future(q.deliver(lambda s: got.append(s.text) is None))
    await asyncio.sleep(0)
    q.push(scan("C"))
    assert got == ["A", "B", "C"]
    q.end()
    await asyncio.wait_for(delivering, TIMEOUT)


async def test_a_full_sink_holds_the_scans_until_it_resumes() -> None:
    q = ScanQueue("s", limit=3)
    got: list[str] = []
    room = 2
    rooms: list[int] = []
    q.on_room = lambda: rooms.append(len(q))

    def sink(s: RawScan) -> bool:
        got.append(s.text)
        return len(got) < room

    delivering = asyncio.ensure_future(q.deliver(sink))
    await asyncio.sleep(0)
    assert q.push(scan("A")) is False
    assert q.push(scan("B")) is False  # the sink is full now
    assert q.push(scan("C")) is False
    assert q.push(scan("D")) is False
    assert q.push(scan("E")) is True  # the queue is full too: the driver stops reading
    assert got == ["A", "B"] and len(q) == 3
    room = 4
    q.resume()
    assert got == ["A", "B", "C", "D"] and len(q) == 1
    assert rooms == [2]  # the driver was told to read on once there was room
    room = 10
    q.end()  # the end waits behind the held scan
    assert not delivering.done()
    q.resume()
    await asyncio.wait_for(delivering, TIMEOUT)
    assert got == ["A", "B", "C", "D", "E"]


async def test_a_sink_that_raises_ends_delivery_with_its_error() -> None:
    q = ScanQueue("s")

    def sink(s: RawScan) -> bool:
        if s.text == "B":
            raise RuntimeError("a bug in the capture path")
        return True

    delivering = asyncio.ensure_future(q.deliver(sink))
    await asyncio.sleep(0)
    q.push(scan("A"))
    q.push(scan("B"))  # the driver's read callback is not broken by it
    q.push(scan("C"))
    with pytest.raises(RuntimeError, match="a bug in the capture path"):
        await asyncio.wait_for(delivering, TIMEOUT)
    assert len(q) == 1  # C waits: nobody takes it


async def test_one_consumer_at_a_time() -> None:
    q = ScanQueue("s")
    first = asyncio.ensure_future(q.deliver(lambda s: True))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="delivered already"):
        await q.deliver(lambda s: True)
    q.end()
    await asyncio.wait_for(first, TIMEOUT)
