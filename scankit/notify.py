"""Tell systemd how the daemon is doing: ``sd_notify`` without any dependency.

systemd passes a datagram socket in ``$NOTIFY_SOCKET`` (a path, or an abstract name written
``@name``) to services with ``Type=notify``. The daemon sends ``READY=1`` once its scanners and
journal are open, ``STATUS=`` lines while it runs, ``STOPPING=1`` on shutdown and ``WATCHDOG=1``
at half of ``WatchdogSec=``. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.

The watchdog pings come from :func:`watchdog_task`, a task on the daemon's own event loop: if the
loop hangs (a blocking call, a deadlock), the pings stop and systemd restarts the service.

>>> notifier = Notifier.from_env()
>>> notifier.ready("2 scanners up, 0 pending")     # False when not run by systemd
False

Socket errors never reach the daemon: the first one is logged, later ones only at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_task"]

log = logging.getLogger(__name__)

# systemd's own limit for a STATUS= text is far larger; a dock's status line is short, and a
# bounded datagram can never fail with EMSGSIZE.
_MAX_STATUS = 400


class Notifier:
    """A connection to systemd's notification socket (or a no-op without one).

    ``address`` is the value of ``$NOTIFY_SOCKET``; ``environ`` is where ``WATCHDOG_USEC`` and
    ``WATCHDOG_PID`` are read from (the process environment by default).
    """

    def __init__(self, address: str | None, *, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._address: str | bytes | None = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self._failed = False
        if address and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a supported socket address; "
                        "systemd notifications are disabled", address)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through ``$NOTIFY_SOCKET`` (a no-op when unset)."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, environ=env)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (the daemon runs under ``Type=notify``)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; True when it was sent.

        Never raises: socket errors are logged (the first at warning level) and return False.
        """
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never let a full socket buffer block the event loop: drop the datagram instead.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            self._report(exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: scanners and journal are open (with an optional first status line)."""
        fields = ["READY=1"]
        if status is not None:
            fields.append("STATUS=" + _one_line(status))
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """``STATUS=``: the one-line summary ``systemctl status`` shows."""
        return self.notify("STATUS=" + _one_line(text))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon is shutting down in an orderly way."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append("STATUS=" + _one_line(status))
        return self.notify(*fields)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping; send it every :meth:`watchdog_interval` seconds."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for more time to start or stop (a long migration)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WatchdogSec=``), or None when not enabled.

        None too when ``WATCHDOG_PID`` names another process (the watchdog is meant for it).
        """
        usec = self._environ.get("WATCHDOG_USEC", "")
        try:
            value = int(usec)
        except ValueError:
            return None
        if value <= 0:
            return None
        pid = self._environ.get("WATCHDOG_PID")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return value / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket (idempotent); later notifications open a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _report(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning("cannot notify systemd through %s: %s (further failures are logged "
                        "at debug level)", _printable(self._address), exc.strerror or exc)
        else:
            log.debug("cannot notify systemd: %s", exc)


async def watchdog_task(
    notifier: Notifier,
    stop: asyncio.Event,
    *,
    interval: float | None = None,
    healthy: Callable[[], bool] | None = None,
) -> None:
    """Ping the systemd watchdog from the event loop until ``stop`` is set.

    Each ping is sent by this coroutine, so it only happens while the loop is running callbacks:
    a loop blocked by a stuck call sends nothing and systemd restarts the service after
    ``WatchdogSec=``. ``interval`` defaults to :meth:`Notifier.watchdog_interval`; when the
    watchdog is not enabled the task returns at once. ``healthy``, when given, is asked before
    each ping; returning False skips that ping (for a part of the daemon that is wedged while the
    loop itself is fine).

    Run it beside the daemon's other tasks::

        stop = asyncio.Event()
        wd = asyncio.create_task(watchdog_task(notifier, stop))
        ...
        stop.set(); await wd
    """
    period = notifier.watchdog_interval() if interval is None else interval
    if period is None or period <= 0 or not notifier.enabled:
        return
    while not stop.is_set():
        ok = True
        if healthy is not None:
            try:
                ok = healthy()
            except Exception:
                log.exception("watchdog health check failed; skipping this ping")
                ok = False
        if ok:
            notifier.watchdog()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=period)


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL byte instead of '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: and relative paths are not offered by systemd 252


def _one_line(text: str) -> str:
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat[:_MAX_STATUS]


def _printable(address: str | bytes | None) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode(errors="replace")
    return str(address)
