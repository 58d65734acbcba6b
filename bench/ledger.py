"""Ledger benchmarks: ingest throughput and the cost of one late (backdated) event.

Run from the repository root::

    .venv/bin/python bench/ledger.py              # full run (a few minutes)
    .venv/bin/python bench/ledger.py --quick      # smaller sizes, a few seconds
    .venv/bin/python bench/ledger.py --repeat 5   # median of 5 runs per ingest figure

It prints:

1. ingest events/s through the store + engine (``LedgerService.ingest``: JSON parsing,
   validation, engine, one SQLite transaction per batch; batches of the agent's default
   ``batch_size``, 1000, as a station catching up sends them) and over HTTP (a real
   ``scan-ledger serve`` on 127.0.0.1, 4 stations posting at once, each one batch after the
   other as the agent does), for in-order history and with 1% and 10% late events; each
   figure is the median of ``--repeat`` runs (5 by default), each on a fresh database, the
   figures' runs taking turns, because other work on the machine easily costs a single run
   a third and a burst of it lasts a while;
2. the cost of one late event as the history of ONE item-location grows from 10k to 100k to
   1M events, measured on the engine (the sizes in turn, best of 10 rounds of 1000 late
   events; a history that has grown by a tenth is built again), with its ratio to the 10k
   cost;
3. memory and restart against history (DESIGN section 10): a ledger database holding 300,000
   and then 3,000,000 events (the same 100 items x 10 locations, 4 stations whose watermarks
   advance as they post) is served by a real ``scan-ledger serve``; it is stopped with
   SIGTERM and started again, and the time from the start to its first answer and its
   resident memory then are measured (median of 3 restarts), with the ratio 3M / 300k.
   The history is written straight into the store through its bulk path (the engine settles
   and snapshots it as the service does), not posted over HTTP: posting 3M events would take
   minutes and measure ingest, which figure 1 does.
4. with ``--postgres`` (or ``--only-postgres``): ingest over HTTP into PostgreSQL (a
   throwaway cluster, every commit synced) with one and with two ``scan-ledger serve``
   processes, beside one process on SQLite in the same run, the stations spread over
   four sites and each batch sent to either process at random, as a load balancer does;
   and the takeover: how long after one of two processes is killed (SIGKILL) the stations
   of its sites are acknowledged again.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from agent.config import LedgerConfig as AgentLedgerConfig  # noqa: E402
from ledger.engine import Ledger  # noqa: E402
from ledger.events import Movement, canonical_json, format_time, now_us  # noqa: E402
from ledger.server import tune_gc  # noqa: E402
from ledger.service import LedgerService  # noqa: E402
from ledger.store import Contact, NewEvent  # noqa: E402

BASE_US = 1_795_000_000_000_000  # 2026-11-18
BATCH = AgentLedgerConfig(url="http://ledger").batch_size  # what a station sends at most
STATIONS = 4  # stations posting to the ledger at once in the HTTP figures


def _uuid7(t_us: int, rnd: random.Random) -> str:
    """A version-7 UUID (time-ordered, as the agent sends) for time t_us."""
    value = ((t_us // 1000) << 80) | (0x7 << 76) | (rnd.getrandbits(12) << 64) \
        | (0b10 << 62) | rnd.getrandbits(62)
    return str(uuid.UUID(int=value))


def make_events(n: int, late_fraction: float, seed: int = 1,
                station: str = "dock-1") -> list[dict[str, Any]]:
    """n events over 100 items x 10 locations, 100 ms apart (a busy site: 36,000 scans an
    hour); a fraction backdated by 1 to 60 minutes (a dock that was offline)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        t = BASE_US + i * 100_000
        if rnd.random() < late_fraction:
            t -= rnd.randint(60, 3600) * 1_000_000
        out.append(_history_event(rnd, station, i + 1, t))
    return out


def bodies(events: list[dict[str, Any]], station: str = "dock-1") -> list[bytes]:
    out = []
    for i in range(0, len(events), BATCH):
        chunk = events[i:i + BATCH]
        out.append(json.dumps({"station": station, "sent_at": format_time(now_us()),
                               "watermark": chunk[-1]["occurred_at"], "events": chunk}).encode())
    return out


@functools.cache
def _direct_bodies(n: int, late: float) -> list[bytes]:
    """The request bodies of ``n`` events from one station (built once per run of the
    benchmark: the figures' runs take turns)."""
    return bodies(make_events(n, late))


@functools.cache
def _station_bodies(n: int, late: float, stations: int) -> list[list[bytes]]:
    """The same events split between ``stations`` stations, batch by batch in turn."""
    events = make_events(n, late)
    names = [f"dock-{k + 1}" for k in range(stations)]
    per_station: list[list[bytes]] = [[] for _ in names]
    for b, i in enumerate(range(0, len(events), BATCH)):
        k = b % stations
        chunk = [{**ev, "station": names[k]} for ev in events[i:i + BATCH]]
        per_station[k] += bodies(chunk, names[k])
    return per_station


_runs = itertools.count()


def _on_fresh_db(run: Callable[[Path], float], workdir: Path) -> float:
    """``run`` on a fresh database file, removed afterwards."""
    db = workdir / f"run-{next(_runs)}.db"
    try:
        return run(db)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


def ingest_direct(n: int, late: float, workdir: Path) -> tuple[float, int]:
    """Events/s through ``LedgerService.ingest`` (one run), and the number of incidents the
    events open."""
    batches = _direct_bodies(n, late)
    tune_gc()  # as `scan-ledger serve` does
    incidents = 0

    def run(db: Path) -> float:
        nonlocal incidents
        with LedgerService(db) as svc:
            token = svc.run(svc.add_station, "dock-1", "WH1")
            t0 = time.perf_counter()
            for body in batches:
                reply = svc.run(svc.ingest, token, body, now_us())
                assert reply.status == 200, reply.body
            rate = n / (time.perf_counter() - t0)
            incidents = len(svc.engine.incidents)
        gc.collect()
        return rate

    return _on_fresh_db(run, workdir), incidents


def ingest_http(n: int, late: float, workdir: Path, stations: int = STATIONS) -> float:
    """Against ``scan-ledger serve`` in its own process, as stations post to it: ``stations``
    stations at once, each posting its own batches one after the other, as the agent's sync
    does (one run)."""
    names = [f"dock-{k + 1}" for k in range(stations)]
    per_station = _station_bodies(n, late, stations)
    ledger = [sys.executable, "-m", "ledger"]

    def run(db: Path) -> float:
        tokens = []
        for name in names:
            add = subprocess.run([*ledger, "station", "add", name, "--site", "WH1", "--db",
                                  str(db)], capture_output=True, text=True, check=True,
                                 cwd=ROOT)
            tokens.append(add.stdout.splitlines()[-1])
        proc = subprocess.Popen([*ledger, "serve", "--db", str(db), "--port", "0",
                                 "--log-level", "warning"], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]

            def post_all(token: str, batches: list[bytes]) -> None:
                headers = {"Authorization": f"Bearer {token}",
                           "Content-Type": "application/json"}
                with httpx.Client(base_url=url, timeout=120) as http:
                    for body in batches:
                        r = http.post("/v1/events", content=body, headers=headers)
                        assert r.status_code == 200, r.text

            with ThreadPoolExecutor(max_workers=stations) as pool:
                t0 = time.perf_counter()
                posting = [pool.submit(post_all, tok, b)
                           for tok, b in zip(tokens, per_station, strict=True)]
                for f in posting:
                    f.result()
                return n / (time.perf_counter() - t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    return _on_fresh_db(run, workdir)


LATE_FRACTIONS = (0.0, 0.01, 0.10)


def ingest_figures(n_direct: int, n_http: int, workdir: Path, repeat: int = 3,
                   lates: tuple[float, ...] = LATE_FRACTIONS
                   ) -> dict[float, tuple[float, float, int]]:
    """For each late fraction: median events/s through the service and over HTTP, and the
    incidents the events open. The runs take turns (every figure's first run, then every
    figure's second, ...), so that each median samples the machine at different moments: a
    shared machine's load moves within a minute, and runs back to back would all see the
    same burst."""
    direct: dict[float, list[float]] = {late: [] for late in lates}
    http: dict[float, list[float]] = {late: [] for late in lates}
    incidents: dict[float, int] = {}
    for _ in range(max(1, repeat)):
        for late in lates:
            rate, incidents[late] = ingest_direct(n_direct, late, workdir)
            direct[late].append(rate)
            http[late].append(ingest_http(n_http, late, workdir))
    return {late: (statistics.median(direct[late]), statistics.median(http[late]),
                   incidents[late]) for late in lates}


def _movement(i: int, t: int, kind: str, qty: int) -> Movement:
    return Movement(event_id=f"e{i}", station="dock-1", site="WH1", scanner="handheld", seq=i,
                    type=kind, item="00000000000017", qty=qty,
                    from_location="A-01" if kind == "pick" else None,
                    to_location=None if kind == "pick" else "A-01",
                    occurred_at=format_time(t), t=t, voids=None, digest=b"")


def _history(size: int) -> Ledger:
    """An engine holding ``size`` events on one item-location: receipts of 2 and picks of 1,
    1 ms apart, so the bin never goes negative."""
    engine = Ledger()
    for i in range(size):
        kind = "pick" if i % 3 == 0 else "receipt"
        engine.submit(_movement(i, BASE_US + i * 1000, kind, 1 if kind == "pick" else 2), 0)
    return engine


def late_event_costs(sizes: list[int], late: int, rounds: int = 10,
                     max_growth: float = 0.10) -> list[float]:
    """Mean seconds to ingest one late event into one item-location holding each of
    ``sizes`` events; the late events land at random earlier times, alternately picks and
    receipts. Every history is built first and the rounds take turns over them, so that each
    size is measured under the same conditions as the others (a shared machine's load moves
    within a minute); best of ``rounds`` per size. The late events stay in the history, so a
    history that has grown by ``max_growth`` of its size is built again before the next
    round: each size is measured at that size (the 10k one, rebuilt every round, would
    otherwise be measured at up to twice its size)."""
    engines = [_history(size) for size in sizes]
    gc.collect()
    gc.freeze()  # as the service does after rebuilding: the history is long-lived
    rnd = random.Random(7)
    best = [float("inf")] * len(sizes)
    added = list(sizes)
    try:
        for _ in range(rounds):
            for k, size in enumerate(sizes):
                if added[k] + late > size * (1 + max_growth):
                    gc.unfreeze()
                    engines[k] = _history(size)
                    added[k] = size
                    gc.collect()
                    gc.freeze()
                engine = engines[k]
                todo = []
                for j in range(late):
                    added[k] += 1
                    pos = rnd.randrange(size)
                    kind = "pick" if j % 2 else "receipt"
                    todo.append(_movement(added[k], BASE_US + pos * 1000 + 1 + j % 997, kind, 1))
                t0 = time.perf_counter()
                for m in todo:
                    engine.submit(m, 0)
                best[k] = min(best[k], (time.perf_counter() - t0) / late)
    finally:
        gc.unfreeze()
    return best


PG_SITES = 4  # the PostgreSQL figures' stations are spread over this many sites


def _site_bodies(n: int, stations: int) -> list[tuple[str, str, list[bytes]]]:
    """(station, site, bodies): in-order events split between ``stations`` stations spread
    over PG_SITES sites, batch by batch in turn."""
    events = make_events(n, 0.0)
    out = []
    for k in range(stations):
        name, site = f"dock-{k + 1}", f"WH{k % PG_SITES + 1}"
        mine = [{**ev, "station": name, "site": site}
                for b, i in enumerate(range(0, len(events), BATCH)) if b % stations == k
                for ev in events[i:i + BATCH]]
        out.append((name, site, bodies(mine, name)))
    return out


def _serve(db: str | Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "ledger", "serve", "--db", str(db),
                             "--port", "0", "--log-level", "warning"], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("scan-ledger listening on "):
        proc.wait(30)
        raise RuntimeError(f"scan-ledger serve --db {db} did not start")
    return proc, line.split()[-1]


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def _add_stations(db: str | Path, work: list[tuple[str, str, list[bytes]]]) -> list[str]:
    from ledger.service import hash_token, new_token
    from ledger.store import open_store

    tokens = []
    with open_store(db) as store:
        for name, site, _ in work:
            token = new_token()
            store.add_station(name, site, hash_token(token), format_time(now_us()))
            tokens.append(token)
    return tokens


def _wait_shared(db: str, processes: int) -> None:
    """Until ``processes`` processes own sites (a process that joins is handed its share)."""
    from ledger.store import open_store

    deadline = time.monotonic() + 30
    with open_store(db) as store:
        while len({o.url for o in store.site_owners().values()  # type: ignore[attr-defined]
                   if o.held}) < processes:
            if time.monotonic() > deadline:
                raise RuntimeError("the sites were not shared between the processes")
            time.sleep(0.1)


def ingest_http_sites(n: int, db: str | Path, processes: int, stations: int = STATIONS * 2
                      ) -> float:
    """Events/s over HTTP into ``processes`` ``scan-ledger serve`` processes on ``db`` (a
    SQLite file for one process, or a PostgreSQL URL), ``stations`` stations over PG_SITES
    sites posting at once, each batch to one of the processes at random."""
    work = _site_bodies(n, stations)
    tokens = _add_stations(db, work)
    procs: list[subprocess.Popen[str]] = []
    try:
        urls = []
        for _ in range(processes):
            proc, url = _serve(db)
            procs.append(proc)
            urls.append(url)
        if processes > 1:
            _wait_shared(str(db), processes)

        def post_all(k: int) -> None:
            rnd = random.Random(k)
            headers = {"Authorization": f"Bearer {tokens[k]}",
                       "Content-Type": "application/json"}
            with httpx.Client(timeout=120) as http:
                for body in work[k][2]:
                    r = http.post(rnd.choice(urls) + "/v1/events", content=body,
                                  headers=headers)
                    assert r.status_code == 200, r.text

        with ThreadPoolExecutor(max_workers=stations) as pool:
            t0 = time.perf_counter()
            for f in [pool.submit(post_all, k) for k in range(stations)]:
                f.result()
            return n / (time.perf_counter() - t0)
    finally:
        _stop(procs)


def takeover_time(db: str, stations: int = STATIONS * 2) -> float:
    """Seconds from SIGKILL of one of two processes until every station of the sites it
    owned has a batch acknowledged again (stations post small batches continuously, to any
    live process, retrying 50 ms after a failure)."""
    from ledger.store import open_store

    work = _site_bodies(stations * BATCH, stations)
    tokens = _add_stations(db, work)
    procs: list[subprocess.Popen[str]] = []
    try:
        urls = []
        for _ in range(2):
            proc, url = _serve(db)
            procs.append(proc)
            urls.append(url)
        _wait_shared(db, 2)
        live = list(urls)
        acked: dict[int, list[float]] = {k: [] for k in range(stations)}
        stop = False

        def post_all(k: int) -> None:
            rnd = random.Random(k)
            events = json.loads(work[k][2][0])["events"]
            headers = {"Authorization": f"Bearer {tokens[k]}"}
            seq = 0
            with httpx.Client(timeout=10) as http:
                while not stop:
                    chunk = events[seq % len(events): seq % len(events) + 20]
                    seq += 20
                    body = {"station": work[k][0], "sent_at": format_time(now_us()),
                            "watermark": None, "events": chunk}
                    while not stop:
                        try:
                            r = http.post(rnd.choice(live) + "/v1/events", json=body,
                                          headers=headers)
                            if r.status_code == 200:
                                acked[k].append(time.monotonic())
                                break
                        except httpx.HTTPError:
                            pass
                        time.sleep(0.05)

        with ThreadPoolExecutor(max_workers=stations) as pool:
            running = [pool.submit(post_all, k) for k in range(stations)]
            time.sleep(1.5)
            with open_store(db) as store:
                victims = {s for s, o in store.site_owners().items()  # type: ignore[attr-defined]
                           if o.url == urls[0]}
            procs[0].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            live.remove(urls[0])
            deadline = killed + 30
            mine = [k for k in range(stations) if work[k][1] in victims]
            while time.monotonic() < deadline and not all(
                    any(t > killed for t in acked[k]) for k in mine):
                time.sleep(0.01)
            stop = True
            for f in running:
                f.result()
        return max(min((t for t in acked[k] if t > killed), default=float("inf")) - killed
                   for k in mine)
    finally:
        _stop(procs)


def postgres_figures(n: int, workdir: Path, repeat: int = 3
                     ) -> tuple[dict[str, float], list[float]]:
    """Median events/s over HTTP: one process on SQLite, one and two on PostgreSQL (runs
    taking turns, each on a fresh database); and the takeover times of ``repeat`` kills."""
    from tests.pgcluster import PgCluster

    rates: dict[str, list[float]] = {"sqlite, 1 process": [], "postgresql, 1 process": [],
                                     "postgresql, 2 processes": []}
    takeovers = []
    with PgCluster.running(durable=True) as pg:
        for _ in range(max(1, repeat)):
            rates["sqlite, 1 process"].append(_on_fresh_db(
                lambda db: ingest_http_sites(n, db, 1), workdir))
            rates["postgresql, 1 process"].append(ingest_http_sites(n, pg.create_database(), 1))
            rates["postgresql, 2 processes"].append(
                ingest_http_sites(n, pg.create_database(), 2))
        for _ in range(max(1, repeat)):
            takeovers.append(takeover_time(pg.create_database()))
    return {k: statistics.median(v) for k, v in rates.items()}, takeovers




HISTORY_STATIONS = 4
HISTORY_CHUNK = 5_000  # events per station batch while building a history


def build_history(db: Path, n: int, seed: int = 5) -> int:
    """Write ``n`` events of in-order history (100 items x 10 locations, 100 ms apart, from
    4 stations in turn, each chunk's watermark its last event) into a fresh ledger database:
    through the engine and the store's bulk path (one transaction per chunk), settling and
    snapshotting as the service does while ingesting. Returns the events it holds in memory
    at the end."""
    rnd = random.Random(seed)
    names = [f"dock-{k + 1}" for k in range(HISTORY_STATIONS)]
    with LedgerService(db) as svc:
        def build() -> int:
            for name in names:
                svc.add_station(name, "WH1")
            engine = svc.engine
            seqs = dict.fromkeys(names, 0)
            i = 0
            chunk = 0
            while i < n:
                name = names[chunk % len(names)]
                chunk += 1
                rows = []
                received = format_time(now_us())
                for _ in range(min(HISTORY_CHUNK, n - i)):
                    t = BASE_US + i * 100_000
                    i += 1
                    seqs[name] += 1
                    ev = _history_event(rnd, name, seqs[name], t)
                    body = canonical_json(ev)
                    m = Movement(ev["event_id"], name, "WH1", "handheld", seqs[name],
                                 ev["type"], ev["item"], ev["qty"], ev["from_location"],
                                 ev["to_location"], ev["occurred_at"], t, None, b"", body)
                    out = engine.submit(m, now_us())
                    rows.append(NewEvent(m.event_id, name, "WH1", m.seq, m.type, m.item,
                                         m.occurred_at, received, out.status, out.applied_seq,
                                         received if out.applied_seq else None, body))
                    m.body = None
                mark = rows[-1].occurred_at
                contact = Contact(name, received, received, mark, 0.0, len(rows))
                horizons = svc._advance_horizon("WH1", name, mark)
                svc._since_snapshot += len(rows)
                svc.store.save_batch(rows, [], contact, horizons=horizons,
                                     checkpoint=svc._maybe_checkpoint())
            engine.take_changes()
            return len(engine.events)

        return svc.run(build)


def _history_event(rnd: random.Random, station: str, seq: int, t: int) -> dict[str, Any]:
    item = f"{rnd.randrange(100):014d}"
    a, b = f"A-{rnd.randrange(10):02d}", f"B-{rnd.randrange(10):02d}"
    r = rnd.random()
    if r < 0.6:
        kind, frm, to, qty = "receipt", None, a, rnd.randint(1, 5)
    elif r < 0.9:
        kind, frm, to, qty = "pick", a, None, rnd.randint(1, 3)
    else:
        kind, frm, to, qty = "move", a, b, 1
    return {"event_id": _uuid7(t, rnd), "station": station, "site": "WH1",
            "scanner": "handheld", "seq": seq, "type": kind, "item": item, "lot": None,
            "serial": None, "qty": qty, "from_location": frm, "to_location": to,
            "occurred_at": format_time(t), "reference": None, "operator": None,
            "voids": None, "clock": {"synced": True, "offset_ms": 0.0, "basis": "ntp"},
            "raw": []}


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def restart_once(db: Path) -> tuple[float, int]:
    """Start ``scan-ledger serve`` on ``db`` and time it to its first answer (GET
    /v1/negatives?limit=1, which needs the engine loaded); return that and its resident
    memory then; stop it with SIGTERM."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ledger", "serve", "--db", str(db),
                             "--port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        r = httpx.get(f"{url}/v1/negatives", params={"limit": 1}, timeout=120)
        assert r.status_code == 200, r.text
        elapsed = time.perf_counter() - t0
        return elapsed, _rss_bytes(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def history_figures(sizes: list[int], workdir: Path, restarts: int = 3
                    ) -> list[tuple[int, int, float, int, int]]:
    """For each size: (size, events in memory, median restart s, median RSS bytes after
    the restart, database bytes). Each database is built, served once (the first start
    after building), then restarted ``restarts`` times."""
    out = []
    for size in sizes:
        db = workdir / f"history-{size}.db"
        try:
            in_memory = build_history(db, size)
            restart_once(db)  # the first start after the build
            runs = [restart_once(db) for _ in range(restarts)]
            out.append((size, in_memory, statistics.median(r[0] for r in runs),
                        int(statistics.median(r[1] for r in runs)), db.stat().st_size))
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--repeat", type=int, default=5, metavar="N",
                    help="runs per ingest figure; the median is printed (default 5)")
    ap.add_argument("--postgres", action="store_true",
                    help="add the PostgreSQL figures (needs Debian's postgresql)")
    ap.add_argument("--only-postgres", action="store_true",
                    help="the PostgreSQL figures alone")
    args = ap.parse_args()
    if args.postgres or args.only_postgres:
        n = 10_000 if args.quick else 50_000
        with tempfile.TemporaryDirectory() as tmp:
            rates, takeovers = postgres_figures(n, Path(tmp), min(args.repeat, 3))
        print(f"ingest over HTTP, {n:,} in-order events from {STATIONS * 2} stations over "
              f"{PG_SITES} sites, each batch to a process at random:")
        base = rates["sqlite, 1 process"]
        for label, rate in rates.items():
            print(f"  {label:<24} {rate:>9,.0f} events/s   ratio vs SQLite {rate / base:.2f}")
        print("takeover after SIGKILL of one of two processes: "
              + ", ".join(f"{t:.2f} s" for t in takeovers))
        if args.only_postgres:
            return
    # long enough that settling (every 50,000 events at least) is in every figure
    n_direct = 20_000 if args.quick else 150_000
    n_http = 10_000 if args.quick else 150_000
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    history = [20_000, 60_000] if args.quick else [300_000, 3_000_000]

    print(f"machine: nproc={os.cpu_count()} arch={platform.machine()} "
          f"python={platform.python_version()}")
    print(f"ingest: batches of {BATCH} events over 100 items x 10 locations; SQLite WAL, "
          f"synchronous=FULL; median of {max(1, args.repeat)} run(s), the figures' runs "
          "taking turns")
    with tempfile.TemporaryDirectory() as tmp:
        figures = ingest_figures(n_direct, n_http, Path(tmp), args.repeat)
    for late, (direct, http, incidents) in figures.items():
        label = "in order" if late == 0 else f"{late:.0%} late"
        print(f"  {label:>9}: store+engine {direct:>9,.0f} events/s   "
              f"HTTP {http:>9,.0f} events/s   ({incidents:,} incidents opened "
              f"in {n_direct:,} events)")

    rounds, late = 10, 1000  # best of 10: a single round is easily disturbed
    print(f"one late event on one item-location (engine), best of {rounds} x {late}, "
          "sizes measured in turn:")
    costs = late_event_costs(sizes, late, rounds)
    for size, cost in zip(sizes, costs, strict=True):
        print(f"  history {size:>9,}: {cost * 1e6:7.1f} µs per late event   "
              f"ratio vs 10k {cost / costs[0]:4.2f}")
    if costs[-1] / costs[0] > 2:
        print("  WARNING: late-event cost grew more than 2x")

    print("restart of `scan-ledger serve` (SIGTERM, start, first answer) against history, "
          "median of 3:")
    with tempfile.TemporaryDirectory() as tmp:
        figures_h = history_figures(history, Path(tmp))
    for size, in_memory, restart, rss, dbsize in figures_h:
        print(f"  history {size:>9,}: restart {restart:5.2f} s   RSS {rss / 2**20:6.1f} MiB   "
              f"({in_memory:,} events in memory; database {dbsize / 2**20:,.0f} MiB)")
    ratio = figures_h[-1][3] / figures_h[0][3]
    print(f"  memory ratio {history[-1]:,} / {history[0]:,}: {ratio:.2f}x (goal <= 1.25x); "
          f"restart goal <= 3 s at both")


if __name__ == "__main__":
    main()
