"""How long the manager's page takes at a busy site's history (no goal: a figure to watch).

    .venv/bin/python -m bench.page [--sizes 20000 100000]

A real ledger on a temporary database ingests ``n`` events of bench/ledger.py's busy site (100
items x 10 locations, 5 % late), with names for every item; then each page and export is
fetched three times over HTTP and the median is printed beside ``GET /v1/negatives`` (the
JSON of every incident, which the overview renders as HTML) as the baseline of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.ledger import bodies, make_events
from ledger.events import now_us
from ledger.server import LedgerServer

__all__ = ["main", "page_times"]


def page_times(n: int, repeat: int = 3) -> tuple[int, list[tuple[str, float, int]]]:
    """(incidents, [(path, median seconds, bytes)]) for a ledger of n events."""
    with tempfile.TemporaryDirectory(prefix="ledger-page-") as d, \
            LedgerServer(Path(d) / "ledger.db") as srv:
        token = srv.add_station("dock-1", "WH1")
        svc = srv.service
        assert svc is not None
        for body in bodies(make_events(n, 0.05)):
            assert srv.call(svc.ingest, token, body, now_us()).status == 200
        srv.import_items([(f"{i:014d}", f"Item {i}") for i in range(100)])
        last = len(svc.engine.incidents)
        out = []
        with httpx.Client(base_url=srv.url, timeout=300) as http:
            for path in ("/v1/negatives", "/", "/?class=item&status=open", "/v1/negatives.csv",
                         f"/incidents/{last}", f"/v1/negatives/{last}"):
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    r = http.get(path)
                    times.append(time.perf_counter() - t0)
                    r.raise_for_status()
                out.append((path, statistics.median(times), len(r.content)))
        return last, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    args = ap.parse_args(argv)
    for n in args.sizes:
        incidents, rows = page_times(n)
        base = rows[0][1]
        print(f"{n:,} events, {incidents:,} incidents")
        for path, s, size in rows:
            print(f"  {path:28s} {s * 1000:8.1f} ms  {s / base:5.2f}x  {size / 1024:7.0f} KiB")


if __name__ == "__main__":
    main()
