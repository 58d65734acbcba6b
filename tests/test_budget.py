"""The station's CPU budget: the quota read from the process's cgroup (v2 and v1 layouts,
written into tmp_path as the kernel shows them), and the pacer that keeps sync inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

import agent.budget as budget
from agent.budget import Pacer, available_cores


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(budget, "_CGROUP", tmp_path)
    monkeypatch.setattr(budget.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    return tmp_path


def test_a_v2_quota_is_the_tightest_cpu_max_up_to_the_root(root: Path) -> None:
    unit = root / "system.slice" / "scan-agent@dock-3.service"
    unit.mkdir(parents=True)
    (root / "system.slice" / "cpu.max").write_text("max 100000\n")
    (unit / "cpu.max").write_text("25000 100000\n")
    assert available_cores("0::/system.slice/scan-agent@dock-3.service\n") == 0.25
    (root / "system.slice" / "cpu.max").write_text("10000 100000\n")
    assert available_cores("0::/system.slice/scan-agent@dock-3.service\n") == 0.1


def test_a_v1_quota_is_read_from_the_cpu_hierarchy(root: Path) -> None:
    group = root / "cpu" / "docks"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("50000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    text = "12:memory:/x\n4:cpu,cpuacct:/docks\n0::/\n"
    assert available_cores(text) == 0.5


def test_no_quota_means_the_cpus_the_process_may_run_on(root: Path) -> None:
    assert available_cores("0::/\n1:cpu:/\n") == 4.0
    assert available_cores("") == 4.0


def test_the_pacer_lets_work_through_while_the_process_stays_within_its_share() -> None:
    p = Pacer(cores=0.25, share=0.6, burst=0.005)  # 0.15 of a core for the whole process
    assert p.delay(cpu=0.0, now=0.0) == 0.0
    assert p.delay(cpu=0.014, now=0.1) == 0.0  # 14 ms of CPU in 100 ms: within 15 ms
    wait = p.delay(cpu=0.044, now=0.2)  # 30 ms more in the next 100 ms: 10 ms over
    assert wait == pytest.approx((0.030 - 0.015 - 0.005) / 0.15)
    # having waited, the bucket is even and work goes on
    assert p.delay(cpu=0.044, now=0.2 + wait) == pytest.approx(0.0, abs=1e-9)
    # a quiet spell refills the bucket only up to its burst
    assert p.delay(cpu=0.044, now=100.0) == 0.0
    assert p.delay(cpu=0.044 + 0.006, now=100.0) == pytest.approx(0.001 / 0.15)
