"""A recorder for a driver's ``on_state`` calls, shared by the driver tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from drivers.base import ScannerState

TIMEOUT = 10.0  # only to turn a hang into a failure; never a pass/fail threshold


class States:
    """Records on_state calls; lets a test wait until one matches."""

    def __init__(self) -> None:
        self.seen: list[ScannerState] = []
        self._changed = asyncio.Event()

    def __call__(self, state: ScannerState) -> None:
        self.seen.append(state)
        self._changed.set()

    async def wait(self, predicate: Callable[[ScannerState], bool]) -> ScannerState:
        async def until() -> ScannerState:
            start = 0
            while True:
                for state in self.seen[start:]:
                    if predicate(state):
                        return state
                start = len(self.seen)
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(until(), TIMEOUT)

    async def connected(self) -> ScannerState:
        return await self.wait(lambda s: s.connected)

    async def disconnected(self) -> ScannerState:
        return await self.wait(lambda s: not s.connected and "lost" in s.detail)
