"""The benchmarks keep running: ``bench/run.py --quick`` end to end, every section reported.

Speed is never asserted here (the machine is shared and noisy); the figures and their goals
live in docs/benchmarks.md, written by the full ``bench/run.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["## Machine", "## How to reproduce", "## Summary", "## Capture",
            "## Scan to ACK under sync", "## Sync",
            "## Agent", "## Ledger", "## Ledger on PostgreSQL"]


@pytest.mark.slow
def test_quick_run_reports_every_section(tmp_path: Path) -> None:
    """Guards against a benchmark rotting: an API it calls changed, a process it starts no
    longer comes up, or a section silently drops out of the report."""
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
                           "--output", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert f"\n{heading}\n" in report, f"{heading} missing from the report"
    assert "The benchmark failed" not in report
    for words in ("nproc", "uname -m", "Python", "Disk", "bench/run.py"):
        assert words in report
    # every section states its goals with a verdict, whatever the figures were
    summary = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    for title in ("Capture", "Scan to ACK under sync", "Sync", "Agent", "Ledger",
                  "Ledger on PostgreSQL"):
        assert f"| {title} |" in summary
