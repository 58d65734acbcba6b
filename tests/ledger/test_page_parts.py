"""The manager's page's pure parts: their docstring examples hold, and the edges of each."""

from __future__ import annotations

import doctest
import importlib
from datetime import date
from zoneinfo import ZoneInfo

import pytest

from ledger.errors import FilterError
from ledger.events import parse_time
from ledger.filters import IncidentFilter, parse_filter
from ledger.stationflags import station_flags
from ledger.store import StationRecord

MODULES = ["ledger.filters", "ledger.items", "ledger.export", "ledger.stationflags"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


def test_a_day_is_the_sites_own_day() -> None:
    """10:30 UTC on the 22nd is still the 22nd in Berlin, but 23:30 UTC is the 23rd there."""
    f = IncidentFilter(start=date(2026, 11, 23), end=date(2026, 11, 23))
    zones = {"WH1": ZoneInfo("Europe/Berlin"), "NY": ZoneInfo("America/New_York")}

    def passes(site: str, iso: str) -> bool:
        return f.matches(site=site, cls="item", status="open", station="d",
                         opened_at=parse_time(iso), zone=zones.__getitem__)

    assert passes("WH1", "2026-11-22T23:30:00Z")
    assert not passes("NY", "2026-11-22T23:30:00Z")
    assert passes("NY", "2026-11-24T04:59:59Z")
    assert not passes("WH1", "2026-11-24T04:59:59Z")


def test_a_filter_spells_itself_back_as_a_query() -> None:
    q = {"site": "WH1", "class": "item", "status": "open", "station": "d-1",
         "from": "2026-11-22", "to": "2026-11-23T10:00:00Z", "limit": "5", "token": "t"}
    f = parse_filter(q, sites={"WH1"}, stations={"d-1"})
    assert f.query() == [("site", "WH1"), ("class", "item"), ("status", "open"),
                         ("station", "d-1"), ("from", "2026-11-22"),
                         ("to", "2026-11-23T10:00:00.000000Z")]
    assert parse_filter(dict(f.query()), sites={"WH1"}, stations={"d-1"}) == f
    assert f.query(cls=None, start=date(2026, 11, 1))[1:3] == [("status", "open"),
                                                              ("station", "d-1")]
    assert not parse_filter({"site": " ", "class": ""}, sites=set(), stations=set())
    assert f.opened_per_day() == IncidentFilter("WH1", "item", None, "d-1")


def test_a_reversed_range_of_instants_is_refused() -> None:
    with pytest.raises(FilterError, match="is after"):
        parse_filter({"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T09:00:00+00:00"},
                     sites=set(), stations=set())


def _station(name: str, site: str, contact: str | None, offset: float | None = None,
             revoked: str | None = None) -> StationRecord:
    return StationRecord(name, site, "2026-11-22T08:00:00.000000Z", revoked, contact, None,
                         None, offset, None)


def test_station_flags_edges() -> None:
    now = parse_time("2026-11-22T10:00:00Z")
    flags = station_flags([
        _station("fresh", "WH1", "2026-11-22T09:59:00.000000Z", -2500.0),  # ahead, by 2.5 s
        _station("exactly-2s", "WH1", "2026-11-22T09:59:00.000000Z", 2000.0),
        _station("never", "WH1", None),  # registered at 08:00, never heard of
        _station("revoked", "WH1", "2026-11-22T08:00:00.000000Z", 9000.0,
                 revoked="2026-11-22T08:30:00.000000Z"),
        _station("alone", "WH2", "2026-11-22T08:00:00.000000Z"),  # its whole site is quiet
    ], now)
    assert flags == {"fresh": ["clock_offset"], "exactly-2s": [], "never": ["no_contact"],
                     "revoked": [], "alone": []}
