"""Which stations a manager should look at (DESIGN section 11). Pure: records and a time in.

* ``clock_offset``: the station's clock is more than :data:`MAX_OFFSET_MS` off the ledger's
  (as measured on its last batch: ``received_at - sent_at``, network delay included);
* ``no_contact``: nothing from the station for :data:`SILENCE_US` while another station of
  its site has posted within that time (a station alone at a closed site is not flagged).

Revoked stations are never flagged.

>>> from ledger.store import StationRecord
>>> a = StationRecord("a", "WH1", "2026-11-22T08:00:00.000000Z", None,
...                   "2026-11-22T09:59:00.000000Z", None, None, 3500.0, 1)
>>> b = StationRecord("b", "WH1", "2026-11-22T08:00:00.000000Z", None,
...                   "2026-11-22T09:40:00.000000Z", None, None, 10.0, 1)
>>> from ledger.events import parse_time
>>> station_flags([a, b], parse_time("2026-11-22T10:00:00Z"))
{'a': ['clock_offset'], 'b': ['no_contact']}
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.events import parse_time
from ledger.store import StationRecord

__all__ = ["FLAGS", "MAX_OFFSET_MS", "SILENCE_US", "station_flags"]

FLAGS = ("clock_offset", "no_contact")
MAX_OFFSET_MS = 2000.0
SILENCE_US = 10 * 60 * 1_000_000


def station_flags(stations: Sequence[StationRecord], now: int) -> dict[str, list[str]]:
    """Each station's flags (an empty list when all is well)."""
    active = [s for s in stations if s.revoked_at is None]
    heard = {s.name: parse_time(s.last_contact or s.created_at) for s in active}
    recent_sites = {s.site for s in active
                    if s.last_contact is not None and now - heard[s.name] <= SILENCE_US}
    out: dict[str, list[str]] = {s.name: [] for s in stations}
    for s in active:
        if s.clock_offset_ms is not None and abs(s.clock_offset_ms) > MAX_OFFSET_MS:
            out[s.name].append("clock_offset")
        if now - heard[s.name] > SILENCE_US and s.site in recent_sites:
            out[s.name].append("no_contact")
    return out
