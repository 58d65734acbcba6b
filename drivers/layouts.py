"""Keyboard layouts of keyboard-wedge scanners, as tables from evdev key codes to characters.

A keyboard-wedge scanner "types" a barcode for a host keyboard layout configured in the scanner
(``layout`` in the dock config). The kernel reports physical key positions, so the same ``Z``
arrives as ``KEY_Z`` from a scanner set to US and as ``KEY_Y`` from one set to German. Decoding
with the scanner's layout, not the host's, gives back the characters that were printed.

Each :class:`Layout` maps a key code to the characters of its four levels (plain, Shift, AltGr,
Shift+AltGr). Dead keys (``^`` on German and French keyboards) are listed per level, so the
decoder can combine them with the next key as a keyboard would. Keypad keys, Enter, Tab and the
modifiers are handled by :mod:`drivers.keymap` and are the same on every layout, apart from
:attr:`Layout.keypad_decimal`.

>>> from evdev import ecodes
>>> LAYOUTS["de"].char(ecodes.KEY_Y, shift=False, altgr=False)
'z'
>>> LAYOUTS["fr"].char(ecodes.KEY_1, shift=True, altgr=False)
'1'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from evdev import ecodes

__all__ = ["LAYOUTS", "KeyChars", "Layout", "get_layout"]


class KeyChars(NamedTuple):
    """The characters one key types on its levels; ``""`` where a level types nothing."""

    plain: str
    shift: str = ""
    altgr: str = ""
    shift_altgr: str = ""

    @property
    def is_letter(self) -> bool:
        """True for keys CapsLock acts on: a letter whose Shift level is its capital."""
        return self.plain.isalpha() and self.shift == self.plain.upper() != self.plain


@dataclass(frozen=True, slots=True)
class Layout:
    """One keyboard layout: key code -> :class:`KeyChars`, plus its dead keys.

    ``dead`` holds ``(code, level)`` pairs whose character is a dead key (level 0 plain,
    1 Shift, 2 AltGr, 3 Shift+AltGr). ``has_altgr`` says whether the right Alt key is AltGr
    (on US it is a second Alt key, usable for Alt+numpad codes).
    """

    name: str
    description: str
    keys: Mapping[int, KeyChars]
    dead: frozenset[tuple[int, int]] = frozenset()
    has_altgr: bool = False
    keypad_decimal: str = "."

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def __contains__(self, code: object) -> bool:
        return code in self.keys

    def chars(self, code: int) -> KeyChars | None:
        """The characters of key ``code``, or None when the layout has no such key."""
        return self.keys.get(code)

    def char(self, code: int, *, shift: bool, altgr: bool, capslock: bool = False) -> str:
        """The character typed by ``code`` with these modifiers; ``""`` when it types nothing.

        CapsLock swaps the Shift level of letters only, as on a PC keyboard.
        """
        kc = self.keys.get(code)
        if kc is None:
            return ""
        if capslock and kc.is_letter:
            shift = not shift
        return kc[_level(shift, altgr)]

    def is_dead(self, code: int, *, shift: bool, altgr: bool) -> bool:
        """Whether this key and level is a dead key (it combines with the next key)."""
        return (code, _level(shift, altgr)) in self.dead


def _level(shift: bool, altgr: bool) -> int:
    return (2 if altgr else 0) + (1 if shift else 0)


# Physical key rows, left to right, as the kernel numbers them. Row strings below give the
# characters on these keys; "\0" marks a key level that types nothing.
_ROW_DIGITS = ("GRAVE", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "MINUS", "EQUAL")
_ROW_TOP = ("Q", "W", "E", "R", "T", "Y", "U", "I", "O", "P", "LEFTBRACE", "RIGHTBRACE")
_ROW_HOME = ("A", "S", "D", "F", "G", "H", "J", "K", "L", "SEMICOLON", "APOSTROPHE", "BACKSLASH")
_ROW_BOTTOM = ("102ND", "Z", "X", "C", "V", "B", "N", "M", "COMMA", "DOT", "SLASH")


def _code(key: str) -> int:
    return int(ecodes.ecodes["KEY_" + key])


def _build(
    rows: Mapping[tuple[str, ...], tuple[str, str]],
    altgr: Mapping[str, str] | None = None,
    shift_altgr: Mapping[str, str] | None = None,
) -> dict[int, KeyChars]:
    table: dict[int, KeyChars] = {_code("SPACE"): KeyChars(" ", " ", " ", " ")}
    for names, (plain, shifted) in rows.items():
        if not (len(names) == len(plain) == len(shifted)):
            raise ValueError(f"row {names[0]}..: {len(names)} keys, {plain!r} / {shifted!r}")
        for name, p, s in zip(names, plain, shifted, strict=True):
            table[_code(name)] = KeyChars(p.strip("\0"), s.strip("\0"))
    for name, ch in (altgr or {}).items():
        table[_code(name)] = table[_code(name)]._replace(altgr=ch)
    for name, ch in (shift_altgr or {}).items():
        table[_code(name)] = table[_code(name)]._replace(shift_altgr=ch)
    return table


def _dead(*entries: tuple[str, int]) -> frozenset[tuple[int, int]]:
    return frozenset((_code(name), level) for name, level in entries)


US = Layout(
    name="us",
    description="English (US), QWERTY",
    keys=_build({
        _ROW_DIGITS: ("`1234567890-=", "~!@#$%^&*()_+"),
        _ROW_TOP: ("qwertyuiop[]", "QWERTYUIOP{}"),
        _ROW_HOME: ("asdfghjkl;'\\", 'ASDFGHJKL:"|'),
        _ROW_BOTTOM: ("<zxcvbnm,./", ">ZXCVBNM<>?"),
    }),
)

UK = Layout(
    name="uk",
    description="English (UK), QWERTY",
    keys=_build(
        {
            _ROW_DIGITS: ("`1234567890-=", "¬!\"£$%^&*()_+"),
            _ROW_TOP: ("qwertyuiop[]", "QWERTYUIOP{}"),
            _ROW_HOME: ("asdfghjkl;'#", "ASDFGHJKL:@~"),
            _ROW_BOTTOM: ("\\zxcvbnm,./", "|ZXCVBNM<>?"),
        },
        altgr={"GRAVE": "¦", "4": "€"},
    ),
    has_altgr=True,
)

DE = Layout(
    name="de",
    description="German, QWERTZ (dead ^ ´ `)",
    keys=_build(
        {
            _ROW_DIGITS: ("^1234567890ß´", "°!\"§$%&/()=?`"),
            _ROW_TOP: ("qwertzuiopü+", "QWERTZUIOPÜ*"),
            _ROW_HOME: ("asdfghjklöä#", "ASDFGHJKLÖÄ'"),
            _ROW_BOTTOM: ("<yxcvbnm,.-", ">YXCVBNM;:_"),
        },
        altgr={"2": "²", "3": "³", "7": "{", "8": "[", "9": "]", "0": "}", "MINUS": "\\",
               "Q": "@", "E": "€", "RIGHTBRACE": "~", "102ND": "|", "M": "µ"},
    ),
    dead=_dead(("GRAVE", 0), ("EQUAL", 0), ("EQUAL", 1)),
    has_altgr=True,
    keypad_decimal=",",
)

FR = Layout(
    name="fr",
    description="French, AZERTY (digits on Shift; dead ^ ¨)",
    keys=_build(
        {
            _ROW_DIGITS: ("²&é\"'(-è_çà)=", "\0" "1234567890°+"),
            _ROW_TOP: ("azertyuiop^$", "AZERTYUIOP¨£"),
            _ROW_HOME: ("qsdfghjklmù*", "QSDFGHJKLM%µ"),
            _ROW_BOTTOM: ("<wxcvbn,;:!", ">WXCVBN?./§"),
        },
        altgr={"2": "~", "3": "#", "4": "{", "5": "[", "6": "|", "7": "`", "8": "\\",
               "9": "^", "0": "@", "MINUS": "]", "EQUAL": "}", "E": "€", "RIGHTBRACE": "¤"},
    ),
    dead=_dead(("LEFTBRACE", 0), ("LEFTBRACE", 1)),
    has_altgr=True,
)

#: Layouts by the name used in the dock config's ``layout`` key.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (US, UK, DE, FR)}


def get_layout(name: str) -> Layout:
    """The layout called ``name``; raises ``KeyError`` naming the known ones."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown keyboard layout {name!r}; known: "
                       + ", ".join(sorted(LAYOUTS))) from None
