"""The ERPNext and Odoo connectors, call by call, against STAND-INS of those products.

ERPNext and Odoo cannot run here. ``tests/ledger/erp_standins.py`` serves their published
APIs on 127.0.0.1 (Frappe's REST API; Odoo 19's JSON-2 API) with just enough state to answer,
including their error answers. These tests assert each request the connector makes, field by
field, and what the connector does with each kind of answer. They show the connectors follow
the documented APIs; they do not prove that a given ERPNext or Odoo release behaves as the
stand-ins do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.config import load_config
from ledger.errors import ConfigError
from ledger.server import LedgerServer
from tests.ledger.conftest import Ledger
from tests.ledger.erp_standins import ErpNext, Odoo, frappe_error, odoo_error, serve
from tests.ledger.factory import count, move, pick, receipt, void

P = "04006381333931"
E = "05901234123457"  # the ERPs know it by its EAN-13 barcode 5901234123457


def write_config(tmp_path: Path, kind: str, url: str, secret: str, extra: str = "") -> Path:
    s = tmp_path / "erp.secret"
    s.write_text(secret)
    s.chmod(0o600)
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(f'[[connectors]]\nname = "erp"\nkind = "{kind}"\nurl = "{url}"\n'
                   f'credentials_file = "erp.secret"\nsites = ["WH1"]\n'
                   'unmapped_retry_s = 0.3\nretry_max_s = 0.5\ntimeout_s = 5.0\n' + extra)
    return cfg


def status(url: str) -> dict[str, Any]:
    (c,) = httpx.get(url + "/v1/connectors", timeout=30).json()["connectors"]
    out: dict[str, Any] = c
    return out


def wait_for(url: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30
             ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        c = status(url)
        if done(c):
            return c
        assert time.monotonic() < deadline, c
        time.sleep(0.05)


def balances(led: Ledger) -> dict[tuple[str, str], int]:
    return {(r["item"], r["location"]): r["on_hand"]
            for r in led.get("/v1/balances", site="WH1")["balances"]}


@pytest.fixture
def erpnext(tmp_path: Path, ledger_db: str | Path) -> Iterator[tuple[ErpNext, Ledger]]:
    erp = ErpNext()
    with serve(erp) as url:
        cfg = write_config(tmp_path, "erpnext", url,
                           f'api_key = "{erp.API_KEY}"\napi_secret = "{erp.API_SECRET}"\n',
                           'timezone = "Europe/Berlin"\n')
        with LedgerServer(ledger_db, cfg) as server:
            led = Ledger(server)
            yield erp, led
            led.close()


def test_erpnext_stock_entries_and_reconciliation_call_by_call(
        erpnext: tuple[ErpNext, Ledger]) -> None:
    erp, led = erpnext
    dock = led.dock()
    r1 = receipt(10, "DOCK-3", 0)
    m1 = move(6, "DOCK-3", "A-01", 5.5)
    p1 = pick(2, "A-01", 10)
    r2 = receipt(4, "DOCK-3", 11, item=E)
    c1 = count(3, "A-01", 30)
    late = receipt(2, "A-01", 20)
    v1 = void(p1, 40)
    for ev in (r1, m1, p1, r2, c1, late, v1):
        dock.post(ev)
    wait_for(led.server.url, lambda c: c["forwarded"] == 7 and not c["pending"])

    entries = erp.posts("/api/resource/Stock Entry")
    auth = {c.headers["authorization"] for c in erp.calls}
    assert auth == {"token k3y:s3cret"}
    common = {"set_posting_time": 1, "docstatus": 1, "company": "Scan AG"}
    assert entries[0].body == {
        **common, "posting_date": "2026-11-22", "posting_time": "11:00:00.000000",
        "custom_scan_event_id": r1["event_id"],
        "remarks": f"scan-ledger event {r1['event_id']}",
        "stock_entry_type": "Material Receipt", "purpose": "Material Receipt",
        "items": [{"item_code": P, "qty": 10, "conversion_factor": 1,
                   "allow_zero_valuation_rate": 1, "t_warehouse": "DOCK-3 - SA"}]}
    assert entries[1].body["stock_entry_type"] == "Material Transfer"
    assert entries[1].body["posting_time"] == "11:05:30.000000"
    assert entries[1].body["items"] == [{
        "item_code": P, "qty": 6, "conversion_factor": 1, "allow_zero_valuation_rate": 1,
        "s_warehouse": "DOCK-3 - SA", "t_warehouse": "A-01 - SA"}]
    assert entries[2].body["stock_entry_type"] == "Material Issue"
    assert entries[2].body["items"][0]["s_warehouse"] == "A-01 - SA"
    assert "t_warehouse" not in entries[2].body["items"][0]
    assert entries[3].body["items"][0]["item_code"] == "ERASER"  # by its barcode
    (reco,) = erp.posts("/api/resource/Stock Reconciliation")
    assert reco.body == {
        "posting_date": "2026-11-22", "posting_time": "11:30:00.000000",
        "set_posting_time": 1, "docstatus": 1, "company": "Scan AG",
        "custom_scan_event_id": c1["event_id"],
        "remarks": f"scan-ledger event {c1['event_id']}", "purpose": "Stock Reconciliation",
        "items": [{"item_code": P, "warehouse": "A-01 - SA", "qty": 3}]}
    assert entries[4].body["posting_time"] == "11:20:00.000000"  # the late receipt
    (cancel,) = erp.posts("/api/method/frappe.client.cancel")
    assert cancel.body == {"doctype": "Stock Entry", "name": "MAT-STE-2026-00003"}
    # every document looked up by its event id before it was created
    looked = [c.query["filters"] for c in erp.calls
              if c.method == "GET" and c.path in ("/api/resource/Stock Entry",
                                                  "/api/resource/Stock Reconciliation")]
    for ev in (r1, m1, p1, r2, c1, late):
        assert f'[["custom_scan_event_id", "=", "{ev["event_id"]}"]]' in looked
    # ERPNext's own ledger (posting order, reconciliation reposted) equals the ledger's
    for (item, loc), qty in balances(led).items():
        code = "ERASER" if item == E else item
        assert erp.on_hand(code, f"{loc} - SA") == qty, (item, loc)


def test_erpnext_error_answers_are_retried_and_a_lost_answer_posts_once(
        erpnext: tuple[ErpNext, Ledger]) -> None:
    erp, led = erpnext
    erp.fail_next = [
        ("POST", "Stock Entry", *frappe_error(417, "ValidationError",
                                              "Stock transactions before 2026-12-01 are "
                                              "frozen")),
        ("POST", "Stock Entry", 0, None),  # created, answer lost
    ]
    r1 = receipt(10, "DOCK-3", 0)
    led.dock().post(r1)
    c = wait_for(led.server.url, lambda c: c["forwarded"] == 1)
    assert len(erp.docs["Stock Entry"]) == 1
    assert len(erp.posts("/api/resource/Stock Entry")) == 2  # the refused one, the lost one
    assert c["last_error"] is not None
    errors = [c for c in erp.calls if c.method == "POST"]
    assert len(errors) == 2


def test_erpnext_void_of_a_count_cancels_its_reconciliation_once_though_the_answer_is_lost(
        erpnext: tuple[ErpNext, Ledger]) -> None:
    erp, led = erpnext
    erp.fail_next = [("POST", "frappe.client.cancel", 0, None)]  # cancelled, answer lost
    r1 = receipt(10, "DOCK-3", 0)
    c1 = count(4, "DOCK-3", 5)
    v1 = void(c1, 6)
    dock = led.dock()
    for ev in (r1, c1, v1):
        dock.post(ev)
    c = wait_for(led.server.url, lambda c: c["forwarded"] == 3 and not c["pending"])
    assert "ERPNext at" in (c["last_error"] or "")  # the lost answer, retried
    (reco,) = erp.docs["Stock Reconciliation"].values()
    (cancel,) = erp.posts("/api/method/frappe.client.cancel")
    assert cancel.body == {"doctype": "Stock Reconciliation", "name": reco["name"]}
    assert reco["docstatus"] == 2
    # the look-up before each try: the target read by name
    gets = [c for c in erp.calls
            if c.method == "GET" and c.path == f"/api/resource/Stock Reconciliation/{reco['name']}"]
    assert len(gets) == 2
    assert erp.on_hand(P, "DOCK-3 - SA") == balances(led)[(P, "DOCK-3")] == 10


def test_erpnext_refusal_shows_as_last_error(erpnext: tuple[ErpNext, Ledger]) -> None:
    erp, led = erpnext
    erp.fail_next = [("POST", "Stock Entry", *frappe_error(
        417, "NegativeStockError", "1 units of Item X needed in Warehouse A-01 - SA"))] * 50
    led.dock().post(pick(1, "A-01", 0))
    c = wait_for(led.server.url, lambda c: c["last_error"] is not None)
    assert "417" in c["last_error"] and "NegativeStockError" in c["last_error"]
    assert "needed in Warehouse A-01 - SA" in c["last_error"]
    assert c["pending"] == 1 and c["forwarded"] == 0
    erp.fail_next.clear()
    erp.docs["Stock Entry"]["X"] = {"name": "X", "docstatus": 1, "posting_date": "2026-11-21",
                                    "posting_time": "00:00:00", "items": [{
                                        "item_code": P, "qty": 5, "t_warehouse": "A-01 - SA"}]}
    wait_for(led.server.url, lambda c: c["forwarded"] == 1)


def test_a_slow_erp_delays_forwarding_never_ingest_nor_shutdown(tmp_path: Path) -> None:
    """Every ERPNext answer takes 2 s: stations' posts and the status are answered at once
    all the same; the ledger stops under a call in flight within the connector's bound
    (``timeout_s`` + 1 s, at most 10 s), and what was in flight is found by the next start's
    look-up, not posted twice."""
    erp = ErpNext()
    erp.delay_s = 2.0
    events = [receipt(1, "DOCK-3", i) for i in range(8)]
    with serve(erp) as url:
        cfg = write_config(tmp_path, "erpnext", url,
                           f'api_key = "{erp.API_KEY}"\napi_secret = "{erp.API_SECRET}"\n')
        server = LedgerServer(tmp_path / "ledger.db", cfg).start()
        try:
            led = Ledger(server)
            dock = led.dock()
            dock.post(events[0])
            wait_for(server.url, lambda c: len(erp.calls) > 0)
            for ev in events[1:]:
                t0 = time.monotonic()
                assert dock.post(ev)[0]["status"] == "accepted"
                assert time.monotonic() - t0 < 1.0
            t0 = time.monotonic()
            c = status(server.url)
            assert time.monotonic() - t0 < 1.0 and c["forwarded"] < len(events)
            led.close()
        finally:
            t0 = time.monotonic()
            server.stop()
            stopped_in = time.monotonic() - t0
        assert stopped_in < 5.0 + 1 + 1.5  # timeout_s = 5
        erp.delay_s = 0.0
        quiet = len(erp.calls) - 1  # what the stopped connector still had in flight ends
        while len(erp.calls) != quiet:
            quiet = len(erp.calls)
            time.sleep(0.5)
        with LedgerServer(tmp_path / "ledger.db", cfg) as server:
            wait_for(server.url, lambda c: c["forwarded"] == len(events))
    keys = sorted(d["custom_scan_event_id"] for d in erp.docs["Stock Entry"].values())
    assert keys == sorted(e["event_id"] for e in events)


def test_erpnext_unknown_item_waits_then_goes_through(erpnext: tuple[ErpNext, Ledger]
                                                      ) -> None:
    erp, led = erpnext
    ev = receipt(3, "DOCK-3", 0, item="SKU-9")
    led.dock().post(ev)
    c = wait_for(led.server.url, lambda c: c["unmapped"] == 1)
    assert c["unmapped_events"] == [{
        "event_id": ev["event_id"],
        "reason": "ERPNext has no Item with item_code or barcode 'SKU-9'"}]
    assert erp.posts("Stock Entry") == []
    erp.docs["Item"]["SKU-9"] = {"name": "SKU-9", "item_code": "SKU-9"}
    wait_for(led.server.url, lambda c: c["forwarded"] == 1 and c["unmapped"] == 0)


def test_erpnext_site_without_its_warehouse_waits_then_goes_through(
        erpnext: tuple[ErpNext, Ledger]) -> None:
    """A site is matched by its warehouse (ERPNext: the group warehouse named like it); an
    ERP without it keeps the site's movements unmapped until it exists."""
    erp, led = erpnext
    erp.docs["Warehouse"]["WH1 - SA"]["warehouse_name"] = "Main"
    ev = receipt(3, "DOCK-3", 0)
    led.dock().post(ev)
    c = wait_for(led.server.url, lambda c: c["unmapped"] == 1)
    assert c["unmapped_events"] == [{
        "event_id": ev["event_id"], "reason": "ERPNext has no group warehouse named 'WH1'"}]
    erp.docs["Warehouse"]["WH1 - SA"]["warehouse_name"] = "WH1"
    wait_for(led.server.url, lambda c: c["forwarded"] == 1 and c["unmapped"] == 0)
    (doc,) = erp.docs["Stock Entry"].values()
    assert doc["custom_scan_event_id"] == ev["event_id"]


def test_erpnext_bad_key(tmp_path: Path) -> None:
    erp = ErpNext()
    with serve(erp) as url:
        cfg = write_config(tmp_path, "erpnext", url, 'api_key = "k3y"\napi_secret = "wrong"\n')
        with LedgerServer(tmp_path / "ledger.db", cfg) as server:
            led = Ledger(server)
            led.dock().post(receipt(1, "DOCK-3", 0))
            c = wait_for(server.url, lambda c: c["last_error"] is not None)
            led.close()
    assert c["last_error"] == "ERPNext refused the API key (401 AuthenticationError)"
    assert c["pending"] == 1


@pytest.fixture
def odoo(tmp_path: Path, ledger_db: str | Path) -> Iterator[tuple[Odoo, Ledger]]:
    erp = Odoo()
    with serve(erp) as url:
        cfg = write_config(tmp_path, "odoo", url, f'api_key = "{erp.API_KEY}"\n',
                           f'database = "{erp.DB}"\n')
        with LedgerServer(ledger_db, cfg) as server:
            led = Ledger(server)
            yield erp, led
            led.close()


def test_odoo_pickings_and_quant_inventory_call_by_call(odoo: tuple[Odoo, Ledger]) -> None:
    erp, led = odoo
    dock = led.dock()
    r1 = receipt(10, "DOCK-3", 0)
    m1 = move(6, "DOCK-3", "A-01", 5)
    p1 = pick(2, "A-01", 10)
    r2 = receipt(4, "DOCK-3", 11, item=E)
    c1 = count(3, "A-01", 30)
    late = receipt(2, "A-01", 20)     # before the count, reaching Odoo after it
    v1 = void(m1, 40)
    c2 = count(3, "A-01", 41, item=E)  # a bin with no quant of that product yet
    for ev in (r1, m1, p1, r2, c1, late, v1, c2):
        dock.post(ev)
    wait_for(led.server.url, lambda c: c["forwarded"] == 8 and not c["pending"])

    assert {c.headers["authorization"] for c in erp.calls} == {"bearer 0doo-key"}
    assert {c.headers["x-odoo-database"] for c in erp.calls} == {"prod"}
    creates = erp.posts("/json/2/stock.picking/create")
    assert creates[0].body == {"vals_list": [{
        "picking_type_id": 1, "location_id": 4, "location_dest_id": 20,
        "origin": r1["event_id"], "scheduled_date": "2026-11-22 10:00:00",
        "date_deadline": "2026-11-22 10:00:00",
        "move_ids": [[0, 0, {"name": r1["event_id"], "product_id": 30, "product_uom": 1,
                             "product_uom_qty": 10, "location_id": 4,
                             "location_dest_id": 20}]]}]}
    assert [c.body["vals_list"][0]["picking_type_id"] for c in creates] == [1, 5, 2, 1, 1, 5]
    assert creates[1].body["vals_list"][0]["location_id"] == 20
    assert creates[1].body["vals_list"][0]["location_dest_id"] == 21
    assert creates[2].body["vals_list"][0]["location_dest_id"] == 5   # customers
    assert creates[3].body["vals_list"][0]["move_ids"][0][2]["product_id"] == 31  # by barcode
    # the void: the opposite internal picking
    assert creates[5].body["vals_list"][0]["location_id"] == 21
    assert creates[5].body["vals_list"][0]["location_dest_id"] == 20
    assert creates[5].body["vals_list"][0]["origin"] == v1["event_id"]
    pid = 100
    confirm = erp.posts("/json/2/stock.picking/action_confirm")[0]
    assert confirm.body == {"ids": [pid]}
    write = erp.posts("/json/2/stock.move/write")[0]
    assert write.body == {"ids": [pid + 1], "vals": {"quantity": 10, "picked": True}}
    validate = erp.posts("/json/2/stock.picking/button_validate")[0]
    assert validate.body == {"ids": [pid], "context": {"skip_backorder": True,
                                                       "skip_sms": True}}
    # the count: the bin's quant read, set to the counted quantity, applied under the event
    # id; then the corrections at that count, each under its own key: of the late receipt,
    # and of the void (the move it reverses came before the count)
    (quant,) = [q["id"] for q in erp.models["stock.quant"].values()
                if q["product_id"] == 30 and q["location_id"] == 21]
    reads = erp.posts("/json/2/stock.quant/search_read")
    assert reads[0].body == {"domain": [["product_id", "=", 30], ["location_id", "=", 21]],
                             "fields": ["quantity"]}
    writes = erp.posts("/json/2/stock.quant/write")
    assert [w.body for w in writes] == [
        {"ids": [quant], "vals": {"inventory_quantity": 3},
         "context": {"inventory_mode": True}},   # 4 in the bin, counted 3
        {"ids": [quant], "vals": {"inventory_quantity": 3},
         "context": {"inventory_mode": True}},   # 5 after the late receipt: back to 3
        {"ids": [quant], "vals": {"inventory_quantity": 3},
         "context": {"inventory_mode": True}}]   # -3 after the void: back to 3
    applies = erp.posts("/json/2/stock.quant/action_apply_inventory")
    assert [a.body for a in applies[:3]] == [
        {"ids": [quant], "context": {"inventory_name": c1["event_id"]}},
        {"ids": [quant], "context": {
            "inventory_name": f"{late['event_id']}>{c1['event_id']}"}},
        {"ids": [quant], "context": {
            "inventory_name": f"{v1['event_id']}>{c1['event_id']}"}}]
    # the count of a product the bin has no quant of: the quant created in inventory mode
    (create,) = erp.posts("/json/2/stock.quant/create")
    assert create.body == {"vals_list": [{"product_id": 31, "location_id": 21,
                                          "inventory_quantity": 3}],
                           "context": {"inventory_mode": True}}
    assert applies[3].body == {"ids": [create_id := max(erp.models["stock.quant"])],
                               "context": {"inventory_name": c2["event_id"]}}
    assert erp.models["stock.quant"][create_id]["product_id"] == 31
    # adjustments are looked up by the reference of the move Odoo made, done
    looked_moves = [c.body["domain"] for c in erp.posts("/json/2/stock.move/search_read")]
    for key in (c1["event_id"], f"{late['event_id']}>{c1['event_id']}",
                f"{v1['event_id']}>{c1['event_id']}", c2["event_id"]):
        assert [["reference", "=", key], ["state", "=", "done"]] in looked_moves
    # every picking looked up by its origin before it was created
    looked = [c.body["domain"] for c in erp.posts("/json/2/stock.picking/search_read")]
    for ev in (r1, m1, p1, r2, late, v1):
        assert [["origin", "=", ev["event_id"]]] in looked
    # Odoo's quants equal the ledger's balances bin by bin
    bins = {"DOCK-3": 20, "A-01": 21}
    for (item, loc), qty in balances(led).items():
        assert erp.on_hand(30 if item == P else 31, bins[loc]) == qty, (item, loc)


def test_odoo_error_answers(odoo: tuple[Odoo, Ledger]) -> None:
    erp, led = odoo
    erp.fail_next = [("POST", "stock.picking/create", *odoo_error(
        422, "odoo.exceptions.UserError", "The operation cannot be completed: a lock date"))]
    led.dock().post(receipt(1, "DOCK-3", 0))
    wait_for(led.server.url, lambda c: c["forwarded"] == 1)
    refused = [c for c in erp.calls if c.path.endswith("stock.picking/create")]
    assert len(refused) == 2 and len(erp.models["stock.picking"]) == 1


def test_odoo_wizard_answer_is_an_error_not_a_success(odoo: tuple[Odoo, Ledger]) -> None:
    erp, led = odoo
    erp.fail_next = [("POST", "button_validate", 200, {
        "type": "ir.actions.act_window", "res_model": "stock.backorder.confirmation"})]
    led.dock().post(receipt(1, "DOCK-3", 0))
    c = wait_for(led.server.url, lambda c: c["forwarded"] == 1)
    assert c["last_error"] == ("Odoo did not validate picking 100: it asked for "
                               "stock.backorder.confirmation")
    assert len(erp.models["stock.picking"]) == 1  # found again, validated, not re-created


def test_odoo_unknown_location_waits_as_unmapped(odoo: tuple[Odoo, Ledger]) -> None:
    erp, led = odoo
    led.dock().post(receipt(1, "Z-99", 0))
    c = wait_for(led.server.url, lambda c: c["unmapped"] == 1)
    assert c["unmapped_events"][0]["reason"] == ("Odoo has no location with barcode 'Z-99' "
                                                 "in warehouse 'WH1'")
    erp.models["stock.location"][22] = {"id": 22, "barcode": "Z-99", "warehouse_id": [1, "W"]}
    wait_for(led.server.url, lambda c: c["forwarded"] == 1 and c["unmapped"] == 0)


def test_odoo_bad_key(tmp_path: Path) -> None:
    erp = Odoo()
    with serve(erp) as url:
        cfg = write_config(tmp_path, "odoo", url, 'api_key = "nope"\n', 'database = "prod"\n')
        with LedgerServer(tmp_path / "ledger.db", cfg) as server:
            led = Ledger(server)
            led.dock().post(receipt(1, "DOCK-3", 0))
            c = wait_for(server.url, lambda c: c["last_error"] is not None)
            led.close()
    assert c["last_error"] == "Odoo refused the API key (401)"


# ------------------------------------------------------------------- configuration


@pytest.mark.parametrize("body, secret, mode, message", [
    ('kind = "sap"', "", 0o600, "connectors[0].kind: must be one of tryton, erpnext, odoo"),
    ('kind = "tryton"', 'user = "a"\npassword = "b"\n', 0o600,
     "connectors[0].database: required for a Tryton connector"),
    ('kind = "odoo"\nurll = "x"', 'api_key = "a"\n', 0o600,
     "connectors[0].urll: unknown key"),
    ('kind = "odoo"', 'api_key = "a"\n', 0o644,
     "erp.secret: connectors[0].credentials_file: is accessible to other users (mode 644); "
     "chmod 600 it"),
    ('kind = "odoo"', 'api_key = "a"\npassword = "b"\n', 0o600,
     "erp.secret: password: unknown key for a odoo connector; expected api_key"),
    ('kind = "erpnext"', 'api_key = "a"\n', 0o600,
     "erp.secret: api_secret: required for a erpnext connector"),
    ('kind = "odoo"', 'api_key = "sekrit\n', 0o600,
     "erp.secret: connectors[0].credentials_file: not valid TOML"),
], ids=["kind", "tryton-database", "unknown-key", "mode", "secret-key", "secret-missing",
        "secret-toml"])
def test_connector_config_errors(tmp_path: Path, body: str, secret: str, mode: int,
                                 message: str) -> None:
    s = tmp_path / "erp.secret"
    s.write_text(secret)
    s.chmod(mode)
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(f'[[connectors]]\nname = "erp"\n{body}\nurl = "http://erp:8000/"\n'
                   'credentials_file = "erp.secret"\nsites = ["WH1"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert message in str(err.value)
    assert "sekrit" not in str(err.value)


def test_credentials_are_not_in_the_config_repr(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "odoo", "http://erp:8069", 'api_key = "sekrit"\n')
    c = load_config(cfg)
    assert c.connectors[0].credentials == {"api_key": "sekrit"}
    assert "sekrit" not in repr(c)


def test_without_connectors_the_status_is_empty_and_the_page_has_no_section(
        tmp_path: Path) -> None:
    with LedgerServer(tmp_path / "ledger.db") as server:
        assert httpx.get(server.url + "/v1/connectors").json() == {"connectors": []}
        assert 'id="connectors"' not in httpx.get(server.url + "/").text


def test_a_connector_added_later_forwards_the_sites_history_first(
        tmp_path: Path, ledger_db: str | Path) -> None:
    erp = ErpNext()
    with LedgerServer(ledger_db) as server:
        led = Ledger(server)
        first = receipt(2, "DOCK-3", 0)
        led.dock().post(first)
        led.close()
    with serve(erp) as url:
        cfg = write_config(tmp_path, "erpnext", url,
                           f'api_key = "{erp.API_KEY}"\napi_secret = "{erp.API_SECRET}"\n')
        with LedgerServer(ledger_db, cfg) as server:
            wait_for(server.url, lambda c: c["forwarded"] == 1)
    (doc,) = erp.docs["Stock Entry"].values()
    assert doc["custom_scan_event_id"] == first["event_id"]
