"""The ledger's ``POST /v1/events`` fuzzed over real HTTP (docs/ledger.md, "HTTP API").

What the documentation promises, and what is asserted exactly here:

- a body that is not a batch (malformed or truncated JSON, not UTF-8, nested too deeply, not
  an object, no ``station``, ``events`` not an array, a bad ``sent_at``/``watermark``) is a
  batch-level ``400 {"error"}``;
- more than ``max_batch_events`` events, or a body over ``max_body_bytes``, is ``413``;
- anything wrong inside one event (a wrong type, a missing field, an absurd quantity, a
  timestamp outside 2000-2099, an invalid UUID, an over-long string) is that event's
  ``rejected`` result with a reason naming the field, and the rest of the batch is applied;
- never a 5xx, and the server keeps serving: a valid batch after each case is accepted.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger.server import LedgerServer
from tests.ledger.conftest import ledger_db, new_db, pg_cluster  # noqa: F401 (fixtures)
from tests.ledger.factory import batch, receipt

MAX_EVENTS = 50
MAX_BODY = 1 << 20


class Api:
    """A ledger on 127.0.0.1 and a station's client for it."""

    def __init__(self, server: LedgerServer) -> None:
        self.server = server
        self.token = server.add_station("dock-1", "WH1")
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def post(self, body: bytes, content_type: str = "application/json",
             **headers: str) -> httpx.Response:
        r = self.http.post("/v1/events", content=body, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type, **headers})
        assert r.status_code < 500, f"{r.status_code} for {body[:200]!r}: {r.text[:300]}"
        return r

    def post_json(self, obj: Any) -> httpx.Response:
        return self.post(json.dumps(obj).encode())

    def error(self, body: bytes, status: int = 400) -> str:
        r = self.post(body)
        assert r.status_code == status, r.text
        data = r.json()
        assert set(data) == {"error"} and isinstance(data["error"], str) and data["error"]
        message: str = data["error"]
        return message

    def results(self, events: list[Any]) -> list[dict[str, Any]]:
        r = self.post_json(batch(events))
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()["results"]
        assert len(out) == len(events)
        return out

    def still_serving(self) -> None:
        """The server is up and a valid batch is accepted."""
        assert self.http.get("/v1/health").status_code == 200
        (res,) = self.results([receipt(1, "OK-1", 0)])
        assert res["status"] == "accepted", res


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Api]:
    """One ledger for the module, on a SQLite file, then on a PostgreSQL database."""
    d: Path = tmp_path_factory.mktemp("ledger")
    cfg = d / "ledger.toml"
    cfg.write_text(f"max_batch_events = {MAX_EVENTS}\nmax_body_bytes = {MAX_BODY}\n")
    db: str | Path = (d / "ledger.db" if request.param == "sqlite"
                      else request.getfixturevalue("pg_cluster").create_database())
    with LedgerServer(db, cfg) as srv:
        a = Api(srv)
        try:
            yield a
        finally:
            a.http.close()


# -- batch level: 400 ---------------------------------------------------------------------------

VALID = json.dumps(batch([receipt(1, "A-01", 0)])).encode()

NOT_A_BATCH = {
    "empty": (b"", "malformed JSON: Expecting value: line 1 column 1 (char 0)"),
    "not-utf8": (b'{"station": "dock-1", "events": [], "x": "\xff\xfe"}',
                 "malformed JSON: 'utf-8' codec can't decode byte 0xff in position 42: "
                 "invalid start byte"),
    "nested-too-deeply": (b"[" * 100_000 + b"]" * 100_000, "malformed JSON: nested too deeply"),
    "nested-in-an-event": (b'{"station":"dock-1","events":[{"x":' + b"[" * 5000 + b"]" * 5000
                           + b"}]}", "malformed JSON: nested too deeply"),
    "huge-integer-literal": (b'{"station":"dock-1","events":[],"x":' + b"9" * 5000 + b"}",
                             "malformed JSON: Exceeds the limit (4300 digits) for integer "
                             "string conversion: value has 5000 digits; use "
                             "sys.set_int_max_str_digits() to increase the limit"),
    "null": (b"null", "body: expected a JSON object {station, sent_at, watermark, events}"),
    "string": (b'"dock-1"', "body: expected a JSON object {station, sent_at, watermark, events}"),
    "NaN": (b"NaN", "body: expected a JSON object {station, sent_at, watermark, events}"),
    "station-number": (b'{"station": 3, "events": []}', "station: required, a string"),
    "station-empty": (b'{"station": "", "events": []}', "station: required, a string"),
    "events-missing": (b'{"station": "dock-1"}', "events: required, an array of events"),
    "events-null": (b'{"station": "dock-1", "events": null}',
                    "events: required, an array of events"),
    "events-string": (b'{"station": "dock-1", "events": "[]"}',
                      "events: required, an array of events"),
    "sent_at-far-future": (b'{"station": "dock-1", "events": [], '
                           b'"sent_at": "9999-12-31T23:59:59.999999Z"}',
                           "sent_at: out of range (years 2000 to 2099): "
                           "'9999-12-31T23:59:59.999999Z'"),
    "watermark-far-past": (b'{"station": "dock-1", "events": [], '
                           b'"watermark": "0001-01-01T00:00:00+23:59"}',
                           "watermark: out of range (years 2000 to 2099): "
                           "'0001-01-01T00:00:00+23:59'"),
    "watermark-number": (b'{"station": "dock-1", "events": [], "watermark": 1e308}',
                         "watermark: expected a UTC timestamp string, got a number (1e+308)"),
    "form-encoded": (b"station=dock-1&events=", "malformed JSON: Expecting value: line 1 "
                                                "column 1 (char 0)"),
}


@pytest.mark.parametrize("body, error", list(NOT_A_BATCH.values()), ids=list(NOT_A_BATCH))
def test_a_body_that_is_not_a_batch_is_a_clear_400(api: Api, body: bytes, error: str) -> None:
    assert api.error(body) == error
    api.still_serving()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, len(VALID) - 1))
def test_a_truncated_batch_is_400(api: Api, cut: int) -> None:
    """A body cut anywhere (a connection lost mid-request, a proxy's limit) is never taken
    for a smaller batch."""
    assert api.error(VALID[:cut]).startswith(("malformed JSON: ", "body: expected a JSON"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(st.binary(max_size=300),
                      st.recursive(st.none() | st.booleans() | st.floats() | st.text(),
                                   lambda c: st.lists(c) | st.dictionaries(st.text(), c))
                      .map(lambda v: json.dumps(v).encode())))
def test_arbitrary_bodies_are_400_never_5xx(api: Api, body: bytes) -> None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and parsed.get("station") == "dock-1" and isinstance(
            parsed.get("events"), list):
        return  # by a fluke a batch: covered by the event-level tests
    r = api.post(body)
    assert r.status_code in (400, 403), r.text  # 403: a batch for another station
    assert set(r.json()) == {"error"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "", "image/png"])
def test_the_content_type_is_not_what_decides(api: Api, content_type: str) -> None:
    """The body is the contract: the same valid batch is accepted whatever it is labelled,
    and a form or garbage body under the JSON label is a 400 (docs/ledger.md decides by the
    body alone)."""
    r = api.post(json.dumps(batch([receipt(1, "CT-1", 0)])).encode(), content_type)
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "accepted"
    r = api.post(b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--",
                 content_type)
    assert r.status_code == 400


# -- batch level: 413 ---------------------------------------------------------------------------


def test_more_events_than_the_limit_is_413_and_nothing_is_kept(api: Api) -> None:
    events = [receipt(1, "BIG-1", 0) for _ in range(MAX_EVENTS + 1)]
    assert api.error(json.dumps(batch(events)).encode(), 413) == \
        f"{MAX_EVENTS + 1} events in one batch; at most {MAX_EVENTS}"
    bal = api.http.get("/v1/balances", params={"location": "BIG-1"}).json()["balances"]
    assert bal == []
    assert len(api.results(events[:MAX_EVENTS])) == MAX_EVENTS


def test_a_body_over_the_limit_is_413(api: Api) -> None:
    huge = json.dumps(batch([receipt(1, "A-01", 0, reference="x" * MAX_BODY)])).encode()
    assert api.error(huge, 413) == f"request body larger than {MAX_BODY} bytes"
    api.still_serving()


# -- event level: rejected with a reason, the rest applied ---------------------------------------

# The JSON types each field of a receipt may have (DESIGN section 5); anything else is refused.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "event_id": (str,), "station": (str,), "site": (str,), "scanner": (str,), "seq": (int,),
    "type": (str,), "item": (str,), "lot": (str, type(None)), "serial": (str, type(None)),
    "qty": (int,), "from_location": (type(None),), "to_location": (str,),
    "occurred_at": (str,), "reference": (str, type(None)), "operator": (str, type(None)),
    "voids": (type(None),), "clock": (dict, type(None)), "raw": (list, type(None)),
}
REQUIRED = {"event_id": "event_id: required", "station": "station: required",
            "site": "site: required", "scanner": "scanner: required",
            "seq": "seq: expected an integer, got null",
            "type": "type: must be one of receipt, pick, move, count, void; got null",
            "item": "item: required", "qty": "qty: expected an integer, got null",
            "to_location": "to_location: a receipt needs a to-location",
            "occurred_at": "occurred_at: expected a UTC timestamp string, got null"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6)


def _wrong_for(field: str, value: Any) -> bool:
    allowed = FIELD_TYPES[field]
    if isinstance(value, bool):
        return bool not in allowed
    if field == "raw" and isinstance(value, list):
        return not all(isinstance(r, str) for r in value)
    return not isinstance(value, allowed)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(FIELD_TYPES)), value=json_values)
@example(field="qty", value=float("nan"))
@example(field="qty", value=float("inf"))
@example(field="qty", value=1e308)
@example(field="qty", value=2**63)
@example(field="seq", value=2**70)
@example(field="raw", value=["ok", 3])
def test_a_wrong_type_rejects_that_event_only_naming_the_field(
        api: Api, field: str, value: Any) -> None:
    bad = {**receipt(1, "T-1", 0), field: value}
    if not _wrong_for(field, value):
        return  # the right type: the other tests decide about its value
    before, after = receipt(1, "T-1", 0), receipt(1, "T-1", 0)
    results = api.results([before, bad, after])
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1]["reason"].startswith(f"{field}: "), results[1]
    assert results[1]["warnings"] == []


@pytest.mark.parametrize("field", sorted(FIELD_TYPES))
def test_a_missing_field_is_rejected_if_required(api: Api, field: str) -> None:
    ev = receipt(1, "M-1", 0)
    del ev[field]
    (res,) = api.results([ev])
    if field in REQUIRED:
        assert (res["status"], res["reason"]) == ("rejected", REQUIRED[field])
    else:
        assert res["status"] == "accepted", res


ABSURD: dict[str, tuple[dict[str, Any], str | None]] = {
    "qty-negative": ({"qty": -1}, "qty: must be at least 1, got -1"),
    "qty-zero": ({"qty": 0}, "qty: must be at least 1, got 0"),
    "qty-over-max": ({"qty": 10**9 + 1}, "qty: must be at most 1000000000, got 1000000001"),
    "qty-2**63": ({"qty": 2**63}, "qty: must be at most 1000000000, got 9223372036854775808"),
    "qty-1e308": ({"qty": 1e308}, "qty: expected an integer, got a number (1e+308)"),
    "qty-NaN": ({"qty": math.nan}, "qty: expected an integer, got a number (nan)"),
    "qty-Infinity": ({"qty": math.inf}, "qty: expected an integer, got a number (inf)"),
    "qty--Infinity": ({"qty": -math.inf}, "qty: expected an integer, got a number (-inf)"),
    "qty-float-one": ({"qty": 1.0}, "qty: expected an integer, got a number (1.0)"),
    "qty-at-max": ({"qty": 10**9}, None),
    "seq-2**63": ({"seq": 2**63}, "seq: must be at most 9223372036854775807, got "
                                  "9223372036854775808"),
    "seq-negative": ({"seq": -5}, "seq: must be at least 1, got -5"),
    "far-future": ({"occurred_at": "2100-01-01T00:00:00Z"},
                   "occurred_at: out of range (years 2000 to 2099): '2100-01-01T00:00:00Z'"),
    "far-far-future": ({"occurred_at": "9999-12-31T23:59:59.999999-23:59"},
                       "occurred_at: out of range (years 2000 to 2099): "
                       "'9999-12-31T23:59:59.999999-23:59'"),
    "far-past": ({"occurred_at": "1970-01-01T00:00:00Z"},
                 "occurred_at: out of range (years 2000 to 2099): '1970-01-01T00:00:00Z'"),
    "year-one": ({"occurred_at": "0001-01-01T00:00:00+23:59"},
                 "occurred_at: out of range (years 2000 to 2099): '0001-01-01T00:00:00+23:59'"),
    "february-30": ({"occurred_at": "2026-02-30T00:00:00Z"},
                    "occurred_at: not a valid date and time: '2026-02-30T00:00:00Z'"),
    "hour-25": ({"occurred_at": "2026-11-22T25:00:00Z"},
                "occurred_at: not a valid date and time: '2026-11-22T25:00:00Z'"),
    "no-offset": ({"occurred_at": "2026-11-22T10:00:00"},
                  "occurred_at: expected a timestamp like 2026-11-22T10:15:30.123456Z, got "
                  "'2026-11-22T10:00:00'"),
    "trailing-newline": ({"occurred_at": "2026-11-22T10:00:00Z\n"},
                         "occurred_at: not a valid date and time: '2026-11-22T10:00:00Z\\n'"),
    "arabic-digits": ({"occurred_at": "٢٠٢٦-11-22T10:00:00Z"},
                      "occurred_at: not a valid date and time: '٢٠٢٦-11-22T10:00:00Z'"),
    "uuid-short": ({"event_id": "0192b3c4-5d6e-7f80-9a1b"},
                   "event_id: expected a UUID like 0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b, got a "
                   "string ('0192b3c4-5d6e-7f80-9a1b')"),
    "uuid-braces": ({"event_id": "{0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b}"},
                    "event_id: expected a UUID like 0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b, got "
                    "a string ('{0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b}')"),
    "uuid-not-hex": ({"event_id": "zzzzzzzz-5d6e-7f80-9a1b-2c3d4e5f6a7b"},
                     "event_id: expected a UUID like 0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b, got "
                     "a string ('zzzzzzzz-5d6e-7f80-9a1b-2c3d4e5f6a7b')"),
    "uuid-trailing-newline": ({"event_id": "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b\n"},
                              "event_id: expected a UUID like "
                              "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b, got a string "
                              "('0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b\\n')"),
    "item-257": ({"item": "7" * 257}, "item: longer than 256 characters"),
    "reference-1MB": ({"reference": "R" * 1_000_000}, "reference: longer than 256 characters"),
    "location-blank": ({"to_location": "   "}, "to_location: must not be empty"),
    "item-escape": ({"item": "\x1b[2J"}, "item: contains control characters"),
    "operator-NUL": ({"operator": "u\x00"}, "operator: contains control characters"),
    "nested-junk-in-clock": ({"clock": {"a": [[[{"b": [None] * 50}]]]}}, None),
    "nested-junk-unknown-field": ({"extra": {"x": [[[[[[1e308]]]]]]}}, None),
    "station-other": ({"station": "dock-2"},
                      "station: 'dock-2' is not the batch's station 'dock-1'"),
}


@pytest.mark.parametrize("change, reason", list(ABSURD.values()), ids=list(ABSURD))
def test_absurd_values_reject_that_event_with_its_reason(
        api: Api, change: dict[str, Any], reason: str | None) -> None:
    ev = {**receipt(1, "V-1", 0), **change}
    ok = receipt(1, "V-1", 0)
    if reason is None:
        assert [r["status"] for r in api.results([ev, ok])] == ["accepted", "accepted"]
    else:
        res, after = api.results([ev, ok])
        assert (res["status"], res["reason"]) == ("rejected", reason)
        assert after["status"] == "accepted"


def test_the_same_id_with_other_content_is_rejected_not_counted(api: Api) -> None:
    ev = receipt(2, "ID-1", 0, event_id=str(uuid.uuid4()))
    assert api.results([ev])[0]["status"] == "accepted"
    assert api.results([ev])[0]["status"] == "duplicate"
    (res,) = api.results([{**ev, "qty": 9}])
    assert (res["status"], res["reason"]) == (
        "rejected", "event_id: already used by a different event (same id, different content)")
    (bal,) = api.http.get("/v1/balances", params={"location": "ID-1"}).json()["balances"]
    assert bal["on_hand"] == 2


@pytest.mark.parametrize("path", [
    "/v1/events?limit=%C2%B2", "/v1/events?limit=" + "9" * 5000, "/v1/events?limit=-1",
    "/v1/negatives?status=%00", "/v1/balances?by=%1b[2J", "/?refresh=%C2%B2",
    "/?refresh=" + "9" * 5000, "/v1/events?station=%ff",
])
def test_bad_query_parameters_are_4xx_or_ignored_never_5xx(api: Api, path: str) -> None:
    """A regression guard: ``?refresh=²`` and ``?limit=²`` passed ``str.isdigit`` and then
    crashed ``int()`` with a 500."""
    r = api.http.get(path)
    assert r.status_code in (200, 400), (r.status_code, r.text[:200])
    api.still_serving()


def test_a_batch_the_store_cannot_bind_rolls_back_and_the_next_one_saves(
        ledger_db: str | Path) -> None:  # noqa: F811 (the imported fixture)
    """Regression: a value SQLite cannot bind (an integer over 64 bits) raised OverflowError
    inside the batch's transaction, which stayed open, so every later batch was refused
    (503, "cannot start a transaction within a transaction") until a restart. PostgreSQL's
    store, too, rolls such a batch back and saves the next."""
    from ledger.errors import StoreError
    from ledger.store import NewEvent, open_store

    store = open_store(ledger_db)
    try:
        store.add_station("dock-1", "WH1", "0" * 64, "2026-11-22T10:00:00.000000Z")
        at = "2026-11-22T10:00:00.000000Z"

        def row(seq: int) -> NewEvent:
            return NewEvent(str(uuid.uuid4()), "dock-1", "WH1", seq, "receipt", "A", at, at,
                            "accepted", 1, at, "{}")

        with pytest.raises(StoreError, match="cannot save a batch"):
            store.save_batch([row(2**64)], [], None)
        store.save_batch([row(1)], [], None)
        assert len(list(store.log())) == 1
    finally:
        store.close()


def test_a_lone_surrogate_in_a_string_is_a_clear_400(api: Api) -> None:
    """Regression: "\\ud800" parses as JSON but cannot be stored as UTF-8; it was a 500."""
    body = json.dumps(batch([receipt(1, "OK-1", 0)])).replace('"OK-1"', '"OK-\\ud800"')
    assert api.error(body.encode()) == "malformed JSON: a string holds a lone UTF-16 surrogate"
    # a proper surrogate pair (an emoji, escaped) is fine
    pair = json.dumps(batch([receipt(2, "OK-2", 0)])).replace('"OK-2"', '"OK-\\ud83d\\ude00"')
    assert api.post(pair.encode()).status_code == 200
    api.still_serving()
