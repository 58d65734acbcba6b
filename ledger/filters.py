"""Filters over incidents: the query parameters of ``/``, ``GET /v1/negatives`` and
``GET /v1/negatives.csv`` (DESIGN section 11). Pure: a query in, a filter or an error out.

``site``, ``class``, ``status``, ``station`` (the depletion's) and a date range ``from`` /
``to`` on the day the incident was opened, both inclusive. A date (``2026-11-22``) is a day in
the incident's site's time zone; a time with an offset (``2026-11-22T10:00:00Z``) is that
instant. Other parameters (``token``, ``refresh``, paging) are not this module's and are left
alone, so that a filter composes with whatever else a listing takes.

>>> f = parse_filter({"class": "item", "from": "2026-11-22"}, sites={"WH1"}, stations={"d1"})
>>> (f.cls, f.start, f.query())
('item', datetime.date(2026, 11, 22), [('class', 'item'), ('from', '2026-11-22')])
>>> parse_filter({"status": "gone"}, sites=set(), stations=set())
Traceback (most recent call last):
ledger.errors.FilterError: status: expected open or resolved, got 'gone'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from ledger.errors import FilterError

__all__ = ["FILTER_KEYS", "FilterError", "IncidentFilter", "parse_filter"]

#: the query parameters a filter reads, in the order links spell them
FILTER_KEYS = ("site", "class", "status", "station", "from", "to")
_CLASSES = ("ordering", "location", "item")
_STATUSES = ("open", "resolved")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})\Z")


Bound = date | datetime


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    """What to show; ``None`` everywhere shows everything."""

    site: str | None = None
    cls: str | None = None
    status: str | None = None
    station: str | None = None
    start: Bound | None = None
    end: Bound | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.site, self.cls, self.status, self.station,
                                           self.start, self.end))

    def query(self, **change: Any) -> list[tuple[str, str]]:
        """The filter as query parameters, in :data:`FILTER_KEYS` order; ``change`` replaces
        fields first (``cls=None`` drops the class), for links that change one thing."""
        values = {"site": self.site, "class": self.cls, "status": self.status,
                  "station": self.station, "from": _spell(self.start),
                  "to": _spell(self.end)}
        for k, v in change.items():
            key = {"cls": "class", "start": "from", "end": "to"}.get(k, k)
            values[key] = _spell(v) if isinstance(v, date) else v
        return [(k, values[k]) for k in FILTER_KEYS if values[k] is not None]  # type: ignore[misc]

    def matches(self, *, site: str, cls: str, status: str, station: str, opened_at: int,
                zone: Callable[[str], tzinfo]) -> bool:
        """Whether an incident passes; ``opened_at`` in µs, ``zone(site)`` a site's zone."""
        if self.site is not None and site != self.site:
            return False
        if self.cls is not None and cls != self.cls:
            return False
        if self.status is not None and status != self.status:
            return False
        if self.station is not None and station != self.station:
            return False
        if self.start is None and self.end is None:
            return True
        local = datetime.fromtimestamp(opened_at / 1e6, UTC).astimezone(zone(site))
        if self.start is not None and not _after(local, self.start):
            return False
        return self.end is None or _before(local, self.end)

    def opened_per_day(self) -> IncidentFilter:
        """The filter of the chart of incidents opened per day: its own 30 days, and every
        status (a day's bar must not shrink as its incidents resolve)."""
        return IncidentFilter(self.site, self.cls, None, self.station)


def _after(t: datetime, bound: Bound) -> bool:
    return t >= bound if isinstance(bound, datetime) else t.date() >= bound


def _before(t: datetime, bound: Bound) -> bool:
    return t <= bound if isinstance(bound, datetime) else t.date() <= bound


def _spell(v: Bound | None) -> str | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return v.isoformat()


def _bound(key: str, raw: str) -> Bound:
    if _DAY.match(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise FilterError(f"{key}: not a valid date: {raw!r}") from None
    if _INSTANT.match(raw):
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(f"{key}: not a valid date and time: {raw!r}") from None
    raise FilterError(f"{key}: expected a date such as 2026-11-22 or a time with its offset "
                      f"such as 2026-11-22T10:00:00Z, got {raw[:80]!r}")


def _choice(key: str, raw: str, allowed: Collection[str], what: str) -> str:
    if raw in allowed:
        return raw
    known = ", ".join(sorted(allowed)[:20]) or "none yet"
    raise FilterError(f"{key}: {what} {raw[:80]!r}; known: {known}")


def parse_filter(query: Mapping[str, str], *, sites: Collection[str],
                 stations: Collection[str]) -> IncidentFilter:
    """Read the filter parameters of a query (empty values mean no filter).

    ``sites`` and ``stations`` are the ones the ledger knows: an unknown one is a typo to
    report, not a filter that silently shows nothing."""
    raw = {k: query[k].strip() for k in FILTER_KEYS if query.get(k, "").strip()}
    site = raw.get("site")
    if site is not None:
        _choice("site", site, sites, "no site named")
    station = raw.get("station")
    if station is not None:
        _choice("station", station, stations, "no station named")
    cls = raw.get("class")
    if cls is not None and cls not in _CLASSES:
        raise FilterError(f"class: expected ordering, location or item, got {cls[:80]!r}")
    status = raw.get("status")
    if status is not None and status not in _STATUSES:
        raise FilterError(f"status: expected open or resolved, got {status[:80]!r}")
    start = _bound("from", raw["from"]) if "from" in raw else None
    end = _bound("to", raw["to"]) if "to" in raw else None
    if start is not None and end is not None and type(start) is type(end) \
            and start > end:
        raise FilterError(f"from ({raw['from']}) is after to ({raw['to']})")
    return IncidentFilter(site, cls, status, station, start, end)
