"""The manager's page (DESIGN section 11), in a real headless Chromium and over real HTTP.

One warehouse morning is posted to a real ledger (site WH1 in Europe/Berlin): a pick whose
receipt arrives late (an ``ordering`` incident), a pick from the wrong bin (``location``), a
pick of an item never received (``item``), a station whose clock is ten minutes slow and one
that went silent while the others post. Then the page is loaded as a browser loads it.
"""

from __future__ import annotations

import csv
import html
import io
import re
import sqlite3
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.ledger.factory import at, batch, count, move, pick, receipt, void
from tests.ledger.test_dashboard import dump_dom, needs_chromium, no_script_dom

BERLIN = ZoneInfo("Europe/Berlin")
CONFIG = '[sites.WH1]\ntimezone = "Europe/Berlin"\n'
MUG, KETTLE, LAMP = "04006381333931", "04012345678901", "08711253001202"
NAMES = [(MUG, "Mug, stoneware 0.3 l"), (KETTLE, "Kettle 1.7 l"), (LAMP, "Desk lamp")]


def morning(ledger: Any) -> dict[str, Any]:
    """Post the morning; returns the events and the incidents by class."""
    ledger.server.import_items(NAMES)
    recv, picker, slow = ledger.dock("recv"), ledger.dock("picker"), ledger.dock("slow")
    late_receipt = receipt(10, "A-01", 0, station="recv", item=MUG, operator="u1")
    timing = pick(6, "A-01", 5, station="picker", item=MUG, operator="u7", scanner="ring",
                  reference="SO-77")
    wrong_bin = pick(3, "B-02", 7, station="picker", item=MUG)
    shortage = pick(1, "C-03", 8, station="picker", item=LAMP)
    picker.post(timing, wrong_bin, shortage)
    recv.post(late_receipt)
    # the slow station's clock is ten minutes behind: its batch says it was sent then
    sent = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = batch([receipt(1, "D-04", 9, station="slow", item=KETTLE)], station="slow")
    body["sent_at"] = sent
    assert slow.post_raw(body).status_code == 200
    by_class = {i["class"]: i for i in ledger.incidents()}
    return {"timing": timing, "wrong_bin": wrong_bin, "shortage": shortage,
            "late_receipt": late_receipt, "incidents": by_class}


def silence(db: str | Path, station: str, minutes: int) -> None:
    """Make a station's last contact ``minutes`` old (as if it had stopped posting)."""
    then = (datetime.now(UTC) - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if str(db).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(db), autocommit=True) as pg:
            pg.execute("UPDATE stations SET last_contact = %s WHERE name = %s",
                       (then, station))
        return
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE stations SET last_contact = ? WHERE name = ?", (then, station))


def section(dom: str, name: str) -> str:
    return dom.split(f'id="{name}"')[1].split("</section>")[0]


@pytest.fixture
def berlin(make_ledger: Any) -> Any:
    return make_ledger(CONFIG)


# ------------------------------------------------------------------ in the browser


@needs_chromium
def test_overview_shows_names_local_times_daily_chart_and_station_flags(
        berlin: Any, tmp_path: Path) -> None:
    morning(berlin)
    silent = berlin.dock("nightshift")
    silent.post(receipt(1, "Z-1", 1, station="nightshift", item=KETTLE))
    silence(berlin.server.db_path, "nightshift", 15)
    dom = dump_dom(berlin.server.url + "/?refresh=1", tmp_path / "profile")

    item_rows = section(dom, "open-item")
    assert "Desk lamp" in item_rows and LAMP in item_rows, "the name beside the code"
    assert "Mug, stoneware 0.3 l" in section(dom, "open-location")
    # 10:08 UTC is 11:08 in Berlin in November; the UTC instant is on hover
    assert re.search(r'<time datetime="2026-11-22T10:08:00.000000Z" '
                     r'title="2026-11-22 10:08:00.000000 UTC">2026-11-22 11:08:00 CET</time>',
                     item_rows), item_rows
    # the daily chart: today's (Berlin) bar holds one incident of each class
    today = datetime.now(BERLIN).date().isoformat()
    daily = section(dom, "daily")
    for cls in ("item", "location", "ordering"):
        assert re.search(rf'data-day="{today}" data-class="{cls}" data-count="1"', daily), cls
    assert daily.count('class="bar"') == 3
    # station flags: the slow clock and the silent station, and nobody else
    stations = section(dom, "stations")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr[^>]*><td>([\w.-]+)</td>.*?</tr>",
                                                         stations)}
    assert 'data-flag="clock_offset"' in rows["slow"] and "behind" in rows["slow"]
    assert 'data-flag="no_contact"' in rows["nightshift"]
    assert "no contact for 15 min" in rows["nightshift"]
    assert "data-flag" not in rows["recv"] and "data-flag" not in rows["picker"]
    assert '<b>2</b><span class="muted">clock off or silent' in dom
    assert int(dom.split('data-refreshes="')[1].split('"')[0]) >= 1, "the refresh ran"


@needs_chromium
def test_without_script_the_overview_shows_everything_and_refreshes(
        berlin: Any, tmp_path: Path) -> None:
    """A browser with JavaScript turned off gets the whole page from the server, charts
    included, and its ``<noscript>`` meta refresh reloads it."""
    morning(berlin)
    dom, loads = no_script_dom(berlin.server.url + "/?refresh=1", tmp_path / "profile",
                               wait_s=3.5)
    assert loads >= 2, "the meta refresh reloaded the page"
    assert "data-refreshes" not in dom, "no script ran"
    assert "Desk lamp" in section(dom, "open-item")
    assert "Mug, stoneware 0.3 l" in section(dom, "open-location")
    assert "2026-11-22 11:05:00 CET" in section(dom, "resolved")
    assert section(dom, "daily").count('class="bar"') == 3
    assert 'data-flag="clock_offset"' in section(dom, "stations")
    assert 'id="csv"' in dom and '<form class="filters" method="get" action="/">' in dom


def test_the_posting_order_count_holds_whatever_the_status_filter(berlin: Any) -> None:
    """Posting-order negatives resolve by themselves: ``/?status=open`` (the open ones to act
    on) still says how many there were, rather than 0; the days and the class still apply."""
    morning(berlin)
    today = datetime.now(BERLIN).date()

    def card(**query: str) -> str:
        page = berlin.http.get("/", params=query).text
        return page.split('id="card-ordering"')[1].split("</div>")[0]

    for query in ({}, {"status": "open"}, {"status": "resolved"},
                  {"status": "open", "from": today.isoformat()}):
        assert "<b>1</b>" in card(**query), query
    assert "<b>0</b>" in card(to=(today - timedelta(days=1)).isoformat())
    assert "<b>0</b>" in card(**{"class": "item"})


@needs_chromium
def test_filters_are_applied_and_kept_in_every_link(berlin: Any, tmp_path: Path) -> None:
    morning(berlin)
    today = datetime.now(BERLIN).date().isoformat()
    url = (berlin.server.url + f"/?site=WH1&class=location&station=picker&from={today}"
           f"&to={today}&refresh=2")
    dom = dump_dom(url, tmp_path / "profile")
    assert "B-02" in section(dom, "open-location")
    assert 'id="open-item"' not in dom, "the class filter leaves out the other classes"
    assert "C-03" not in dom
    wanted = {"site": "WH1", "class": "location", "station": "picker", "from": today,
              "to": today, "refresh": "2"}
    hrefs = [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', dom)]
    incident_links = [h for h in hrefs if h.startswith("/incidents/")]
    assert incident_links, "incidents link to their page"
    for href in incident_links + [h for h in hrefs if "negatives" in h]:
        query = dict(re.findall(r"[?&]([^=&]+)=([^&]*)", href))
        assert query == wanted, href
    # a quick link changes one filter and keeps the others
    chip = next(h for h in hrefs if "class=item" in h)
    assert dict(re.findall(r"[?&]([^=&]+)=([^&]*)", chip)) == wanted | {"class": "item"}
    # a bar of the daily chart narrows to its day, keeping the rest
    bar = next(h for h in hrefs if h.startswith("/?") and "class=location" in h
               and f"from={today}" in h)
    assert f"to={today}" in bar and "station=picker" in bar
    # the form shows what is chosen
    assert re.search(r'<option value="location" selected="">', dom)
    assert re.search(r'name="from" value="' + today, dom)
    # the page's CSV link is the same incidents as its JSON link, field for field
    (csv_href,) = [h for h in hrefs if h.startswith("/v1/negatives.csv")]
    (json_href,) = [h for h in hrefs if h.startswith("/v1/negatives?")]
    r = berlin.http.get(csv_href)
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
    incidents = berlin.http.get(json_href).json()["incidents"]
    assert [i["class"] for i in incidents] == ["location"]
    assert rows == [{k: _spelled(v) for k, v in inc.items()} for inc in incidents]
    # the incident page's way back keeps them too
    page = dump_dom(berlin.server.url + incident_links[0], tmp_path / "profile")
    back = re.search(r'id="back" href="([^"]+)"', page)
    assert back is not None
    assert dict(re.findall(r"[?&]([^=&]+)=([^&]*)", back.group(1).replace("&amp;", "&"))) \
        == wanted


@needs_chromium
@pytest.mark.parametrize("script", [True, False], ids=["with-js", "without-js"])
def test_incident_page_explains_an_ordering_negative_with_both_orders(
        berlin: Any, tmp_path: Path, script: bool) -> None:
    m = morning(berlin)
    inc = m["incidents"]["ordering"]
    url = berlin.server.url + f"/incidents/{inc['id']}"
    dom = (dump_dom(url, tmp_path / "profile") if script
           else no_script_dom(url, tmp_path / "profile", wait_s=1.0)[0])
    chart = section(dom, "chart")
    recorded = re.search(r'class="series recorded" data-balances="([^"]*)" data-min="(-?\d+)"',
                         chart)
    occurrence = re.search(r'class="series occurrence" data-balances="([^"]*)" '
                           r'data-min="(-?\d+)"', chart)
    assert recorded is not None and occurrence is not None
    # recorded order: the pick posted first took the bin to -6, the late receipt to 4;
    # occurrence order: 10 received, 6 picked: never below zero
    assert recorded.group(1).split(",")[-2:] == ["-6", "4"] and int(recorded.group(2)) == -6
    assert occurrence.group(1).split(",")[-2:] == ["10", "4"]
    assert int(occurrence.group(2)) >= 0
    assert "<svg" in chart and "<path" in chart
    story = section(dom, "depletion")
    for shown in ("Mug, stoneware 0.3 l", MUG, "A-01", "picker", "ring", "u7", "SO-77",
                  "2026-11-22 11:05:00 CET"):
        assert shown in story, shown
    why = section(dom, "why")
    assert "no stock adjustment is needed" in why
    assert "receipt of 10" in why and "2026-11-22 11:00:00 CET" in why
    resolution = section(dom, "resolution")
    assert "receipt of 10 into A-01 by recv" in resolution
    assert inc["resolved_by_event_id"] not in resolution, "what resolved it, not a bare id"
    confirmation = section(dom, "confirmation")
    assert "Provisional" in confirmation and "Do not adjust stock" in confirmation
    if script:
        assert "<body data-refreshes" in dom, "the page's script ran"
    else:
        assert "data-refreshes" not in dom, "no script ran"
        assert '<noscript><meta http-equiv="refresh"' in dom


@needs_chromium
def test_incident_page_says_confirmed_and_open_in_words(berlin: Any, tmp_path: Path) -> None:
    berlin.server.import_items(NAMES)
    one = berlin.dock("only")
    short = pick(1, "C-03", 8, station="only", item=LAMP)
    one.post(short, watermark=at(30))
    (inc,) = berlin.incidents()
    dom = dump_dom(berlin.server.url + f"/incidents/{inc['id']}", tmp_path / "profile")
    assert "Real shortage" in section(dom, "summary")
    assert "Confirmed" in section(dom, "confirmation")
    assert "2026-11-22 11:30:00 CET" in section(dom, "confirmation")
    assert "Not resolved" in section(dom, "resolution")
    assert "real shortage" in section(dom, "why")


@needs_chromium
def test_notes_by_a_manager_are_shown_and_others_are_refused(berlin: Any,
                                                             tmp_path: Path) -> None:
    m = morning(berlin)
    inc = m["incidents"]["location"]
    token = berlin.server.add_manager("anna")
    url = f"/v1/negatives/{inc['id']}/notes"
    station_token = berlin.docks[0].token

    r = berlin.http.post(url, json={"text": "Found 3 in B-01.\nMoved back."},
                         headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    note = r.json()["note"]
    assert note["author"] == "anna" and note["text"] == "Found 3 in B-01.\nMoved back."
    refused = {
        "station token": ({"Authorization": f"Bearer {station_token}"}, 403),
        "no token": ({}, 401),
        "unknown token": ({"Authorization": "Bearer not-a-token"}, 401),
    }
    for what, (headers, status) in refused.items():
        r = berlin.http.post(url, json={"text": "sneaky"}, headers=headers)
        assert r.status_code == status, (what, r.text)
    # never edited or deleted: no way in over HTTP, and the database refuses it too
    for method in ("PUT", "PATCH", "DELETE"):
        for path in (url, f"{url}/{note['id']}"):
            r = berlin.http.request(method, path, json={"text": "changed"},
                                    headers={"Authorization": f"Bearer {token}"})
            assert r.status_code in (404, 405), (method, path)
    db = berlin.server.db_path
    if str(db).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(db), autocommit=True) as pg:
            for sql in ("UPDATE notes SET text = 'changed'", "DELETE FROM notes",
                        "TRUNCATE notes"):
                with pytest.raises(psycopg.errors.RaiseException, match="never"):
                    pg.execute(sql)
    else:
        with sqlite3.connect(db) as conn:
            for sql in ("UPDATE notes SET text = 'changed'", "DELETE FROM notes"):
                with pytest.raises(sqlite3.IntegrityError, match="never"):
                    conn.execute(sql)
    # in the JSON, and on the page with author and time
    (shown,) = [i for i in berlin.incidents() if i["id"] == inc["id"]]
    assert [(n["author"], n["text"]) for n in shown["notes"]] == [
        ("anna", "Found 3 in B-01.\nMoved back.")]
    assert berlin.get(f"/v1/negatives/{inc['id']}")["incident"]["notes"] == shown["notes"]
    dom = dump_dom(berlin.server.url + f"/incidents/{inc['id']}", tmp_path / "profile")
    notes = section(dom, "notes")
    assert "<b>anna</b>" in notes and "Found 3 in B-01.\nMoved back." in notes
    assert "sneaky" not in dom and "changed" not in dom
    for control in ("<form", "<textarea", "<button", "contenteditable"):
        assert control not in dom, f"nothing on the page edits a note: {control}"
    assert re.search(r'<time datetime="' + re.escape(note["created_at"]), notes)


@needs_chromium
def test_the_daily_chart_counts_thirty_days_by_class_in_the_sites_days(
        berlin: Any, tmp_path: Path) -> None:
    """Incidents opened on past days (each batch ingested at the time it arrived): the chart
    shows the last 30 days (today and 29 before it), by class, on the day in the site's zone;
    a bar's link is that day's incidents."""
    import orjson

    svc = berlin.server._svc()
    token = berlin.dock("d").token
    today = datetime.now(BERLIN).date()

    def arrival(day: int, hour: int, minute: int = 0, zone: Any = BERLIN) -> int:
        when = datetime.combine(today - timedelta(days=day), datetime.min.time(), zone)
        return int((when + timedelta(hours=hour, minutes=minute)).timestamp() * 1e6)

    def post(received: int, *events: dict[str, Any]) -> None:
        for ev in events:
            ev["occurred_at"] = datetime.fromtimestamp(
                (received - 60_000_000 + ev.pop("_s", 0) * 1_000_000) / 1e6, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ")
        body = batch(list(events), station="d")
        body["sent_at"] = datetime.fromtimestamp(received / 1e6, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        body["watermark"] = min(ev["occurred_at"] for ev in events)  # more may come
        reply = berlin.server.call(svc.ingest, token, orjson.dumps(body), received)
        assert reply.status == 200, reply.body

    post(arrival(30, 12), pick(1, "A-1", 0, station="d", item="00000000000030"))  # too old
    post(arrival(29, 9), pick(1, "A-1", 0, station="d", item="00000000000291"),
         pick(1, "A-1", 0, station="d", item="00000000000292"),
         receipt(5, "B-1", 0, station="d", item=MUG, _s=-10),
         pick(2, "C-1", 0, station="d", item=MUG))
    # 23:30 UTC ten days ago is 00:30 of the next day in Berlin: the bar is on that day;
    # the receipt that came first arrives a minute later and makes it a posting-order one
    late = arrival(10, 23, 30, UTC)
    post(late, pick(4, "K-1", 0, station="d", item=KETTLE))
    post(late + 60_000_000, receipt(9, "K-1", 0, station="d", item=KETTLE, _s=-100))

    expected = {(today - timedelta(days=29), "item"): 2,
                (today - timedelta(days=29), "location"): 1,
                (today - timedelta(days=9), "ordering"): 1}
    dom = dump_dom(berlin.server.url + "/", tmp_path / "profile")
    daily = section(dom, "daily")
    bars = {(date.fromisoformat(d), c): int(n) for d, c, n in re.findall(
        r'<rect class="bar" data-day="([^"]+)" data-class="(\w+)" data-count="(\d+)"', daily)}
    assert bars == expected, bars
    assert "days in Europe/Berlin" in daily
    # a bar links to its day: the same incidents as the JSON of that day
    for day in {d for d, _ in expected}:
        href = re.search(r'<a href="([^"]*from=' + day.isoformat() + r'[^"]*)">', daily)
        assert href is not None, day
        query = dict(httpx.URL(html.unescape(href.group(1))).params)
        assert query == {"from": day.isoformat(), "to": day.isoformat()}
        got = Counter(i["class"] for i in berlin.incidents(**query))
        assert got == {c: n for (d, c), n in expected.items() if d == day}
    assert len(berlin.incidents()) == 5, "the one too old is there, only not in the chart"


@needs_chromium
def test_other_sites_their_zones_and_held_depletions_by_name(make_ledger: Any,
                                                            tmp_path: Path) -> None:
    """Names beside codes in every part of the page (open, resolved, held); the site filter
    on the page and the API; each site's times in its own zone."""
    led = make_ledger(CONFIG + '[sites.NY]\ntimezone = "America/New_York"\n'
                      "[sites.WH2]\nallow_negative = false\n")
    morning(led)
    led.dock("ny-1", site="NY").post(pick(2, "N-1", 5, station="ny-1", site="NY", item=LAMP))
    led.dock("wh2-1", site="WH2").post(pick(1, "H-1", 5, station="wh2-1", site="WH2",
                                            item=KETTLE))
    dom = dump_dom(led.server.url + "/", tmp_path / "profile")
    assert "Mug, stoneware 0.3 l" in section(dom, "resolved")
    held = section(dom, "held")
    assert "Kettle 1.7 l" in held and KETTLE in held and "H-1" in held
    assert "2026-11-22 10:05:00 UTC" in held, "WH2 has no zone of its own: UTC"
    assert "2026-11-22 05:05:00 EST" in section(dom, "open-item"), "NY's time in NY"
    assert "2026-11-22 11:08:00 CET" in section(dom, "open-item"), "WH1's in Berlin"

    ny = dump_dom(led.server.url + "/?site=NY", tmp_path / "profile")
    assert "N-1" in section(ny, "open-item") and "C-03" not in ny and "B-02" not in ny
    assert "days in America/New_York" in section(ny, "daily")
    assert 'id="held"' in ny and "H-1" not in ny, "WH2's held depletion is not NY's"
    assert {i["site"] for i in led.incidents(site="NY")} == {"NY"}
    assert {i["site"] for i in led.incidents(site="WH1")} == {"WH1"}
    assert len(led.incidents(site="WH1")) == 3 and led.incidents(site="WH2") == []


def test_a_revoked_manager_cannot_add_notes(berlin: Any) -> None:
    m = morning(berlin)
    token = berlin.server.add_manager("bob")
    berlin.server.call(berlin.server._svc().store.revoke_manager, "bob", at(0))
    r = berlin.http.post(f"/v1/negatives/{m['incidents']['item']['id']}/notes",
                         json={"text": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


@pytest.mark.parametrize(("body", "message"), [
    ({"text": ""}, "text: required, a non-empty string"),
    ({"text": "   "}, "text: required, a non-empty string"),
    ({"text": 5}, "text: required, a non-empty string"),
    ({"text": "x" * 2001}, "text: 2001 characters; at most 2000"),
    ({"text": "bell\x07"}, "text: holds a control character"),
    ({"text": "x", "author": "someone else"}, 'body: expected {"text": "..."}'),
    ([], 'body: expected {"text": "..."}'),
], ids=["empty", "blank", "number", "too-long", "control", "extra-key", "not-object"])
def test_a_bad_note_is_refused_with_a_reason(berlin: Any, body: Any, message: str) -> None:
    m = morning(berlin)
    token = berlin.server.add_manager("anna")
    r = berlin.http.post(f"/v1/negatives/{m['incidents']['item']['id']}/notes", json=body,
                         headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json()["error"].startswith(message), r.text


def test_a_note_on_an_unknown_incident_is_404(berlin: Any) -> None:
    token = berlin.server.add_manager("anna")
    r = berlin.http.post("/v1/negatives/99/notes", json={"text": "x"},
                         headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404


# ------------------------------------------------------------------ JSON and CSV


def test_incident_json_has_item_names_and_notes(berlin: Any) -> None:
    m = morning(berlin)
    for inc in berlin.incidents():
        assert inc["item_name"] == dict(NAMES)[inc["item"]]
        assert inc["notes"] == []
    # re-importing updates names; an item without a name has null
    berlin.server.import_items([(MUG, "Mug, porcelain 0.3 l")])
    assert berlin.get(f"/v1/negatives/{m['incidents']['ordering']['id']}")["incident"][
        "item_name"] == "Mug, porcelain 0.3 l"
    berlin.dock("other").post(pick(1, "Q-1", 3, station="other", item="00000000000017"))
    (unnamed,) = [i for i in berlin.incidents() if i["item"] == "00000000000017"]
    assert unnamed["item_name"] is None


@pytest.mark.parametrize("query", [
    {}, {"class": "item"}, {"status": "resolved"}, {"station": "picker"}, {"site": "WH1"},
    {"class": "location", "status": "open", "station": "picker"},
], ids=["all", "class", "status", "station", "site", "combined"])
def test_csv_export_equals_the_json(berlin: Any, query: dict[str, str]) -> None:
    morning(berlin)
    berlin.server.add_manager("anna")
    incidents = berlin.incidents(**query)
    r = berlin.http.get("/v1/negatives.csv", params=query)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))
    assert len(rows) == len(incidents)
    for row, inc in zip(rows, incidents, strict=True):
        assert list(row) == list(inc), "the JSON's fields, in its order, item_name included"
        for k, v in inc.items():
            assert row[k] == _spelled(v), k


def _spelled(v: Any) -> str:
    import json

    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def test_filters_on_the_json_api(berlin: Any) -> None:
    m = morning(berlin)
    ids = {cls: inc["id"] for cls, inc in m["incidents"].items()}

    def got(**q: str) -> set[int]:
        return {i["id"] for i in berlin.incidents(**q)}

    assert got(**{"class": "item"}) == {ids["item"]}
    assert got(status="resolved") == {ids["ordering"]}
    assert got(status="open") == {ids["item"], ids["location"]}
    assert got(station="picker") == set(ids.values())
    assert got(station="recv") == set()
    today = datetime.now(BERLIN).date()
    assert got(**{"from": today.isoformat(), "to": today.isoformat()}) == set(ids.values())
    yesterday = (today - timedelta(days=1)).isoformat()
    assert got(to=yesterday) == set()
    assert got(**{"from": (today + timedelta(days=1)).isoformat()}) == set()
    # an instant with its offset, as well as a day
    assert got(**{"from": (datetime.now(UTC) - timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")}) == set(ids.values())
    # filters compose with what the listing takes besides (unknown parameters are left alone)
    assert got(**{"class": "item", "limit": "5"}) == {ids["item"]}


@pytest.mark.parametrize(("query", "message"), [
    ({"class": "big"}, "class: expected ordering, location or item, got 'big'"),
    ({"status": "closed"}, "status: expected open or resolved, got 'closed'"),
    ({"site": "WH9"}, "site: no site named 'WH9'; known: WH1"),
    ({"station": "dock-99"}, "station: no station named 'dock-99'"),
    ({"from": "22.11.2026"}, "from: expected a date such as 2026-11-22"),
    ({"to": "2026-02-30"}, "to: not a valid date: '2026-02-30'"),
    ({"from": "2026-11-23", "to": "2026-11-22"}, "from (2026-11-23) is after to (2026-11-22)"),
], ids=["class", "status", "site", "station", "date-format", "date-invalid", "reversed"])
def test_bad_filters_get_400_with_a_clear_message(berlin: Any, query: dict[str, str],
                                                 message: str) -> None:
    morning(berlin)
    for path in ("/v1/negatives", "/v1/negatives.csv"):
        r = berlin.http.get(path, params=query)
        assert r.status_code == 400 and r.json()["error"].startswith(message), r.text
    page = berlin.http.get("/", params=query)
    assert page.status_code == 400
    assert message.replace("'", "&#x27;") in page.text


def test_stations_json_has_flags(berlin: Any) -> None:
    morning(berlin)
    silent = berlin.dock("nightshift")
    silent.post(receipt(1, "Z-1", 1, station="nightshift", item=KETTLE))
    silence(berlin.server.db_path, "nightshift", 11)
    flags = {s["name"]: s["flags"] for s in berlin.get("/v1/stations")["stations"]}
    assert flags == {"recv": [], "picker": [], "slow": ["clock_offset"],
                     "nightshift": ["no_contact"]}
    # a site where nobody posts any more flags nobody as silent
    for name in flags:
        silence(berlin.server.db_path, name, 30)
    flags = {s["name"]: s["flags"] for s in berlin.get("/v1/stations")["stations"]}
    assert flags["nightshift"] == [] and flags["recv"] == []


def test_balance_history_ends_at_the_ledgers_balances(berlin: Any) -> None:
    """Both series of the incident page end where the ledger's balances are, through a
    move, a count, an undo and a late receipt."""
    one, two = berlin.dock("one"), berlin.dock("two")
    first = pick(4, "A-01", 5, station="two", item=MUG)
    undone = receipt(2, "A-01", 3, station="two", item=MUG)
    two.post(first, undone, move(1, "A-01", "B-01", 6, station="two", item=MUG))
    two.post(void(undone, 7))
    one.post(receipt(5, "A-01", 1, station="one", item=MUG),
             count(7, "A-01", 8, station="one", item=MUG),
             pick(2, "A-01", 9, station="one", item=MUG))
    for inc in berlin.incidents():
        story = berlin.get(f"/v1/negatives/{inc['id']}")
        (bal,) = berlin.get("/v1/balances", item=MUG, location=inc["location"])["balances"]
        assert story["history"]["recorded"][-1]["balance"] == bal["recorded"]
        assert story["history"]["occurrence"][-1]["balance"] == bal["on_hand"]
        page = berlin.http.get(f"/incidents/{inc['id']}")
        assert page.status_code == 200 and 'class="series recorded"' in page.text
    assert berlin.http.get("/v1/negatives/99").status_code == 404
    assert berlin.http.get("/incidents/99").status_code == 404
    assert berlin.http.get("/incidents/abc").status_code == 404


def test_page_times_follow_the_site_zone_and_default_to_utc(make_ledger: Any) -> None:
    led = make_ledger()  # no config: UTC
    led.dock("d").post(pick(1, "A-01", 5, station="d"))
    page = led.http.get("/").text
    assert "2026-11-22 10:05:00 UTC" in page


def test_a_bad_time_zone_is_a_config_error(tmp_path: Path) -> None:
    from ledger.cli import main

    cfg = tmp_path / "ledger.toml"
    cfg.write_text('[sites.WH1]\ntimezone = "Europe/Berlinn"\n')
    with pytest.raises(Exception, match=r"sites.WH1.timezone: unknown time zone "
                                        r"'Europe/Berlinn'"):
        from ledger.config import load_config
        load_config(cfg)
    assert main(["check-config", str(cfg)]) == 2


def test_read_token_is_kept_in_links(make_ledger: Any) -> None:
    led = make_ledger('read_token = "s3cret"\n' + CONFIG)
    led.http.headers["Authorization"] = "Bearer s3cret"
    led.dock("d").post(pick(1, "A-01", 5, station="d"))
    page = httpx.get(led.server.url + "/?token=s3cret&class=item").text
    links = re.findall(r'href="(/incidents/[^"]+)"', page)
    assert links and all("token=s3cret" in h for h in links)
    assert httpx.get(led.server.url + links[0].replace("&amp;", "&")).status_code == 200
    assert httpx.get(led.server.url + "/incidents/1").status_code == 401
    assert httpx.get(led.server.url + "/v1/negatives.csv").status_code == 401


@needs_chromium
def test_the_screenshots_in_the_docs_are_made_by_a_script(tmp_path: Path) -> None:
    from bench.screenshots import main

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "ledger.md").read_text()
    made = main(["--out", str(tmp_path)])
    assert [p.name for p in made] == ["manager-page.png", "incident.png"]
    for p in made:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 50_000
        assert f"(img/{p.name})" in doc, "docs/ledger.md shows it"
        # the docs' image is this script's (the same size; times differ from run to run)
        shown = (root / "docs" / "img" / p.name).read_bytes()
        assert shown[16:24] == p.read_bytes()[16:24], f"regenerate docs/img/{p.name}"


def test_the_page_benchmark_runs() -> None:
    """bench/page.py keeps working (its figures are not asserted: the machine is shared)."""
    from bench.page import page_times

    incidents, rows = page_times(2_000, repeat=1)
    assert incidents > 0
    assert [path.split("/")[1].split("?")[0] for path, _, _ in rows] == [
        "v1", "", "", "v1", "incidents", "v1"]
    assert all(size > 0 for _, _, size in rows)
