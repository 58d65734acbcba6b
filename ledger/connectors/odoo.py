"""Odoo 19 over its JSON-2 API: ``POST /json/2/<model>/<method>`` with
``Authorization: bearer <api_key>`` and ``X-Odoo-Database: <database>``.

- receipt / pick / move: a ``stock.picking`` of the warehouse's receipt / delivery / internal
  picking type, ``origin`` = the event id, one move; ``action_confirm``, the move's
  ``quantity`` set and ``picked``, then ``button_validate``;
- count and adjustments: ``stock.quant`` inventory: ``inventory_quantity`` set on the bin's
  quant, then ``action_apply_inventory`` with ``inventory_name`` = the key in the context,
  which becomes the ``reference`` of the stock move Odoo makes;
- void: the opposite picking (or the opposite inventory adjustment for a count).

Dates: Odoo sets ``date_done`` (and the moves' ``date``) when a picking is validated and
offers no API to post into the past; the movement's time goes into ``scheduled_date`` and
``date_deadline`` for reference only. Stock valuation and reports in Odoo therefore show
when a movement reached Odoo, not when it happened, unless an add-on (such as the OCA's
``stock_force_date``) lets the date be forced. Counts are taken "now" too; the connector's
corrections (see :mod:`ledger.connectors.plan`) keep the bins' quantities equal to the
ledger's.

Items are ``product.product`` records whose ``default_code`` is the item as sent or whose
``barcode`` is it (or its shorter GTIN forms); bins are ``stock.location`` records whose
``barcode`` is the location code, in the warehouse whose ``code`` is the site.
"""

from __future__ import annotations

from typing import Any

import httpx

from ledger.connectors.base import to_datetime
from ledger.connectors.plan import Adjust, Op, Posted, Reverse, Transfer
from ledger.connectors.settings import ConnectorConfig
from ledger.connectors.tryton import gtin_forms
from ledger.errors import ConnectorError, Unmapped

__all__ = ["OdooAdapter"]


class OdooAdapter:
    kind = "odoo"
    reevaluates_counts = False

    def __init__(self, config: ConnectorConfig, *, transport: httpx.BaseTransport | None = None
                 ) -> None:
        headers = {"Authorization": f"bearer {config.credentials['api_key']}",
                   "Content-Type": "application/json; charset=utf-8"}
        if config.database:
            headers["X-Odoo-Database"] = config.database
        self._config = config
        self._http = httpx.Client(base_url=config.url.rstrip("/"), timeout=config.timeout_s,
                                  transport=transport, headers=headers)
        self._warehouses: dict[str, dict[str, Any]] = {}
        self._types: dict[int, dict[str, Any]] = {}
        self._bins: dict[tuple[str, str], int] = {}
        self._products: dict[str, tuple[int, int]] = {}

    def close(self) -> None:
        self._http.close()

    def sees(self, later_t: int, count_t: int) -> bool:
        return True  # Odoo counts "now": it sees everything it holds

    # ----------------------------------------------------------------- HTTP

    def call(self, model: str, method: str, **kwargs: Any) -> Any:
        path = f"/json/2/{model}/{method}"
        try:
            r = self._http.post(path, json=kwargs)
        except httpx.HTTPError as exc:
            raise ConnectorError(f"Odoo at {self._config.url} unreachable: "
                                 f"{type(exc).__name__}: {exc}") from exc
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code == 401:
            raise ConnectorError("Odoo refused the API key (401)")
        if r.status_code != 200:
            msg = data.get("message") if isinstance(data, dict) else None
            name = data.get("name") if isinstance(data, dict) else None
            raise ConnectorError(f"Odoo answered {r.status_code} to {model}.{method}: "
                                 f"{name or ''} {msg or r.text[:200]}".rstrip())
        return data

    # -------------------------------------------------------------- mapping

    def _warehouse(self, site: str) -> dict[str, Any]:
        wh = self._warehouses.get(site)
        if wh is None:
            rows = self.call("stock.warehouse", "search_read", domain=[["code", "=", site]],
                             fields=["lot_stock_id", "in_type_id", "out_type_id", "int_type_id",
                                     "company_id"], limit=1)
            if not rows:
                raise Unmapped(f"Odoo has no warehouse with code {site!r}")
            wh = self._warehouses[site] = rows[0]
        return wh

    def _type(self, type_id: int) -> dict[str, Any]:
        t = self._types.get(type_id)
        if t is None:
            rows = self.call("stock.picking.type", "read", ids=[type_id],
                             fields=["default_location_src_id", "default_location_dest_id"])
            t = self._types[type_id] = rows[0]
        return t

    def _bin(self, site: str, code: str) -> int:
        loc = self._bins.get((site, code))
        if loc is None:
            wh = self._warehouse(site)
            ids = self.call("stock.location", "search",
                            domain=[["barcode", "=", code], ["warehouse_id", "=", wh["id"]]],
                            limit=1)
            if not ids:
                raise Unmapped(f"Odoo has no location with barcode {code!r} in warehouse "
                               f"{site!r}")
            loc = self._bins[(site, code)] = int(ids[0])
        return loc

    def _product(self, item: str) -> tuple[int, int]:
        hit = self._products.get(item)
        if hit is None:
            rows = self.call("product.product", "search_read",
                             domain=["|", ["default_code", "=", item],
                                     ["barcode", "in", gtin_forms(item)]],
                             fields=["uom_id"], limit=1)
            if not rows:
                raise Unmapped(f"Odoo has no product with default_code or barcode {item!r}")
            hit = self._products[item] = (int(rows[0]["id"]), int(rows[0]["uom_id"][0]))
        return hit

    # ----------------------------------------------------------- operations

    def find(self, op: Op) -> Posted | None:
        if isinstance(op, Adjust) or (isinstance(op, Transfer) and op.purpose == "adjustment") \
                or (isinstance(op, Reverse) and op.transfer is not None
                    and op.transfer.purpose == "adjustment"):
            moves = self.call("stock.move", "search_read",
                              domain=[["reference", "=", op.key], ["state", "=", "done"]],
                              fields=["quantity", "location_dest_id", "is_inventory"])
            if not moves:
                return None
            site, loc = _site_and_bin(op)
            bin_id = self._bin(site, loc)
            delta = sum(int(m["quantity"]) * (1 if m["location_dest_id"][0] == bin_id else -1)
                        for m in moves)
            return Posted(f"stock.move,{moves[0]['id']}", delta)
        rows = self.call("stock.picking", "search_read", domain=[["origin", "=", op.key]],
                         fields=["state"], limit=1)
        if not rows:
            return None
        pid, state = int(rows[0]["id"]), str(rows[0]["state"])
        if state != "done":
            self._validate(pid, state)
        return Posted(f"stock.picking,{pid}")

    def post(self, op: Op) -> Posted:
        if isinstance(op, Reverse):
            if op.transfer is None:
                return Posted("")
            op = op.transfer
        if isinstance(op, Adjust):
            return self._inventory(op.key, op.site, op.item, op.location, None, op.counted)
        if op.purpose == "adjustment":
            loc = op.to_location or op.from_location or ""
            delta = op.qty if op.to_location is not None else -op.qty
            return self._inventory(op.key, op.site, op.item, loc, delta, None)
        return Posted(f"stock.picking,{self._picking(op)}")

    def _inventory(self, key: str, site: str, item: str, loc: str, delta: int | None,
                   counted: int | None) -> Posted:
        product, _uom = self._product(item)
        bin_id = self._bin(site, loc)
        quants = self.call("stock.quant", "search_read",
                           domain=[["product_id", "=", product], ["location_id", "=", bin_id]],
                           fields=["quantity"])
        held = sum(int(q["quantity"]) for q in quants)
        target = held + (delta or 0) if counted is None else counted
        if target == held:
            return Posted("", 0)
        ctx = {"inventory_mode": True}
        if quants:  # the bin's first quant takes the whole difference
            qid = int(quants[0]["id"])
            self.call("stock.quant", "write", ids=[qid],
                      vals={"inventory_quantity": int(quants[0]["quantity"]) + target - held},
                      context=ctx)
        else:
            (qid,) = self.call("stock.quant", "create", vals_list=[{
                "product_id": product, "location_id": bin_id, "inventory_quantity": target}],
                context=ctx)
        self.call("stock.quant", "action_apply_inventory", ids=[qid],
                  context={"inventory_name": key})
        return Posted(f"stock.quant,{qid}", target - held)

    def _picking(self, op: Transfer) -> int:
        wh = self._warehouse(op.site)
        product, uom = self._product(op.item)
        if op.from_location is not None and op.to_location is not None:
            type_id = int(wh["int_type_id"][0])
        elif op.to_location is not None:
            type_id = int(wh["in_type_id"][0])
        else:
            type_id = int(wh["out_type_id"][0])
        # outside the bins: a receipt's supplier side, a pick's customer side
        outside_type = self._type(int(wh["in_type_id" if op.purpose == "receipt"
                                         else "out_type_id"][0]))
        outside = int((outside_type["default_location_src_id"] if op.purpose == "receipt"
                       else outside_type["default_location_dest_id"])[0])
        src = outside if op.from_location is None else self._bin(op.site, op.from_location)
        dst = outside if op.to_location is None else self._bin(op.site, op.to_location)
        when = to_datetime(op.at).strftime("%Y-%m-%d %H:%M:%S")
        (pid,) = self.call("stock.picking", "create", vals_list=[{
            "picking_type_id": type_id, "location_id": src, "location_dest_id": dst,
            "origin": op.key, "scheduled_date": when, "date_deadline": when,
            "move_ids": [[0, 0, {
                "name": op.key, "product_id": product, "product_uom": uom,
                "product_uom_qty": op.qty, "location_id": src, "location_dest_id": dst}]],
        }])
        self._validate(int(pid), "draft")
        return int(pid)

    def _validate(self, pid: int, state: str) -> None:
        if state in ("cancel",):
            raise ConnectorError(f"Odoo picking {pid} is cancelled; it cannot be validated")
        if state == "draft":
            self.call("stock.picking", "action_confirm", ids=[pid])
        moves = self.call("stock.move", "search_read", domain=[["picking_id", "=", pid]],
                          fields=["product_uom_qty"])
        for m in moves:
            self.call("stock.move", "write", ids=[m["id"]],
                      vals={"quantity": m["product_uom_qty"], "picked": True})
        answer = self.call("stock.picking", "button_validate", ids=[pid],
                           context={"skip_backorder": True, "skip_sms": True})
        if answer is not True:
            wanted = answer.get("res_model") if isinstance(answer, dict) else answer
            raise ConnectorError(f"Odoo did not validate picking {pid}: it asked for {wanted}")


def _site_and_bin(op: Op) -> tuple[str, str]:
    if isinstance(op, Adjust):
        return op.site, op.location
    t = op.transfer if isinstance(op, Reverse) else op
    assert t is not None
    return t.site, t.to_location or t.from_location or ""
