"""The Tryton connector against a real trytond (with ``stock``, on SQLite), started here.

The ERP's database is built once per session by ``tests/ledger/tryton_env.py``
(``trytond-admin``, then a company, the warehouse ``WH1`` with bins DOCK-3, A-01 and B-02, and
two products: one by code, one by its EAN identifier) and copied for each test; each test
starts its own ``trytond`` process on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.config import load_config
from ledger.connectors.tryton import TrytonAdapter
from ledger.server import LedgerServer
from tests.ledger import tryton_env
from tests.ledger.conftest import Dock, Ledger
from tests.ledger.factory import count, move, pick, receipt, void

P = "04006381333931"   # product with this code
E = "05901234123457"   # product known only by its EAN-13 identifier 5901234123457
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Trytond:
    """A trytond server process over a copy of the session's database."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        tryton_env.write_conf(home, self.port)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.home / "trytond.log").open("ab")
        self.proc = subprocess.Popen([str(BIN / "trytond"), "-c", str(self.home / "trytond.conf")],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.home / "trytond.log").read_text()
                time.sleep(0.1)
        raise AssertionError("trytond did not listen within 60 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def client(self) -> TrytonAdapter:
        """A look into Tryton as its administrator (the ledger's connector logs in as
        ``tryton_env.CONNECTOR_USER``, with only the groups docs/connectors.md names)."""
        cfg = load_config(self.home.parent / "ledger.toml").connectors[0]
        return TrytonAdapter(dataclasses.replace(cfg, credentials={
            "user": tryton_env.USER, "password": tryton_env.PASSWORD}))

    def stock(self) -> dict[str, int]:
        """``item@bin`` -> quantity in Tryton, from its done moves."""
        rpc = self.client()
        try:
            locs = {r["id"]: r["code"] for r in rpc.call(
                "stock.location", "search_read", [("code", "in", list(tryton_env.BINS))],
                0, None, None, ["code"])}
            names = {}
            for p in rpc.call("product.product", "search_read", [], 0, None, None,
                              ["code", "identifiers"]):
                names[p["id"]] = p["code"] or E
            out: dict[str, int] = {}
            for m in rpc.call("stock.move", "search_read", [("state", "=", "done")], 0, None,
                              None, ["product", "quantity", "from_location", "to_location"]):
                for loc, sign in ((m["to_location"], 1), (m["from_location"], -1)):
                    if loc in locs:
                        k = f"{names[m['product']]}@{locs[loc]}"
                        out[k] = out.get(k, 0) + sign * int(m["quantity"])
            return {k: v for k, v in sorted(out.items()) if v}
        finally:
            rpc.close()

    def quantities(self) -> dict[str, int]:
        """Tryton's own figures (``product.product``'s ``quantity`` in the context of a
        location, today): ``item@CODE`` per bin, ``item@WAREHOUSE`` for the whole warehouse
        and ``item@input`` / ``item@output`` for its zones; zeros left out."""
        rpc = self.client()
        try:
            (wh,) = rpc.call("stock.location", "search_read", [("type", "=", "warehouse")],
                             0, 1, None, ["input_location", "output_location"])
            places = {r["id"]: r["code"] for r in rpc.call(
                "stock.location", "search_read", [("code", "in", list(tryton_env.BINS))],
                0, None, None, ["code"])}
            places.update({wh["id"]: "WAREHOUSE", wh["input_location"]: "input",
                           wh["output_location"]: "output"})
            products = rpc.call("product.product", "search_read", [], 0, None, None,
                                ["code"])
            out: dict[str, int] = {}
            for loc, name in places.items():
                for p in rpc.call("product.product", "read", [p["id"] for p in products],
                                  ["quantity", "code"], context={"locations": [loc]}):
                    if p["quantity"]:
                        out[f"{p['code'] or E}@{name}"] = int(p["quantity"])
            return dict(sorted(out.items()))
        finally:
            rpc.close()

    def references(self) -> list[str]:
        rpc = self.client()
        try:
            return sorted(r["reference"] for r in rpc.call(
                "stock.shipment.internal", "search_read", [("state", "=", "done")], 0, None,
                None, ["reference"]))
        finally:
            rpc.close()

    def add_product(self, code: str) -> None:
        rpc = self.client()
        try:
            (uom,) = rpc.call("product.uom", "search", [("name", "=", "Unit")], 0, 1, None)
            rpc.call("product.template", "create", [{
                "name": code, "code": code, "type": "goods", "default_uom": uom,
                "list_price": {"__class__": "Decimal", "decimal": "1"},
                "products": [["create", [{}]]]}])
        finally:
            rpc.close()


@pytest.fixture(scope="session")
def tryton_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tryton-template")
    subprocess.run([sys.executable, "-m", "tests.ledger.tryton_env", "create", str(d)],
                   check=True, cwd=Path(__file__).parents[2], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return d


@pytest.fixture
def trytond(tryton_template: Path, tmp_path: Path) -> Iterator[Trytond]:
    home = tmp_path / "erp"
    home.mkdir()
    shutil.copy(tryton_template / f"{tryton_env.DB}.sqlite", home)
    server = Trytond(home)
    secret = tmp_path / "erp.secret"
    secret.write_text(f'user = "{tryton_env.CONNECTOR_USER}"\n'
                      f'password = "{tryton_env.PASSWORD}"\n')
    secret.chmod(0o600)
    (tmp_path / "ledger.toml").write_text(
        '[[connectors]]\nname = "erp"\nkind = "tryton"\n'
        f'url = "{server.url}"\ndatabase = "{tryton_env.DB}"\n'
        'credentials_file = "erp.secret"\nsites = ["WH1"]\n'
        'unmapped_retry_s = 0.5\nretry_max_s = 1.0\ntimeout_s = 10.0\n')
    server.start()
    yield server
    server.stop()


def connectors(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/v1/connectors", timeout=30)
    assert r.status_code == 200, r.text
    (c,) = r.json()["connectors"]
    out: dict[str, Any] = c
    return out


def wait_for(url: str, done: Callable[[dict[str, Any]], bool], timeout: float = 120
             ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        c = connectors(url)
        if done(c):
            return c
        assert time.monotonic() < deadline, c
        time.sleep(0.2)


def ledger_stock(ledger: Ledger) -> dict[str, int]:
    rows = ledger.get("/v1/balances", site="WH1")["balances"]
    return {f"{r['item']}@{r['location']}": r["on_hand"] for r in sorted(
        rows, key=lambda r: (r["item"], r["location"])) if r["on_hand"]}


def with_warehouse(bins: dict[str, int]) -> dict[str, int]:
    """``item@bin`` quantities plus what Tryton must then show for the whole warehouse
    (``item@WAREHOUSE``), its input and output zones holding nothing."""
    out = dict(bins)
    for k, q in bins.items():
        key = k.split("@")[0] + "@WAREHOUSE"
        out[key] = out.get(key, 0) + q
    return dict(sorted((k, v) for k, v in out.items() if v))


def shift() -> list[list[dict[str, Any]]]:
    """A shift in batches (as docks post them): receipts, picks, moves, a count, a void and
    two late receipts (one before the count it reaches the ledger after), then, the next day,
    a count that reaches the ledger after a pick that followed it."""
    r1 = receipt(10, "DOCK-3", 0)
    r2 = receipt(5, "DOCK-3", 1, item=E)
    m1 = move(6, "DOCK-3", "A-01", 5)
    p1 = pick(2, "A-01", 10)
    p2 = pick(1, "DOCK-3", 12, item=E)
    c1 = count(3, "A-01", 30)           # the ledger says 4 here; counted 3
    p3 = pick(1, "A-01", 40)
    v1 = void(p2, 45)
    late_b = receipt(4, "B-02", 20)     # happened before the count, in another bin
    late_a = receipt(2, "A-01", 20)     # happened before the count of its bin
    m2 = move(1, "B-02", "A-01", 50)
    # the next day: a pick reaches the ledger before the count it happened after
    day2_pick = pick(1, "DOCK-3", 24 * 60 + 20)
    day2_count = count(5, "DOCK-3", 24 * 60 + 10)
    return [[r1, r2, m1], [p1, p2], [c1, p3], [v1], [late_b, late_a], [m2], [day2_pick],
            [day2_count]]


@pytest.fixture
def ledger_with_erp(tmp_path: Path, trytond: Trytond) -> Iterator[Ledger]:
    with LedgerServer(tmp_path / "ledger.db", tmp_path / "ledger.toml") as server:
        led = Ledger(server)
        yield led
        led.close()


def test_a_shift_lands_in_tryton_bin_by_bin(ledger_with_erp: Ledger, trytond: Trytond) -> None:
    dock = ledger_with_erp.dock("dock-1")
    batches = shift()
    for b in batches:
        assert {r["status"] for r in dock.post(*b)} == {"accepted"}
    n = sum(len(b) for b in batches)
    c = wait_for(ledger_with_erp.server.url, lambda c: c["forwarded"] == n and not c["pending"])
    assert c["unmapped"] == 0 and c["unmapped_events"] == []
    expected = ledger_stock(ledger_with_erp)
    assert expected == {f"{P}@A-01": 3, f"{P}@B-02": 3, f"{P}@DOCK-3": 4, f"{E}@DOCK-3": 5}
    assert trytond.stock() == expected
    # Tryton's own stock figures agree: per bin, and for the whole warehouse, since receipts
    # come in from a supplier location and picks go out to a customer location (the input
    # and output zones they pass through are left empty)
    assert trytond.quantities() == with_warehouse(expected) == {
        **expected, f"{P}@WAREHOUSE": 10, f"{E}@WAREHOUSE": 5}
    # every movement once (the late receipt before the count also made its correction)
    refs = trytond.references()
    ids = [e["event_id"] for b in batches for e in b]
    for eid in ids:
        assert refs.count(eid) == 1, eid
    late_a, count_a = batches[4][1]["event_id"], batches[2][0]["event_id"]
    assert refs.count(f"{late_a}>{count_a}") == 1
    # posted on the day each movement happened (a void on its target's, a correction on its
    # count's), the move from the supplier or to the customer on its shipment's
    day = {e["event_id"]: e["occurred_at"][:10] for b in batches for e in b}
    day.update({e["event_id"]: day[e["voids"]] for b in batches for e in b if e["voids"]})
    rpc = trytond.client()
    try:
        shipments = rpc.call("stock.shipment.internal", "search_read", [], 0, None, None,
                             ["reference", "effective_date", "moves"])
        moves = {m["id"]: m for m in rpc.call("stock.move", "search_read", [], 0, None, None,
                                              ["effective_date", "origin", "state"])}
    finally:
        rpc.close()

    def iso(d: dict[str, int]) -> str:
        return f"{d['year']:04d}-{d['month']:02d}-{d['day']:02d}"

    assert {iso(s["effective_date"]) for s in shipments} == {"2026-11-22", "2026-11-23"}
    for s in shipments:
        want = day[s["reference"].split(">")[-1]]
        assert iso(s["effective_date"]) == want, s
        assert {iso(moves[m]["effective_date"]) for m in s["moves"]} == {want}, s
    legs = [m for m in moves.values() if m["origin"]]
    assert len(legs) == 9  # 4 receipts, 4 picks and the void of a pick
    for leg in legs:
        shipped = moves[int(leg["origin"].split(",")[1])]
        assert iso(leg["effective_date"]) == iso(shipped["effective_date"])
    assert {m["state"] for m in moves.values()} == {"done"}


def test_reposts_and_a_lost_answer_forward_nothing_twice(tmp_path: Path, trytond: Trytond
                                                         ) -> None:
    batches = shift()
    n = sum(len(b) for b in batches)
    with LedgerServer(tmp_path / "ledger.db", tmp_path / "ledger.toml") as server:
        led = Ledger(server)
        dock = led.dock("dock-1")
        for b in batches:
            dock.post(*b)
        for b in batches:  # a dock that lost the answers posts again: duplicates
            assert {r["status"] for r in dock.post(*b)} == {"duplicate"}
        wait_for(server.url, lambda c: c["forwarded"] == n and not c["pending"])
        expected = ledger_stock(led)
        led.close()
    before = trytond.references()
    # As if every answer from Tryton had been lost: the ledger knows nothing was forwarded.
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("UPDATE connector_outbox SET state = 'pending', result = NULL")
    with LedgerServer(tmp_path / "ledger.db", tmp_path / "ledger.toml") as server:
        wait_for(server.url, lambda c: c["forwarded"] == n and not c["pending"])
    assert trytond.references() == before
    assert trytond.stock() == expected
    assert trytond.quantities() == with_warehouse(expected)


def test_sigkill_mid_forwarding_then_restart(tmp_path: Path, ledger_db: str | Path,
                                            trytond: Trytond) -> None:
    """On either store (a SQLite file, a PostgreSQL database)."""
    db = ledger_db
    subprocess.run([str(BIN / "scan-ledger"), "station", "add", "dock-1", "--site", "WH1",
                    "--db", str(db)], check=True, capture_output=True)
    token = _token(db)

    def serve(port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN / "scan-ledger"), "serve", "--db", str(db), "--port",
                                 str(port), "--config", str(tmp_path / "ledger.toml")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(port)
    try:
        assert proc.stdout is not None and b"listening" in proc.stdout.readline()
        events = [receipt(1 + i % 3, "DOCK-3", i) if i % 2 == 0
                  else move(1, "DOCK-3", "A-01", i) for i in range(30)]
        dock = Dock.__new__(Dock)
        dock.name, dock.token = "dock-1", token
        dock.http = httpx.Client(base_url=url, timeout=30)
        dock.post(*events)
        wait_for(url, lambda c: c["forwarded"] >= 5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        assert connectors_after_kill(db) < 30, "the kill came too late to test anything"
        proc = serve(port)
        assert proc.stdout is not None and b"listening" in proc.stdout.readline()
        wait_for(url, lambda c: c["forwarded"] == 30 and not c["pending"])
        balances = httpx.get(url + "/v1/balances", timeout=30).json()["balances"]
        dock.http.close()
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    refs = trytond.references()
    assert sorted(refs) == sorted(e["event_id"] for e in events)
    bins = {f"{r['item']}@{r['location']}": r["on_hand"] for r in balances}
    assert trytond.stock() == bins
    assert trytond.quantities() == with_warehouse(bins)


def _execute(db: str | Path, statement: str, *args: Any) -> Any:
    """One statement on either database (``?`` placeholders); its first row."""
    if isinstance(db, Path):
        with sqlite3.connect(db) as con:
            return con.execute(statement, args).fetchone()
    import psycopg

    with psycopg.connect(db, autocommit=True) as pg:
        cur = pg.execute(statement.replace("?", "%s"), args)
        return cur.fetchone() if cur.description else None


def connectors_after_kill(db: str | Path) -> int:
    (n,) = _execute(db, "SELECT count(*) FROM connector_outbox WHERE state = 'forwarded'")
    return int(n)


def _token(db: str | Path) -> str:
    # the CLI printed it; a second station add would refuse, so issue through the store
    from ledger.service import hash_token, new_token
    token = new_token()
    _execute(db, "UPDATE stations SET token_hash = ? WHERE name = 'dock-1'", hash_token(token))
    return token


def test_tryton_down_delays_forwarding_never_ingest(ledger_with_erp: Ledger, trytond: Trytond
                                                    ) -> None:
    url = ledger_with_erp.server.url
    dock = ledger_with_erp.dock("dock-1")
    first = [receipt(3, "DOCK-3", 0)]
    dock.post(*first)
    wait_for(url, lambda c: c["forwarded"] == 1)
    trytond.stop()
    later = [move(1, "DOCK-3", "A-01", 1), pick(1, "A-01", 2), receipt(2, "B-02", 3)]
    t0 = time.monotonic()
    assert {r["status"] for r in dock.post(*later)} == {"accepted"}
    assert time.monotonic() - t0 < 5
    c = wait_for(url, lambda c: c["last_error"] is not None and c["pending"] == 3)
    assert "unreachable" in c["last_error"] and "password" not in c["last_error"]
    trytond.start()
    wait_for(url, lambda c: c["forwarded"] == 4 and not c["pending"], timeout=60)
    assert trytond.stock() == ledger_stock(ledger_with_erp)
    assert trytond.quantities() == with_warehouse(ledger_stock(ledger_with_erp))
    assert sorted(trytond.references()) == sorted(e["event_id"] for e in first + later)


def test_an_unknown_item_waits_as_unmapped_until_the_product_exists(
        ledger_with_erp: Ledger, trytond: Trytond) -> None:
    url = ledger_with_erp.server.url
    dock = ledger_with_erp.dock("dock-1")
    new = receipt(7, "A-01", 0, item="SKU-NEW")
    known = receipt(2, "A-01", 1)
    dock.post(new, known)
    c = wait_for(url, lambda c: c["forwarded"] == 1 and c["unmapped"] == 1)
    (u,) = c["unmapped_events"]
    assert u["event_id"] == new["event_id"]
    assert "no product with code or identifier 'SKU-NEW'" in u["reason"]
    page = httpx.get(url + "/", timeout=30).text
    assert 'id="connectors"' in page and "Unmapped" in page and "SKU-NEW" in page
    trytond.add_product("SKU-NEW")
    wait_for(url, lambda c: c["forwarded"] == 2 and c["unmapped"] == 0)
    assert trytond.quantities() == with_warehouse({"SKU-NEW@A-01": 7, f"{P}@A-01": 2})


def test_credentials_never_reach_the_log_or_the_status(
        tmp_path: Path, trytond: Trytond, caplog: pytest.LogCaptureFixture) -> None:
    """Neither a wrong password nor the right one (nor the session Tryton gives for it)
    appears in the log, at any level, or in the status."""
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "erp.secret"
    secret.write_text(f'user = "{tryton_env.CONNECTOR_USER}"\npassword = "not-the-password"\n')
    with LedgerServer(tmp_path / "ledger.db", tmp_path / "ledger.toml") as server:
        led = Ledger(server)
        led.dock("dock-1").post(receipt(1, "DOCK-3", 0))
        c = wait_for(server.url, lambda c: c["last_error"] is not None)
        led.close()
    assert "refused the login" in c["last_error"]
    assert "not-the-password" not in json.dumps(c) + caplog.text
    assert os.stat(secret).st_mode & 0o777 == 0o600
    secret.write_text(f'user = "{tryton_env.CONNECTOR_USER}"\n'
                      f'password = "{tryton_env.PASSWORD}"\n')
    with LedgerServer(tmp_path / "ledger.db", tmp_path / "ledger.toml") as server:
        c = wait_for(server.url, lambda c: c["forwarded"] == 1)
        session = server.service.forwarders[0].adapter._auth  # type: ignore[attr-defined]
    assert session and "Session" in session
    logged = caplog.text + json.dumps(c)
    assert "HTTP Request: POST" in logged  # the calls were logged, at DEBUG and INFO
    for text in (tryton_env.PASSWORD, session, session.split()[1]):
        assert text not in logged


class _Killed(BaseException):
    """The process died here (not an error the adapter could handle)."""


class _CrashBefore(TrytonAdapter):
    """An adapter that dies (as a SIGKILLed ledger would) just before one call reaches
    Tryton: what came before it is in Tryton, nothing after it."""

    def __init__(self, cfg: Any, model: str, method: str) -> None:
        super().__init__(cfg)
        self.at = (model, method)

    def call(self, model: str, method: str, *args: Any,
             context: dict[str, Any] | None = None) -> Any:
        if (model, method) == self.at:
            raise _Killed(f"killed before {model}.{method}")
        return super().call(model, method, *args, context=context)


@pytest.mark.parametrize("model, method", [
    ("stock.shipment.internal", "wait"), ("stock.shipment.internal", "assign_force"),
    ("stock.shipment.internal", "done"), ("stock.move", "create"), ("stock.move", "do")],
    ids=["created", "waiting", "assigned", "shipment-done", "leg-draft"])
def test_a_movement_left_half_done_is_finished_by_the_look_up_never_posted_again(
        trytond: Trytond, model: str, method: str) -> None:
    """A ledger killed between the calls that put one receipt into Tryton left a shipment
    (or its move from the supplier) half-way; the next look-up must finish what is there,
    not create a second shipment or a second move from the supplier."""
    from ledger.connectors.plan import Transfer
    from ledger.events import parse_time

    cfg = load_config(trytond.home.parent / "ledger.toml").connectors[0]
    op = Transfer("r-half", "WH1", P, None, "DOCK-3", 4,
                  parse_time("2026-11-22T10:00:00Z"), "receipt")
    dying = _CrashBefore(cfg, model, method)
    try:
        assert dying.find(op) is None
        with pytest.raises(_Killed):
            dying.post(op)
    finally:
        dying.close()
    again = trytond.client()
    try:
        found = again.find(op)
        assert found is not None and found.ref.startswith("stock.shipment.internal,")
        assert again.find(op) == found  # and once finished, found as it is
        moves = again.call("stock.move", "search_read", [], 0, None, None, ["state"])
    finally:
        again.close()
    assert trytond.references() == ["r-half"]
    assert len(moves) == 2 and {m["state"] for m in moves} == {"done"}
    assert trytond.quantities() == with_warehouse({f"{P}@DOCK-3": 4})


def test_trytond_killed_mid_forwarding_then_started_again(ledger_with_erp: Ledger,
                                                          trytond: Trytond) -> None:
    """trytond dies (SIGKILL) while the connector is posting: whatever Tryton had committed
    stays, the rest is rolled back; once it is started again every movement is in it once."""
    url = ledger_with_erp.server.url
    dock = ledger_with_erp.dock("dock-1")
    events = [receipt(2, "DOCK-3", i) if i % 3 == 0 else
              move(1, "DOCK-3", "A-01", i) if i % 3 == 1 else pick(1, "A-01", i)
              for i in range(24)]
    dock.post(*events)
    wait_for(url, lambda c: c["forwarded"] >= 3)
    assert trytond.proc is not None
    trytond.proc.kill()
    trytond.proc.wait(10)
    trytond.proc = None
    c = wait_for(url, lambda c: c["last_error"] is not None, timeout=30)
    assert c["pending"] > 0, "trytond was killed too late to test anything"
    trytond.start()
    wait_for(url, lambda c: c["forwarded"] == len(events) and not c["pending"])
    assert sorted(trytond.references()) == sorted(e["event_id"] for e in events)
    expected = ledger_stock(ledger_with_erp)
    assert trytond.quantities() == with_warehouse(expected)
