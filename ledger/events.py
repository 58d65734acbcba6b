"""Movement events as posted by stations (DESIGN section 5): validation and canonical form.

Pure functions over plain values. :func:`validate_event` turns one posted JSON object into a
:class:`Movement` or a reason string naming the field and the problem; a bad event never spoils
its batch. Content equality for idempotency compares :func:`canonical_json` (sorted keys,
compact) of the event exactly as posted; fields the ledger does not know are kept, not refused,
so that a newer agent can add information without breaking an older ledger.

>>> m = validate_event({"event_id": "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b", "station": "d1",
...     "site": "WH1", "scanner": "h", "seq": 1, "type": "receipt", "item": "A", "qty": 2,
...     "to_location": "DOCK", "occurred_at": "2026-11-22T10:15:30.123456Z"}, "d1", "WH1")
>>> (m.type, m.qty, m.to_location, format_time(m.t))
('receipt', 2, 'DOCK', '2026-11-22T10:15:30.123456Z')
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

__all__ = [
    "DEPLETIONS",
    "TYPES",
    "Movement",
    "canonical_json",
    "format_time",
    "parse_json",
    "parse_time",
    "validate_event",
]

TYPES = ("receipt", "pick", "move", "count", "void")
DEPLETIONS = ("pick", "move")
MAX_QTY = 10**9
MAX_SEQ = 2**63 - 1  # SQLite INTEGER: a larger seq cannot be stored
MAX_TEXT = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MIN_T = int((datetime(2000, 1, 1, tzinfo=UTC) - _EPOCH) / _US)
_MAX_T = int((datetime(2100, 1, 1, tzinfo=UTC) - _EPOCH) / _US)
# \Z, not $: "$" also matches before a trailing newline, which let "<uuid>\n" through.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}\Z")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UUID_MATCH = _UUID.match
_blake2b = hashlib.blake2b
_dumps = orjson.dumps


class Movement:
    """One validated event, with the ledger's view of it.

    ``t`` is ``occurred_at`` in microseconds since the epoch; ``key`` orders events in occurrence
    order (time, station, seq, event id). ``digest`` identifies the posted content. The engine
    fills in the mutable part (status, voids, incident, recorded-order deltas).
    """

    __slots__ = ("applied", "applied_seq", "before_horizon", "body", "digest", "event_id",
                 "from_location", "held", "incident", "item", "legs", "occurred_at", "orig_t",
                 "qty", "rec_deltas", "reversal", "scanner", "seq", "site", "station", "t",
                 "to_location", "type", "voided_by", "voids")

    def __init__(self, event_id: str, station: str, site: str, scanner: str, seq: int,
                 type: str, item: str | None, qty: int, from_location: str | None,
                 to_location: str | None, occurred_at: str, t: int, voids: str | None,
                 digest: bytes, body: str | None = None) -> None:
        # Positional as well as keyword: validation builds one per posted event, and a
        # positional call costs a third of a keyword one.
        self.event_id = event_id
        self.station = station
        self.site = site
        self.scanner = scanner
        self.seq = seq
        self.type = type
        self.item = item
        self.qty = qty
        self.from_location = from_location
        self.to_location = to_location
        self.occurred_at = occurred_at
        self.t = t  # when it takes effect: occurred_at, unless the ledger moved it later
        self.orig_t = t  # occurred_at
        self.voids = voids
        self.digest = digest
        self.body = body  # canonical JSON as posted; dropped once stored
        self.applied = False  # its legs are in the balances (not held, not voided)
        self.applied_seq: int | None = None  # its position in recorded order, once applied
        self.held = False
        self.voided_by: str | None = None
        self.incident: Any = None
        self.legs: tuple[Any, ...] = ()
        self.rec_deltas: tuple[tuple[str, int], ...] = ()  # (location, delta) in recorded order
        # Arrived older than its site's horizon (or, for a void, its target was settled):
        # applied at the horizon (DESIGN section 10).
        self.before_horizon = False
        # A settled event's effect, as far as it cannot be told from the event itself:
        # (location, occurrence-order delta, recorded-order delta) per leg of a count.
        self.reversal: tuple[tuple[str, int, int], ...] | None = None

    # Snapshots (pickle) hold many of these: a tuple of the fields is much smaller and
    # quicker to read back than the default slot dictionary.
    def __getstate__(self) -> tuple[Any, ...]:
        return (self.applied, self.applied_seq, self.before_horizon, self.body, self.digest,
                self.event_id, self.from_location, self.held, self.incident, self.item,
                self.legs, self.occurred_at, self.orig_t, self.qty, self.rec_deltas,
                self.reversal, self.scanner, self.seq, self.site, self.station, self.t,
                self.to_location, self.type, self.voided_by, self.voids)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.applied, self.applied_seq, self.before_horizon, self.body, self.digest,
         self.event_id, self.from_location, self.held, self.incident, self.item,
         self.legs, self.occurred_at, self.orig_t, self.qty, self.rec_deltas,
         self.reversal, self.scanner, self.seq, self.site, self.station, self.t,
         self.to_location, self.type, self.voided_by, self.voids) = state

    @property
    def effective_at(self) -> str | None:
        """When it takes effect, if not at ``occurred_at`` (a released hold, an event that
        arrived before the horizon)."""
        return None if self.t == self.orig_t else format_time(self.t)

    @property
    def key(self) -> tuple[int, str, int, str]:
        return (self.t, self.station, self.seq, self.event_id)

    @property
    def is_depletion(self) -> bool:
        return self.type in DEPLETIONS

    def __repr__(self) -> str:
        return f"<Movement {self.type} {self.event_id} {self.item} x{self.qty} @{self.occurred_at}>"


class _NonFinite(float):
    """NaN or ±Infinity as parsed by :func:`parse_json` (a float; marked so that the canonical
    form keeps its JSON spelling)."""

    __slots__ = ()


def _non_finite(name: str) -> float:
    return _NonFinite(name)


def parse_json(data: str | bytes) -> Any:
    """``json.loads``, with NaN and ±Infinity (which it accepts) marked for
    :func:`canonical_json`. Parse request bodies and stored events with this.

    The json module defines what a body means; orjson parses it about twice as fast and is
    used whenever it gives the same value. It refuses what the json module accepts with a
    meaning of its own (NaN and ±Infinity, lone surrogate escapes, other encodings than
    UTF-8, nesting deeper than 1024) and what is malformed: those go to the json module, for
    its value or its error message. The one value it reads differently is an integer beyond
    64 bits (a float): a body with a run of 19 digits anywhere goes to the json module too.
    """
    raw = data.encode(errors="surrogatepass") if isinstance(data, str) else data
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_constant=_non_finite)
    if _LONG_RUN in raw.translate(_DIGITS):
        return json.loads(data, parse_constant=_non_finite)
    return value


# Every digit to "0" and every other byte to a space: a run of 19 zeros is then a run of 19
# digits, found by one byte search (a regular expression takes ten times as long).
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_SORT_KEYS = orjson.OPT_SORT_KEYS


def _canonical(obj: Any) -> tuple[str, bytes]:
    """The canonical form as text and as UTF-8.

    orjson writes it (sorted keys, no spaces, UTF-8 kept) about five times faster than the
    json module. What orjson refuses (integers beyond 64 bits, NaN and ±Infinity from
    :func:`parse_json`, which it would turn into null) the json module writes: whether a
    value takes that path depends only on the value, so equal content always gives the
    same form.
    """
    try:
        raw = orjson.dumps(obj, option=_SORT_KEYS)
    except TypeError:
        text = _CANONICAL.encode(obj)
        return text, text.encode()
    return raw.decode(), raw


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the form compared for idempotency and stored.

    For JSON parsed with :func:`parse_json` (as every posted or stored event is) equal
    content gives an equal form and different content a different one; a NaN or ±Infinity
    float built in Python is written as null."""
    return _canonical(obj)[0]


def digest_of(canonical: str | bytes) -> bytes:
    data = canonical.encode() if isinstance(canonical, str) else canonical
    return hashlib.blake2b(data, digest_size=16).digest()


# "2026-11-22T10:15:" -> its minute in µs since the epoch, for every minute already parsed
# in the form the agent sends (``...:SS.ffffffZ``): the seconds and fraction of a later
# timestamp in that minute are then two integer conversions.
_MINUTES: dict[str, int] = {}
_MINUTES_MAX = 65_536


def parse_time(value: Any) -> int:
    """An ISO 8601 timestamp with a UTC offset -> microseconds since the epoch.

    Raises ``ValueError`` with a short reason (the caller adds the field name).
    """
    if value.__class__ is str and len(value) == 27 and value[26] == "Z" and value[19] == ".":
        minute = _MINUTES.get(value[:17])
        sec = value[17:19]
        frac = value[20:26]
        if sec.isdigit() and frac.isdigit() and sec.isascii() and frac.isascii():
            s = int(sec)
            if minute is not None and s < 60:
                return minute + s * 1_000_000 + int(frac)
            t = _parse_time(value)
            if len(_MINUTES) >= _MINUTES_MAX:
                _MINUTES.clear()
            _MINUTES[value[:17]] = t - s * 1_000_000 - int(frac)
            return t
    return _parse_time(value)


def _parse_time(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError(f"expected a UTC timestamp string, got {_kind(value)}")
    if not _TIME.match(value):
        raise ValueError(f"expected a timestamp like 2026-11-22T10:15:30.123456Z, got {value!r}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a valid date and time: {value!r}") from None
    t = (dt - _EPOCH) // _US
    if not _MIN_T <= t < _MAX_T:
        raise ValueError(f"out of range (years 2000 to 2099): {value!r}")
    return int(t)


def format_time(t: int) -> str:
    """Microseconds since the epoch -> ``2026-11-22T10:15:30.123456Z``."""
    return (_EPOCH + t * _US).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_us() -> int:
    """The current UTC time in microseconds (the only clock read in this module)."""
    return int((datetime.now(UTC) - _EPOCH) // _US)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return f"a number ({v!r})"
    if isinstance(v, str):
        return f"a string ({v[:40]!r})"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


class _Bad(Exception):
    pass


def _text(ev: dict[str, Any], field: str, *, required: bool) -> str | None:
    v = ev.get(field)
    if (v.__class__ is str and 0 < len(v) <= MAX_TEXT and not v.isspace()
            and _CONTROL.search(v) is None):
        return v  # the common case, checked in one go
    if v is None:
        if required:
            raise _Bad(f"{field}: required" if field not in ev else f"{field}: must not be null")
        return None
    if not isinstance(v, str):
        raise _Bad(f"{field}: expected a string, got {_kind(v)}")
    if not v.strip():
        raise _Bad(f"{field}: must not be empty")
    if len(v) > MAX_TEXT:
        raise _Bad(f"{field}: longer than {MAX_TEXT} characters")
    if _CONTROL.search(v):
        raise _Bad(f"{field}: contains control characters")
    return v


def _uuid(ev: dict[str, Any], field: str) -> str:
    v = ev.get(field)
    if v is None:
        raise _Bad(f"{field}: required")
    if not isinstance(v, str) or not _UUID.match(v):
        raise _Bad(f"{field}: expected a UUID like 0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b, "
                   f"got {_kind(v)}")
    return v.lower()


_OPTIONAL_TEXT = ("lot", "serial", "reference", "operator")

_LOCATIONS: dict[str, tuple[bool, bool]] = {
    # type: (from_location wanted, to_location wanted)
    "receipt": (False, True),
    "pick": (True, False),
    "move": (True, True),
    "count": (False, True),
}


def validate_event(ev: Any, station: str, site: str) -> Movement | str:
    """Check one posted event of ``station`` (registered at ``site``); a Movement or a reason."""
    if not isinstance(ev, dict):
        return f"event: expected a JSON object, got {_kind(ev)}"
    try:
        return _validate(ev, station, site)
    except _Bad as bad:
        return str(bad)


def _ok_text(v: Any) -> bool:
    """The common case of a valid text field, checked in one go (else :func:`_text` says
    what is wrong)."""
    return (v.__class__ is str and 0 < len(v) <= MAX_TEXT and not v.isspace()
            and (v.isprintable() or _CONTROL.search(v) is None))


@lru_cache(maxsize=256)
def _names_ok(station: str, site: str) -> tuple[bool, bool]:
    """Whether a station's and a site's names pass as text fields (once per pair)."""
    return _ok_text(station), _ok_text(site)


# Every field _validate reads, fetched in one pass (absent ones as None).
_FIELDS = ("event_id", "station", "site", "scanner", "seq", "type", "occurred_at", "lot",
           "serial", "reference", "operator", "clock", "raw", "voids", "item", "qty",
           "from_location", "to_location")


def _validate(ev: dict[str, Any], station: str, site: str) -> Movement:
    # The common case (every field present and valid) takes one test per field; anything
    # else falls back to the full checks, in the same order, with the same reasons.
    get: Callable[[str], Any] = ev.get
    (event_id, ev_station, ev_site, scanner, seq, typ, occurred_at, lot, serial, reference,
     operator, clock, raw, voids, item, qty, frm, to) = map(get, _FIELDS)
    if event_id.__class__ is str and _UUID_MATCH(event_id):
        event_id = event_id.lower()
    else:
        event_id = _uuid(ev, "event_id")
    station_ok, site_ok = _names_ok(station, site)
    if not station_ok or ev_station != station:
        if not _ok_text(ev_station):
            ev_station = _text(ev, "station", required=True)
        if ev_station != station:
            raise _Bad(f"station: {ev_station!r} is not the batch's station {station!r}")
    if not site_ok or ev_site != site:
        if not _ok_text(ev_site):
            ev_site = _text(ev, "site", required=True)
        if ev_site != site:
            raise _Bad(f"site: station {station!r} is registered at site {site!r}, "
                       f"not {ev_site!r}")
    if not (scanner.__class__ is str and 0 < len(scanner) <= MAX_TEXT
            and scanner.isprintable() and not scanner.isspace()) and not _ok_text(scanner):
        scanner = _text(ev, "scanner", required=True)
    if not (seq.__class__ is int and 0 < seq <= MAX_SEQ):
        if seq.__class__ is not int and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise _Bad(f"seq: expected an integer, got {_kind(seq)}")
        if seq < 1:
            raise _Bad(f"seq: must be at least 1, got {seq}")
        if seq > MAX_SEQ:
            raise _Bad(f"seq: must be at most {MAX_SEQ}, got {seq}")
    if typ not in TYPES:
        raise _Bad(f"type: must be one of {', '.join(TYPES)}; got {_kind(typ)}")
    try:
        t = parse_time(occurred_at)
    except ValueError as exc:
        raise _Bad(f"occurred_at: {exc}") from None
    if lot is not None or serial is not None or reference is not None or operator is not None:
        for field in _OPTIONAL_TEXT:
            v = get(field)
            if v is not None and not _ok_text(v):
                _text(ev, field, required=False)
    if clock is not None and clock.__class__ is not dict and not isinstance(clock, dict):
        raise _Bad(f"clock: expected an object or null, got {_kind(clock)}")
    if raw is not None and not (raw.__class__ is list and not raw) and not (
            isinstance(raw, list) and all(isinstance(r, str) for r in raw)):
        raise _Bad("raw: expected an array of strings or null")

    if typ == "void":
        voids = _uuid(ev, "voids")
        if voids == event_id:
            raise _Bad("voids: an event cannot void itself")
        item = _text(ev, "item", required=False)
        frm = _text(ev, "from_location", required=False)
        to = _text(ev, "to_location", required=False)
        qty = 0
    else:
        if voids is not None:
            raise _Bad(f"voids: only a void event names an event to void, this is a {typ}")
        if not (item.__class__ is str and 0 < len(item) <= MAX_TEXT
                and item.isprintable() and not item.isspace()) and not _ok_text(item):
            item = _text(ev, "item", required=True)
        if not (qty.__class__ is int and (0 if typ == "count" else 1) <= qty <= MAX_QTY):
            if qty.__class__ is not int and (isinstance(qty, bool)
                                             or not isinstance(qty, int)):
                raise _Bad(f"qty: expected an integer, got {_kind(qty)}")
            lowest = 0 if typ == "count" else 1
            if qty < lowest:
                what = "a count must be at least 0" if typ == "count" else "must be at least 1"
                raise _Bad(f"qty: {what}, got {qty}")
            if qty > MAX_QTY:
                raise _Bad(f"qty: must be at most {MAX_QTY}, got {qty}")
        want_from, want_to = _LOCATIONS[typ]
        if want_from and frm is None:
            raise _Bad(f"from_location: a {typ} needs a from-location")
        if want_to and to is None:
            raise _Bad(f"to_location: a {typ} needs a to-location")
        if frm is not None and not (frm.__class__ is str and 0 < len(frm) <= MAX_TEXT
                                    and frm.isprintable() and not frm.isspace()
                                    ) and not _ok_text(frm):
            frm = _text(ev, "from_location", required=False)
        if to is not None and not (to.__class__ is str and 0 < len(to) <= MAX_TEXT
                                   and to.isprintable() and not to.isspace()
                                   ) and not _ok_text(to):
            to = _text(ev, "to_location", required=False)
        if frm is not None and not want_from:
            raise _Bad(f"from_location: a {typ} has no from-location (use to_location)")
        if to is not None and not want_to:
            raise _Bad(f"to_location: a {typ} has no to-location (use from_location)")
        if typ == "move" and frm == to:
            raise _Bad(f"to_location: a move needs two different locations, got {frm!r} twice")
        voids = None
    assert scanner is not None and ev_station is not None
    try:
        canonical = _dumps(ev, option=_SORT_KEYS)
        body = canonical.decode()
    except TypeError:
        try:
            body, canonical = _canonical(ev)
        except RecursionError:
            raise _Bad("event: nested too deeply to be stored") from None
    return Movement(event_id, station, site, scanner, seq, typ, item, qty, frm, to, occurred_at,
                    t, voids, _blake2b(canonical, digest_size=16).digest(), body)
