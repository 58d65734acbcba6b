"""Serial scanners (USB-CDC, RS-232, or a pyserial URL) as an async iterator of raw scans.

``port`` is a device path (``/dev/ttyACM0``, ``/dev/serial/by-id/...``) or a pyserial URL
(``socket://host:port``, ``rfc2217://host:port``, ``loop://``). Reads never block the event
loop: a device path or ``socket://`` is read with ``loop.add_reader`` on its non-blocking file
descriptor; other URL transports, which have no descriptor to wait on, are read by a thread
that hands the bytes to the loop.

Hotplug: when the device goes away (a read fails with EIO/ENODEV, end of file, or the device
path vanishes) the scanner reports ``connected=False`` with the reason, drops the partial scan,
and reopens the same port with capped exponential backoff until it is back. The iterator ends
only on :meth:`SerialScanner.close`. The port is locked (``flock``) while open, so a second
program reading the same scanner is reported instead of silently sharing its scans.

Each scan carries the wall time and ``CLOCK_BOOTTIME`` of the read that brought its terminator.
Framing (terminator, prefix/suffix, maximum length, non-text bytes) is :mod:`drivers.framing`.

>>> async def capture(cfg):                       # doctest: +SKIP
...     async with SerialScanner(cfg) as scanner:
...         async for scan in scanner:
...             ok = scan.error is None and commit(scan)
...             await scanner.acknowledge(ok)
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import serial
from serial.urlhandler import protocol_socket

from drivers.base import Driver, StateCallback, boottime_ns
from drivers.errors import DriverError
from drivers.framing import Backoff, Framer, encode_setting
from drivers.settings import REQUIRED, ScannerConfig, Settings
from drivers.supervised import SupervisedScanner

__all__ = ["DRIVER", "SerialScanner", "SerialScannerConfig", "parse_config"]

log = logging.getLogger(__name__)

_READ_SIZE: Final = 4096
#: How long a reader thread waits in one read, i.e. how soon it notices close().
_THREAD_READ_TIMEOUT: Final = 0.1
_WRITE_TIMEOUT: Final = 1.0

#: Names operators use for the control characters of ``ack`` and ``nak``.
_CONTROL_NAMES: Final = {"ACK": "\x06", "NAK": "\x15", "BEL": "\x07", "CR": "\r", "LF": "\n"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialScannerConfig(ScannerConfig):
    """``driver = "serial"``: USB-CDC or RS-232 scanners, or a pyserial URL."""

    driver: ClassVar[str] = "serial"
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1
    terminator: str = "auto"  # auto (CR, LF or CRLF) | CR | LF | CRLF | one character
    prefix: str = ""  # stripped from the start of each scan when present
    suffix: str = ""  # stripped from the end of each scan when present
    ack: str | None = None  # sent after a scan is committed (host-acknowledge mode)
    nak: str | None = None  # sent after a scan is rejected
    encoding: str = "utf-8"


def parse_config(s: Settings, *, name: str, max_length: int = 512) -> SerialScannerConfig:
    """The serial keys of a ``[[scanners]]`` table; raises ``DriverConfigError`` naming the key."""
    terminator = s.text("terminator", "auto")
    if terminator not in ("auto", "CR", "LF", "CRLF") and len(terminator) != 1:
        raise s.error("terminator", "must be auto, CR, LF, CRLF or a single character, "
                      f"got {terminator!r}")
    ack, nak = s.text("ack", None, nonempty=False), s.text("nak", None, nonempty=False)
    cfg = SerialScannerConfig(
        name=name,
        max_length=max_length,
        port=s.text("port", REQUIRED),
        baudrate=s.integer("baudrate", 9600, lo=50, hi=4_000_000),
        bytesize=s.integer("bytesize", 8, lo=5, hi=8),
        parity=s.choice("parity", ("N", "E", "O", "M", "S"), "N"),
        stopbits=s.number("stopbits", 1.0),
        terminator=terminator,
        prefix=s.text("prefix", "", nonempty=False),
        suffix=s.text("suffix", "", nonempty=False),
        # TOML already turns "\u0006" into the character; the names are accepted too.
        ack=None if ack is None else _CONTROL_NAMES.get(ack, ack),
        nak=None if nak is None else _CONTROL_NAMES.get(nak, nak),
        encoding=s.encoding("encoding", "utf-8"),
    )
    if cfg.stopbits not in (1.0, 1.5, 2.0):
        raise s.error("stopbits", "must be 1, 1.5 or 2")
    return cfg


# pyserial flushes the input on open. A scan that arrived while the driver was reopening the
# port (a pty or ser2net bridge, a reader that streams as soon as it is connected) would be
# lost silently; kept, it is framed like any other read, and a fragment cut by the reconnect
# shows up as a bad scan in the audit instead of vanishing.


class _DevicePort(serial.Serial):  # type: ignore[misc]  # pyserial has no type hints
    """A device-path port that keeps what the kernel buffered before it was opened."""

    def _reset_input_buffer(self) -> None:
        pass


class _SocketPort(protocol_socket.Serial):  # type: ignore[misc]
    """A ``socket://`` port that keeps what the peer sent while it was being opened."""

    def reset_input_buffer(self) -> None:
        pass


def _room_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass(eq=False)
class _Connection:
    """One open port: ``gone`` gets the reason when the device disappears."""

    port: Any
    fd: int | None  # set when read with add_reader; None when read by a thread
    gone: asyncio.Future[str]
    opened: float = field(default_factory=time.monotonic)
    received: bool = False
    # Set while the station has room for more scans; cleared when it is behind, and then
    # nothing is read (the reader thread waits on it; add_reader is removed).
    room: threading.Event = field(default_factory=_room_event)
    # A reader thread's reads not yet handled by the event loop: at most two, so that the
    # thread cannot run ahead of a loop that has fallen behind (and of ``room``).
    reads: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(2))


class SerialScanner(SupervisedScanner):
    """A serial barcode scanner: ``async for scan in scanner`` yields :class:`RawScan`.

    ``backoff_start`` and ``backoff_cap`` (seconds) bound the delay between reopen attempts;
    ``watch_interval`` is how often an idle device path is checked for having vanished.
    """

    kind = "serial"

    def __init__(
        self,
        cfg: SerialScannerConfig,
        on_state: StateCallback | None = None,
        *,
        backoff_start: float = 0.1,
        backoff_cap: float = 5.0,
        watch_interval: float = 1.0,
    ) -> None:
        super().__init__(cfg.name, on_state, "not opened yet")
        self._queue.on_room = self._resume
        self.cfg = cfg
        self._watch_interval = watch_interval
        try:
            self._backoff = Backoff(backoff_start, backoff_cap)
            self._framer = Framer(
                terminator=cfg.terminator, prefix=cfg.prefix, suffix=cfg.suffix,
                max_length=cfg.max_length, encoding=cfg.encoding,
            )
            self._ack = encode_setting("ack", cfg.ack, cfg.encoding) if cfg.ack else None
            self._nak = encode_setting("nak", cfg.nak, cfg.encoding) if cfg.nak else None
        except (ValueError, LookupError) as exc:
            raise DriverError(f"scanner {cfg.name!r}: {exc}") from exc
        self._is_url = "://" in cfg.port
        if self._is_url:
            scheme = cfg.port.partition("://")[0]
            try:
                importlib.import_module(f"serial.urlhandler.protocol_{scheme}")
            except ImportError:
                raise DriverError(
                    f"scanner {cfg.name!r}: port {cfg.port!r}: unknown pyserial URL scheme "
                    f"{scheme!r} (e.g. socket://, rfc2217://, loop://)"
                ) from None
        self._conn: _Connection | None = None

    # -- the Scanner protocol (the rest is SupervisedScanner's) -------------------------------

    async def acknowledge(self, ok: bool) -> None:
        """Send ``ack`` (``ok``) or ``nak`` to the scanner, if configured. Never raises."""
        if self.acknowledge_nowait(ok):
            return
        conn = self._conn
        assert conn is not None
        try:  # a port read by a thread is written by one too (its write may block)
            await asyncio.to_thread(conn.port.write, self._ack if ok else self._nak)
        except Exception as exc:  # a vanished port must never break the capture loop
            log.warning("scanner %s: %s not sent: %s", self.name, "ACK" if ok else "NAK", exc)

    def acknowledge_nowait(self, ok: bool) -> bool:
        """Send ``ack`` or ``nak`` at once to a port the event loop reads (a non-blocking
        descriptor), or say why nothing is sent. False only for a port a thread reads (a
        pyserial URL without a descriptor): :meth:`acknowledge` writes it from a thread."""
        data = self._ack if ok else self._nak
        if data is None:
            return True
        what = "ACK" if ok else "NAK"
        conn = self._conn
        if conn is None or conn.gone.done():
            log.warning("scanner %s: %s not sent: %s", self.name, what, self._state.detail)
            return True
        if conn.fd is None:
            return False
        try:
            # Non-blocking and synchronous: the fd cannot be closed between check and write.
            written = os.write(conn.fd, data)
            if written < len(data):
                log.warning("scanner %s: %s cut short (%d of %d bytes written)",
                            self.name, what, written, len(data))
        except Exception as exc:  # a vanished port must never break the capture loop
            log.warning("scanner %s: %s not sent: %s", self.name, what, exc)
        return True

    # -- connection supervision ---------------------------------------------------------------

    async def _supervise(self) -> None:
        """Open, read until the device goes away, wait, reopen; until cancelled by close()."""
        while True:
            try:
                port = await self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self._set_state(False, f"cannot open {self.cfg.port}: {_reason(exc)}")
                await asyncio.sleep(self._backoff.next())
                continue
            conn = await self._read(port)
            lasted = time.monotonic() - conn.opened
            if conn.received or lasted >= self._backoff.cap:
                self._backoff.reset()  # it worked for a while: come back quickly
            # The device may still be going away (EIO before the node disappears): wait a bit.
            await asyncio.sleep(self._backoff.next())

    async def _open(self) -> Any:
        """Open the port in a thread (an rfc2217 or socket handshake can take a while)."""
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, self._open_port)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # close() came during the open: the port must not leak once the thread is done.
            opening.add_done_callback(_close_opened_port)
            raise

    def _open_port(self) -> Any:
        cfg = self.cfg
        settings: dict[str, Any] = dict(
            baudrate=cfg.baudrate, bytesize=cfg.bytesize, parity=cfg.parity,
            stopbits=int(cfg.stopbits) if cfg.stopbits in (1, 2) else cfg.stopbits,
            write_timeout=_WRITE_TIMEOUT,
        )
        if cfg.port.startswith("socket://"):
            return _SocketPort(cfg.port, timeout=_THREAD_READ_TIMEOUT, **settings)
        if self._is_url:
            return serial.serial_for_url(cfg.port, timeout=_THREAD_READ_TIMEOUT, **settings)
        # exclusive: a second process reading the same scanner would steal half the scans
        return _DevicePort(cfg.port, timeout=0, exclusive=True, **settings)

    async def _read(self, port: Any) -> _Connection:
        """Read until the device goes away (returns) or close() cancels; closes the port."""
        loop = asyncio.get_running_loop()
        fd = _readable_fd(port)
        conn = _Connection(port=port, fd=fd, gone=loop.create_future())
        self._conn = conn
        stop = threading.Event()
        thread: threading.Thread | None = None
        try:
            if fd is not None:
                loop.add_reader(fd, self._on_readable, conn)
            else:
                thread = threading.Thread(
                    target=self._read_thread, args=(conn, loop, stop),
                    name=f"serial scanner {self.name}", daemon=True,
                )
                thread.start()
            self._set_state(True, f"connected to {self.cfg.port}")
            detail = await self._watch(conn)
            self._set_state(False, f"{self.cfg.port} lost: {detail}")
            return conn
        finally:
            # Shutdown order: stop the reader, close the port, drop the partial scan.
            if not conn.gone.done():
                conn.gone.set_result("closed")
            if fd is not None:
                loop.remove_reader(fd)
            if thread is not None:
                stop.set()
                await asyncio.to_thread(thread.join, 5 * _THREAD_READ_TIMEOUT)
            _close_quietly(port)
            self._conn = None
            dropped = self._framer.reset()
            if dropped:
                log.warning("scanner %s: dropped %d bytes of a scan cut off by the disconnect",
                            self.name, dropped)

    async def _watch(self, conn: _Connection) -> str:
        """Wait for the reader to report the device gone, or for its path to vanish."""
        if self._is_url or conn.fd is None:
            return await conn.gone
        try:
            device = os.fstat(conn.fd).st_rdev
        except OSError as exc:
            return _reason(exc)
        while True:
            done, _ = await asyncio.wait({conn.gone}, timeout=self._watch_interval)
            if done:
                return conn.gone.result()
            try:
                now = os.stat(self.cfg.port).st_rdev
            except FileNotFoundError:
                return "the device path vanished"
            except OSError:
                continue
            if now != device:
                return "the device path now names another device"

    # -- reading ------------------------------------------------------------------------------

    def _on_readable(self, conn: _Connection) -> None:
        assert conn.fd is not None
        try:
            data = os.read(conn.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(conn, _reason(exc))
            return
        if not data:
            self._lost(conn, "end of file (device closed)")
            return
        self._received(conn, data, time.time(), boottime_ns())

    def _read_thread(
        self, conn: _Connection, loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        port = conn.port
        try:
            while not stop.is_set():
                if not conn.room.is_set():
                    conn.room.wait(_THREAD_READ_TIMEOUT)  # the station is behind
                    continue
                if not conn.reads.acquire(timeout=_THREAD_READ_TIMEOUT):
                    continue  # the loop has not handled the last reads yet
                try:
                    data = port.read(min(max(1, port.in_waiting), _READ_SIZE))
                except Exception as exc:  # whatever the URL handler raises, the device is gone
                    if not stop.is_set():
                        loop.call_soon_threadsafe(self._lost, conn, _reason(exc))
                    return
                if data:
                    # Stamped here, where the bytes arrived, not when the loop gets to them.
                    loop.call_soon_threadsafe(
                        self._handed, conn, data, time.time(), boottime_ns()
                    )
                else:
                    conn.reads.release()
        except RuntimeError:  # the event loop was closed under us: nobody is listening
            return

    def _handed(self, conn: _Connection, data: bytes, wall: float, boot: int) -> None:
        """Bytes from the reader thread."""
        try:
            self._received(conn, data, wall, boot)
        finally:
            conn.reads.release()

    def _received(self, conn: _Connection, data: bytes, wall: float, boot: int) -> None:
        if conn is not self._conn or conn.gone.done():
            return  # late bytes of a connection already given up
        conn.received = True
        full = False
        for frame in self._framer.feed(data):
            full = self._queue.push(frame.scan(self.name, wall_time=wall, boot_ns=boot))
        if full and conn.room.is_set():
            # The station is behind: stop reading until it has taken some (see _resume).
            conn.room.clear()
            if conn.fd is not None:
                asyncio.get_running_loop().remove_reader(conn.fd)

    def _resume(self) -> None:
        """The station has room again: read on, if the connection is still the live one."""
        conn = self._conn
        if conn is None or conn.room.is_set() or conn.gone.done():
            return
        conn.room.set()
        if conn.fd is not None:
            asyncio.get_running_loop().add_reader(conn.fd, self._on_readable, conn)

    def _lost(self, conn: _Connection, detail: str) -> None:
        if conn.fd is not None:
            # A hung-up tty stays readable: stop the callbacks before the loop spins on it.
            asyncio.get_running_loop().remove_reader(conn.fd)
        if not conn.gone.done():
            conn.gone.set_result(detail)


def _readable_fd(port: Any) -> int | None:
    """The descriptor to wait on with add_reader, or None when a thread must read."""
    if isinstance(port, serial.Serial | protocol_socket.Serial):
        fd: int = port.fileno()
        return fd
    return None


def _reason(exc: BaseException) -> str:
    """A short reason: ``Input/output error`` rather than pyserial's nested messages."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        if "exclusively lock" in str(exc):
            return f"in use by another program (cannot lock it: {os.strerror(code)})"
        return os.strerror(code)
    return str(exc) or type(exc).__name__


def _close_quietly(port: Any) -> None:
    try:
        port.close()
    except Exception as exc:  # closing a port that is already gone
        log.debug("closing serial port: %s", exc)


def _close_opened_port(opening: asyncio.Future[Any]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        _close_quietly(opening.result())


#: The registry entry (see :mod:`drivers`).
DRIVER = Driver("serial", SerialScannerConfig, parse_config, SerialScanner)
