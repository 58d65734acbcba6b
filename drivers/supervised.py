"""The part serial and TCP scanners share: a supervised connection feeding a queue of scans.

A subclass implements ``_supervise()`` (open, read, frame, wait, reopen: until cancelled)
and hands each :class:`~drivers.base.RawScan` to ``self._queue`` (a bounded
:class:`~drivers.base.ScanQueue`); this class provides the
:class:`~drivers.base.Scanner` protocol around it: iteration, connection state reports,
and an idempotent ``close()`` that cancels the supervisor and then ends the iterator.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from drivers.base import RawScan, ScannerState, ScanQueue, Sink, StateCallback

__all__ = ["SupervisedScanner"]

log = logging.getLogger(__name__)


class SupervisedScanner:
    """Base of the serial and TCP drivers; see the module docstring."""

    kind = "scanner"

    def __init__(self, name: str, on_state: StateCallback | None, initial: str) -> None:
        self.name = name
        self._on_state = on_state
        self._state = ScannerState(name, False, initial)
        self._queue = ScanQueue(name)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._done = asyncio.Event()

    @property
    def state(self) -> ScannerState:
        """Connected or not, and why not."""
        return self._state

    def __aiter__(self) -> Self:
        self._start()
        return self

    async def __anext__(self) -> RawScan:
        self._start()
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def acknowledge(self, ok: bool) -> None:
        """Operator feedback through the scanner; nothing by default."""

    def acknowledge_nowait(self, ok: bool) -> bool:
        """Send the feedback at once if that cannot block; whether it was (if not, await
        :meth:`acknowledge`). Nothing to send by default: done (a driver that sends
        something overrides both)."""
        return True

    async def deliver(self, sink: Sink) -> None:
        """Hand each scan to ``sink`` as it is framed (see :meth:`ScanQueue.deliver`), until
        :meth:`close`."""
        self._start()
        await self._queue.deliver(sink)

    def resume(self) -> None:
        """The sink takes scans again."""
        self._queue.resume()

    async def close(self) -> None:
        """Stop reading: cancel the supervisor (which releases the device), then end the
        iterator. Idempotent; a second caller waits for the first to finish."""
        if self._closed:
            await self._done.wait()
            return
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        self._set_state(False, "closed")
        self._queue.end()
        self._done.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"{self.kind} scanner {self.name}"
            )

    async def _supervise(self) -> None:
        raise NotImplementedError

    def _set_state(self, connected: bool, detail: str) -> None:
        state = ScannerState(self.name, connected, detail)
        if state == self._state:
            return
        self._state = state
        if connected or self._closed:  # a stop asked for is no warning
            log.info("scanner %s: %s", self.name, detail)
        else:
            log.warning("scanner %s: %s", self.name, detail)
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("scanner %s: state callback failed", self.name)
