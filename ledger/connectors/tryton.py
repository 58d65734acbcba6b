"""Tryton over its JSON-RPC (``POST /<database>/``), with the ``stock`` module.

Every movement is a done internal shipment (``stock.shipment.internal``) whose ``reference``
is the key (the ``event_id``), carrying one stock move, with ``effective_date`` the day the
movement happened (Tryton's stock keeps dates, not times):

- receipt: warehouse input zone -> bin; pick: bin -> warehouse output zone; move: bin -> bin.
  A receipt's goods come into the input zone from a supplier location, and a pick's leave the
  output zone for a customer location, each by a done move of its own whose ``origin`` is the
  shipment's move (the look-up finds it there): so the warehouse's stock in Tryton grows by a
  receipt and shrinks by a pick, as the path of Tryton's own supplier and customer shipments
  does, and the zones are left as they were;
- count: the difference between the counted quantity and what Tryton holds in the bin at the
  end of that day, to or from the lost-and-found location (what Tryton's own inventory
  posts; ``stock.inventory`` has no field that could carry the event id in the same
  transaction as the moves);
- void: the opposite shipment, dated as the movement it cancels.

The shipment and its move are created in one call (one transaction), then ``wait``,
``assign_force`` and ``done``; a shipment found half-way after a crash is finished from the
state it is in. Items are products whose ``code`` is the item as sent, or with an identifier
(EAN/GTIN) equal to it or to its shorter GTIN forms; bins are locations with that ``code``
under the warehouse whose ``code`` is the site.
"""

from __future__ import annotations

import base64
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from ledger.connectors.base import to_datetime
from ledger.connectors.plan import Adjust, Op, Posted, Reverse, Transfer
from ledger.connectors.settings import ConnectorConfig
from ledger.errors import ConnectorError, Unmapped

__all__ = ["TrytonAdapter", "gtin_forms"]

SHIPMENT = "stock.shipment.internal"


def gtin_forms(item: str) -> list[str]:
    """The item as sent and, for a GTIN-14 with leading zeros, its GTIN-13/12/8 forms.

    >>> gtin_forms("04006381333931")
    ['04006381333931', '4006381333931']
    >>> gtin_forms("SKU-1")
    ['SKU-1']
    """
    out = [item]
    if item.isdigit() and len(item) == 14:
        for n in (13, 12, 8):
            head, tail = item[:14 - n], item[14 - n:]
            if set(head) == {"0"}:
                out.append(tail)
    return out


def _date(d: date) -> dict[str, Any]:
    return {"__class__": "date", "year": d.year, "month": d.month, "day": d.day}


class TrytonAdapter:
    kind = "tryton"
    reevaluates_counts = False

    def __init__(self, config: ConnectorConfig, *, transport: httpx.BaseTransport | None = None
                 ) -> None:
        self._config = config
        self._tz = ZoneInfo(config.timezone)
        self._url = config.url.rstrip("/") + f"/{config.database}/"
        self._http = httpx.Client(timeout=config.timeout_s, transport=transport)
        self._auth: str | None = None
        self._context: dict[str, Any] = {}
        self._warehouses: dict[str, dict[str, Any]] = {}
        self._locations: dict[tuple[str, str], int] = {}
        self._products: dict[str, tuple[int, int]] = {}
        self._lost_found: int | None = None
        self._world: dict[str, int] = {}
        self._currency: Any = None

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ RPC

    def _post(self, method: str, params: list[Any]) -> Any:
        headers = {"Authorization": self._auth} if self._auth else {}
        try:
            r = self._http.post(self._url, json={"id": 0, "method": method, "params": params},
                                headers=headers)
        except httpx.HTTPError as exc:
            raise ConnectorError(f"Tryton at {self._config.url} unreachable: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if r.status_code in (401, 403):
            raise _SessionExpired()
        if r.status_code != 200:
            raise ConnectorError(f"Tryton answered {r.status_code} to {method}")
        try:
            body = r.json()
        except ValueError as exc:
            raise ConnectorError(f"Tryton answered {method} with something not JSON") from exc
        if body.get("error"):
            err = body["error"]
            msg = err[1][0] if isinstance(err, list) and len(err) > 1 and err[1] else err
            raise ConnectorError(f"Tryton refused {method}: {msg}")
        return body.get("result")

    def _login(self) -> None:
        creds = self._config.credentials
        self._auth = None
        result = self._post("common.db.login",
                            [creds["user"], {"password": creds["password"]}, "en"])
        if not isinstance(result, list) or len(result) != 2:
            raise ConnectorError("Tryton refused the login (check user and password)")
        uid, session = result
        token = base64.b64encode(f"{creds['user']}:{uid}:{session}".encode()).decode()
        self._auth = f"Session {token}"
        self._context = self._post("model.res.user.get_preferences", [True, {}])

    def call(self, model: str, method: str, *args: Any, context: dict[str, Any] | None = None
             ) -> Any:
        """``model.<model>.<method>(*args, context)``, logging in (again) when needed."""
        for attempt in (1, 2):
            if self._auth is None:
                try:
                    self._login()
                except _SessionExpired:
                    raise ConnectorError("Tryton refused the login (check user and "
                                         "password)") from None
            ctx = dict(self._context, **(context or {}))
            try:
                return self._post(f"model.{model}.{method}", [*args, ctx])
            except _SessionExpired:
                self._auth = None
                if attempt == 2:
                    raise ConnectorError(f"Tryton refused the session for {model}.{method}"
                                         ) from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- mapping

    def _warehouse(self, site: str) -> dict[str, Any]:
        wh = self._warehouses.get(site)
        if wh is None:
            rows = self.call("stock.location", "search_read",
                             [("type", "=", "warehouse"), ("code", "=", site)], 0, 1, None,
                             ["input_location", "output_location", "storage_location"])
            if not rows:
                raise Unmapped(f"Tryton has no warehouse with code {site!r}")
            wh = self._warehouses[site] = rows[0]
        return wh

    def _location(self, site: str, code: str) -> int:
        loc = self._locations.get((site, code))
        if loc is None:
            wh = self._warehouse(site)
            ids = self.call("stock.location", "search",
                            [("code", "=", code), ("parent", "child_of", [wh["id"]])],
                            0, 1, None)
            if not ids:
                raise Unmapped(f"Tryton has no location with code {code!r} in warehouse "
                               f"{site!r}")
            loc = self._locations[(site, code)] = int(ids[0])
        return loc

    def _outside(self, kind: str) -> int:
        """The first location of ``kind`` (``supplier`` or ``customer``): where a receipt's
        goods come from and a pick's go to."""
        loc = self._world.get(kind)
        if loc is None:
            ids = self.call("stock.location", "search", [("type", "=", kind)], 0, 1, None)
            if not ids:
                raise ConnectorError(f"Tryton has no {kind} location")
            loc = self._world[kind] = int(ids[0])
        return loc

    def _lost_and_found(self) -> int:
        if self._lost_found is None:
            ids = self.call("stock.location", "search", [("type", "=", "lost_found")], 0, 1,
                            None)
            if not ids:
                raise ConnectorError("Tryton has no lost-and-found location")
            self._lost_found = int(ids[0])
        return self._lost_found

    def _product(self, item: str) -> tuple[int, int]:
        hit = self._products.get(item)
        if hit is None:
            rows = self.call("product.product", "search_read", [("code", "=", item)], 0, 1,
                             None, ["default_uom"])
            if not rows:
                rows = self.call("product.product", "search_read",
                                 [("identifiers.code", "in", gtin_forms(item))], 0, 1, None,
                                 ["default_uom"])
            if not rows:
                raise Unmapped(f"Tryton has no product with code or identifier {item!r}")
            hit = self._products[item] = (int(rows[0]["id"]), int(rows[0]["default_uom"]))
        return hit

    def _day(self, t: int) -> date:
        return to_datetime(t).astimezone(self._tz).date()

    def sees(self, later_t: int, count_t: int) -> bool:
        return self._day(later_t) <= self._day(count_t)

    def _ends(self, op: Transfer) -> tuple[int, int]:
        wh = self._warehouse(op.site)

        def place(code: str | None, outside: int) -> int:
            return outside if code is None else self._location(op.site, code)

        # outside the bins: where a receipt comes from (and a reversed one goes back to),
        # where a pick goes, where an adjustment's difference goes
        if op.purpose == "adjustment":
            outside = self._lost_and_found()
        elif op.purpose == "pick":
            outside = int(wh["output_location"])
        else:
            outside = int(wh["input_location"])
        return place(op.from_location, outside), place(op.to_location, outside)

    # ----------------------------------------------------------- operations

    def find(self, op: Op) -> Posted | None:
        rows = self.call(SHIPMENT, "search_read", [("reference", "=", op.key)], 0, 1, None,
                         ["state", "moves"])
        if not rows:
            return None
        shipment = rows[0]
        self._finish(int(shipment["id"]), str(shipment["state"]))
        transfer = op.transfer if isinstance(op, Reverse) else op
        if isinstance(transfer, Transfer) and shipment["moves"]:
            self._outside_leg(transfer, int(shipment["moves"][0]))
        delta = None
        if isinstance(op, Adjust):
            moves = self.call("stock.move", "read", shipment["moves"],
                              ["quantity", "from_location"])
            lf = self._lost_and_found()
            delta = sum(int(m["quantity"]) * (1 if m["from_location"] == lf else -1)
                        for m in moves)
        return Posted(f"{SHIPMENT},{shipment['id']}", delta)

    def post(self, op: Op) -> Posted:
        if isinstance(op, Transfer):
            return Posted(self._ship(op))
        if isinstance(op, Reverse):
            if op.transfer is None:
                return Posted("")
            return Posted(self._ship(op.transfer))
        product, _uom = self._product(op.item)
        bin_id = self._location(op.site, op.location)
        held = self.call("product.product", "read", [product], ["quantity"],
                         context={"locations": [bin_id],
                                  "stock_date_end": _date(self._day(op.at))})
        delta = op.counted - round(float(held[0]["quantity"]))
        if delta == 0:
            return Posted("", 0)
        ref = self._ship(Transfer(op.key, op.site, op.item,
                                  op.location if delta < 0 else None,
                                  op.location if delta > 0 else None, abs(delta), op.at,
                                  "adjustment"))
        return Posted(ref, delta)

    def _ship(self, op: Transfer) -> str:
        product, uom = self._product(op.item)
        src, dst = self._ends(op)
        day = _date(self._day(op.at))
        company = self._context.get("company")
        (sid,) = self.call(SHIPMENT, "create", [{
            "reference": op.key, "company": company, "from_location": src,
            "to_location": dst, "planned_date": day, "planned_start_date": day,
            "effective_date": day, "effective_start_date": day,
            "moves": [["create", [{
                "product": product, "unit": uom, "quantity": op.qty, "from_location": src,
                "to_location": dst, "company": company, "planned_date": day,
                "effective_date": day,
            }]]],
        }])
        self._finish(int(sid), "draft")
        if op.purpose in ("receipt", "pick"):
            (shipment,) = self.call(SHIPMENT, "read", [sid], ["moves"])
            self._outside_leg(op, int(shipment["moves"][0]))
        return f"{SHIPMENT},{sid}"

    def _outside_leg(self, op: Transfer, move: int) -> None:
        """For a receipt or a pick (or its reverse): the done move between the warehouse's
        zone and the supplier or customer location, whose ``origin`` is the shipment's move
        ``move``; found and finished if it is already there."""
        if op.purpose not in ("receipt", "pick"):
            return
        origin = f"stock.move,{move}"
        rows = self.call("stock.move", "search_read", [("origin", "=", origin)], 0, 1, None,
                         ["state"])
        if rows:
            if rows[0]["state"] != "done":
                self.call("stock.move", "do", [int(rows[0]["id"])])
            return
        wh = self._warehouse(op.site)
        if op.purpose == "receipt":
            zone, world = int(wh["input_location"]), self._outside("supplier")
        else:
            zone, world = int(wh["output_location"]), self._outside("customer")
        # into the warehouse when the shipment leaves the zone, out of it when it enters it
        src, dst = (world, zone) if op.from_location is None else (zone, world)
        product, uom = self._product(op.item)
        company = self._context.get("company")
        if self._currency is None:
            (row,) = self.call("company.company", "read", [company], ["currency"])
            self._currency = row["currency"]
        (cost,) = self.call("product.product", "read", [product], ["cost_price"])
        day = _date(self._day(op.at))
        (leg,) = self.call("stock.move", "create", [{
            "product": product, "unit": uom, "quantity": op.qty, "from_location": src,
            "to_location": dst, "company": company, "planned_date": day,
            "effective_date": day, "origin": origin, "currency": self._currency,
            # a price Tryton requires of moves from a supplier or to a customer: the
            # product's cost price, so its average cost stays as it was
            "unit_price": cost["cost_price"] or {"__class__": "Decimal", "decimal": "0"},
        }])
        self.call("stock.move", "do", [int(leg)])

    def _finish(self, sid: int, state: str) -> None:
        steps = {"draft": ("wait", "assign_force", "done"), "waiting": ("assign_force", "done"),
                 "assigned": ("done",), "done": ()}
        if state not in steps:
            raise ConnectorError(f"Tryton shipment {sid} is {state}; it cannot be done")
        for button in steps[state]:
            self.call(SHIPMENT, button, [sid])


class _SessionExpired(Exception):
    """Tryton answered 401/403: log in again."""
