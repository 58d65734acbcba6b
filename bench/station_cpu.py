"""CPU per scan on the station's capture path, with the disk's wait taken out.

``Station.handle`` per scan on the capture thread (as ``bench/capture.py`` measures it), on a
journal whose connection runs with ``PRAGMA synchronous = OFF``: no fsync, so what is left is
what the capture thread spends on a scan (interpreting it, the session, the event id, the
rows and SQLite's own work, the loop's turns). It is the part of scan-to-commit that the
code decides; the disk adds its sync on top. Each round is a fresh journal; the p50 of each
round is printed, and their median.

Run: ``.venv/bin/python bench/station_cpu.py [--scans 3000] [--rounds 5] [--profile]``
(``--profile``: one round under cProfile, the top functions by their own time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capture import agent_latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    prof = cProfile.Profile() if a.profile else None
    p50s = []
    for _ in range(1 if prof else a.rounds):
        with tempfile.TemporaryDirectory() as d:
            run = agent_latency(Path(d), a.scans, durable=False, prof=prof)
            p50s.append(statistics.median(asyncio.run(run)))
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    print("Station.handle without fsync, p50 per round: "
          + ", ".join(f"{x * 1e6:.1f} us" for x in p50s)
          + f"; median {statistics.median(p50s) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
