"""Logging for the daemon: one line per event, to standard error.

Under systemd (``$JOURNAL_STREAM`` set) each line starts with its syslog priority (``<4>``),
so ``journalctl -p warning -u scan-agent@dock-3`` shows just the warnings and errors. Scanned
text reaches the log only through :func:`agent.grammar.printable`, so no control byte does.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logging"]

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>" + super().format(record).replace("\n", f"\n<{prio}>")


def setup_logging(level: str) -> None:
    """Log ``level`` and above to standard error, with journal priorities under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_JournalFormatter(fmt) if os.environ.get("JOURNAL_STREAM")
                         else logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    logging.getLogger("httpcore").setLevel(logging.WARNING)
