"""Build the key events a keyboard-wedge scanner sends, as real ``evdev.InputEvent`` values.

Each key press is what the kernel reports for a USB keyboard: ``MSC_SCAN``, the ``EV_KEY``
event and a ``SYN_REPORT``, with timestamps advancing by ``step_us``. ``to_bytes`` packs events
as kernel ``struct input_event`` records for evdev's own reader to parse back.
"""

from __future__ import annotations

import struct

from evdev import InputEvent, ecodes

from drivers.layouts import LAYOUTS, Layout

E = ecodes
INPUT_EVENT = struct.Struct("@llHHi")  # struct timeval (64-bit longs here), type, code, value

CTRL, SHIFT, ALT, ALTGR = E.KEY_LEFTCTRL, E.KEY_LEFTSHIFT, E.KEY_LEFTALT, E.KEY_RIGHTALT
KP = {str(d): getattr(E, f"KEY_KP{d}") for d in range(10)}


def to_bytes(events: list[InputEvent]) -> bytes:
    return b"".join(INPUT_EVENT.pack(e.sec, e.usec, e.type, e.code, e.value) for e in events)


class Typist:
    """Types text the way a scanner configured for ``layout`` does."""

    def __init__(self, layout: str | Layout = "us", t0_us: int = 1_700_000_000_000_000,
                 step_us: int = 800) -> None:
        self.layout = LAYOUTS[layout] if isinstance(layout, str) else layout
        self.t = t0_us
        self.step_us = step_us
        self.events: list[InputEvent] = []

    def _emit(self, type_: int, code: int, value: int) -> None:
        self.events.append(InputEvent(self.t // 1_000_000, self.t % 1_000_000, type_, code,
                                      value))

    def key(self, code: int, value: int) -> Typist:
        self._emit(E.EV_MSC, E.MSC_SCAN, 0x70000 + code)
        self._emit(E.EV_KEY, code, value)
        self._emit(E.EV_SYN, E.SYN_REPORT, 0)
        self.t += self.step_us
        return self

    def bare(self, code: int, value: int) -> Typist:
        """A key event with no SYN_REPORT after it (as in the tail of an overrun)."""
        self._emit(E.EV_KEY, code, value)
        return self

    def tap(self, code: int, *mods: int) -> Typist:
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
        """(code, modifiers, dead) typing ``ch`` on this layout, plain level first."""
        mods_by_level = ((), (SHIFT,), (ALTGR,), (SHIFT, ALTGR))
        for level in range(4):
            for code, chars in sorted(self.layout.keys.items()):
                if chars[level] == ch:
                    return code, mods_by_level[level], (code, level) in self.layout.dead
        raise KeyError(f"{ch!r} is not on the {self.layout.name} layout")

    def type(self, text: str) -> Typist:
        for ch in text:
            if ch == "\x1d":
                self.tap(E.KEY_RIGHTBRACE, CTRL)
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
