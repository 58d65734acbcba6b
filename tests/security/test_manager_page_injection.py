"""Injection through what the manager's page shows or reads (DESIGN section 11): item names,
notes, station names and query parameters, loaded in a real headless Chromium; formulas in
the CSV export; SQL in filters and item files. Everything must come out as inert text.
"""

from __future__ import annotations

import csv
import html
import io
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.cli import main as ledger_main
from ledger.server import LedgerServer
from tests.ledger.conftest import ledger_db, new_db, pg_cluster  # noqa: F401 (fixtures)
from tests.ledger.factory import batch, pick, receipt
from tests.ledger.test_dashboard import dump_dom, needs_chromium
from tests.security.test_dashboard_escaping import PAYLOADS

INJECTED = ("injected-img", "injected-svg", "injected-b", "injected-a", "injected-iframe")


def assert_inert(dom: str, charts: int) -> None:
    """No injected element or script in the DOM; only the page's own charts, style and
    script."""
    assert "data-pwned" not in dom, "an injected script ran"
    for tag in INJECTED:
        assert f'id="{tag}"' not in dom, f"an injected element {tag} is in the DOM"
    assert "<img" not in dom and "<iframe" not in dom
    assert dom.count("<svg") == charts, "only the page's own charts"
    assert dom.count("<script") == 1 and dom.count("<style") == 1


@pytest.fixture
def srv(tmp_path: Path) -> Any:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text('[sites.WH1]\ntimezone = "Europe/Berlin"\n')
    with LedgerServer(tmp_path / "ledger.db", cfg) as server:
        yield server


def _post(srv: LedgerServer, token: str, station: str, events: list[dict[str, Any]]) -> None:
    r = httpx.post(srv.url + "/v1/events", json=batch(events, station=station),
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text


@needs_chromium
def test_item_names_and_notes_render_inert(srv: LedgerServer, tmp_path: Path) -> None:
    token = srv.add_station("dock-1", "WH1")
    items = [f"0000000000{i:04d}" for i in range(len(PAYLOADS))]
    srv.import_items([(item, p) for item, p in zip(items, PAYLOADS, strict=True)])
    _post(srv, token, "dock-1", [pick(1, f"A-{i}", i, item=item, station="dock-1",
                                      operator=p, reference=p, scanner=p)
                                 for i, (item, p) in enumerate(zip(items, PAYLOADS,
                                                                   strict=True))])
    manager = srv.add_manager("anna")
    for p in PAYLOADS:
        r = httpx.post(srv.url + "/v1/negatives/1/notes", json={"text": p},
                       headers={"Authorization": f"Bearer {manager}"})
        assert r.status_code == 201, r.text

    dom = dump_dom(srv.url + "/?refresh=1", tmp_path / "profile")
    assert int(dom.split('data-refreshes="')[1].split('"')[0]) >= 1
    assert_inert(dom, charts=1)
    assert "&lt;script&gt;document.body.dataset.pwned" in dom
    assert "&lt;img src=x id=injected-img onerror=" in dom

    page = dump_dom(srv.url + "/incidents/1?refresh=1", tmp_path / "profile")
    assert_inert(page, charts=1)
    notes = page.split('id="notes"')[1]
    assert notes.count('class="note"') == len(PAYLOADS)
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;b id=injected-b&gt;" in notes


@needs_chromium
@pytest.mark.parametrize("param", ["site", "class", "status", "station", "from", "to"])
def test_query_parameters_are_reported_inert(srv: LedgerServer, tmp_path: Path,
                                            param: str) -> None:
    srv.add_station("dock-1", "WH1")
    payload = PAYLOADS[1]
    url = str(httpx.URL(srv.url + "/", params={param: payload}))
    assert httpx.get(url).status_code == 400
    dom = dump_dom(url, tmp_path / "profile")
    assert 'id="error"' in dom
    assert "<script" not in dom and "<svg" not in dom, "the error page has neither"
    for tag in INJECTED:
        assert f'id="{tag}"' not in dom
    assert "data-pwned" not in dom and "<img" not in dom
    assert "&lt;img src=x id=injected-img" in dom


@needs_chromium
def test_kept_parameters_are_echoed_inert(srv: LedgerServer, tmp_path: Path) -> None:
    """``refresh`` and ``token`` are kept in every link and in the form: as text."""
    token = srv.add_station("dock-1", "WH1")
    _post(srv, token, "dock-1", [pick(1, "A-1", 1, station="dock-1")])
    url = str(httpx.URL(srv.url + "/", params={"refresh": PAYLOADS[1], "token": PAYLOADS[2]}))
    dom = dump_dom(url, tmp_path / "profile")
    assert_inert(dom, charts=1)
    assert 'id="open-item"' in dom
    page = dump_dom(srv.url + "/incidents/1?" + url.split("?", 1)[1], tmp_path / "profile")
    assert_inert(page, charts=1)


def test_station_names_cannot_carry_markup(srv: LedgerServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Station and manager names are ids (letters, digits, '.', '_', '-'): markup is refused
    where they are made, so none reaches a page."""
    for payload in PAYLOADS:
        assert ledger_main(["station", "add", payload, "--site", "WH1",
                            "--db", str(tmp_path / "other.db")]) == 2
        assert ledger_main(["manager", "add", payload, "--db", str(tmp_path / "other.db")]) == 2
    assert "not a valid" in capsys.readouterr().err


def test_csv_export_neutralises_formulas(srv: LedgerServer) -> None:
    token = srv.add_station("dock-1", "WH1")
    formulas = ["=HYPERLINK(\"http://evil/\",\"x\")", "+1+1", "-2+3", "@SUM(A1)",
                "=1-1", "=cmd|' /C calc'!A0"]
    items = [f"0000000000{i:04d}" for i in range(len(formulas))]
    srv.import_items(list(zip(items, formulas, strict=True)))
    _post(srv, token, "dock-1", [pick(1, f, i, item=item, station="dock-1")
                                 for i, (item, f) in enumerate(zip(items, formulas,
                                                                   strict=True))])
    manager = srv.add_manager("anna")
    httpx.post(srv.url + "/v1/negatives/1/notes", json={"text": "=1+1"},
               headers={"Authorization": f"Bearer {manager}"})
    text = httpx.get(srv.url + "/v1/negatives.csv").content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(formulas)
    for row, formula in zip(rows, formulas, strict=True):
        assert row["item_name"] == "'" + formula
        assert row["location"] == ("'" + formula if formula[0] in "=+-@\t" else formula)
        assert row["balance"] == "-1", "a number stays a number"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), value
            assert not value.startswith("-") or re.fullmatch(r"-\d+", value), value
    assert rows[0]["notes"].startswith("[")


def test_sql_in_filters_and_item_files_is_data(
        ledger_db: str | Path, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    """On either store (a SQLite file, a PostgreSQL database)."""
    with LedgerServer(ledger_db) as srv:
        token = srv.add_station("dock-1", "WH1")
        _post(srv, token, "dock-1", [pick(1, "A-1", 1, station="dock-1"),
                                     receipt(1, "B-1", 2, station="dock-1")])
        for param in ("site", "station", "class", "status", "from"):
            r = httpx.get(srv.url + "/v1/negatives", params={param: "WH1' OR '1'='1"})
            assert r.status_code == 400, r.text
        f = tmp_path / "items.csv"
        f.write_text("item,name\n04006381333931,\"x'); DROP TABLE items;--\"\n")
        assert ledger_main(["items", "import", str(f), "--db", str(srv.db_path)]) == 0
        (inc,) = httpx.get(srv.url + "/v1/negatives").json()["incidents"]
        assert inc["item_name"] == "x'); DROP TABLE items;--"
    if isinstance(ledger_db, Path):
        with sqlite3.connect(ledger_db) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 1
    else:
        import psycopg

        with psycopg.connect(ledger_db) as pg:
            assert pg.execute("SELECT count(*) FROM items").fetchone() == (1,)


@needs_chromium
def test_the_incident_page_and_its_chart_render_inert(srv: LedgerServer, tmp_path: Path) -> None:
    """Item codes, bins, scanner, operator and reference hold markup; the incident page shows
    them in its story and in its chart (the chart's title, its marks): all as text."""
    token = srv.add_station("dock-1", "WH1")
    n = len(PAYLOADS)
    srv.import_items([(p, PAYLOADS[(i + 2) % n]) for i, p in enumerate(PAYLOADS)])
    picks = [pick(6, PAYLOADS[(i + 1) % n], 5 + i, item=p, station="dock-1", operator=p,
                  scanner=p, reference=p) for i, p in enumerate(PAYLOADS)]
    _post(srv, token, "dock-1", picks)
    # the receipts came first but arrive late: each pick's negative is resolved by one
    _post(srv, token, "dock-1", [receipt(10, PAYLOADS[(i + 1) % n], i, item=p,
                                         station="dock-1", operator=p, reference=p)
                                 for i, p in enumerate(PAYLOADS)])
    incidents = httpx.get(srv.url + "/v1/negatives").json()["incidents"]
    assert sorted(i["class"] for i in incidents) == ["ordering"] * n
    for inc in incidents:
        dom = dump_dom(srv.url + f"/incidents/{inc['id']}", tmp_path / "profile")
        assert_inert(dom, charts=1)
        chart = dom.split('id="chart"')[1].split("</section>")[0]
        title = re.search(r"<title>balance of (.*?) at (.*?) over time</title>", chart)
        assert title is not None, chart[:600]
        assert html.unescape(title.group(1)) == inc["item"]
        assert html.unescape(title.group(2)) == inc["location"]
        assert "&lt;" in title.group(0) or "&gt;" in title.group(0)
        assert "resolved" in dom and "receipt of 10 into" in dom


@needs_chromium
def test_station_and_site_names_written_by_anything_else_render_inert(
        srv: LedgerServer, tmp_path: Path) -> None:
    """The ledger refuses markup in station and site names where they are made (above); a
    database written by anything else (an older release, a hand-made row) still shows
    them as text: in the stations' table, their flags, the filter form and its links."""
    token = srv.add_station("dock-1", "WH1")
    _post(srv, token, "dock-1", [pick(1, "A-1", 1, station="dock-1")])
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    old = "2026-11-22T08:00:00.000000Z"
    with sqlite3.connect(srv.db_path) as conn:
        for i, p in enumerate(PAYLOADS):
            site = PAYLOADS[(i + 1) % len(PAYLOADS)]
            # silent for long, its clock 9 s off; another station of its site posts now
            conn.execute(
                "INSERT INTO stations (name, site, token_hash, created_at, last_contact, "
                "sent_at, watermark, clock_offset_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (p, site, f"hash-{i}", old, old, old, old, 9000.0))
            conn.execute("INSERT INTO stations (name, site, token_hash, created_at, "
                         "last_contact) VALUES (?, ?, ?, ?, ?)",
                         (f"fresh-{i}", site, f"fresh-{i}", now, now))
    shown = {s["name"]: s["flags"] for s in httpx.get(srv.url + "/v1/stations").json()[
        "stations"]}
    assert all(shown[p] == ["clock_offset", "no_contact"] for p in PAYLOADS), shown
    dom = dump_dom(srv.url + "/?refresh=1", tmp_path / "profile")
    assert int(dom.split('data-refreshes="')[1].split('"')[0]) >= 1
    assert_inert(dom, charts=1)
    stations = dom.split('id="stations"')[1].split("</section>")[0]
    assert stations.count('data-flag="clock_offset"') == len(PAYLOADS)
    assert stations.count('data-flag="no_contact"') == len(PAYLOADS)
    assert "&lt;script&gt;document.body.dataset.pwned" in stations
    assert "while others of &lt;script&gt;document.body.dataset.pwned" in stations
    # filtered by one of them: the form selects it, every link carries it
    url = str(httpx.URL(srv.url + "/", params={"station": PAYLOADS[1], "site": PAYLOADS[2]}))
    dom = dump_dom(url, tmp_path / "profile")
    assert_inert(dom, charts=1)
    chosen = re.findall(r'<option value="([^"]*)" selected="">', dom)
    assert [html.unescape(v) for v in chosen] == [PAYLOADS[2], PAYLOADS[1]], chosen
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', dom)]
    kept = [h for h in hrefs if h.startswith(("/incidents/", "/v1/negatives"))]
    assert kept and all(httpx.URL(h).params.get("station") == PAYLOADS[1] for h in kept)
