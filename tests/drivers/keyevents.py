"""Build the key events a keyboard-wedge scanner sends, as real ``evdev.InputEvent`` values.

Each key press is what the kernel reports for a USB keyboard: ``MSC_SCAN``, the ``EV_KEY``
event and a ``SYN_REPORT``, with timestamps advancing by ``step_us``. ``to_bytes`` packs events
as kernel ``struct input_event`` records for evdev's own reader to parse back.

Which keys type a character is asked of libxkbcommon directly (its Python binding), never of
the decoder under test: for each character, :meth:`Typist.lookup` searches the layout's keys
for a key and a level (plain, Shift, AltGr, Shift+AltGr) whose keysym, in an xkb keyboard
state with those modifier keys held, is that character; failing that, a dead key that X11's
compose table turns into that character when followed by Space. That is how a scanner set to
that layout types it.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path
from typing import Any

from evdev import InputEvent, ecodes
from xkbcommon import xkb

E = ecodes
INPUT_EVENT = struct.Struct("@llHHi")  # struct timeval (64-bit longs here), type, code, value

CTRL, SHIFT, ALT, ALTGR = E.KEY_LEFTCTRL, E.KEY_LEFTSHIFT, E.KEY_LEFTALT, E.KEY_RIGHTALT
KP = {str(d): getattr(E, f"KEY_KP{d}") for d in range(10)}
PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))

# The typing block of a PC keyboard: where a scanner's characters are (no keypad).
_TYPING_KEYS = (*range(E.KEY_1, E.KEY_BACKSPACE), *range(E.KEY_Q, E.KEY_ENTER),
                *range(E.KEY_A, E.KEY_LEFTSHIFT), *range(E.KEY_BACKSLASH, E.KEY_RIGHTSHIFT),
                E.KEY_SPACE, E.KEY_102ND)
_DOWN, _UP = xkb.KeyDirection.XKB_KEY_DOWN, xkb.KeyDirection.XKB_KEY_UP
_LEVEL3 = 0xFE03  # ISO_Level3_Shift


def to_bytes(events: list[InputEvent]) -> bytes:
    return b"".join(INPUT_EVENT.pack(e.sec, e.usec, e.type, e.code, e.value) for e in events)


@cache
def _context() -> Any:
    ctx = xkb.Context(no_environment_names=True)
    ctx.set_log_fn(lambda *_: None)
    return ctx


@cache
def xkb_keymap(layout: str) -> Any:
    """libxkbcommon's keymap for ``"de"`` or ``"ch(fr)"`` (uk means gb)."""
    name, _, variant = layout.partition("(")
    name = {"uk": "gb"}.get(name, name)
    return _context().keymap_new_from_names(rules="evdev", model="pc105", layout=name,
                                            variant=variant.rstrip(")") or None)


@cache
def _compose_table() -> Any:
    data = Path("/usr/share/X11/locale/en_US.UTF-8/Compose").read_bytes()
    return _context().compose_table_new_from_buffer(data, "en_US.UTF-8")


def dead_alone(keysym: int) -> str:
    """What X11's compose table makes of dead key ``keysym`` followed by Space."""
    state = _compose_table().compose_state_new()
    state.feed(keysym)
    state.feed(0x20)
    return str(state.get_utf8()) if state.get_status() == 2 else ""


def _levels(altgr: int | None) -> list[tuple[int, ...]]:
    levels: list[tuple[int, ...]] = [(), (SHIFT,)]
    if altgr is not None:
        levels += [(altgr,), (SHIFT, altgr)]
    return levels


@cache
def _layout_table(layout: str) -> tuple[dict[str, tuple[int, tuple[int, ...]]],
                                        dict[str, tuple[int, tuple[int, ...]]], int | None]:
    """(plain chars, dead-key chars, AltGr key) of a layout: char -> (key, modifier keys)."""
    km = xkb_keymap(layout)
    altgr = next((code for code in (E.KEY_RIGHTALT, *_TYPING_KEYS)
                  if km.key_get_syms_by_level(code + 8, 0, 0) == [_LEVEL3]), None)
    plain: dict[str, tuple[int, tuple[int, ...]]] = {}
    dead: dict[str, tuple[int, tuple[int, ...]]] = {}
    for mods in _levels(altgr):
        for code in _TYPING_KEYS:
            state = km.state_new()
            for m in mods:
                state.update_key(m + 8, _DOWN)
            sym = state.key_get_one_sym(code + 8)
            text = xkb.keysym_to_string(sym) or ""
            if len(text) == 1 and text.isprintable():
                plain.setdefault(text, (code, mods))
            elif 0xFE50 <= sym <= 0xFE93 and (alone := dead_alone(sym)):
                dead.setdefault(alone, (code, mods))
    return plain, dead, altgr


def dead_only_chars(layout: str, chars: str = PRINTABLE_ASCII) -> str:
    """The characters of ``chars`` that ``layout`` types only as a dead key then Space."""
    plain, dead, _ = _layout_table(layout)
    return "".join(c for c in chars if c not in plain and c in dead)


class Typist:
    """Types text the way a scanner configured for ``layout`` does.

    ``combined`` puts modifiers in the same ``SYN_REPORT`` as the key they modify (Shift down
    with the key down, the key up with Shift up), as some scanners' USB reports do; otherwise
    every key change is a report of its own.
    """

    def __init__(self, layout: str = "us", t0_us: int = 1_700_000_000_000_000,
                 step_us: int = 800, *, combined: bool = False) -> None:
        self.layout = layout
        self.t = t0_us
        self.step_us = step_us
        self.combined = combined
        self.events: list[InputEvent] = []

    def _emit(self, type_: int, code: int, value: int) -> None:
        self.events.append(InputEvent(self.t // 1_000_000, self.t % 1_000_000, type_, code,
                                      value))

    def _change(self, code: int, value: int) -> None:
        self._emit(E.EV_MSC, E.MSC_SCAN, 0x70000 + code)
        self._emit(E.EV_KEY, code, value)

    def _report(self) -> None:
        self._emit(E.EV_SYN, E.SYN_REPORT, 0)
        self.t += self.step_us

    def key(self, code: int, value: int) -> Typist:
        self._change(code, value)
        self._report()
        return self

    def bare(self, code: int, value: int) -> Typist:
        """A key event with no SYN_REPORT after it (as in the tail of an overrun)."""
        self._emit(E.EV_KEY, code, value)
        return self

    def tap(self, code: int, *mods: int) -> Typist:
        if self.combined and mods:
            for m in mods:
                self._change(m, 1)
            self._change(code, 1)
            self._report()
            self._change(code, 0)
            for m in reversed(mods):
                self._change(m, 0)
            self._report()
            return self
        for m in mods:
            self.key(m, 1)
        self.key(code, 1).key(code, 0)
        for m in reversed(mods):
            self.key(m, 0)
        return self

    def syn(self, code: int) -> Typist:
        self._emit(E.EV_SYN, code, 0)
        return self

    def pause(self, ms: float) -> Typist:
        self.t += int(ms * 1000)
        return self

    def lookup(self, ch: str) -> tuple[int, tuple[int, ...], bool]:
        """(key, modifier keys, dead) typing ``ch`` on this layout, lowest level first."""
        plain, dead, _ = _layout_table(self.layout)
        if ch in plain:
            return (*plain[ch], False)
        if ch in dead:
            return (*dead[ch], True)
        raise KeyError(f"{ch!r} is not on the {self.layout} layout")

    def type(self, text: str) -> Typist:
        for ch in text:
            if ch == "\x1d":
                self.tap(E.KEY_RIGHTBRACE, CTRL)  # where US has ']', whatever the layout
                continue
            code, mods, dead = self.lookup(ch)
            self.tap(code, *mods)
            if dead:
                self.tap(E.KEY_SPACE)  # a dead key followed by Space types itself
        return self

    def alt_code(self, digits: str) -> Typist:
        self.key(ALT, 1)
        for d in digits:
            self.tap(KP[d])
        return self.key(ALT, 0)

    def enter(self) -> Typist:
        return self.tap(E.KEY_ENTER)

    def scan(self, text: str, suffix: int | None = E.KEY_ENTER) -> Typist:
        self.type(text)
        if suffix is not None:
            self.tap(suffix)
        return self

    def take(self) -> list[InputEvent]:
        events, self.events = self.events, []
        return events
