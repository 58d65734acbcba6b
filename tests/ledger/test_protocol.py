"""Sync protocol v1 (DESIGN section 6): auth, limits, shapes, validation, read endpoints."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from ledger.config import load_config
from ledger.errors import ConfigError
from tests.ledger.factory import batch, event, pick, receipt

TIME_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_an_empty_batch_is_a_clock_probe(ledger: Any) -> None:
    dock = ledger.dock()
    r = dock.post_raw(batch([]))
    assert r.status_code == 200
    body = r.json()
    assert body["results"] == []
    assert TIME_US.match(body["server_time"])
    (st,) = ledger.get("/v1/stations")["stations"]
    assert st["name"] == "dock-1" and st["last_contact"] is not None
    assert st["watermark"] == batch([])["watermark"]
    assert abs(st["clock_offset_ms"]) < 5000
    assert st["lag_s"] > 0


@pytest.mark.parametrize("headers, error", [
    ({}, "missing bearer token"),
    ({"Authorization": "Bearer not-a-token"}, "unknown or revoked token"),
    ({"Authorization": "Basic Zm9vOmJhcg=="}, "missing bearer token"),
], ids=["none", "unknown", "not-bearer"])
def test_no_or_bad_token_is_401(ledger: Any, headers: dict[str, str], error: str) -> None:
    ledger.dock()
    r = ledger.http.post("/v1/events", json=batch([]), headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": error}


def test_a_revoked_token_is_refused_at_once(ledger: Any, tmp_path: Path) -> None:
    """Revocation through the CLI, on the database of a running server, takes effect on the
    very next request (no cache to wait for)."""
    dock = ledger.dock()
    assert dock.post_raw(batch([])).status_code == 200
    out = subprocess.run([sys.executable, "-m", "ledger", "station", "revoke", "dock-1",
                          "--db", str(ledger.server.db_path)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "station dock-1 revoked"
    r = dock.post_raw(batch([]))
    assert r.status_code == 401
    other = ledger.dock("dock-2")
    ledger.server.revoke_station("dock-2")
    assert other.post_raw(batch([], station="dock-2")).status_code == 401


def test_too_large_requests_are_413(make_ledger: Any) -> None:
    ledger = make_ledger("max_body_bytes = 4096\nmax_batch_events = 3\n")
    dock = ledger.dock()
    big = batch([receipt(1, "A-01", 0, reference="x" * 200) for _ in range(20)])
    r = dock.post_raw(big)
    assert r.status_code == 413
    assert r.json() == {"error": "request body larger than 4096 bytes"}
    r = dock.post_raw(batch([receipt(1, "A-01", 0) for _ in range(4)]))
    assert r.status_code == 413
    assert r.json() == {"error": "4 events in one batch; at most 3"}
    assert ledger.on_hand("A-01") == 0


@pytest.mark.parametrize("body, error", [
    (b"{not json", "malformed JSON: Expecting property name enclosed in double quotes: "
                   "line 1 column 2 (char 1)"),
    (b"[]", "body: expected a JSON object {station, sent_at, watermark, events}"),
    (b'{"events": []}', "station: required, a string"),
    (b'{"station": "dock-1", "events": {}}', "events: required, an array of events"),
    (b'{"station": "dock-1", "events": [], "watermark": "yesterday"}',
     "watermark: expected a timestamp like 2026-11-22T10:15:30.123456Z, got 'yesterday'"),
], ids=["malformed", "array", "no-station", "events-object", "bad-watermark"])
def test_a_body_that_is_not_a_batch_is_400(ledger: Any, body: bytes, error: str) -> None:
    dock = ledger.dock()
    r = dock.http.post("/v1/events", content=body,
                       headers={"Authorization": f"Bearer {dock.token}",
                                "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"error": error}


BAD_EVENTS = [
    ({"event_id": "nope"}, "event_id: expected a UUID like 0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b, "
                           "got a string ('nope')"),
    ({"site": "WH9"}, "site: station 'dock-1' is registered at site 'WH1', not 'WH9'"),
    ({"seq": 0}, "seq: must be at least 1, got 0"),
    ({"seq": "3"}, "seq: expected an integer, got a string ('3')"),
    ({"type": "teleport"}, "type: must be one of receipt, pick, move, count, void; "
                           "got a string ('teleport')"),
    ({"qty": 0}, "qty: must be at least 1, got 0"),
    ({"qty": 1.5}, "qty: expected an integer, got a number (1.5)"),
    ({"qty": True}, "qty: expected an integer, got a boolean"),
    ({"item": None}, "item: must not be null"),
    ({"item": "A\x00"}, "item: contains control characters"),
    ({"to_location": None}, "to_location: a receipt needs a to-location"),
    ({"from_location": "X"}, "from_location: a receipt has no from-location (use to_location)"),
    ({"occurred_at": "2026-11-22 10:00"}, "occurred_at: expected a timestamp like "
                                          "2026-11-22T10:15:30.123456Z, got '2026-11-22 10:00'"),
    ({"occurred_at": "2026-11-22T10:00:00"}, "occurred_at: expected a timestamp like "
                                             "2026-11-22T10:15:30.123456Z, got "
                                             "'2026-11-22T10:00:00'"),
    ({"occurred_at": "1999-12-31T23:59:59Z"}, "occurred_at: out of range (years 2000 to 2099): "
                                              "'1999-12-31T23:59:59Z'"),
    ({"voids": "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"},
     "voids: only a void event names an event to void, this is a receipt"),
    ({"clock": "ntp"}, "clock: expected an object or null, got a string ('ntp')"),
    ({"raw": "LOC-A"}, "raw: expected an array of strings or null"),
]


@pytest.mark.parametrize("change, reason", BAD_EVENTS, ids=[r.split(":")[0] + str(i)
                                                            for i, (_, r) in
                                                            enumerate(BAD_EVENTS)])
def test_each_bad_field_is_rejected_with_its_reason_and_spares_the_batch(
        ledger: Any, change: dict[str, Any], reason: str) -> None:
    dock = ledger.dock()
    good_before, good_after = receipt(1, "A-01", 0), receipt(2, "A-01", 1)
    bad = {**receipt(5, "A-01", 0), **change}
    results = dock.post(good_before, bad, good_after)
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1]["reason"] == reason
    assert ledger.on_hand("A-01") == 3


@pytest.mark.parametrize("ev, reason", [
    (event("pick", frm=None, to="A"), "from_location: a pick needs a from-location"),
    (event("move", frm="A", to="A"), "to_location: a move needs two different locations, "
                                     "got 'A' twice"),
    (event("count", qty=-1, to="A"), "qty: a count must be at least 0, got -1"),
    (event("void", voids=None), "voids: required"),
], ids=["pick-without-from", "move-in-place", "negative-count", "void-without-target"])
def test_type_specific_rules(ledger: Any, ev: dict[str, Any], reason: str) -> None:
    (res,) = ledger.dock().post(ev)
    assert (res["status"], res["reason"]) == ("rejected", reason)


def test_a_void_of_a_void_is_rejected(ledger: Any) -> None:
    dock = ledger.dock()
    p = pick(1, "A-01", 0)
    v = event("void", voids=p["event_id"], minute=1)
    vv = event("void", voids=v["event_id"], minute=2)
    results = dock.post(p, v, vv)
    assert results[2]["reason"] == f"voids: {v['event_id']} is itself a void; " \
                                   "a void cannot be voided"


def test_unknown_fields_are_kept_not_refused(ledger: Any) -> None:
    dock = ledger.dock()
    r = receipt(1, "A-01", 0, boot_id="abc")
    assert dock.post(r)[0]["status"] == "accepted"
    (stored,) = ledger.get("/v1/events", station="dock-1", limit=1)["events"]
    assert stored["boot_id"] == "abc"
    assert TIME_US.match(stored["received_at"])


def test_read_endpoints_filter(ledger: Any) -> None:
    dock = ledger.dock()
    dock.post(receipt(1, "A-01", 0), receipt(2, "B-01", 0, item="00000000000017"),
              pick(1, "C-01", 1))
    assert len(ledger.get("/v1/balances")["balances"]) == 3
    assert [b["location"] for b in ledger.get("/v1/balances", location="B-01")["balances"]] == [
        "B-01"]
    assert len(ledger.get("/v1/events", limit=2)["events"]) == 2
    assert ledger.get("/v1/events", station="dock-9")["events"] == []
    assert len(ledger.incidents(status="open")) == 1
    assert ledger.incidents(status="resolved") == []
    assert ledger.http.get("/v1/negatives", params={"status": "x"}).status_code == 400
    assert ledger.http.get("/v1/events", params={"limit": "0"}).status_code == 400


def test_a_read_token_protects_reads_but_not_ingest(make_ledger: Any) -> None:
    ledger = make_ledger('read_token = "s3cret"\n')
    dock = ledger.dock()
    assert dock.post_raw(batch([])).status_code == 200
    assert ledger.http.get("/v1/balances").status_code == 401
    assert ledger.http.get("/").status_code == 401
    ok = ledger.http.get("/v1/balances", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert ledger.http.get("/", params={"token": "s3cret"}).status_code == 200
    # the ERP connectors' status too (docs/connectors.md): not to a station's token
    assert ledger.http.get("/v1/connectors").status_code == 401
    assert ledger.http.get("/v1/connectors", headers={
        "Authorization": f"Bearer {dock.token}"}).status_code in (401, 403)
    assert ledger.http.get("/v1/connectors", headers={
        "Authorization": "Bearer s3cret"}).json() == {"connectors": []}


def test_a_station_token_reads_its_own_sites_incidents_only(make_ledger: Any) -> None:
    """A dock asks which of its warnings still stand with the token it posts with: with a
    read token set, a station's token reads ``GET /v1/negatives`` of its own site (``site=``
    required) and nothing else; another site's incidents stay closed to it."""
    ledger = make_ledger('read_token = "s3cret"\n')
    dock, far = ledger.dock("dock-1", "WH1"), ledger.dock("far-1", "WH2")
    taken = pick(1, "A-07", 1, station="dock-1")
    dock.post(taken)
    far.post(pick(1, "Z-01", 1, station="far-1", site="WH2"))

    def get(path: str, token: str | None, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r: httpx.Response = ledger.http.get(path, params=params, headers=headers)
        return r

    ok = get("/v1/negatives", dock.token, site="WH1", status="open", station="dock-1")
    assert ok.status_code == 200, ok.text
    assert [i["depletion_event_id"] for i in ok.json()["incidents"]] == [taken["event_id"]]
    assert len(get("/v1/negatives", dock.token, site="WH1").json()["incidents"]) == 1
    for params in ({"site": "WH2"}, {}, {"station": "far-1"}):
        refused = get("/v1/negatives", dock.token, **params)
        assert refused.status_code == 403, params
        assert refused.json() == {"error": "a station's token reads only the incidents of its"
                                           " own site: add site=WH1"}
    # another station's incidents, or a name that is none: refused without naming any
    for name in ("far-1", "nosuch"):
        refused = get("/v1/negatives", dock.token, site="WH1", station=name)
        assert refused.status_code == 403 and "far-1" not in refused.text, refused.text
    for path in ("/v1/balances", "/v1/events", "/v1/negatives.csv", "/v1/stations", "/"):
        assert get(path, dock.token, site="WH1").status_code == 401, path
    assert get("/v1/negatives", None, site="WH1").status_code == 401
    assert get("/v1/negatives", "not-a-token", site="WH1").status_code == 401
    ledger.server.revoke_station("dock-1")
    assert get("/v1/negatives", dock.token, site="WH1").status_code == 401
    assert get("/v1/negatives", "s3cret", site="WH2").status_code == 200


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []
    fail_first: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
        else:
            _Hook.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_hears_open_class_change_and_resolve_with_retries(make_ledger: Any) -> None:
    import json

    _Hook.received = []
    _Hook.fail_first = 1  # the first delivery fails and is retried
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=hook.serve_forever, daemon=True)
    t.start()
    try:
        ledger = make_ledger(f'webhook_url = "http://127.0.0.1:{hook.server_port}/alerts"\n')
        dock = ledger.dock()
        p = pick(3, "B-02", 10)
        dock.post(p)
        dock.post(receipt(5, "A-01", 0))  # stock exists elsewhere: item -> location
        dock.post(receipt(5, "B-02", 1))  # explained: location -> ordering, resolved
        deadline = time.monotonic() + 20
        while len(_Hook.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        alerts = [json.loads(b) for b in _Hook.received]
        assert [(a["kind"], a["previous_class"], a["incident"]["class"]) for a in alerts] == [
            ("opened", None, "item"), ("class_changed", "item", "location"),
            ("resolved", "location", "ordering")]
        assert all(a["incident"]["depletion_event_id"] == p["event_id"] for a in alerts)
    finally:
        hook.shutdown()
        hook.server_close()


@pytest.mark.parametrize("text, message", [
    ("max_body_byte = 10\n", "ledger.toml: max_body_byte: unknown key "
                             "(did you mean 'max_body_bytes'?)"),
    ("[sites.WH1]\nallow_negative = \"no\"\n",
     "ledger.toml: sites.WH1.allow_negative: expected true or false, got a string ('no')"),
    ("[sites.WH1]\nallow_negativ = false\n",
     "ledger.toml: sites.WH1.allow_negativ: unknown key (did you mean 'allow_negative'?)"),
    ("max_batch_events = 0\n", "ledger.toml: max_batch_events: must be at least 1, got 0"),
    ("webhook_url = \"ftp://x\"\n",
     "ledger.toml: webhook_url: expected an http:// or https:// URL, got 'ftp://x'"),
    ("sites = 3\n", "ledger.toml: sites: expected a table of sites ([sites.WH1]), "
                    "got a number (3)"),
], ids=["typo", "wrong-type", "site-typo", "too-small", "bad-url", "sites-not-table"])
def test_config_errors_name_file_key_and_problem(tmp_path: Path, text: str,
                                                 message: str) -> None:
    p = tmp_path / "ledger.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value) == message.replace("ledger.toml", str(p))


def test_a_slow_client_does_not_block_other_requests(ledger: Any) -> None:
    """Reads are served while a large batch is being ingested on the worker thread."""
    dock = ledger.dock()
    events = [receipt(1, f"L-{i % 50}", i / 1000) for i in range(3000)]
    box: dict[str, Any] = {}
    th = threading.Thread(target=lambda: box.setdefault("r", dock.post_raw(batch(events))))
    th.start()
    r = httpx.get(ledger.server.url + "/v1/health", timeout=10)
    th.join()
    assert r.status_code == 200
    assert box["r"].status_code == 200
