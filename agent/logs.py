"""Logging for the daemon: one line per event, to standard error.

Under systemd, when standard error is the journal (``$JOURNAL_STREAM`` names the very stream
that standard error is, as ``sd_journal_stream_fd`` documents), each line starts with its
syslog priority (``<4>``), so ``journalctl -p warning -u scan-agent@dock-3`` shows just the
warnings and errors, and carries no timestamp: the journal stamps every line itself.
Everywhere else (a terminal, a file, a pipe) each line starts with the local time, to the
millisecond. Scanned text reaches the log only through :func:`agent.grammar.printable`, so
no control byte does.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

__all__ = ["setup_logging", "to_journal"]

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}
_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>" + super().format(record).replace("\n", f"\n<{prio}>")


def to_journal(fd: int = 2, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``fd`` is connected to the systemd journal.

    ``$JOURNAL_STREAM`` is ``DEVICE:INODE`` of the journal stream systemd gave the service;
    a process that inherited the variable but writes elsewhere (redirected to a file) does
    not match it, and gets timestamps."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(level: str) -> None:
    """Log ``level`` and above to standard error: journal priorities under systemd's
    journal, the local time elsewhere."""
    handler = logging.StreamHandler(sys.stderr)
    if to_journal(sys.stderr.fileno() if hasattr(sys.stderr, "fileno") else 2):
        handler.setFormatter(_JournalFormatter(_FORMAT))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d " + _FORMAT,
                                               datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    logging.getLogger("httpcore").setLevel(logging.WARNING)
