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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.capture import Station
from agent.journal import Journal, JournalWriter
from bench.capture import GTINS, _config
from drivers.base import RawScan


async def handle_cpu(dirpath: Path, n: int, prof: cProfile.Profile | None = None) -> list[float]:
    """Seconds of ``Station.handle`` per scan, on the capture thread, without fsync."""
    cfg = _config(dirpath)
    journal = Journal(cfg.database, cfg.station, cfg.site)
    journal.conn.execute("PRAGMA synchronous = OFF")
    async with JournalWriter(journal) as w:
        st = Station(cfg, w)

        async def measure() -> list[float]:
            await st.start()
            out = []
            if prof is not None:
                prof.enable()
            for i in range(n):
                t = GTINS[i % 4]
                scan = RawScan("s0", t, t.encode())
                t0 = time.perf_counter()
                o = await st.handle(scan)
                out.append(time.perf_counter() - t0)
                assert o.status == "accepted", o
            if prof is not None:
                prof.disable()
            return out

        return list(await w.run(measure()))


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
            p50s.append(statistics.median(asyncio.run(handle_cpu(Path(d), a.scans, prof))))
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    print("Station.handle without fsync, p50 per round: "
          + ", ".join(f"{x * 1e6:.1f} us" for x in p50s)
          + f"; median {statistics.median(p50s) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
