"""Connector benchmarks: what forwarding costs ingest, and the machinery's own pace.

Run from the repository root::

    .venv/bin/python bench/connectors.py              # 50,000 events, median of 5
    .venv/bin/python bench/connectors.py --quick      # 10,000 events

It prints:

1. ingest events/s through ``LedgerService.ingest`` without a connector and with one whose
   site is the events' (every accepted event also gets its outbox row, in the same
   transaction), the runs taking turns on fresh databases, and the ratio of the medians;
2. movements/s the forwarding machinery moves into an ERP that answers at once (a model
   adapter in this process: outbox reads, history, planning, marking; every ERP call costs
   nothing), i.e. the ceiling the connector puts on forwarding, not an ERP's speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ledger import _direct_bodies, _on_fresh_db  # noqa: E402
from ledger.config import LedgerConfig  # noqa: E402
from ledger.connectors.forwarder import Forwarder  # noqa: E402
from ledger.connectors.plan import Adjust, Op, Posted, Reverse  # noqa: E402
from ledger.connectors.settings import ConnectorConfig  # noqa: E402
from ledger.events import now_us  # noqa: E402
from ledger.server import tune_gc  # noqa: E402
from ledger.service import LedgerService  # noqa: E402

CONFIG = ConnectorConfig(name="erp", kind="tryton", url="http://erp", database="x",
                         credentials_file="", sites=("WH1",), credentials={})


class InstantErp:
    """An ERP that answers every call at once and remembers nothing but keys."""

    kind = "instant"
    reevaluates_counts = False

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def sees(self, later_t: int, count_t: int) -> bool:
        return later_t // 86_400_000_000 <= count_t // 86_400_000_000

    def find(self, op: Op) -> Posted | None:
        return Posted(op.key, 0 if isinstance(op, Adjust) else None) \
            if op.key in self.keys else None

    def post(self, op: Op) -> Posted:
        self.keys.add(op.key)
        if isinstance(op, Reverse):
            return Posted(op.key)
        return Posted(op.key, 0 if isinstance(op, Adjust) else None)

    def close(self) -> None:
        pass


def ingest(n: int, with_connector: bool, workdir: Path) -> float:
    batches = _direct_bodies(n, 0.01)
    tune_gc()

    def run(db: Path) -> float:
        with LedgerService(db, LedgerConfig()) as svc:
            if with_connector:
                svc.run(svc.store.set_connector_routes, [("erp", "WH1")])
            token = svc.run(svc.add_station, "dock-1", "WH1")
            t0 = time.perf_counter()
            for body in batches:
                reply = svc.run(svc.ingest, token, body, now_us())
                assert reply.status == 200, reply.body
            return n / (time.perf_counter() - t0)

    return _on_fresh_db(run, workdir)


def forwarding(n: int, workdir: Path) -> float:
    batches = _direct_bodies(n, 0.01)

    def run(db: Path) -> float:
        with LedgerService(db, LedgerConfig()) as svc:
            svc.run(svc.store.set_connector_routes, [("erp", "WH1")])
            token = svc.run(svc.add_station, "dock-1", "WH1")
            for body in batches:
                svc.run(svc.ingest, token, body, now_us())
            fw = Forwarder(CONFIG, InstantErp(), svc.run, lambda: svc.store)
            t0 = time.perf_counter()
            fw.forward_pending()
            rate = n / (time.perf_counter() - t0)
            counts = svc.run(svc.store.outbox_counts)["erp"]
            assert counts.get("forwarded") == n and not counts.get("pending"), counts
            return rate

    return _on_fresh_db(run, workdir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = 10_000 if args.quick else 50_000
    repeat = args.repeat
    without: list[float] = []
    with_: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            without.append(ingest(n, False, Path(tmp)))
            with_.append(ingest(n, True, Path(tmp)))
        fwd = forwarding(min(n, 10_000), Path(tmp))
    a, b = statistics.median(without), statistics.median(with_)
    print(f"ingest of {n:,} events (1% late), median of {repeat}, runs taking turns:")
    print(f"  no connector      {a:>9,.0f} events/s")
    print(f"  one connector     {b:>9,.0f} events/s   ratio {b / a:.2f}")
    print(f"forwarding machinery into an instant ERP: {fwd:,.0f} movements/s "
          f"({min(n, 10_000):,} movements)")


if __name__ == "__main__":
    main()
