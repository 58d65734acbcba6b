"""ERPNext (Frappe) over its REST API, ``Authorization: token <api_key>:<api_secret>``.

- receipt / pick / move: a submitted ``Stock Entry`` of type Material Receipt / Material
  Issue / Material Transfer (``POST /api/resource/Stock Entry`` with ``docstatus: 1``: inserted
  and submitted in one transaction), ``set_posting_time: 1`` with ``posting_date`` and
  ``posting_time`` when the movement happened (in the connector's ``timezone``);
- count: a submitted ``Stock Reconciliation`` of the bin to the counted quantity (ERPNext
  reposts later entries when an earlier-dated one arrives, so a count keeps its quantity);
- void: the target document cancelled (``POST /api/method/frappe.client.cancel``), which is
  ERPNext's own reversal.

The event id is in the custom field ``custom_scan_event_id`` (Data, unique: the database
indexes it and refuses a second document with the same id) of both doctypes, so the look-up
is one indexed query; it is also written into ``remarks`` for people. Items are ``Item``
records whose ``item_code`` is the item as sent or with an ``Item Barcode`` equal to it (or
its shorter GTIN forms); bins are warehouses whose ``warehouse_name`` is the location code,
under the group warehouse whose ``warehouse_name`` is the site.
"""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from ledger.connectors.base import to_datetime
from ledger.connectors.plan import Adjust, Op, Posted, Reverse, Transfer
from ledger.connectors.settings import ConnectorConfig
from ledger.connectors.tryton import gtin_forms
from ledger.errors import ConnectorError, Unmapped

__all__ = ["EVENT_FIELD", "ErpNextAdapter"]

EVENT_FIELD = "custom_scan_event_id"
_ENTRY_TYPES = {"receipt": "Material Receipt", "pick": "Material Issue",
                "move": "Material Transfer"}


def _server_message(body: dict[str, Any]) -> str:
    """The human message of a Frappe error answer (``_server_messages`` or ``exception``)."""
    raw = body.get("_server_messages")
    if isinstance(raw, str):
        try:
            msgs = [json.loads(m).get("message", m) for m in json.loads(raw)]
            if msgs:
                return "; ".join(str(m) for m in msgs)
        except (ValueError, AttributeError, TypeError):
            pass
    return str(body.get("exception") or body.get("exc_type") or body)


class ErpNextAdapter:
    kind = "erpnext"
    reevaluates_counts = True

    def __init__(self, config: ConnectorConfig, *, transport: httpx.BaseTransport | None = None
                 ) -> None:
        creds = config.credentials
        self._config = config
        self._tz = ZoneInfo(config.timezone)
        self._http = httpx.Client(
            base_url=config.url.rstrip("/"), timeout=config.timeout_s, transport=transport,
            headers={"Authorization": f"token {creds['api_key']}:{creds['api_secret']}",
                     "Accept": "application/json"})
        self._items: dict[str, str] = {}
        self._bins: dict[tuple[str, str], tuple[str, str]] = {}

    def close(self) -> None:
        self._http.close()

    def sees(self, later_t: int, count_t: int) -> bool:
        return False

    # ----------------------------------------------------------------- HTTP

    def _request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._http.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise ConnectorError(f"ERPNext at {self._config.url} unreachable: "
                                 f"{type(exc).__name__}: {exc}") from exc
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code in (401, 403):
            raise ConnectorError(f"ERPNext refused the API key ({r.status_code} "
                                 f"{data.get('exc_type', '')})".rstrip())
        if r.status_code >= 400:
            raise ConnectorError(f"ERPNext answered {r.status_code} to {method} {path}: "
                                 f"{data.get('exc_type', '')} {_server_message(data)}")
        if not isinstance(data, dict):
            raise ConnectorError(f"ERPNext answered {method} {path} with something unexpected")
        return data.get("data", data.get("message"))

    def _list(self, doctype: str, filters: list[Any], fields: list[str]) -> list[Any]:
        rows = self._request("GET", f"/api/resource/{doctype}", params={
            "filters": json.dumps(filters), "fields": json.dumps(fields),
            "limit_page_length": "2"})
        return rows if isinstance(rows, list) else []

    # -------------------------------------------------------------- mapping

    def _item(self, item: str) -> str:
        code = self._items.get(item)
        if code is None:
            rows = self._list("Item", [["item_code", "=", item]], ["name"])
            if not rows:
                rows = self._list("Item", [["Item Barcode", "barcode", "in", gtin_forms(item)]],
                                  ["name"])
            if not rows:
                raise Unmapped(f"ERPNext has no Item with item_code or barcode {item!r}")
            code = self._items[item] = str(rows[0]["name"])
        return code

    def _bin(self, site: str, code: str) -> tuple[str, str]:
        """(warehouse name, company) of the bin ``code`` under the site's warehouse."""
        hit = self._bins.get((site, code))
        if hit is None:
            groups = self._list("Warehouse", [["warehouse_name", "=", site],
                                              ["is_group", "=", 1]], ["name"])
            if not groups:
                raise Unmapped(f"ERPNext has no group warehouse named {site!r}")
            rows = self._list("Warehouse", [["warehouse_name", "=", code],
                                            ["parent_warehouse", "=", groups[0]["name"]]],
                              ["name", "company"])
            if not rows:
                raise Unmapped(f"ERPNext has no warehouse {code!r} under {site!r}")
            hit = self._bins[(site, code)] = (str(rows[0]["name"]), str(rows[0]["company"]))
        return hit

    def _when(self, t: int) -> tuple[str, str]:
        local = to_datetime(t).astimezone(self._tz)
        return local.strftime("%Y-%m-%d"), local.strftime("%H:%M:%S.%f")

    # ------------------------------------------------------------ operations

    def find(self, op: Op) -> Posted | None:
        if isinstance(op, Reverse):
            doctype, _, name = op.target_ref.partition("/")
            doc = self._request("GET", f"/api/resource/{doctype}/{name}")
            return Posted(op.target_ref) if doc.get("docstatus") == 2 else None
        doctype = "Stock Reconciliation" if isinstance(op, Adjust) else "Stock Entry"
        rows = self._list(doctype, [[EVENT_FIELD, "=", op.key]], ["name", "docstatus"])
        if not rows:
            return None
        name, status = str(rows[0]["name"]), rows[0].get("docstatus")
        if status == 0:  # saved, never submitted (not by this connector): submit it
            doc = self._request("GET", f"/api/resource/{doctype}/{name}")
            self._request("POST", "/api/method/frappe.client.submit", body={"doc": doc})
        return Posted(f"{doctype}/{name}")

    def post(self, op: Op) -> Posted:
        if isinstance(op, Reverse):
            doctype, _, name = op.target_ref.partition("/")
            if not name:
                return Posted("")
            self._request("POST", "/api/method/frappe.client.cancel",
                          body={"doctype": doctype, "name": name})
            return Posted(op.target_ref)
        date, time = self._when(op.at)
        common = {"posting_date": date, "posting_time": time, "set_posting_time": 1,
                  EVENT_FIELD: op.key, "remarks": f"scan-ledger event {op.key}",
                  "docstatus": 1}
        if isinstance(op, Adjust):
            warehouse, company = self._bin(op.site, op.location)
            doc = self._request("POST", "/api/resource/Stock Reconciliation", body={
                **common, "company": company, "purpose": "Stock Reconciliation",
                "items": [{"item_code": self._item(op.item), "warehouse": warehouse,
                           "qty": op.counted}]})
            return Posted(f"Stock Reconciliation/{doc['name']}")
        return Posted(self._entry(op, common))

    def _entry(self, op: Transfer, common: dict[str, Any]) -> str:
        if op.purpose == "adjustment":  # not made for ERPNext: counts re-evaluate
            raise ConnectorError("ERPNext takes no adjustment transfers")
        row: dict[str, Any] = {"item_code": self._item(op.item), "qty": op.qty,
                               "conversion_factor": 1, "allow_zero_valuation_rate": 1}
        company = ""
        if op.from_location is not None:
            row["s_warehouse"], company = self._bin(op.site, op.from_location)
        if op.to_location is not None:
            row["t_warehouse"], company = self._bin(op.site, op.to_location)
        kind = _ENTRY_TYPES[op.purpose]
        doc = self._request("POST", "/api/resource/Stock Entry", body={
            **common, "stock_entry_type": kind, "purpose": kind, "company": company,
            "items": [row]})
        return f"Stock Entry/{doc['name']}"
