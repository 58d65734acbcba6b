"""Fixed-mount readers that stream scans over TCP, as an async iterator of raw scans.

The driver connects to ``host:port`` (the reader is the server, as fixed-mount readers are),
sends the optional ``trigger`` string on every connect, and frames what arrives: ``framing =
"line"`` ends a scan at CR, LF or CRLF, ``"stx-etx"`` takes the bytes between STX (0x02) and ETX
(0x03). A refused connection, a reset or an end of file is reported through ``state`` and
retried with capped exponential backoff; the iterator ends only on :meth:`TcpScanner.close`.
TCP keepalive is on, so a reader that lost power is noticed even when no scan is due.

>>> async def capture(cfg):                       # doctest: +SKIP
...     async with TcpScanner(cfg) as reader:
...         async for scan in reader:
...             print(scan.text)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

from drivers.base import Driver, StateCallback, boottime_ns
from drivers.errors import DriverError
from drivers.framing import STX_ETX, Backoff, Framer, encode_setting
from drivers.settings import REQUIRED, ScannerConfig, Settings
from drivers.supervised import SupervisedScanner

__all__ = ["DRIVER", "TcpScanner", "TcpScannerConfig", "parse_config"]

log = logging.getLogger(__name__)

_READ_SIZE: Final = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpScannerConfig(ScannerConfig):
    """``driver = "tcp"``: fixed-mount readers streaming scans over TCP."""

    driver: ClassVar[str] = "tcp"
    host: str
    port: int
    framing: Literal["line", "stx-etx"] = "line"
    trigger: str | None = None  # sent on each (re)connect, e.g. to start a reading session
    encoding: str = "utf-8"


def parse_config(s: Settings, *, name: str, max_length: int = 512) -> TcpScannerConfig:
    """The TCP keys of a ``[[scanners]]`` table; raises ``DriverConfigError`` naming the key."""
    return TcpScannerConfig(
        name=name,
        max_length=max_length,
        host=s.text("host", REQUIRED),
        port=s.integer("port", REQUIRED, lo=1, hi=65535),
        framing=s.choice("framing", ("line", "stx-etx"), "line"),
        trigger=s.text("trigger", None, nonempty=False),
        encoding=s.encoding("encoding", "utf-8"),
    )


class TcpScanner(SupervisedScanner):
    """A TCP fixed-mount reader: ``async for scan in reader`` yields :class:`RawScan`.

    ``backoff_start`` and ``backoff_cap`` (seconds) bound the delay between reconnects;
    ``connect_timeout`` bounds one connection attempt.
    """

    kind = "tcp"

    def __init__(
        self,
        cfg: TcpScannerConfig,
        on_state: StateCallback | None = None,
        *,
        backoff_start: float = 0.1,
        backoff_cap: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(cfg.name, on_state, "not connected yet")
        self.cfg = cfg
        self._connect_timeout = connect_timeout
        self._address = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
        try:
            self._backoff = Backoff(backoff_start, backoff_cap)
            self._framer = Framer(
                terminator=STX_ETX if cfg.framing == "stx-etx" else "auto",
                max_length=cfg.max_length, encoding=cfg.encoding,
            )
            self._trigger = (
                encode_setting("trigger", cfg.trigger, cfg.encoding) if cfg.trigger else None
            )
        except (ValueError, LookupError) as exc:
            raise DriverError(f"scanner {cfg.name!r}: {exc}") from exc

    # -- connection supervision (the Scanner protocol is SupervisedScanner's) ----------------

    async def _supervise(self) -> None:
        """Connect, read until the connection ends, wait, reconnect; until close()."""
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.cfg.host, self.cfg.port),
                    self._connect_timeout,
                )
            except (OSError, TimeoutError) as exc:
                self._set_state(False, f"cannot connect to {self._address}: {_reason(exc)}")
                await asyncio.sleep(self._backoff.next())
                continue
            opened = time.monotonic()
            received = False
            try:
                _keep_alive(writer)
                if self._trigger:
                    writer.write(self._trigger)
                    await writer.drain()
                self._set_state(True, f"connected to {self._address}")
                while True:
                    data = await reader.read(_READ_SIZE)
                    wall, boot = time.time(), boottime_ns()
                    if not data:
                        detail = "connection closed by the reader"
                        break
                    received = True
                    scans = [frame.scan(self.name, wall_time=wall, boot_ns=boot)
                             for frame in self._framer.feed(data)]
                    for i, scan in enumerate(scans):
                        try:
                            # Waits while the station is behind: TCP then slows the reader.
                            await self._queue.put(scan)
                        except asyncio.CancelledError:
                            for rest in scans[i:]:  # close(): what was read still goes in
                                self._queue.push(rest)
                            raise
            except OSError as exc:
                detail = _reason(exc)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)
                dropped = self._framer.reset()
                if dropped:
                    log.warning("scanner %s: dropped %d bytes of a scan cut off by the disconnect",
                                self.name, dropped)
            self._set_state(False, f"{self._address} lost: {detail}")
            if received or time.monotonic() - opened >= self._backoff.cap:
                self._backoff.reset()
            await asyncio.sleep(self._backoff.next())


def _keep_alive(writer: asyncio.StreamWriter) -> None:
    """Probe an idle connection after 10 s, so a dead reader shows up within about 25 s."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not exc.args:
        return "timed out"
    if isinstance(exc, OSError) and isinstance(exc.errno, int):
        return os.strerror(exc.errno)  # not asyncio's "Connect call failed ('::1', ...)"
    return str(exc) or type(exc).__name__


#: The registry entry (see :mod:`drivers`).
DRIVER = Driver("tcp", TcpScannerConfig, parse_config, TcpScanner)
