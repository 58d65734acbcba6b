"""Several ``scan-ledger serve`` processes on one PostgreSQL database (DESIGN section 12).

Real processes (``python -m ledger serve``) on a throwaway PostgreSQL cluster: the answers,
incidents, balances and holds must be exactly those of one SQLite ledger fed the same events
in the same order per site, whichever process each batch reaches; a process killed with
SIGKILL in the middle of batches loses nothing it acknowledged, doubles nothing, and its
sites are served by the other process within 10 s.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.server import LedgerServer
from ledger.service import hash_token, new_token
from ledger.store import open_store
from tests.ledger.factory import batch, count, move, pick, receipt, void
from tests.pgcluster import PgCluster, pg_missing

CONFIG = "[sites.WH2]\nallow_negative = false\n"
SITES = ("WH1", "WH2", "WH3")


class Process:
    """One ``scan-ledger serve`` process on port 0."""

    def __init__(self, db: str, config: Path | None = None, log: Path | None = None) -> None:
        """``log``: where its standard error goes, at log level info (else a pipe, at
        warning)."""
        argv = [sys.executable, "-m", "ledger", "serve", "--db", db, "--port", "0",
                "--log-level", "warning" if log is None else "info"]
        if config is not None:
            argv += ["--config", str(config)]
        self.log = log
        err = subprocess.PIPE if log is None else log.open("w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if log is not None:
            err.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("scan-ledger listening on "), (
            line, self.proc.stderr.read() if self.proc.stderr else log and log.read_text())
        self.url = line.split()[-1]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def cluster_db(pg_cluster: PgCluster) -> str:
    return pg_cluster.create_database()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        p.stop()


def _stations(db: str | Path, per_site: int = 2) -> dict[str, tuple[str, str]]:
    """station -> (site, token), registered in ``db``."""
    out = {}
    with open_store(db) as store:
        for site in SITES:
            for k in range(per_site):
                name = f"{site.lower()}-dock-{k}"
                token = new_token()
                store.add_station(name, site, hash_token(token), "2026-11-22T09:00:00.000000Z")
                out[name] = (site, token)
    return out


def _history(stations: list[str], rnd: random.Random, n: int) -> list[tuple[str, list[Any]]]:
    """Batches (station, events) with late events, ties, voids, counts and moves."""
    out: list[tuple[str, list[Any]]] = []
    seqs = dict.fromkeys(stations, 0)
    made: list[dict[str, Any]] = []
    for _ in range(n):
        st = rnd.choice(stations)
        evs = []
        for _ in range(rnd.randint(1, 6)):
            seqs[st] += 1
            kw = {"station": st, "site": st[:3].upper(), "seq": seqs[st],
                  "item": rnd.choice(["I1", "I2"])}
            minute = rnd.randint(0, 30)
            loc, other = rnd.sample(["A-1", "A-2", "B-1"], 2)
            kind = rnd.choice(["receipt", "pick", "pick", "move", "count", "void"])
            mine = [e for e in made if e["station"] == st and e["type"] != "void"]
            if kind == "receipt":
                ev = receipt(rnd.randint(1, 4), loc, minute, **kw)
            elif kind == "pick":
                ev = pick(rnd.randint(1, 3), loc, minute, **kw)
            elif kind == "move":
                ev = move(rnd.randint(1, 3), loc, other, minute, **kw)
            elif kind == "count":
                ev = count(rnd.randint(0, 5), loc, minute, **kw)
            elif mine:
                kw.pop("item")
                ev = void(rnd.choice(mine), minute, **kw)
            else:
                continue
            made.append(ev)
            evs.append(ev)
        if evs:
            out.append((st, evs))
    return out


def _post(http: httpx.Client, url: str, token: str, station: str, events: list[Any],
          watermark: str | None = None) -> httpx.Response:
    return http.post(url + "/v1/events", json=batch(events, station=station,
                                                    watermark=watermark),
                     headers={"Authorization": f"Bearer {token}"})


def _state(http: httpx.Client, url: str) -> dict[str, Any]:
    """Incidents (by depletion; ids are not compared: one process numbers them 1, 2, ...,
    several by recorded position), balances, holds and events with what voided them."""
    incidents = http.get(url + "/v1/negatives").json()["incidents"]
    for i in incidents:
        i.pop("id")
        i.pop("opened_at")  # arrival time: differs between the two runs
        i.pop("resolved_at")
    events = http.get(url + "/v1/events", params={"limit": 10000}).json()["events"]
    for e in events:
        e.pop("received_at")
        e.pop("applied_at")
    return {
        "events": events,
        "incidents": sorted(incidents, key=lambda i: i["depletion_event_id"]),
        "balances": http.get(url + "/v1/balances").json()["balances"],
        "held": [e["event_id"] for e in http.get(url + "/v1/held").json()["held"]],
    }


@pytest.mark.parametrize(("count", "failover"), [(2, False), (3, False), (2, True)],
                         ids=["two", "three", "one-killed-one-joins"])
def test_two_processes_give_what_one_sqlite_ledger_gives(tmp_path: Path, cluster_db: str,
                                                          processes: list[Process],
                                                          count: int, failover: bool) -> None:
    """Batches reach any process at random (as behind a load balancer): answers
    (statuses, reasons, warnings), incidents, balances and holds are exactly those of one
    SQLite ledger fed the same batches in the same order; with two processes and with three
    (a site each). With ``failover``, halfway through one process is killed (SIGKILL) and a
    new one joins: the sites move twice (taken over from the log, then handed to the
    newcomer), and nothing differs."""
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(CONFIG)
    lite_tokens = _stations(tmp_path / "one.db")
    pg_tokens = _stations(cluster_db)
    processes += [Process(cluster_db, cfg) for _ in range(count)]
    _wait_until_served_by(cluster_db, [p.url for p in processes])
    rnd = random.Random(7)
    history = _history(sorted(lite_tokens), rnd, 120)
    with LedgerServer(tmp_path / "one.db", cfg) as one, httpx.Client(timeout=30) as http:
        urls = [p.url for p in processes]
        for k, (st, events) in enumerate(history):
            if failover and k == len(history) // 2:
                processes[0].kill()
                processes.append(Process(cluster_db, cfg))
                urls = [p.url for p in processes[1:]]
                _wait_until_served_by(cluster_db, urls)
            wm = None if k < len(history) - len(SITES) * 2 else "2026-11-22T12:00:00.000000Z"
            a = _post(http, one.url, lite_tokens[st][1], st, events, wm)
            b = _post(http, rnd.choice(urls), pg_tokens[st][1], st, events, wm)
            assert a.status_code == b.status_code == 200, (a.text, b.text)
            assert a.json()["results"] == b.json()["results"]
        expected = _state(http, one.url)
        # the history exercises incidents, holds and voids
        assert expected["incidents"] and expected["held"]
        assert any(e["voided_by"] for e in expected["events"])
        for url in urls:
            assert _state(http, url) == expected
            # paged, 4 at a time, across the processes: the same list
            whole = http.get(url + "/v1/negatives", params={"limit": 10000}).json()
            assert whole["next"] is None and len(whole["incidents"]) > 8
            pages, after = [], None
            while True:
                page = http.get(url + "/v1/negatives", params={
                    "limit": 4, **({"after": after} if after else {})}).json()
                assert len(page["incidents"]) <= 4
                pages += page["incidents"]
                after = page["next"]
                if after is None:
                    break
            assert pages == whole["incidents"]
        owners = {r[0] for r in _owner_urls(cluster_db).values()}
        assert owners == set(urls), "both processes own sites"


def _owner_urls(db: str) -> dict[str, tuple[str, bool]]:
    with open_store(db) as store:
        return {s: (o.url or "", o.held) for s, o in store.site_owners().items()}  # type: ignore[attr-defined]


def _wait_until_shared(db: str) -> None:
    """Until two processes own sites (the second one to start is handed its share)."""
    deadline = time.monotonic() + 10
    while len({u for u, held in _owner_urls(db).values() if held}) < 2:
        assert time.monotonic() < deadline, "the sites were not shared"
        time.sleep(0.2)


def _wait_until_served_by(db: str, urls: list[str]) -> None:
    """Until every site is held, and by exactly the processes at ``urls``, each owning some."""
    deadline = time.monotonic() + 15
    while True:
        owners = _owner_urls(db).values()
        if all(held for _u, held in owners) and {u for u, _held in owners} == set(urls):
            return
        assert time.monotonic() < deadline, f"the sites did not move: {owners}"
        time.sleep(0.2)


class Station(threading.Thread):
    """Posts receipts (qty 1 each, to its own bin) like an agent: the same batch again
    after any failure, to any live process, until every batch is acknowledged."""

    def __init__(self, name: str, site: str, token: str, urls: list[str], batches: int) -> None:
        super().__init__(daemon=True)
        self.station, self.site, self.token, self.urls = name, site, token, urls
        self.batches = batches
        self.acked: dict[str, str] = {}
        self.sent = 0
        self.failures: list[float] = []  # when a batch failed
        self.successes: list[float] = []  # when a batch was acknowledged
        self.stop = False
        self.error: BaseException | None = None
        self.inflight: str | None = None  # where a batch is posted and not yet answered

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        rnd = random.Random(self.station)
        seq = 0
        with httpx.Client(timeout=10) as http:
            for _ in range(self.batches):
                events = []
                for _ in range(20):
                    seq += 1
                    events.append(receipt(1, f"BIN-{self.station}", seq / 1000,
                                          station=self.station, site=self.site, seq=seq))
                while not self.stop:
                    url = rnd.choice(self.urls)
                    self.inflight = url
                    try:
                        r = _post(http, url, self.token, self.station, events)
                    except httpx.HTTPError:
                        r = None
                    self.inflight = None
                    if r is not None and r.status_code == 200:
                        for res in r.json()["results"]:
                            assert res["status"] in ("accepted", "duplicate"), res
                            self.acked[res["event_id"]] = res["status"]
                        self.successes.append(time.monotonic())
                        break
                    self.failures.append(time.monotonic())
                    time.sleep(0.05)
                self.sent += len(events)


def test_a_process_killed_mid_batch_loses_nothing_and_its_sites_move_within_10_s(
        tmp_path: Path, cluster_db: str, processes: list[Process]) -> None:
    """SIGKILL one of two processes while stations post to both: every acknowledged event is
    stored once, balances count each event once, and a station of a site the dead process
    owned is acknowledged again (by the other) within 10 s of the kill. The other one's log
    says it took those sites from their snapshots, and nothing of each forwarded batch."""
    tokens = _stations(cluster_db, per_site=2)
    a, b = Process(cluster_db), Process(cluster_db, log=tmp_path / "b.log")
    processes += [a, b]
    _wait_until_shared(cluster_db)
    live = [a.url, b.url]
    stations = [Station(n, site, tok, live, batches=40) for n, (site, tok) in tokens.items()]
    for s in stations:
        s.start()
    time.sleep(1.0)
    victims = {s for s, (u, _held) in _owner_urls(cluster_db).items() if u == a.url}
    assert victims
    deadline = time.monotonic() + 10
    while not any(s.inflight == a.url for s in stations):  # kill it mid-batch
        assert time.monotonic() < deadline, "no batch reached the process"
        time.sleep(0.001)
    a.kill()
    killed_at = time.monotonic()
    live.remove(a.url)  # the load balancer notices too
    for s in stations:
        s.join(120)
        assert not s.is_alive() and s.error is None, s.error
    served_again = [min(t for t in s.successes if t > killed_at) - killed_at
                    for s in stations if s.site in victims]
    assert max(served_again) < 10, served_again
    with httpx.Client(timeout=30) as http:
        balances = {r["location"]: r["on_hand"]
                    for r in http.get(b.url + "/v1/balances").json()["balances"]}
        stored = http.get(b.url + "/v1/events", params={"limit": 10000}).json()["events"]
    ids = [e["event_id"] for e in stored]
    assert len(ids) == len(set(ids)), "an event stored twice"
    for s in stations:
        assert s.sent == len(s.acked) == 40 * 20
        assert balances[f"BIN-{s.station}"] == s.sent, "an event lost or counted twice"
        assert set(s.acked) <= set(ids)
    log = (tmp_path / "b.log").read_text()
    for site in victims:
        assert f"took site {site}: a snapshot," in log, log
    assert "HTTP Request" not in log, "a log line for every forwarded batch"


@pytest.mark.slow
def test_a_frozen_process_loses_its_sites_and_writes_nothing_when_it_wakes(
        pg_cluster: PgCluster, processes: list[Process]) -> None:
    """A process that stops answering without dying (SIGSTOP: its sockets stay open) loses
    its sessions to idle_session_timeout (3 s here, from the URL), and with them its site
    leases: the other process serves its sites. Woken up (SIGCONT), it cannot write through
    its dead session, answers 503, and then forwards to the new owner: every event stored
    once."""
    db = pg_cluster.create_database() + "?options=-c%20idle_session_timeout%3D3000"
    tokens = _stations(db, per_site=1)
    a, b = Process(db), Process(db)
    processes += [a, b]
    _wait_until_shared(db)
    victims = sorted(s for s, (u, _held) in _owner_urls(db).items() if u == a.url)
    name = next(n for n, (site, _tok) in tokens.items() if site == victims[0])
    site, token = tokens[name]
    posted: list[dict[str, Any]] = []

    def post(url: str, deadline_s: float) -> tuple[httpx.Response, float]:
        ev = receipt(1, "BIN", len(posted), station=name, site=site, seq=len(posted) + 1)
        posted.append(ev)
        t0 = time.monotonic()
        while True:
            try:
                r = _post(http, url, token, name, [ev])
                if r.status_code == 200:
                    return r, time.monotonic() - t0
            except httpx.HTTPError:
                pass
            assert time.monotonic() - t0 < deadline_s, "not served again"
            time.sleep(0.2)

    with httpx.Client(timeout=30) as http:
        post(a.url, 10)
        a.proc.send_signal(signal.SIGSTOP)
        try:
            _r, waited = post(b.url, 25)
            assert waited < 20
            assert _owner_urls(db)[site] == (b.url, True)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        first = _post(http, a.url, token, name, [posted[-1]])  # the woken one, at once
        assert first.status_code in (200, 503), first.text
        if first.status_code == 200:  # (its lease keeper noticed first: forwarded)
            assert first.json()["results"][0]["status"] == "duplicate"
        post(a.url, 10)
        stored = http.get(b.url + "/v1/events", params={"limit": 100}).json()["events"]
        balance = {r["location"]: r["on_hand"] for r in http.get(
            b.url + "/v1/balances", params={"site": site}).json()["balances"]}
    assert sorted(e["event_id"] for e in stored if e["site"] == site) == sorted(
        e["event_id"] for e in posted)
    assert balance == {"BIN": len(posted)}


def test_the_managers_page_and_connectors_span_every_process(
        tmp_path: Path, cluster_db: str, processes: list[Process]) -> None:
    """With two processes, each one's manager's page, CSV, incident pages and notes cover
    the sites the other owns; a connector runs in exactly one process, whose status both
    report, and its outbox holds each event of its sites once."""
    from tests.ledger.erp_standins import ErpNext, serve
    from tests.ledger.test_connector_standins import write_config

    erp = ErpNext()
    tokens = _stations(cluster_db)
    manager = new_token()
    with open_store(cluster_db) as store:
        store.add_manager("anna", hash_token(manager), "2026-11-22T09:00:00.000000Z")
    with serve(erp) as erp_url, httpx.Client(timeout=30) as http:
        cfg = write_config(tmp_path, "erpnext", erp_url,
                           f'api_key = "{erp.API_KEY}"\napi_secret = "{erp.API_SECRET}"\n',
                           CONFIG)
        processes += [Process(cluster_db, cfg), Process(cluster_db, cfg)]
        _wait_until_shared(cluster_db)
        urls = [p.url for p in processes]
        rnd = random.Random(11)
        wh1 = 0
        for st, events in _history(sorted(tokens), rnd, 60):
            r = _post(http, rnd.choice(urls), tokens[st][1], st, events)
            assert r.status_code == 200, r.text
            wh1 += sum(1 for res, ev in zip(r.json()["results"], events, strict=True)
                       if ev["site"] == "WH1" and res["status"] == "accepted")
        owners = _owner_urls(cluster_db)
        incidents = http.get(urls[0] + "/v1/negatives", params={"limit": 10000}).json()[
            "incidents"]
        assert {i["site"] for i in incidents} == set(SITES), "incidents of every site"
        for url in urls:
            assert http.get(url + "/v1/negatives",
                            params={"limit": 10000}).json()["incidents"] == incidents
            csv = http.get(url + "/v1/negatives.csv").text
            assert len(csv.strip().splitlines()) == len(incidents) + 1
            page = http.get(url + "/", params={"status": "open"}).text
            for i in incidents:
                if i["status"] == "open":
                    assert f'href="/incidents/{i["id"]}' in page, (url, i["id"])
            one_site = http.get(url + "/v1/negatives.csv", params={"site": "WH3"}).text
            assert len(one_site.strip().splitlines()) == 1 + sum(
                1 for i in incidents if i["site"] == "WH3")
        # an incident of a site the asked process does not own: its page, JSON and notes
        inc = next(i for i in incidents if owners[i["site"]][0] != urls[0])
        story = http.get(urls[0] + f"/v1/negatives/{inc['id']}").json()
        assert story["incident"]["depletion_event_id"] == inc["depletion_event_id"]
        assert http.get(urls[0] + f"/incidents/{inc['id']}").status_code == 200
        r = http.post(urls[0] + f"/v1/negatives/{inc['id']}/notes", json={"text": "seen"},
                      headers={"Authorization": f"Bearer {manager}"})
        assert r.status_code == 201, r.text
        for url in urls:
            (shown,) = [i for i in http.get(url + "/v1/negatives", params={
                "limit": 10000}).json()["incidents"] if i["id"] == inc["id"]]
            assert [n["text"] for n in shown["notes"]] == ["seen"]
        assert http.get(urls[0] + "/v1/negatives/1").status_code == 404
        # the connector: one process runs it, both report it, each event once in its outbox
        deadline = time.monotonic() + 20
        while True:
            answers = [http.get(u + "/v1/connectors").json()["connectors"] for u in urls]
            local = [http.get(u + "/v1/connectors", headers={"x-scan-ledger-local": "1"}
                              ).json()["connectors"] for u in urls]
            (c,) = answers[0]
            if c["pending"] == 0 and c["forwarded"] + c["unmapped"] == wh1:
                break
            assert time.monotonic() < deadline, answers
            time.sleep(0.2)
        assert [[x["name"] for x in a] for a in answers] == [["erp"], ["erp"]]
        assert all(a[0]["running"] for a in answers)
        assert sorted(x[0]["running"] for x in local) == [False, True]
        assert wh1 > 0


@pytest.mark.skipif(pg_missing() is not None, reason=str(pg_missing()))
def test_a_database_server_restart_is_503_then_served_again() -> None:
    """PostgreSQL stops (a restart, a failover to a replica): batches get 503 with
    Retry-After while it is away, never a 500; once it is back the ledger reconnects, takes
    its sites again and serves them, with nothing lost or doubled."""
    with PgCluster.start() as pg, \
            LedgerServer(pg.create_database(), None) as srv, httpx.Client(timeout=30) as http:
        token = srv.add_station("dock-1", "WH1")
        first = receipt(1, "BIN", 1, station="dock-1")
        assert _post(http, srv.url, token, "dock-1", [first]).status_code == 200
        pg.stop_server()
        second = receipt(1, "BIN", 2, station="dock-1")
        away = _post(http, srv.url, token, "dock-1", [second])
        assert away.status_code == 503, away.text
        assert int(away.headers["retry-after"]) > 0
        pg.start_server()
        deadline = time.monotonic() + 30
        while (r := _post(http, srv.url, token, "dock-1", [second])).status_code != 200:
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, "not served again"
            time.sleep(0.5)
        assert _post(http, srv.url, token, "dock-1", [first]).json()["results"][0][
            "status"] == "duplicate"
        events = http.get(srv.url + "/v1/events").json()["events"]
        assert sorted(e["event_id"] for e in events) == sorted(
            [first["event_id"], second["event_id"]])
        assert http.get(srv.url + "/v1/balances").json()["balances"][0]["on_hand"] == 2
