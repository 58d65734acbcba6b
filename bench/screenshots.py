"""Regenerate the manager's page screenshots in docs/img/ (referenced from docs/ledger.md).

    .venv/bin/python -m bench.screenshots           # docs/img/manager-page.png, incident.png
    .venv/bin/python -m bench.screenshots --out DIR

A real ledger (site WH1 in Europe/Berlin) on a temporary database gets thirty days of a small
warehouse's movements through the service's own ingest, each batch at the time it would have
arrived (so incidents are opened on the days they were), then this morning's story: a
receiving dock offline while picking goes on, a pick from the wrong bin, a lamp never received,
a station whose clock is slow and one that went silent. Headless Chromium photographs ``/`` and
the page of the morning's posting-order negative.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from ledger.config import parse_config
from ledger.events import format_time, now_us
from ledger.server import LedgerServer

__all__ = ["ITEM_NAMES", "main", "populate", "screenshot"]

ROOT = Path(__file__).resolve().parent.parent
ITEM_NAMES = {
    "04006381333931": "Mug, stoneware 0.3 l",
    "05901234123457": "Green tea, 250 g",
    "04012345678901": "Kettle, 1.7 l",
    "09780201379624": "Book: The Art of Computer Programming",
    "08711253001202": "Desk lamp, LED",
    "05449000000996": "Lemonade, 0.33 l",
}
_MIN = 60_000_000


class _Site:
    """Stations posting through the ledger service at chosen arrival times."""

    def __init__(self, srv: LedgerServer) -> None:
        self.srv = srv
        self.tokens: dict[str, str] = {}
        self.seq: dict[str, int] = {}

    def station(self, name: str) -> None:
        self.tokens[name] = self.srv.add_station(name, "WH1")
        self.seq[name] = 0

    def event(self, station: str, typ: str, item: str, qty: int, at: int, *,
              frm: str | None = None, to: str | None = None,
              operator: str = "u17") -> dict[str, Any]:
        self.seq[station] += 1
        return {"event_id": str(uuid.uuid4()), "station": station, "site": "WH1",
                "scanner": "handheld", "seq": self.seq[station], "type": typ, "item": item,
                "lot": None, "serial": None, "qty": qty, "from_location": frm,
                "to_location": to, "occurred_at": format_time(at), "reference": None,
                "operator": operator, "voids": None,
                "clock": {"synced": True, "offset_ms": 0.0, "basis": "ntp"}, "raw": []}

    def post(self, station: str, events: list[dict[str, Any]], received: int, *,
             clock_behind_s: float = 0.0) -> None:
        sent = received - int(clock_behind_s * 1e6)
        body = {"station": station, "sent_at": format_time(sent),
                "watermark": format_time(received - 1_000_000), "events": events}
        svc = self.srv.service
        assert svc is not None
        reply = self.srv.call(svc.ingest, self.tokens[station], orjson.dumps(body), received)
        assert reply.status == 200, reply.body


def populate(srv: LedgerServer, seed: int = 7) -> int:
    """Thirty days of history and this morning's story; returns the id of the morning's
    posting-order incident (the one photographed)."""
    rnd = random.Random(seed)
    site = _Site(srv)
    for name in ("recv", "putaway", "pick", "pick-2", "night"):
        site.station(name)
    srv.import_items(list(ITEM_NAMES.items()))
    items = list(ITEM_NAMES)[:4]
    now = now_us()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(30, 0, -1):
        day = int((midnight - timedelta(days=back)).timestamp() * 1e6)
        t = day + 7 * 60 * _MIN
        for item in items:
            bins = ["A-01", "B-02", "C-03"]
            for b in bins:
                site.post("recv", [site.event("recv", "receipt", item, 20, t, to=b)], t + _MIN)
                t += 3 * _MIN
            for _ in range(rnd.randint(2, 5)):
                b = rnd.choice(bins)
                late = rnd.random() < 0.5
                pick = site.event("pick", "pick", item, rnd.randint(1, 4), t, frm=b)
                if late:  # a receipt scanned before the pick reaches the ledger after it
                    rec = site.event("recv", "receipt", item, 30, t - 2 * _MIN, to=b)
                    empty = site.event("pick", "count", item, 0, t - 3 * _MIN, to=b)
                    site.post("pick", [empty, pick], t + _MIN)
                    site.post("recv", [rec], t + 40 * _MIN)
                else:
                    site.post("pick", [pick], t + _MIN)
                t += 25 * _MIN
            if rnd.random() < 0.3:  # a pick from the wrong bin, settled by a count later
                wrong = site.event("pick-2", "pick", item, 50, t, frm="D-09")
                site.post("pick-2", [wrong], t + _MIN)
                if rnd.random() < 0.7:
                    site.post("pick-2", [site.event("pick-2", "count", item, 0, t + 90 * _MIN,
                                                    to="D-09")], t + 91 * _MIN)
            if rnd.random() < 0.06:  # a real shortage
                site.post("pick-2", [site.event("pick-2", "pick", "08711253001202", 1, t,
                                                frm="E-01")], t + _MIN)
        t = day + 18 * 60 * _MIN
        site.post("night", [], t)

    # this morning, the last hour
    mug, lamp, kettle = "04006381333931", "08711253001202", "04012345678901"
    t0 = now - 55 * _MIN
    site.post("recv", [site.event("recv", "count", mug, 0, t0 - _MIN, to="A-01")], t0)
    offline = [site.event("recv", "receipt", mug, 10, t0 + 2 * _MIN, to="A-01", operator="u3")]
    timing = site.event("pick", "pick", mug, 6, t0 + 9 * _MIN, frm="A-01", operator="u7")
    site.post("pick", [timing], t0 + 9 * _MIN + 2_000_000)
    site.post("pick", [site.event("pick", "pick", mug, 3, t0 + 14 * _MIN, frm="B-07")],
              t0 + 14 * _MIN + 2_000_000)
    site.post("pick-2", [site.event("pick-2", "pick", lamp, 1, t0 + 21 * _MIN, frm="E-01")],
              t0 + 21 * _MIN + 2_000_000)
    site.post("recv", offline, t0 + 31 * _MIN)  # the dock is back
    site.post("putaway", [site.event("putaway", "move", kettle, 2, t0 + 40 * _MIN, frm="DOCK-1",
                                     to="C-03")], t0 + 40 * _MIN + 1_000_000,
              clock_behind_s=8.4)
    for name in ("recv", "pick", "pick-2"):
        site.post(name, [], now - 30_000_000)
    site.post("night", [], now - 7 * 60 * _MIN)
    svc = srv.service
    assert svc is not None
    incident_id = timing_id(srv, timing["event_id"])
    anna = srv.add_manager("anna")
    reply = srv.call(svc.add_note, anna, incident_id,
                     b'{"text": "Checked with receiving: their network was down for half an hour '
                     b'and the mugs were on the shelf all along. No adjustment."}')
    assert reply.status == 201, reply.body
    return incident_id


def timing_id(srv: LedgerServer, event_id: str) -> int:
    svc = srv.service
    assert svc is not None
    incidents = srv.call(svc.negatives).body["incidents"]
    return int(next(i["id"] for i in incidents if i["depletion_event_id"] == event_id))


def screenshot(url: str, out: Path, profile: Path, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian package chromium)")
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size=1280,{height}",
         f"--screenshot={out}", url],
        capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed: {done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    config = parse_config({"sites": {"WH1": {"timezone": "Europe/Berlin"}}})
    with tempfile.TemporaryDirectory(prefix="scan-ledger-shots-") as tmp, \
            LedgerServer(Path(tmp) / "ledger.db", config=config) as srv:
        incident = populate(srv)
        shots = [(srv.url + "/?status=open", args.out / "manager-page.png", 1500),
                 (srv.url + f"/incidents/{incident}", args.out / "incident.png", 1450)]
        for url, out, height in shots:
            screenshot(url, out, Path(tmp) / "profile", height)
            print(f"wrote {out}")
    return [out for _, out, _ in shots]


if __name__ == "__main__":
    main()
