"""Tell systemd that the ledger is ready or stopping (``Type=notify``), with no dependency.

systemd passes a datagram socket in ``$NOTIFY_SOCKET`` (a path, or an abstract name written
``@name``). The ledger sends ``READY=1`` once it listens and ``STOPPING=1`` when it shuts down;
outside systemd every call is a no-op. The dock's daemon has a fuller notifier of its own
(status lines, the watchdog); the ledger needs only these two, and never fails because of them.

>>> notify_systemd("READY=1", environ={})       # not run by systemd
False
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["notify_systemd", "to_journal"]

log = logging.getLogger(__name__)


def notify_systemd(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=value`` lines in one datagram to ``$NOTIFY_SOCKET``; True when sent.

    Never raises: a socket error is logged and returns False.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or not assignments or address[0] not in "/@":
        return False
    target: str | bytes = "\0" + address[1:] if address[0] == "@" else address
    if isinstance(target, str) and target.startswith("\0"):
        target = target.encode()
    payload = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(payload, target)
    except OSError as exc:
        log.warning("cannot notify systemd through %s: %s", address, exc.strerror or exc)
        return False
    return True


def to_journal(fd: int = 2, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``fd`` is systemd's journal stream (``$JOURNAL_STREAM`` is its
    ``DEVICE:INODE``): the journal stamps each line itself, so the ledger's log lines then
    carry no time of their own. A process that inherited the variable but writes elsewhere
    does not match it."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))
