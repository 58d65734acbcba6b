"""A real trytond with its ``stock`` module on SQLite, for the connector tests.

Run as a script in its own process (trytond keeps global state; the test process stays clean):

    python -m tests.ledger.tryton_env create DIR      # trytond-admin + company, warehouse, bins
    python -m tests.ledger.tryton_env product DIR CODE NAME
    python -m tests.ledger.tryton_env stock DIR        # JSON: quantity per (product code, bin)

``DIR`` holds ``trytond.conf`` and the database ``erp.sqlite``. The warehouse's code is ``WH1``;
its bins (storage locations under the warehouse's storage zone) are ``DOCK-3``, ``A-01`` and
``B-02``. Products: ``04006381333931`` (by code) and one known only by its EAN-13 identifier
``5901234123457`` (stations send it as the GTIN-14 ``05901234123457``). Users: ``admin`` and
the connector's ``scan-ledger``, in the groups Stock and Stock Force Assignment only, both with
the password ``PASSWORD``. ``DIR`` must exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

DB = "erp"
USER = "admin"
PASSWORD = "tryton-test-password"
#: the connector's user: only the groups docs/connectors.md asks for
CONNECTOR_USER = "scan-ledger"
BINS = ("DOCK-3", "A-01", "B-02")


def write_conf(d: Path, port: int = 0) -> Path:
    conf = d / "trytond.conf"
    conf.write_text(
        f"[database]\nuri = sqlite://\npath = {d}\n\n"
        f"[web]\nlisten = 127.0.0.1:{port or 8000}\n\n"
        "[session]\nauthentications = password\n\n[password]\nlength = 8\n",
        encoding="utf-8")
    return conf


def create(d: Path) -> None:
    conf = write_conf(d)
    (d / f"{DB}.sqlite").touch()
    pw = d / "admin.pw"
    pw.write_text(PASSWORD, encoding="utf-8")
    env = dict(os.environ, TRYTONPASSFILE=str(pw))
    admin = Path(sys.executable).with_name("trytond-admin")
    subprocess.run([str(admin), "-c", str(conf), "-d", DB, "--all", "-u", "stock",
                    "--activate-dependencies", "--email", "admin@example.com"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    from proteus import Model, config
    config.set_trytond(DB, config_file=str(conf))
    from trytond.modules.company.tests.tools import create_company, get_company
    create_company()
    company = get_company()
    User = Model.get("res.user")
    Group = Model.get("res.group")
    admin_user, = User.find([("login", "=", USER)])
    force, = Group.find([("name", "=", "Stock Force Assignment")])
    admin_user.groups.append(force)
    admin_user.save()
    stock_group, = Group.find([("name", "=", "Stock")])
    connector = User(login=CONNECTOR_USER, name="scan-ledger", password=PASSWORD)
    connector.groups.extend([Group(stock_group.id), Group(force.id)])
    connector.companies.append(company)
    connector.company = company
    connector.save()
    Location = Model.get("stock.location")
    warehouse, = Location.find([("type", "=", "warehouse")])
    warehouse.code = "WH1"
    warehouse.save()
    storage, = Location.find([("code", "=", "STO")])
    for code in BINS:
        Location(name=f"Bin {code}", code=code, type="storage", parent=storage).save()
    add_product(d, "04006381333931", "Pencils", conf_loaded=True)
    ean = add_product(d, "", "Erasers", conf_loaded=True)
    Identifier = Model.get("product.identifier")
    Identifier(product=ean, type="ean", code="5901234123457").save()
    del company


def add_product(d: Path, code: str, name: str, conf_loaded: bool = False) -> object:
    from proteus import Model, config
    if not conf_loaded:
        config.set_trytond(DB, config_file=str(d / "trytond.conf"))
    Uom = Model.get("product.uom")
    Template = Model.get("product.template")
    unit, = Uom.find([("name", "=", "Unit")])
    t = Template(name=name, default_uom=unit, type="goods", list_price=Decimal(1))
    if code:
        t.code = code
    t.save()
    product, = t.products
    return product


def stock(d: Path) -> dict[str, float]:
    from proteus import Model, config
    config.set_trytond(DB, config_file=str(d / "trytond.conf"))
    Location = Model.get("stock.location")
    Move = Model.get("stock.move")
    out: dict[str, float] = {}
    for loc in Location.find([("code", "in", list(BINS))]):
        for m in Move.find([("state", "=", "done"), ["OR", ("to_location", "=", loc.id),
                                                      ("from_location", "=", loc.id)]]):
            key = f"{m.product.code or m.product.identifiers[0].code}@{loc.code}"
            sign = 1 if m.to_location.id == loc.id else -1
            out[key] = out.get(key, 0.0) + sign * m.quantity
    return {k: v for k, v in sorted(out.items()) if v}


if __name__ == "__main__":
    what, where = sys.argv[1], Path(sys.argv[2])
    if what == "create":
        create(where)
    elif what == "product":
        add_product(where, sys.argv[3], sys.argv[4])
    elif what == "stock":
        print(json.dumps(stock(where)))
