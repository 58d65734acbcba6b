"""Hotplug: wake the evdev driver when /dev/input changes, through inotify (``inotify_simple``).

A scanner that is plugged in, wakes from Bluetooth sleep or gets its permissions from udev
shows as a change of /dev/input (or of its ``by-id`` / ``by-path`` links): a created node, and
then an attribute change when udev sets the node's group and mode. The driver reconnects on
any of them at once instead of waiting out its backoff. Nothing polls: the inotify descriptor
is read by the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from inotify_simple import INotify, flags

__all__ = ["IN_ATTRIB", "IN_CREATE", "IN_DELETE", "IN_MOVED_TO", "DirectoryWatcher",
           "WatchCallback"]

log = logging.getLogger(__name__)

IN_ATTRIB = int(flags.ATTRIB)
IN_CREATE = int(flags.CREATE)
IN_DELETE = int(flags.DELETE)
IN_MOVED_TO = int(flags.MOVED_TO)
_IN_IGNORED = int(flags.IGNORED)
_IN_ISDIR = int(flags.ISDIR)

WatchCallback = Callable[[str, str, int], None]


class DirectoryWatcher:
    """Calls ``callback(directory, name, mask)`` when entries of a directory change.

    Watches ``root`` and those of ``subdirs`` that exist (and those created later), for
    creation, deletion and attribute changes (udev sets a node's group and mode just after
    creating it). The inotify descriptor is read by the event loop: no thread, no polling.

    >>> w = DirectoryWatcher("/dev/input", print, subdirs=("by-id",))  # doctest: +SKIP
    >>> w.start(asyncio.get_running_loop())                            # doctest: +SKIP
    """

    MASK = IN_CREATE | IN_ATTRIB | IN_DELETE | IN_MOVED_TO

    def __init__(self, root: str, callback: WatchCallback, *,
                 subdirs: tuple[str, ...] = ()) -> None:
        self.root = root
        self.subdirs = subdirs
        self._callback = callback
        self._inotify: Any = None
        self._dirs: dict[int, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        return self._inotify is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin watching; raises ``OSError`` (e.g. the root does not exist)."""
        if self._inotify is not None:
            return
        inotify = INotify(nonblocking=True)
        try:
            self._dirs[inotify.add_watch(self.root, self.MASK)] = self.root
        except OSError:
            inotify.close()
            raise
        self._inotify = inotify
        for sub in self.subdirs:
            self._watch_subdir(sub)
        loop.add_reader(inotify.fileno(), self._on_readable)
        self._loop = loop

    def _watch_subdir(self, name: str) -> None:
        path = os.path.join(self.root, name)
        if self._inotify is None or not os.path.isdir(path):
            return
        try:
            self._dirs[self._inotify.add_watch(path, self.MASK)] = path
        except OSError as exc:
            log.debug("cannot watch %s: %s", path, exc)

    def _on_readable(self) -> None:
        if self._inotify is None:
            return
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("inotify read failed: %s", exc)
            return
        for event in events:
            mask, name = int(event.mask), str(event.name)
            directory = self._dirs.get(event.wd, self.root)
            if mask & _IN_IGNORED:
                self._dirs.pop(event.wd, None)  # the watched directory went away
                continue
            if (mask & _IN_ISDIR and directory == self.root and name in self.subdirs
                    and mask & (IN_CREATE | IN_MOVED_TO)):
                self._watch_subdir(name)
            try:
                self._callback(directory, name, mask)
            except Exception:  # a watcher must survive its callback's bugs
                log.exception("inotify callback failed")

    def close(self) -> None:
        """Stop watching. Idempotent."""
        inotify, self._inotify = self._inotify, None
        if inotify is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(inotify.fileno())
        inotify.close()
        self._dirs.clear()
