"""sd_notify against a real datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scankit.notify import Notifier, watchdog_task


class FakeSystemd:
    """Receives notification datagrams in a thread, stamping each with its arrival time."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return [m for _, m in self.messages]

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if m == "WATCHDOG=1"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    yield fake, path
    fake.close()


def test_no_socket_is_a_quiet_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None


def test_ready_status_stopping(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        assert n.enabled
        assert n.ready("2 scanners up")
        assert n.status("pending 3, last sync 10:15")
        assert n.stopping()
        assert n.extend_timeout(1.5)
    assert fake.wait_for(4) == [
        "READY=1\nSTATUS=2 scanners up",
        "STATUS=pending 3, last sync 10:15",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=1500000",
    ]


def test_status_is_one_printable_line(systemd: tuple[FakeSystemd, str]) -> None:
    """A newline in a status text would inject another assignment (e.g. READY=1)."""
    fake, path = systemd
    n = Notifier(path)
    n.status("handheld gone\nREADY=1\x1b[31m")
    n.close()
    assert fake.wait_for(1) == ["STATUS=handheld gone READY=1 [31m"]


def test_abstract_socket_address() -> None:
    name = f"scan-agent-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode())
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        n.close()
        assert fake.wait_for(1) == ["READY=1"]
    finally:
        fake.close()


def test_socket_errors_are_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(tmp_path / "no-such-socket"))
    with caplog.at_level(logging.DEBUG, logger="scankit.notify"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.status("still fine") is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "cannot notify systemd" in warnings[0].getMessage()
    n.close()
    n.close()  # idempotent


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["usec", "our-pid", "other-pid", "zero", "garbage", "unset"],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    assert Notifier("/run/nothing", environ=env).watchdog_interval() == expected


async def test_watchdog_pings_at_half_the_interval(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    # WatchdogSec=0.4s: a ping every 0.2 s.
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    stop = asyncio.Event()
    task = asyncio.create_task(watchdog_task(n, stop))
    await asyncio.sleep(1.1)
    stop.set()
    await task
    n.close()
    fake.wait_for(1)
    pings = fake.pings()
    # Pings at 0, 0.2, ..., 1.0: six, give or take scheduling.
    assert 4 <= len(pings) <= 8, pings
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    median = gaps[len(gaps) // 2]
    assert 0.12 <= median <= 0.4, gaps


async def test_no_watchdog_while_the_loop_is_blocked(systemd: tuple[FakeSystemd, str]) -> None:
    """A hung event loop must stop the pings, or systemd would never restart the daemon."""
    fake, path = systemd
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    stop = asyncio.Event()
    task = asyncio.create_task(watchdog_task(n, stop))
    await asyncio.sleep(0.35)
    blocked: list[float] = []

    def hang() -> None:
        blocked.append(time.monotonic())
        time.sleep(0.8)  # a blocking call on the loop, as a stuck driver would make
        blocked.append(time.monotonic())

    asyncio.get_running_loop().call_soon(hang)
    await asyncio.sleep(0)  # let hang() run
    await asyncio.sleep(0.35)
    stop.set()
    await task
    n.close()
    start, end = blocked
    pings = fake.pings()
    assert any(t < start for t in pings), "pings before the block"
    assert any(t > end for t in pings), "pings resume after the block"
    # Allow for the receiving thread stamping a ping sent just before the block a little late.
    inside = [t for t in pings if start + 0.05 < t < end]
    assert inside == []
    gap = max(b - a for a, b in itertools.pairwise(pings))
    assert gap >= 0.7


async def test_unhealthy_check_skips_pings(systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = systemd
    n = Notifier(path, environ={})
    stop = asyncio.Event()
    healthy = True
    task = asyncio.create_task(watchdog_task(n, stop, interval=0.05, healthy=lambda: healthy))
    await asyncio.sleep(0.2)
    healthy = False
    fake.wait_for(1)
    count = len(fake.pings())
    await asyncio.sleep(0.3)
    stop.set()
    await task
    n.close()
    assert count >= 2
    assert len(fake.pings()) <= count + 1  # at most one ping already in flight


async def test_watchdog_task_returns_at_once_without_watchdog() -> None:
    stop = asyncio.Event()
    await asyncio.wait_for(watchdog_task(Notifier.from_env({}), stop), timeout=1)
