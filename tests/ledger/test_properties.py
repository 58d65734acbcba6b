"""Property tests: the engine agrees with the brute-force reference whatever the arrival order.

For random event sets (receipts, picks, moves, counts, voids; few items, locations and times,
so ties and late events are common) posted in random arrival orders, the final occurrence-order
balances and the classes of negatives must not depend on the arrival order, and must match a
recomputation from scratch (tests/ledger/reference.py). The incident set and recorded-order
balances do depend on arrival order by definition; they must match the reference for that
order.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.balances import Leg, Track
from ledger.engine import Ledger
from ledger.events import Movement, validate_event
from tests.ledger.factory import event
from tests.ledger.reference import expected_state

ITEMS = ("A", "B")
LOCS = ("L1", "L2", "L3")
STATIONS = ("s1", "s2")


@st.composite
def event_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 14))
    out: list[dict[str, Any]] = []
    seqs = {s: 0 for s in STATIONS}
    for _ in range(n):
        kind = draw(st.sampled_from(["receipt", "pick", "pick", "move", "count", "void"]))
        station = draw(st.sampled_from(STATIONS))
        seqs[station] += 1
        minute = draw(st.integers(0, 5))
        item = draw(st.sampled_from(ITEMS))
        common = {"station": station, "seq": seqs[station], "minute": minute, "item": item}
        if kind == "void":
            targets = [e for e in out if e["type"] != "void"]
            if not targets:
                continue
            target = draw(st.sampled_from(targets))
            common["item"] = target["item"]
            out.append(event("void", voids=target["event_id"], **common))
            continue
        qty = draw(st.integers(0 if kind == "count" else 1, 4))
        a = draw(st.sampled_from(LOCS))
        if kind == "receipt":
            out.append(event(kind, qty=qty, to=a, **common))
        elif kind == "pick":
            out.append(event(kind, qty=qty, frm=a, **common))
        elif kind == "count":
            out.append(event(kind, qty=qty, to=a, **common))
        else:
            b = draw(st.sampled_from([x for x in LOCS if x != a]))
            out.append(event(kind, qty=qty, frm=a, to=b, **common))
    return out


def movements(raw: list[dict[str, Any]]) -> list[Movement]:
    out = []
    for ev in raw:
        m = validate_event(ev, ev["station"], ev["site"])
        assert isinstance(m, Movement), m
        out.append(m)
    return out


def run(raw: list[dict[str, Any]]) -> Ledger:
    ledger = Ledger()
    for i, m in enumerate(movements(raw)):
        out = ledger.submit(m, now=i)
        assert out.status == "accepted", out
    return ledger


def check_against_reference(raw: list[dict[str, Any]]) -> Ledger:
    ledger = run(raw)
    exp = expected_state(movements(raw))
    on_hand = {(s, i, loc): bal for s, i, loc, bal, _rec in ledger.balances() if bal}
    assert on_hand == {k: v for k, v in exp.on_hand.items() if v}
    recorded = {(s, i, loc): rec for s, i, loc, _bal, rec in ledger.balances() if rec}
    assert recorded == {k: v for k, v in exp.recorded.items() if v}
    got = {inc.movement.event_id: inc for inc in ledger.incidents.values()}
    assert set(got) == exp.incidents
    for eid, inc in got.items():
        assert inc.status == exp.statuses[eid], (eid, inc.status, exp.statuses[eid])
        if eid in exp.classes:
            assert inc.cls == exp.classes[eid], (eid, inc.cls, exp.classes[eid])
    return ledger


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=event_sets(), seed=st.integers(0, 2**32 - 1))
def test_engine_matches_brute_force_in_any_arrival_order(raw: list[dict[str, Any]],
                                                          seed: int) -> None:
    in_order = check_against_reference(raw)
    shuffled = list(raw)
    random.Random(seed).shuffle(shuffled)
    late = check_against_reference(shuffled)
    assert ([r[:4] for r in in_order.balances() if r[3]]
            == [r[:4] for r in late.balances() if r[3]])
    classes_a = {i.movement.event_id: i.cls for i in in_order.incidents.values()
                 if i.movement.voided_by is None}
    classes_b = {i.movement.event_id: i.cls for i in late.incidents.values()
                 if i.movement.voided_by is None}
    for eid in classes_a.keys() & classes_b.keys():
        assert classes_a[eid] == classes_b[eid]


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["add", "reset"]),
                              st.integers(-5, 5), st.sampled_from(["keep", "remove", "unwatch"])),
                    min_size=1, max_size=60))
def test_track_matches_a_plain_walk(ops: list[tuple[int, str, int, str]]) -> None:
    """The treap's balances and negative search equal a sorted re-walk of every leg, at
    every time, after late legs, removals and depletions no longer watched."""
    tr = Track()
    legs = []
    for i, (t, op, value, then) in enumerate(ops):
        v = abs(value) if op == "reset" else value
        leg = Leg((i,), reset=op == "reset", value=v, depletion=op == "add" and v < 0)
        tr.add(leg, t)
        legs.append((t, leg, then))
    for t, leg, then in legs:
        if then == "remove":
            tr.remove(leg, t)
        elif then == "unwatch":
            leg.watched = False
            tr.refresh(t)
    live = sorted((t, leg.order, leg) for t, leg, then in legs if then != "remove")

    def walk(upto: int) -> int:
        bal = 0
        for t, _o, leg in live:
            if t <= upto:
                bal = leg.value if leg.reset else bal + leg.value
        return bal

    assert tr.balance == walk(10**9)
    assert [t for t, _legs in tr.walk()] == sorted({t for t, _leg, _then in legs})
    for probe in range(-1, 32):
        assert tr.balance_after(probe) == walk(probe)
        negative = {id(leg) for t, _o, leg in live
                    if leg.depletion and leg.watched and t >= probe and walk(t) < 0}
        assert {id(leg) for leg in tr.find_negative(probe)} == negative


def test_over_http_random_arrival_orders_match_the_reference(ledger_db: Any) -> None:
    """The same property end to end: events posted in random batches to a real server (on
    either database)."""
    import itertools

    import httpx

    from ledger.server import LedgerServer
    from tests.ledger.factory import batch

    counter = itertools.count()
    with LedgerServer(ledger_db) as srv, httpx.Client(base_url=srv.url) as http:
        tokens = {s: srv.add_station(s, "WH1") for s in STATIONS}

        @settings(max_examples=40, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow,
                                         HealthCheck.function_scoped_fixture])
        @given(raw=event_sets(), seed=st.integers(0, 2**32 - 1))
        def check(raw: list[dict[str, Any]], seed: int) -> None:
            n = next(counter)
            names = {item: f"{item}-{n}" for item in ITEMS}
            raw = [{**ev, "item": names[ev["item"]]} for ev in raw]
            rnd = random.Random(seed)
            arrivals = list(raw)
            rnd.shuffle(arrivals)
            i = 0
            while i < len(arrivals):
                ev = arrivals[i]
                j = i + 1  # a run of the same station's events goes in one batch
                while (j < len(arrivals) and arrivals[j]["station"] == ev["station"]
                       and rnd.random() < 0.5):
                    j += 1
                r = http.post("/v1/events", json=batch(arrivals[i:j], station=ev["station"]),
                              headers={"Authorization": f"Bearer {tokens[ev['station']]}"})
                assert r.status_code == 200, r.text
                assert {x["status"] for x in r.json()["results"]} == {"accepted"}
                i = j
            exp = expected_state(movements(arrivals))
            mine = set(names.values())
            rows = [b for b in http.get("/v1/balances").json()["balances"] if b["item"] in mine]
            assert {(b["site"], b["item"], b["location"]): b["on_hand"] for b in rows
                    if b["on_hand"]} == {k: v for k, v in exp.on_hand.items() if v}
            incs = {i["depletion_event_id"]: i for i in http.get("/v1/negatives").json()[
                "incidents"] if i["item"] in mine}
            assert set(incs) == exp.incidents
            for eid, inc in incs.items():
                assert inc["status"] == exp.statuses[eid]
                if eid in exp.classes:
                    assert inc["class"] == exp.classes[eid]

        check()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.text()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(value=_JSON_VALUES, ascii_only=st.booleans(),
       spice=st.sampled_from(["", "NaN", "-Infinity", '"\\ud800"', '"\\ud83d\\ude00"']))
def test_parse_json_reads_a_body_as_the_json_module_does(value: Any, ascii_only: bool,
                                                         spice: str) -> None:
    """The fast parser must never change what a body means: integers beyond 64 bits, NaN,
    lone surrogates and the rest parse exactly as ``json.loads`` (with NaN marked) does."""
    import json

    from ledger.events import _non_finite, parse_json

    body = json.dumps([value, spice and json.loads(spice)] if spice else value,
                      ensure_ascii=ascii_only)
    for data in (body, body.encode(errors="surrogatepass")):
        expected = json.loads(data, parse_constant=_non_finite)
        got = parse_json(data)
        assert repr(got) == repr(expected)  # repr tells 1 from 1.0, and -0.0 from 0.0
        assert type(got) is type(expected)


def test_history_posted_in_order_is_a_balanced_tree() -> None:
    """The late-event cost at a million events rests on this: in-order appends (the usual
    case) build a tree of depth log2 n, not the ~1.4 log2 n of uniform random priorities."""
    tr = Track()
    for i in range(1, 2**12):
        tr.add(Leg((i,), reset=False, value=1, depletion=False), i * 10)
    assert tr.depth() == 12


def test_late_groups_keep_the_tree_shallow_in_any_arrival_order() -> None:
    """Late groups get random ranks: a backlog posted in order into one gap (a dock back
    online) or at random places must not grow a chain."""
    rnd = random.Random(3)
    tr = Track()
    for i in range(1, 4097):
        tr.add(Leg((i,), reset=False, value=1, depletion=False), i * 10_000)
    for j in range(4096):  # a backlog, in order, all inside one early gap
        tr.add(Leg((5000 + j,), reset=False, value=1, depletion=False), 10_001 + j)
    for j in range(4096):  # and late groups at random places
        tr.add(Leg((9000 + j,), reset=False, value=1, depletion=False),
               rnd.randrange(40_000_000) + 1)
    assert tr.groups >= 12_000
    assert tr.depth() <= 3 * 14


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["add", "reset"]),
                              st.integers(-5, 5)), min_size=1, max_size=60),
       horizon=st.integers(0, 32), later=st.lists(st.tuples(st.integers(0, 40),
                                                            st.integers(-5, 5)), max_size=10))
def test_a_settled_track_answers_as_before_from_its_horizon_on(
        ops: list[tuple[int, str, int]], horizon: int, later: list[tuple[int, int]]) -> None:
    """Settling folds the groups before the horizon into one leg: every balance and every
    negative search from the horizon on is what the whole history gives, also after more
    legs arrive at or after the horizon."""
    full, settled = Track(), Track()
    for i, (t, op, value) in enumerate(ops):
        v = abs(value) if op == "reset" else value
        for tr in (full, settled):
            tr.add(Leg((i,), reset=op == "reset", value=v, depletion=op == "add" and v < 0), t)
    settled.settle(horizon)
    assert all(t >= horizon - 1 for t, _legs in settled.walk())
    for j, (t, value) in enumerate(later):
        for tr in (full, settled):
            tr.add(Leg((1000 + j,), reset=False, value=value, depletion=value < 0),
                   max(t, horizon))
    assert settled.balance == full.balance
    for probe in range(horizon - 1, 42):
        assert settled.balance_after(probe) == full.balance_after(probe)
        if probe >= horizon:
            assert ({leg.order for leg in settled.find_negative(probe)}
                    == {leg.order for leg in full.find_negative(probe)})
