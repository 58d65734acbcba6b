"""A Raspberry-Pi-class CPU budget for a benchmarked process: a CPU cgroup with a quota.

``CpuBudget.create(25_000, 100_000)`` makes a child cgroup limited to a quarter of one core
(25 ms of CPU in every 100 ms period) and ``budget.enter(pid)`` moves a process (all its
threads, and the children it starts later) into it. Both cgroup layouts are handled:

- cgroup v2 (``/sys/fs/cgroup/cgroup.controllers`` lists ``cpu``): ``cpu.max`` =
  ``"25000 100000"`` in a child of the root (the ``cpu`` controller is enabled in the root's
  ``cgroup.subtree_control`` if it is not yet);
- cgroup v1 (the ``cpu`` controller mounted on ``/sys/fs/cgroup/cpu``): ``cpu.cfs_quota_us``
  and ``cpu.cfs_period_us`` in a child there.

Where neither can be created (not root, a read-only ``/sys/fs/cgroup``, no ``cpu``
controller), :meth:`CpuBudget.create` raises :class:`Unavailable` with the reason, which the
benchmarks report instead of the figures.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class Unavailable(Exception):
    """No CPU cgroup can be made here; the message says why."""


@dataclass
class CpuBudget:
    path: Path
    version: int
    quota_us: int
    period_us: int

    @property
    def cores(self) -> float:
        return self.quota_us / self.period_us

    def describe(self) -> str:
        where = ("cgroup v2, cpu.max" if self.version == 2
                 else "cgroup v1, cpu.cfs_quota_us/cpu.cfs_period_us")
        return (f"{self.quota_us / 1000:g} ms of CPU per {self.period_us / 1000:g} ms "
                f"({self.cores:.2f} of one core; {where} in {self.path})")

    @classmethod
    def create(cls, quota_us: int = 25_000, period_us: int = 100_000,
               name: str | None = None) -> CpuBudget:
        name = name or f"scan-agent-bench-{os.getpid()}-{time.monotonic_ns()}"
        if os.geteuid() != 0:
            raise Unavailable("creating a cgroup needs root (the benchmark runs as "
                              f"uid {os.geteuid()})")
        v2 = ROOT / "cgroup.controllers"
        try:
            if v2.exists() and "cpu" in v2.read_text().split():
                sub = ROOT / "cgroup.subtree_control"
                if "cpu" not in sub.read_text().split():
                    sub.write_text("+cpu")
                path = ROOT / name
                path.mkdir()
                (path / "cpu.max").write_text(f"{quota_us} {period_us}")
                return cls(path, 2, quota_us, period_us)
            v1 = ROOT / "cpu"
            if (v1 / "cpu.cfs_quota_us").exists():
                path = v1 / name
                path.mkdir()
                (path / "cpu.cfs_period_us").write_text(str(period_us))
                (path / "cpu.cfs_quota_us").write_text(str(quota_us))
                return cls(path, 1, quota_us, period_us)
        except OSError as exc:
            raise Unavailable(f"cannot create a CPU cgroup under {ROOT}: {exc}") from exc
        raise Unavailable(f"no cpu controller under {ROOT} (neither cgroup v2 with cpu in "
                          "cgroup.controllers nor a v1 cpu hierarchy on /sys/fs/cgroup/cpu)")

    def enter(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the budget."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> tuple[int, float]:
        """(periods in which the group was throttled, seconds throttled) so far."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines()
                    if len(line.split()) == 2)
        if self.version == 2:
            return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_usec", 0)) / 1e6
        return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        """Remove the group once its processes have ended (retried briefly)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.path.rmdir()
