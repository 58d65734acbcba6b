"""Stand-ins for ERPNext and Odoo 19: real HTTP servers on 127.0.0.1 (port 0) that answer as
those products' published API documentation says. They are NOT the products: ERPNext and
Odoo cannot run here. They keep just enough state to answer the calls the connectors make,
record every request (method, path, query, headers, JSON body) for the tests to assert field
by field, and answer errors in each product's shape:

- ERPNext (Frappe REST, ``/api/resource/<DocType>``, ``/api/method/<path>``): ``{"data": ...}``
  or ``{"message": ...}``; errors with ``exc_type``, ``exception`` and ``_server_messages`` (a
  JSON string of JSON strings), e.g. 417 for a ``ValidationError``, 409 for a
  ``DuplicateEntryError``, 404 ``DoesNotExistError``, 401 ``AuthenticationError``;
- Odoo JSON-2 (``POST /json/2/<model>/<method>``, named arguments in the body, the result
  as the whole body); errors as ``{"name": "<exception class>", "message", "arguments",
  "context", "debug"}`` with a 4xx/5xx status (401 for a bad API key).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class StandIn:
    """Shared machinery: recorded calls and scripted failures."""

    calls: list[Call] = field(default_factory=list)
    #: answers to give instead of the real one: (method, path part, status, body), the first
    #: that matches a request is used once; a status of 0 does the work and then drops the
    #: connection (a lost answer)
    fail_next: list[tuple[str, str, int, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: a slow ERP: every answer comes this many seconds late
    delay_s: float = 0.0

    def handle(self, call: Call) -> tuple[int, Any]:
        raise NotImplementedError

    def posts(self, path_part: str) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and path_part in c.path]


@contextmanager
def serve(standin: StandIn) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _do(self) -> None:
            parts = urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            call = Call(self.command, unquote(parts.path),
                        {k: v[0] for k, v in parse_qs(parts.query).items()},
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw) if raw else None)
            if standin.delay_s:
                time.sleep(standin.delay_s)
            with standin.lock:
                standin.calls.append(call)
                scripted = None
                for i, (method, part, status, body) in enumerate(standin.fail_next):
                    if method == call.method and part in call.path:
                        scripted = (status, body)
                        del standin.fail_next[i]
                        break
                if scripted is not None and scripted[0] == 0:
                    standin.handle(call)  # done, but the answer is lost
                    self.close_connection = True
                    self.connection.close()
                    return
                status, body = scripted if scripted is not None else standin.handle(call)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _do

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------- ERPNext


def frappe_error(status: int, exc_type: str, message: str) -> tuple[int, Any]:
    """An error answer as Frappe sends it."""
    return status, {
        "exc_type": exc_type,
        "exception": f"frappe.exceptions.{exc_type}: {message}",
        "exc": json.dumps([f"Traceback (most recent call last): ... {exc_type}"]),
        "_server_messages": json.dumps([json.dumps({"message": message, "title": "Message",
                                                    "indicator": "red"})]),
    }


def _match(doc: dict[str, Any], filters: list[Any]) -> bool:
    for f in filters:
        if len(f) == 4:  # [child doctype, field, op, value]: Item Barcode
            values = [b["barcode"] for b in doc.get("barcodes", [])]
            if not any(v in f[3] for v in values):
                return False
            continue
        name, op, value = f
        v = doc.get(name)
        if op == "=" and v != value:
            return False
        if op == "in" and v not in value:
            return False
    return True


class ErpNext(StandIn):
    API_KEY, API_SECRET = "k3y", "s3cret"

    def __init__(self) -> None:
        super().__init__()
        self.docs: dict[str, dict[str, dict[str, Any]]] = {
            "Item": {
                "04006381333931": {"name": "04006381333931", "item_code": "04006381333931"},
                "ERASER": {"name": "ERASER", "item_code": "ERASER",
                           "barcodes": [{"barcode": "5901234123457", "barcode_type": "EAN"}]},
            },
            "Warehouse": {
                "WH1 - SA": {"name": "WH1 - SA", "warehouse_name": "WH1", "is_group": 1,
                             "company": "Scan AG"},
                **{f"{b} - SA": {"name": f"{b} - SA", "warehouse_name": b, "is_group": 0,
                                 "parent_warehouse": "WH1 - SA", "company": "Scan AG"}
                   for b in ("DOCK-3", "A-01")},
            },
            "Stock Entry": {}, "Stock Reconciliation": {},
        }
        self.counter = 0

    def handle(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("authorization") != f"token {self.API_KEY}:{self.API_SECRET}":
            return frappe_error(401, "AuthenticationError", "Invalid API key or secret")
        parts = call.path.split("/")
        if call.path.startswith("/api/resource/"):
            doctype = parts[3]
            table = self.docs.get(doctype)
            if table is None:
                return frappe_error(404, "DoesNotExistError", f"DocType {doctype} not found")
            if len(parts) == 5 and call.method == "GET":
                doc = table.get(parts[4])
                if doc is None:
                    return frappe_error(404, "DoesNotExistError",
                                        f"{doctype} {parts[4]} not found")
                return 200, {"data": doc}
            if call.method == "GET":
                filters = json.loads(call.query.get("filters", "[]"))
                fields = json.loads(call.query.get("fields", '["name"]'))
                rows = [{k: d.get(k) for k in fields} for d in table.values()
                        if _match(d, filters)]
                return 200, {"data": rows}
            return self._insert(doctype, table, call.body)
        if call.path == "/api/method/frappe.client.cancel":
            doc = self.docs[call.body["doctype"]].get(call.body["name"])
            if doc is None:
                return frappe_error(404, "DoesNotExistError", "not found")
            if doc["docstatus"] == 2:
                return frappe_error(417, "ValidationError", "Cannot edit cancelled document")
            doc["docstatus"] = 2
            return 200, {"message": doc}
        return frappe_error(404, "DoesNotExistError", f"no route {call.path}")

    def _insert(self, doctype: str, table: dict[str, dict[str, Any]], body: dict[str, Any]
                ) -> tuple[int, Any]:
        key = body.get("custom_scan_event_id")
        if key and any(d.get("custom_scan_event_id") == key for d in table.values()):
            return frappe_error(409, "DuplicateEntryError",
                                f"{doctype} with custom_scan_event_id {key} already exists")
        for row in body.get("items", []):
            if row["item_code"] not in self.docs["Item"]:
                return frappe_error(417, "LinkValidationError",
                                    f"Could not find Row #1: Item Code: {row['item_code']}")
            if body.get("stock_entry_type") == "Material Issue" and row["qty"] > self.on_hand(
                    row["item_code"], row["s_warehouse"]):
                return frappe_error(417, "NegativeStockError",
                                    f"1 units of Item {row['item_code']} needed in Warehouse "
                                    f"{row['s_warehouse']} to complete this transaction.")
        self.counter += 1
        prefix = "MAT-STE" if doctype == "Stock Entry" else "MAT-RECO"
        doc = dict(body, name=f"{prefix}-2026-{self.counter:05d}", doctype=doctype)
        table[doc["name"]] = doc
        return 200, {"data": doc}

    def on_hand(self, item: str, warehouse: str) -> int:
        """Stock as ERPNext's ledger would show it (by posting date and time, reconciliations
        setting the quantity, cancelled documents ignored)."""
        rows = []
        for doctype in ("Stock Entry", "Stock Reconciliation"):
            for d in self.docs[doctype].values():
                if d["docstatus"] != 1:
                    continue
                for r in d["items"]:
                    if r["item_code"] != item:
                        continue
                    at = (d["posting_date"], d["posting_time"])
                    if doctype == "Stock Reconciliation" and r["warehouse"] == warehouse:
                        rows.append((at, 1, "set", r["qty"]))
                    if r.get("t_warehouse") == warehouse:
                        rows.append((at, 0, "add", r["qty"]))
                    if r.get("s_warehouse") == warehouse:
                        rows.append((at, 0, "add", -r["qty"]))
        qty = 0
        for _at, _order, kind, q in sorted(rows):
            qty = q if kind == "set" else qty + q
        return qty


# ------------------------------------------------------------------------------ Odoo


def odoo_error(status: int, name: str, message: str) -> tuple[int, Any]:
    """An error answer as Odoo's JSON-2 endpoint sends it."""
    return status, {"name": name, "message": message, "arguments": [message],
                    "context": {}, "debug": f"Traceback (most recent call last): ... {name}"}


def _domain(rec: dict[str, Any], domain: list[Any]) -> bool:
    def term(t: list[Any]) -> bool:
        name, op, value = t
        v = rec.get(name)
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], int):
            v = v[0]  # many2one as read: [id, display name]
        return v == value if op == "=" else v in value

    items = list(domain)
    ok = True
    while items:
        t = items.pop(0)
        if t == "|":
            a, b = items.pop(0), items.pop(0)
            ok = ok and (term(a) or term(b))
        else:
            ok = ok and term(t)
    return ok


class Odoo(StandIn):
    API_KEY, DB = "0doo-key", "prod"

    def __init__(self) -> None:
        super().__init__()
        self.ids = iter(range(100, 10**6))
        m2o: Callable[[int, str], list[Any]] = lambda i, n: [i, n]  # noqa: E731
        self.models: dict[str, dict[int, dict[str, Any]]] = {
            "stock.warehouse": {1: {"id": 1, "code": "WH1", "lot_stock_id": m2o(8, "WH1/Stock"),
                                    "in_type_id": m2o(1, "Receipts"),
                                    "out_type_id": m2o(2, "Delivery Orders"),
                                    "int_type_id": m2o(5, "Internal Transfers"),
                                    "company_id": m2o(1, "Scan AG")}},
            "stock.picking.type": {
                1: {"id": 1, "default_location_src_id": m2o(4, "Partners/Vendors"),
                    "default_location_dest_id": m2o(8, "WH1/Stock")},
                2: {"id": 2, "default_location_src_id": m2o(8, "WH1/Stock"),
                    "default_location_dest_id": m2o(5, "Partners/Customers")},
                5: {"id": 5, "default_location_src_id": m2o(8, "WH1/Stock"),
                    "default_location_dest_id": m2o(8, "WH1/Stock")}},
            "stock.location": {
                20: {"id": 20, "barcode": "DOCK-3", "warehouse_id": m2o(1, "WH1")},
                21: {"id": 21, "barcode": "A-01", "warehouse_id": m2o(1, "WH1")}},
            "product.product": {
                30: {"id": 30, "default_code": "04006381333931", "barcode": False,
                     "uom_id": m2o(1, "Units")},
                31: {"id": 31, "default_code": False, "barcode": "5901234123457",
                     "uom_id": m2o(1, "Units")}},
            "stock.picking": {}, "stock.move": {}, "stock.quant": {},
        }

    def handle(self, call: Call) -> tuple[int, Any]:
        if call.headers.get("authorization") != f"bearer {self.API_KEY}":
            return odoo_error(401, "werkzeug.exceptions.Unauthorized", "Invalid apikey")
        if call.headers.get("x-odoo-database") != self.DB:
            return odoo_error(404, "werkzeug.exceptions.NotFound", "database not found")
        _, _, _, model, method = call.path.split("/")
        table = self.models.get(model)
        if table is None:
            return odoo_error(404, "werkzeug.exceptions.NotFound", f"unknown model {model}")
        body = call.body or {}
        fn = getattr(self, "m_" + method, None)
        if fn is None:
            return odoo_error(404, "werkzeug.exceptions.NotFound",
                              f"The method '{method}' does not exist on the model '{model}'")
        result: tuple[int, Any] = fn(model, table, body)
        return result

    def m_search_read(self, model: str, table: dict[int, Any], body: dict[str, Any]
                      ) -> tuple[int, Any]:
        fields = body.get("fields") or []
        rows = [{"id": r["id"], **{f: r.get(f, False) for f in fields}}
                for r in table.values() if _domain(r, body.get("domain", []))]
        return 200, rows[: body["limit"]] if body.get("limit") else rows

    def m_search(self, model: str, table: dict[int, Any], body: dict[str, Any]
                 ) -> tuple[int, Any]:
        ids = [r["id"] for r in table.values() if _domain(r, body.get("domain", []))]
        return 200, ids[: body["limit"]] if body.get("limit") else ids

    def m_read(self, model: str, table: dict[int, Any], body: dict[str, Any]
               ) -> tuple[int, Any]:
        return 200, [{"id": i, **{f: table[i].get(f, False) for f in body["fields"]}}
                     for i in body["ids"]]

    def m_create(self, model: str, table: dict[int, Any], body: dict[str, Any]
                 ) -> tuple[int, Any]:
        ids = []
        for vals in body["vals_list"]:
            rid = next(self.ids)
            rec = {k: v for k, v in vals.items() if k != "move_ids"}
            rec.update(id=rid, state="draft")
            if model == "stock.quant":
                rec.setdefault("quantity", 0)
                if "product_id" not in vals or "location_id" not in vals:
                    return odoo_error(422, "odoo.exceptions.ValidationError",
                                      "Quant's creation is restricted, you can't do this "
                                      "operation.")
            table[rid] = rec
            for _zero, _z, mv in vals.get("move_ids", []):
                mid = next(self.ids)
                self.models["stock.move"][mid] = dict(mv, id=mid, picking_id=rid,
                                                      state="draft", quantity=0,
                                                      reference=f"WH1/{rid}")
            ids.append(rid)
        return 200, ids

    def m_write(self, model: str, table: dict[int, Any], body: dict[str, Any]
                ) -> tuple[int, Any]:
        for i in body["ids"]:
            table[i].update(body["vals"])
        return 200, True

    def m_action_confirm(self, model: str, table: dict[int, Any], body: dict[str, Any]
                         ) -> tuple[int, Any]:
        for i in body["ids"]:
            table[i]["state"] = "assigned"
            for m in self._moves(i):
                m["state"] = "assigned"
        return 200, True

    def _moves(self, picking: int) -> list[dict[str, Any]]:
        return [m for m in self.models["stock.move"].values() if m.get("picking_id") == picking]

    def m_button_validate(self, model: str, table: dict[int, Any], body: dict[str, Any]
                          ) -> tuple[int, Any]:
        for i in body["ids"]:
            moves = self._moves(i)
            if table[i]["state"] == "draft":
                return odoo_error(422, "odoo.exceptions.UserError",
                                  "You cannot validate a transfer if no quantities are "
                                  "reserved nor done.")
            if not all(m.get("picked") for m in moves):
                return 200, {"type": "ir.actions.act_window",
                             "res_model": "stock.backorder.confirmation"}
            for m in moves:
                m["state"] = "done"
                self._quant(m["product_id"], m["location_id"], -m["quantity"])
                self._quant(m["product_id"], m["location_dest_id"], m["quantity"])
            table[i]["state"] = "done"
            table[i]["date_done"] = "now"
        return 200, True

    def _quant(self, product: int, location: int, qty: float) -> None:
        quants = self.models["stock.quant"]
        for q in quants.values():
            if q["product_id"] == product and q["location_id"] == location:
                q["quantity"] += qty
                return
        qid = next(self.ids)
        quants[qid] = {"id": qid, "product_id": product, "location_id": location,
                       "quantity": qty}

    def m_action_apply_inventory(self, model: str, table: dict[int, Any], body: dict[str, Any]
                                 ) -> tuple[int, Any]:
        name = (body.get("context") or {}).get("inventory_name") or "Product Quantity Updated"
        for i in body["ids"]:
            q = table[i]
            diff = q["inventory_quantity"] - q["quantity"]
            mid = next(self.ids)
            src, dst = (99, q["location_id"]) if diff > 0 else (q["location_id"], 99)
            self.models["stock.move"][mid] = {
                "id": mid, "name": name, "reference": name, "product_id": q["product_id"],
                "quantity": abs(diff), "location_id": src, "location_dest_id": [dst, "x"],
                "state": "done", "is_inventory": True}
            q["quantity"] = q["inventory_quantity"]
            q["inventory_quantity"] = 0
        return 200, None

    def on_hand(self, product: int, location: int) -> float:
        return sum(q["quantity"] for q in self.models["stock.quant"].values()
                   if q["product_id"] == product and q["location_id"] == location)
