"""History, horizon and restart (DESIGN section 10).

The property: stations send their events in order with advancing watermarks, so the horizon
moves and history settles mid-stream; the ledger also restarts from its snapshot mid-stream.
Everything it shows must be what a ledger that never settles shows (the brute-force reference
of section 8 for sites that allow negatives; the engine without settling for sites that hold
depletions). Then the cases that arrive before the horizon anyway, over HTTP, and the
upgrade of a database written before snapshots existed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.engine import BEFORE_HORIZON, Ledger
from ledger.events import Movement, parse_time, validate_event
from ledger.server import LedgerServer
from ledger.store import SCHEMA_VERSION
from tests.ledger.factory import at, batch, count, event, pick, receipt, void
from tests.ledger.reference import expected_state

ITEMS = ("A", "B")
LOCS = ("L1", "L2", "L3")
STATIONS = ("s1", "s2", "s3")


@dataclass
class Arrival:
    """One batch: a station's events and the watermark it sends with them."""

    station: str
    events: list[dict[str, Any]]
    watermark: int  # minutes
    settle: bool = False  # settle the engine after this batch
    restart: bool = False  # and restart it from its snapshot


@dataclass
class History:
    arrivals: list[Arrival] = field(default_factory=list)


@st.composite
def histories(draw: st.DrawFn) -> History:
    """Stations capture events at their own advancing clocks and send them in order, some
    keeping a backlog for a while (late events at the ledger); each batch's watermark is the
    oldest unsent event's time, or the station's clock. Voids go out at once, and only for
    an event not behind the horizon (a void of settled history is the before-horizon case,
    tested on its own)."""
    clock = {s: 0 for s in STATIONS}
    queue: dict[str, list[dict[str, Any]]] = {s: [] for s in STATIONS}
    marks = {s: 0 for s in STATIONS}
    seqs = {s: 0 for s in STATIONS}
    arrived: list[dict[str, Any]] = []
    out = History()
    for _ in range(draw(st.integers(1, 24))):
        s = draw(st.sampled_from(STATIONS))
        action = draw(st.sampled_from(["capture", "capture", "capture", "send", "void"]))
        horizon = min(marks.values())
        if action == "capture":
            clock[s] += draw(st.integers(0, 3))
            seqs[s] += 1
            kind = draw(st.sampled_from(["receipt", "pick", "pick", "move", "count"]))
            item = draw(st.sampled_from(ITEMS))
            qty = draw(st.integers(0 if kind == "count" else 1, 4))
            a = draw(st.sampled_from(LOCS))
            common: dict[str, Any] = {"station": s, "seq": seqs[s], "minute": clock[s],
                                      "item": item, "qty": qty}
            if kind in ("receipt", "count"):
                queue[s].append(event(kind, to=a, **common))
            elif kind == "pick":
                queue[s].append(event(kind, frm=a, **common))
            else:
                b = draw(st.sampled_from([x for x in LOCS if x != a]))
                queue[s].append(event(kind, frm=a, to=b, **common))
        elif action == "send" and queue[s]:
            k = draw(st.integers(1, len(queue[s])))
            sent, queue[s] = queue[s][:k], queue[s][k:]
            marks[s] = _minute(queue[s][0]) if queue[s] else clock[s]
            arrived += sent
            out.arrivals.append(Arrival(s, sent, marks[s], draw(st.booleans()),
                                        draw(st.booleans())))
        elif action == "void" and not queue[s]:
            targets = [e for e in arrived if e["type"] != "void" and e["station"] == s
                       and _minute(e) >= horizon]
            if targets:
                target = draw(st.sampled_from(targets))
                seqs[s] += 1
                v = void(target, clock[s], station=s, seq=seqs[s])
                arrived.append(v)
                out.arrivals.append(Arrival(s, [v], clock[s], draw(st.booleans()),
                                            draw(st.booleans())))
    for s in STATIONS:  # everyone sends the rest
        if queue[s]:
            arrived += queue[s]
            out.arrivals.append(Arrival(s, queue[s], clock[s], True, True))
            queue[s] = []
    return out


def _minute(ev: dict[str, Any]) -> int:
    return (parse_time(ev["occurred_at"]) - parse_time(at(0))) // 60_000_000


def _movement(ev: dict[str, Any]) -> Movement:
    m = validate_event(ev, ev["station"], ev["site"])
    assert isinstance(m, Movement), m
    return m


@dataclass
class Run:
    engine: Ledger
    settled_incidents: dict[str, tuple[str, str]]  # depletion id -> (class, status)
    results: dict[str, tuple[str, list[str]]]  # event id -> (status, warnings)


def play(history: History, *, settle: bool, allow_negative: bool = True) -> Run:
    """Feed the history to an engine; with ``settle``, settle and restart it from its
    snapshot where the history says, as the service does."""
    def policy(site: str) -> bool:
        return allow_negative

    engine = Ledger(policy)
    marks = {s: parse_time(at(0)) for s in STATIONS}  # registered at 10:00
    settled: dict[str, tuple[str, str]] = {}
    results: dict[str, tuple[str, list[str]]] = {}
    now = 0
    for arrival in history.arrivals:
        for ev in arrival.events:
            now += 1
            out = engine.submit(_movement(ev), now)
            results[ev["event_id"]] = (out.status, out.warnings)
        marks[arrival.station] = parse_time(at(arrival.watermark))
        engine.set_horizon("WH1", min(marks.values()))
        if settle and arrival.settle:
            done = engine.settle("WH1", engine.horizon["WH1"])
            for inc, _dup in done.incidents:
                settled[inc.movement.event_id] = (inc.cls, inc.status)
        if settle and arrival.restart:
            restored = Ledger.restore(engine.snapshot(), policy)
            assert restored is not None
            engine = restored
    return Run(engine, settled, results)


def incidents_of(run: Run) -> dict[str, tuple[str, str]]:
    got = dict(run.settled_incidents)
    for inc in run.engine.incidents.values():
        assert inc.movement.event_id not in got
        got[inc.movement.event_id] = (inc.cls, inc.status)
    return got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
def test_settling_and_restarts_change_nothing_the_reference_shows(history: History) -> None:
    """Balances in both orders, the incident set, classes and statuses are those of the
    brute-force reference (which never settles), wherever settling and restarts happened;
    and nothing that stations send in order is ever before the horizon."""
    run = play(history, settle=True)
    arrivals = [_movement(ev) for a in history.arrivals for ev in a.events]
    exp = expected_state(arrivals)
    rows = run.engine.balances()
    assert {r[:3]: r[3] for r in rows if r[3]} == {k: v for k, v in exp.on_hand.items() if v}
    assert {r[:3]: r[4] for r in rows if r[4]} == {k: v for k, v in exp.recorded.items() if v}
    got = incidents_of(run)
    assert set(got) == exp.incidents
    for eid, (cls, status) in got.items():
        assert status == exp.statuses[eid], eid
        if eid in exp.classes:
            assert cls == exp.classes[eid], eid
    assert all(BEFORE_HORIZON not in warnings for _s, warnings in run.results.values())
    assert {s for s, _w in run.results.values()} <= {"accepted"}
    # and what the never-settling engine says about resolutions, too
    plain = play(history, settle=False)
    by = {i.movement.event_id: i.resolved_by for i in plain.engine.incidents.values()}
    for inc in run.engine.incidents.values():
        assert inc.resolved_by == by[inc.movement.event_id]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
def test_holds_are_the_same_with_settling_and_restarts(history: History) -> None:
    """A site that forbids negatives: the same events held and released, at the same
    effective times, the same balances, as a ledger that never settles."""
    a = play(history, settle=True, allow_negative=False)
    b = play(history, settle=False, allow_negative=False)
    assert a.results == b.results
    assert ([m.event_id for m in a.engine.held_events()]
            == [m.event_id for m in b.engine.held_events()])
    assert ([r[:5] for r in a.engine.balances() if r[3] or r[4]]
            == [r[:5] for r in b.engine.balances() if r[3] or r[4]])
    # released ones take effect when the plain engine says (those still in memory)
    for eid, m in a.engine.events.items():
        assert m.t == b.engine.events[eid].t


def test_settling_keeps_memory_to_what_can_change() -> None:
    """After settling, memory holds the events from the horizon on, the open incidents and
    their depletions, and no more: the rest is in the store."""
    engine = Ledger()
    for i, ev in enumerate([receipt(5, "L1", 0, station="s1"), pick(2, "L1", 1, station="s1"),
                            pick(9, "L2", 2, station="s1"), receipt(1, "L1", 10, station="s1")]):
        engine.submit(_movement(ev), i)
    engine.set_horizon("WH1", parse_time(at(5)))
    done = engine.settle("WH1", parse_time(at(5)))
    assert done.dropped == 2  # the first receipt and pick
    assert [m.type for m in engine.events.values()] == ["pick", "receipt"]
    assert [i.status for i in engine.incidents.values()] == ["open"]
    assert {r[2]: r[3] for r in engine.balances()} == {"L1": 4, "L2": -9}
    (inc,) = engine.incidents.values()
    engine.submit(_movement(count(0, "L2", 20, station="s1")), 9)
    assert inc.status == "resolved"  # an open incident behind the horizon: a count settles it


# ------------------------------------------------------------------ over HTTP


def _post(http: httpx.Client, token: str, station: str, events: list[dict[str, Any]],
          watermark: float) -> list[dict[str, Any]]:
    r = http.post("/v1/events", json=batch(events, station=station, watermark=at(watermark)),
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["results"]
    return out


def _everything(http: httpx.Client, path: str, key: str, limit: int) -> list[dict[str, Any]]:
    """Every page of a paged list."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        page = http.get(path, params=params).json()
        out += page[key]
        after = page["next"]
        if after is None:
            return out


def test_before_horizon_events_and_voids_of_settled_ones(ledger_db: Any,
                                                         monkeypatch: Any) -> None:
    """DESIGN section 10 end to end, with settling forced at every batch and a restart: an
    event older than the horizon is accepted at the horizon with the warning, on the stored
    event too; a void of a settled event reverses it at the horizon; duplicates of settled
    events are recognised; an open incident behind the horizon is resolved by a void."""
    monkeypatch.setattr("ledger.service.SETTLE_MIN", 1)
    db = ledger_db
    with LedgerServer(db) as srv, httpx.Client(base_url=srv.url) as http:
        tok = srv.add_station("dock-1", "WH1")
        first = receipt(5, "L1", 0, station="dock-1")
        short = pick(3, "L2", 1, station="dock-1")
        assert [r["status"] for r in _post(http, tok, "dock-1", [first, short], 30)] \
            == ["accepted", "accepted"]
        # the horizon is 10:30 now; both are settled
        (late,) = _post(http, tok, "dock-1", [receipt(2, "L1", 10, station="dock-1")], 30)
        assert late["status"] == "accepted" and BEFORE_HORIZON in late["warnings"]
        (dup,) = _post(http, tok, "dock-1", [first], 30)
        assert dup["status"] == "duplicate"
        (clash,) = _post(http, tok, "dock-1", [{**first, "qty": 9}], 30)
        assert clash["status"] == "rejected"
        (undo,) = _post(http, tok, "dock-1", [void(first, 40, station="dock-1")], 40)
        assert undo["status"] == "accepted" and BEFORE_HORIZON in undo["warnings"]
        (fix,) = _post(http, tok, "dock-1", [void(short, 41, station="dock-1")], 41)
        assert BEFORE_HORIZON in fix["warnings"]
        assert {b["location"]: b["on_hand"] for b in
                http.get("/v1/balances").json()["balances"]} == {"L1": 2, "L2": 0}
    with LedgerServer(db) as srv, httpx.Client(base_url=srv.url) as http:
        (inc,) = _everything(http, "/v1/negatives", "incidents", 1)
        assert inc["depletion_event_id"] == short["event_id"]
        assert inc["status"] == "resolved" and inc["resolved_by_event_id"] == fix["event_id"]
        events = {e["event_id"]: e for e in _everything(http, "/v1/events", "events", 2)}
        assert len(events) == 5
        assert events[late["event_id"]]["warnings"] == [BEFORE_HORIZON]
        assert events[late["event_id"]]["effective_at"] == at(30)
        assert events[first["event_id"]]["voided_by"] == undo["event_id"]
        assert {b["location"]: b["on_hand"] for b in
                http.get("/v1/balances").json()["balances"]} == {"L1": 2, "L2": 0}
        # a duplicate of a settled event is still one after the restart
        (again,) = _post(http, tok, "dock-1", [first], 41)
        assert again["status"] == "duplicate"


def test_a_station_offline_for_three_days_holds_the_horizon_back(ledger_db: Any,
                                                                 monkeypatch: Any) -> None:
    """dock-2 goes offline for three days while dock-1 keeps posting (settling all along):
    the site's horizon stays at dock-2's watermark, so nothing dock-2 sends when it is back
    is before the horizon, and its events classify as section 8 says: its receipt explains
    dock-1's pick (ordering, resolved by that receipt), its own pick makes a real shortage
    (item), confirmed once every station's watermark is past it."""
    monkeypatch.setattr("ledger.service.SETTLE_MIN", 1)
    day = 24 * 60
    with LedgerServer(ledger_db) as srv, httpx.Client(base_url=srv.url) as http:
        t1, t2 = srv.add_station("dock-1", "WH1"), srv.add_station("dock-2", "WH1")
        _post(http, t2, "dock-2", [], 0)  # dock-2 is in sync at 10:00, then goes offline
        offline = [receipt(4, "L1", 5, station="dock-2"),
                   pick(9, "L2", 6, station="dock-2")]
        out = _post(http, t1, "dock-1", [pick(3, "L1", 10, station="dock-1")], 10)
        assert out[0]["warnings"] == ["negative balance at L1: -3 (class item)"]
        for d in range(1, 4):  # three days of dock-1 posting in order
            _post(http, t1, "dock-1", [receipt(1, "L3", d * day, station="dock-1")], d * day)
        (h,) = srv.service.run(lambda: dict(srv.service.engine.horizon)).values()
        assert h == parse_time(at(0))  # held back by dock-2
        back = _post(http, t2, "dock-2", offline, 3 * day + 1)
        assert all(BEFORE_HORIZON not in r["warnings"] for r in back)
        assert [r["status"] for r in back] == ["accepted", "accepted"]
        incs = {i["depletion_event_id"]: i for i in
                _everything(http, "/v1/negatives", "incidents", 10)}
        first = incs[out[0]["event_id"]]
        assert (first["class"], first["status"]) == ("ordering", "resolved")
        assert first["resolved_by_event_id"] == offline[0]["event_id"]
        mine = incs[offline[1]["event_id"]]
        # dock-2's pick of 9 at L2: L2 empty; the item total at 10:06 is 4 - 9 < 0
        assert (mine["class"], mine["status"], mine["confirmed"]) == ("item", "open", True)
        (h,) = srv.service.run(lambda: dict(srv.service.engine.horizon)).values()
        assert h == parse_time(at(3 * day))  # dock-1's watermark is now the earliest


def test_paging_validates_its_parameters(ledger_db: Any) -> None:
    with LedgerServer(ledger_db) as srv, httpx.Client(base_url=srv.url) as http:
        for path in ("/v1/events", "/v1/negatives"):
            for bad in ("0", "10001", "x"):
                r = http.get(path, params={"limit": bad})
                assert r.status_code == 400
                assert r.json()["error"] == f"limit: expected 1 to 10000, got {bad!r}"
            r = http.get(path, params={"after": "nonsense"})
            assert r.status_code == 400
            assert r.json()["error"] == "after: not a cursor this ledger gave: 'nonsense'"
            assert http.get(path).json()["next"] is None


# ------------------------------------------------------------------ upgrade in place

# The schema a ledger wrote before snapshots existed (versions 1 and 2, as they shipped).
_OLD_SCHEMA = """
CREATE TABLE stations (
    name TEXT PRIMARY KEY, site TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, revoked_at TEXT, last_contact TEXT, sent_at TEXT,
    watermark TEXT, clock_offset_ms REAL, last_batch_events INTEGER);
CREATE TABLE events (
    event_id TEXT PRIMARY KEY, station TEXT NOT NULL, site TEXT NOT NULL,
    seq INTEGER NOT NULL, type TEXT NOT NULL, item TEXT, occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('accepted', 'held')),
    applied_seq INTEGER UNIQUE, applied_at TEXT, body TEXT NOT NULL);
CREATE INDEX events_held ON events (status) WHERE status = 'held';
PRAGMA user_version = 2;
"""


def test_a_database_from_before_snapshots_opens_with_the_same_ledger(tmp_path: Path) -> None:
    """Upgrade in place: a version-2 database (the log only) is migrated, keeps every event,
    and gives the same incidents and balances as a ledger that never settled it; then it is
    settled and snapshotted, and a restart from the snapshot gives them again."""
    from ledger.events import canonical_json
    from ledger.service import hash_token

    evs = [receipt(5, "L1", 0, station="dock-1"), pick(7, "L1", 1, station="dock-1"),
           receipt(3, "L2", 2, station="dock-1"), count(1, "L2", 3, station="dock-1"),
           pick(1, "L2", 4, station="dock-1"), count(0, "L1", 6, station="dock-1"),
           pick(2, "L3", 7, station="dock-1")]
    evs.append(void(evs[2], 8, station="dock-1"))
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(_OLD_SCHEMA)
    conn.execute("INSERT INTO stations (name, site, token_hash, created_at, watermark) "
                 "VALUES ('dock-1', 'WH1', ?, ?, ?)", (hash_token("tok"), at(0), at(30)))
    for i, ev in enumerate(evs, 1):
        conn.execute("INSERT INTO events VALUES (?, 'dock-1', 'WH1', ?, ?, ?, ?, ?, "
                     "'accepted', ?, ?, ?)",
                     (ev["event_id"], ev["seq"], ev["type"], ev["item"], ev["occurred_at"],
                      at(i), i, at(i), canonical_json(ev)))
    conn.commit()
    conn.close()

    plain = Ledger()
    for i, ev in enumerate(evs):
        plain.submit(_movement(ev), i)
    want_bal = {r[2]: (r[3], r[4]) for r in plain.balances()}
    want_inc = sorted((i.movement.event_id, i.cls, i.status, i.resolved_by)
                      for i in plain.incidents.values())

    def check(http: httpx.Client) -> None:
        assert {b["location"]: (b["on_hand"], b["recorded"]) for b in
                http.get("/v1/balances").json()["balances"]} == want_bal
        got = sorted((i["depletion_event_id"], i["class"], i["status"],
                      i["resolved_by_event_id"])
                     for i in http.get("/v1/negatives").json()["incidents"])
        assert got == want_inc
        ids = [e["event_id"] for e in http.get("/v1/events").json()["events"]]
        assert sorted(ids) == sorted(ev["event_id"] for ev in evs)

    for _restart in range(2):
        with LedgerServer(db) as srv, httpx.Client(base_url=srv.url) as http:
            check(http)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1
        # everything before the horizon (10:30) is settled: its incident is in the store
        assert conn.execute("SELECT count(*) FROM settled_incidents").fetchone()[0] >= 1
    finally:
        conn.close()


def test_a_crash_between_snapshots_loses_nothing(new_db: Any, monkeypatch: Any) -> None:
    """Snapshots are written in the transaction of the batch they follow: a process that dies
    (here: stops without its snapshot at stop) comes back from the last snapshot plus the
    log after it, with the same incidents, balances, holds and horizon as one that never
    stopped, and settles on as before."""
    from ledger.config import parse_config
    from ledger.service import LedgerService

    monkeypatch.setattr("ledger.service.SETTLE_MIN", 7)
    config = parse_config({"sites": {"WH2": {"allow_negative": False}}})
    evs: list[tuple[str, dict[str, Any], float]] = []
    for k in range(40):
        site = "WH1" if k % 2 else "WH2"
        st = f"d-{site}"
        ev = (receipt(2, f"L{k % 3}", k, station=st, site=site) if k % 3 == 0 else
              pick(1, f"L{k % 3}", k, station=st, site=site))
        evs.append((st, ev, k + (0.5 if k % 5 else -3)))

    def state(svc: LedgerService) -> Any:
        def read() -> Any:
            incs = svc.negatives(None, limit=10_000).body["incidents"]
            # (on PostgreSQL an id is a position in recorded order, whose numbering a
            # restart moves on: the order of the ids is what must be the same)
            return (sorted((rank, i["depletion_event_id"], i["class"], i["status"],
                            i["resolved_by_event_id"])
                           for rank, i in enumerate(sorted(incs, key=lambda i: i["id"]))),
                    svc.balances().body, sorted(e["event_id"] for e in svc.held().body["held"]),
                    dict(svc.engine.horizon))
        return svc.run(read)

    def run(db: Any, crash_every: int | None) -> Any:
        svc = LedgerService(db, config).start()
        tokens = {f"d-{s}": svc.run(svc.add_station, f"d-{s}", s) for s in ("WH1", "WH2")}
        for n, (st, ev, mark) in enumerate(evs, 1):
            body = batch([ev], station=st, watermark=at(mark))
            reply = svc.run(svc.ingest, tokens[st], _json_bytes(body), parse_time(at(60)))
            assert reply.status == 200
            if crash_every and n % crash_every == 0:
                monkeypatch.setattr(svc, "_checkpoint_at_stop", lambda: None)
                svc.close()
                svc = LedgerService(db, config).start()
        out = state(svc)
        svc.close()
        return out

    a, b = run(new_db("a.db"), 6), run(new_db("b.db"), None)
    for x, y in zip(a, b, strict=True):
        assert x == y


def _json_bytes(body: dict[str, Any]) -> bytes:
    import json
    return json.dumps(body).encode()


def _sql(db: Any, statement: str, *args: Any) -> Any:
    """Run one statement on either database, return the first row."""
    if isinstance(db, Path):
        conn = sqlite3.connect(db)
        try:
            row = conn.execute(statement, args).fetchone()
            conn.commit()
            return row
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db, autocommit=True) as pg:
        cur = pg.execute(statement.replace("?", "%s"), args)
        return cur.fetchone() if cur.description else None


def test_a_snapshot_that_cannot_be_read_means_one_full_replay(ledger_db: Any,
                                                              caplog: Any) -> None:
    """A snapshot another version wrote (or a damaged one) is not fatal: the whole log is
    replayed, with the same answers, and a new snapshot is taken."""
    import logging

    db = ledger_db
    with LedgerServer(db) as srv, httpx.Client(base_url=srv.url) as http:
        tok = srv.add_station("dock-1", "WH1")
        _post(http, tok, "dock-1", [receipt(5, "L1", 0, station="dock-1"),
                                    pick(7, "L1", 1, station="dock-1")], 2)
        before = (http.get("/v1/balances").json(), http.get("/v1/negatives").json())
    _sql(db, "UPDATE snapshots SET state = ?", b"not a snapshot")
    with (caplog.at_level(logging.ERROR, logger="ledger"),
          LedgerServer(db) as srv, httpx.Client(base_url=srv.url) as http):
        assert (http.get("/v1/balances").json(), http.get("/v1/negatives").json()) == before
    assert "cannot be read; replaying" in caplog.text
    (state,) = _sql(db, "SELECT state FROM snapshots")
    assert bytes(state) != b"not a snapshot"


def test_a_held_pick_released_behind_the_horizon_takes_effect_at_it(ledger_db: Any,
                                                                   monkeypatch: Any) -> None:
    """A site that forbids negatives holds a pick dated behind the horizon; a later receipt
    covers it: the pick is released at the horizon (nothing before it changes), not at its
    own time inside the settled history, where it once met the settled balance's leg and the
    batch failed."""
    monkeypatch.setattr("ledger.service.SETTLE_MIN", 1)
    from ledger.config import parse_config
    cfg = parse_config({"sites": {"WH1": {"allow_negative": False}}})
    with LedgerServer(ledger_db, config=cfg) as srv, \
            httpx.Client(base_url=srv.url) as http:
        tok = srv.add_station("dock-1", "WH1")
        held = pick(3, "L1", 20, station="dock-1")
        first = _post(http, tok, "dock-1", [receipt(5, "L1", 10, station="dock-1"),
                                            pick(3, "L1", 50, station="dock-1"), held], 40)
        assert [r["status"] for r in first] == ["accepted", "accepted", "held"]
        (cover,) = _post(http, tok, "dock-1", [receipt(1, "L1", 47, station="dock-1")], 40)
        assert cover["status"] == "accepted"
        events = {e["event_id"]: e for e in _everything(http, "/v1/events", "events", 10)}
        assert events[held["event_id"]]["status"] == "accepted"
        assert events[held["event_id"]]["effective_at"] == at(40)  # the horizon
        assert http.get("/v1/held").json()["held"] == []
        assert {b["location"]: b["on_hand"] for b in
                http.get("/v1/balances").json()["balances"]} == {"L1": 0}


def test_ids_in_capitals_find_settled_events(ledger_db: Any, monkeypatch: Any) -> None:
    """Event ids are compared in lower case (as stored): a settled event posted again with
    its id in capitals is recognised (not stored twice: once the database refused it and
    every retry got 503), and a void naming a settled target in capitals finds it."""
    monkeypatch.setattr("ledger.service.SETTLE_MIN", 1)
    with LedgerServer(ledger_db) as srv, httpx.Client(base_url=srv.url) as http:
        tok = srv.add_station("dock-1", "WH1")
        first = receipt(5, "L1", 0, station="dock-1")
        assert _post(http, tok, "dock-1", [first], 30)[0]["status"] == "accepted"
        (_, _) = _post(http, tok, "dock-1", [receipt(1, "L2", 31, station="dock-1"),
                                             receipt(1, "L3", 32, station="dock-1")], 40)
        (again,) = _post(http, tok, "dock-1",
                         [{**first, "event_id": first["event_id"].upper()}], 40)
        # the content differs (the id as written is part of it), as for an event in memory
        assert again["status"] == "rejected" and "same id" in again["reason"]
        undo = void(first, 41, station="dock-1")
        (undone,) = _post(http, tok, "dock-1", [{**undo, "voids": first["event_id"].upper()}],
                          41)
        assert undone["status"] == "accepted" and BEFORE_HORIZON in undone["warnings"]
        assert {b["location"]: b["on_hand"] for b in
                http.get("/v1/balances").json()["balances"]}["L1"] == 0
