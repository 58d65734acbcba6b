"""The scan grammar: what one barcode means, as a plain value (DESIGN section 4).

:func:`interpret` is pure: text in, a :data:`Token` out. It knows nothing of sessions, modes
or time; :mod:`agent.session` decides what a token does.

>>> interpret("LOC-A-01-02", GrammarConfig())
Location(code='A-01-02')
>>> interpret("4006381333931", GrammarConfig()).item
'04006381333931'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from agent.config import MODES, GrammarConfig, Mode

__all__ = [
    "GS",
    "Item",
    "Location",
    "ModeSwitch",
    "Operator",
    "Quantity",
    "Reference",
    "Rejected",
    "Reset",
    "Token",
    "Undo",
    "gtin_check_digit",
    "interpret",
    "printable",
    "quoted",
]

GS = "\x1d"
# AIM symbology identifier: "]" + code character + modifier (ISO/IEC 15424).
_AIM = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
_GS1_AIMS = ("]C1", "]e0", "]d2", "]Q3", "]J1")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_VALUE = re.compile(r"^[\x20-\x7e]{1,64}$")


@dataclass(frozen=True, slots=True)
class ModeSwitch:
    mode: Mode


@dataclass(frozen=True, slots=True)
class Location:
    code: str


@dataclass(frozen=True, slots=True)
class Quantity:
    qty: int


@dataclass(frozen=True, slots=True)
class Reference:
    text: str


@dataclass(frozen=True, slots=True)
class Operator:
    badge: str


@dataclass(frozen=True, slots=True)
class Undo:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    pass


@dataclass(frozen=True, slots=True)
class Item:
    """An item scan. ``item`` is 14 digits for GTINs and GS1 strings, else the site SKU."""

    item: str
    lot: str | None = None
    serial: str | None = None
    expiry: date | None = None
    count: int | None = None  # AI 30/37: units in this scan (multiplies the quantity)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str


Token = ModeSwitch | Location | Quantity | Reference | Operator | Undo | Reset | Item | Rejected


def printable(text: str, limit: int = 120) -> str:
    """``text`` made safe for a log line or terminal: control characters escaped, shortened."""
    out = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def quoted(text: str, limit: int = 120) -> str:
    r"""``text`` in quotes for a message: :func:`printable`, quoted once.

    ``repr()`` of an already escaped text doubled every backslash, so a GS1 string's GS
    showed as ``\\x1d`` in the log; here it shows as ``\x1d``.

    >>> print(quoted("]C10100614141999996" + GS + "10L"))
    ']C10100614141999996\x1d10L'
    """
    return f"'{printable(text, limit)}'"


def gtin_check_digit(body: str) -> int:
    """GS1 mod-10 check digit for the digits of ``body`` (without its check digit)."""
    digits = body[::-1].encode("ascii")  # weights 3, 1, 3, ... from the right
    if not digits.isdigit() and digits:
        raise ValueError(f"not a string of digits: {body!r}")
    odd, even = digits[::2], digits[1::2]  # summed as bytes: "0" is 48
    total = 3 * (sum(odd) - 48 * len(odd)) + sum(even) - 48 * len(even)
    return (10 - total % 10) % 10


def interpret(text: str, grammar: GrammarConfig) -> Token:
    """What ``text`` (one scan, AIM identifier and GS characters kept) means."""
    if not text:
        return Rejected("empty scan")
    if len(text) > grammar.max_length:
        return Rejected(f"over-long scan ({len(text)} characters, at most {grammar.max_length})")
    aim = ""
    body = text
    if _AIM.match(text):
        aim, body = text[:3], text[3:]
    if aim in _GS1_AIMS or GS in body:
        return _gs1(aim + body if aim in _GS1_AIMS else "]C1" + body, text)
    bad = _CONTROL.search(body)
    if bad:
        return Rejected(f"control character \\x{ord(bad.group()):02x} at position "
                        f"{bad.start() + 1 + len(aim)}")
    if not body:
        return Rejected("empty scan")
    return _command(body, grammar) or _item(body, grammar)


def _command(body: str, g: GrammarConfig) -> Token | None:
    if body == g.undo:
        return Undo()
    if body == g.reset:
        return Reset()
    if body.startswith(g.mode_prefix):
        name = body[len(g.mode_prefix):].lower()
        for m in MODES:
            if name == m:
                return ModeSwitch(m)
        return Rejected(f"unknown mode {quoted(body[len(g.mode_prefix):])} "
                        f"(known: {', '.join(m.upper() for m in MODES)})")
    if body.startswith(g.location_prefix):
        return _value(body[len(g.location_prefix):], "location", Location)
    if body.startswith(g.qty_prefix):
        raw = body[len(g.qty_prefix):]
        if not raw.isascii() or not raw.isdigit():
            return Rejected(f"quantity must be a whole number, got {quoted(raw)}")
        qty = int(raw)
        # QTY-0 is a count of an empty bin: only the session knows the mode, so it decides
        if qty > g.max_qty:
            return Rejected(f"quantity {qty} is over this site's maximum of {g.max_qty}")
        return Quantity(qty)
    if body.startswith(g.reference_prefix):
        return _value(body[len(g.reference_prefix):], "reference", Reference)
    if body.startswith(g.operator_prefix):
        return _value(body[len(g.operator_prefix):], "operator badge", Operator)
    return None


def _value(v: str, what: str, cls: type[Location] | type[Reference] | type[Operator]) -> Token:
    if not v:
        return Rejected(f"empty {what}")
    if not _VALUE.match(v):
        return Rejected(f"invalid {what} {quoted(v)} (printable ASCII, at most 64)")
    return cls(v)


def _item(body: str, g: GrammarConfig) -> Token:
    refused: Rejected | None = None
    if body.isascii() and body.isdigit():
        if len(body) in (8, 12, 13, 14):
            check = gtin_check_digit(body[:-1])
            if int(body[-1]) == check:
                return Item(body.rjust(14, "0"))
            # Not a GTIN; it may still be one of the site's own codes.
            refused = Rejected(f"invalid GTIN check digit in {body}: expected {check}, "
                                 f"got {body[-1]}")
        elif len(body) >= 16 and body[:2] in ("01", "02"):  # 16: AI 01/02 + GTIN-14 alone
            token = _gs1("]C1" + body, body)
            if not isinstance(token, Rejected):
                return token
            refused = token  # not GS1 data; it may still be one of the site's codes
    for pattern in _sku_patterns(g.sku_patterns):
        m = pattern.fullmatch(body)
        if m:
            return Item(m.groupdict().get("sku") or body)
    if refused is not None:
        return refused
    if body.startswith(("01", "02")) and len(body) > 16:
        return _gs1("]C1" + body, body)
    return Rejected(f"unknown barcode {quoted(body, 40)}")


@lru_cache(maxsize=32)
def _sku_patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


def _gs1(data: str, original: str) -> Token:
    """Interpret a GS1 element string (AIs 01/02 + 10, 21, 17, 30/37) through biip."""
    import biip  # imported on first GS1 scan only: it is the largest import of the agent

    bad = _CONTROL.search(data.replace(GS, ""))
    if bad:
        return Rejected(f"control character \\x{ord(bad.group()):02x} in GS1 data")
    try:
        result = biip.parse(data)
    except Exception as exc:  # biip raises ParseError and others for malformed input
        return Rejected(f"invalid GS1 data: {printable(str(exc), 80)}")
    message = result.gs1_message
    if message is None:
        err = result.gs1_message_error or "not a GS1 element string"
        return Rejected(f"invalid GS1 data: {printable(str(err), 80)}")
    gtin: str | None = None
    lot = serial = None
    expiry: date | None = None
    count: int | None = None
    for es in message.element_strings:
        ai = es.ai.ai
        if ai in ("01", "02"):
            if es.gtin_error:
                return Rejected(f"invalid GTIN in GS1 data: {printable(es.gtin_error, 80)}")
            if gtin is None or ai == "02":
                gtin = es.value.rjust(14, "0")
        elif ai == "10":
            lot = es.value
        elif ai == "21":
            serial = es.value
        elif ai == "17":
            expiry = es.date
        elif ai in ("30", "37"):
            try:
                count = int(es.value)
            except ValueError:
                return Rejected(f"invalid count in GS1 AI {ai}: {quoted(es.value)}")
            if count < 1:
                return Rejected(f"GS1 count (AI {ai}) must be at least 1")
    if gtin is None:
        return Rejected("GS1 data without a GTIN (AI 01 or 02)")
    return Item(gtin, lot=lot, serial=serial, expiry=expiry, count=count)
