"""The station's CPU budget, and a pacer that keeps sync inside what capture leaves of it.

A dock may run with less CPU than its cores: a systemd unit with ``CPUQuota=25%``, or a
container limit, is a CFS quota on the service's cgroup. When the process uses its quota up
within a period (100 ms by default), the kernel stops **every** thread of it until the next
period, the capture thread included: a scan that arrives then waits up to the rest of the
period for its commit and its ACK. A drain of a backlog, left alone, uses the quota up in
every period.

So sync spends only what capture leaves: :class:`Pacer` is a token bucket on the process's
CPU time (all its threads, capture's included). It fills at ``share`` of the cores the
process may use and holds at most ``burst`` seconds of CPU; sync asks it before each step of
its work (:meth:`Pacer.wait`), and waits while the process as a whole has used more than its
share. Capture never asks: it takes what it needs, and sync gets the rest.

Without a quota the process may use whole cores, and the pacer never waits in practice.

>>> p = Pacer(cores=0.25, share=0.6, burst=0.005)
>>> p.delay(cpu=0.0, now=0.0)          # a full bucket
0.0
>>> round(p.delay(cpu=0.020, now=0.010), 3)   # 20 ms of CPU in 10 ms: wait to pay it back
0.09
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Pacer", "available_cores"]

_CGROUP = Path("/sys/fs/cgroup")


def _v2_quota(rel: str) -> float | None:
    """The tightest ``cpu.max`` from the process's cgroup up to the root (v2)."""
    best: float | None = None
    path = _CGROUP / rel.lstrip("/")
    while True:
        with contextlib.suppress(OSError, ValueError):
            quota, period = (path / "cpu.max").read_text().split()
            if quota != "max":
                cores = int(quota) / int(period)
                best = cores if best is None else min(best, cores)
        if path == _CGROUP or _CGROUP not in path.parents:
            return best
        path = path.parent


def _v1_quota(rel: str) -> float | None:
    """The tightest CFS quota from the process's cpu cgroup up to the root (v1)."""
    best: float | None = None
    root = _CGROUP / "cpu"
    path = root / rel.lstrip("/")
    while True:
        with contextlib.suppress(OSError, ValueError):
            quota = int((path / "cpu.cfs_quota_us").read_text())
            period = int((path / "cpu.cfs_period_us").read_text())
            if quota > 0 and period > 0:
                cores = quota / period
                best = cores if best is None else min(best, cores)
        if path == root or root not in path.parents:
            return best
        path = path.parent


def available_cores(proc_cgroup: str | None = None) -> float:
    """How many cores this process may use: its CPU quota if it has one (cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us``), else the CPUs it may run on."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 1)
    try:
        text = proc_cgroup if proc_cgroup is not None else Path(
            "/proc/self/cgroup").read_text()
    except OSError:
        return cores
    for line in text.splitlines():
        _, controllers, rel = line.split(":", 2)
        quota = None
        if controllers == "":
            quota = _v2_quota(rel)
        elif "cpu" in controllers.split(","):
            quota = _v1_quota(rel)
        if quota is not None:
            cores = min(cores, quota)
    return cores


@dataclass
class Pacer:
    """A token bucket of CPU seconds, filling at ``share * cores`` per second."""

    cores: float
    share: float = 0.6
    burst: float = 0.005  # seconds of CPU the bucket holds
    _tokens: float = field(init=False)
    _cpu: float | None = field(init=False, default=None)
    _now: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._tokens = self.burst

    @property
    def rate(self) -> float:
        return self.share * self.cores

    def delay(self, cpu: float, now: float) -> float:
        """Seconds to wait before more work, given the process's CPU time and the clock."""
        if self._cpu is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._now) * self.rate
                               - (cpu - self._cpu))
        self._cpu, self._now = cpu, now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def due(self) -> float:
        """:meth:`delay` for this process now."""
        return self.delay(time.process_time(), time.monotonic())
