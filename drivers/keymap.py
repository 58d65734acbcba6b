"""The key-event decoder of keyboard-wedge scanners: ``evdev.InputEvent`` values in, scans out.

What each key types comes from the scanner's keyboard layout as libxkbcommon compiles it from
the machine's XKB data (:mod:`drivers.xkb`): any layout and variant, ``"us"``, ``"be"``,
``"ch(fr)"``, ``"de(nodeadkeys)"``. Pure otherwise: no device, no clock. Every time it needs
comes from the events' own timestamps, and the driver tells it when its quiet timer fired
(:meth:`KeyDecoder.expire`). That keeps it testable with events built by hand::

    >>> from evdev import InputEvent, ecodes as e
    >>> d = KeyDecoder("us")
    >>> evs = [InputEvent(0, i, e.EV_KEY, c, v)
    ...        for i, (c, v) in enumerate([(e.KEY_4, 1), (e.KEY_4, 0),
    ...                                    (e.KEY_2, 1), (e.KEY_2, 0), (e.KEY_ENTER, 1)])]
    >>> [s.text for ev in evs for s in d.feed(ev)]
    ['42']

What it understands, as a PC keyboard would:

- key down starts a character, key up only matters for modifiers, auto-repeat is ignored (a
  scanner never means it; a repeat only shows that a key-up was late);
- every key goes through an xkb keyboard state, so Shift, AltGr (level 3), Caps Lock and Num
  Lock act exactly as the layout says (Caps Lock where the layout lets it; the keypad with Num
  Lock on, which is assumed at start and which the scanner can toggle);
- dead keys compose as the layout's users see them, by X11's compose table
  (``en_US.UTF-8/Compose``): ``^`` then ``e`` is ``ê``, a dead key then Space types the dead
  key's own character (that is how a scanner types ``^`` or ``~`` on a layout that has them only
  as dead keys). A dead key followed by a key it does not combine with types both;
- Ctrl+key for control characters: Ctrl+] is GS (0x1D, the GS1 separator), Ctrl+^ RS, Ctrl+D
  EOT, Ctrl+letter 0x01-0x1A. The character is looked up on the scanner's layout, then at the
  same key position on US, which is what scanners send for "Ctrl+]" whatever the layout;
- Alt+numpad decimal codes: Alt held, keypad digits, Alt released. ``Alt+0029`` and ``Alt+029``
  are GS, ``Alt+065`` is ``A``; with a leading 0, 128-255 are Windows-1252 and above 255 a
  Unicode code point; without one, 128-255 are code page 437 (Windows' OEM Alt codes). On a
  layout whose right Alt key is AltGr, only the left one starts an Alt code;
- the terminator: Enter, Tab, or a quiet gap of ``timeout_ms`` between keys (in timeout mode
  Enter and Tab end a scan too, so a scanner with a suffix still works). In enter and tab modes a
  gap of ``stale_ms`` without the terminator ends the scan with an error instead of gluing it
  to the next one;
- ``SYN_DROPPED`` (the kernel's buffer overran): events up to the next ``SYN_REPORT`` are
  discarded, held modifiers are forgotten (the driver refreshes them with :meth:`resync`), and the
  scan in progress is flagged so it is never taken as a whole barcode nor glued to the next;
- keys that type nothing on the layout (F1, arrows, Alt+letter) are flagged, not dropped;
- at most ``max_length`` characters per scan; more is flagged as over-long.

Each :class:`DecodedScan` carries its text (best effort) and an ``error`` when it is not a
trustworthy read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from evdev import InputEvent, ecodes

from drivers.xkb import (
    Keymap,
    compose_status,
    is_dead_keysym,
    keysym_char,
    load_keymap,
    new_compose_state,
    spacing_char,
)

__all__ = [
    "DecodedScan",
    "KeyDecoder",
    "Terminator",
    "alt_code_char",
    "can_type_barcode",
    "decode_events",
]

Terminator = Literal["enter", "tab", "timeout"]

_KEY_UP, _KEY_DOWN, _KEY_REPEAT = 0, 1, 2

_SHIFT = frozenset({ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT})
_CTRL = frozenset({ecodes.KEY_LEFTCTRL, ecodes.KEY_RIGHTCTRL})
_META = frozenset({ecodes.KEY_LEFTMETA, ecodes.KEY_RIGHTMETA})
_ALTS = frozenset({ecodes.KEY_LEFTALT, ecodes.KEY_RIGHTALT})
_MODIFIERS = _SHIFT | _CTRL | _META | _ALTS
_LOCKS = frozenset({ecodes.KEY_CAPSLOCK, ecodes.KEY_NUMLOCK, ecodes.KEY_SCROLLLOCK})
_ENTER = frozenset({ecodes.KEY_ENTER, ecodes.KEY_KPENTER})

_KP_DIGITS: dict[int, str] = {
    ecodes.KEY_KP0: "0", ecodes.KEY_KP1: "1", ecodes.KEY_KP2: "2", ecodes.KEY_KP3: "3",
    ecodes.KEY_KP4: "4", ecodes.KEY_KP5: "5", ecodes.KEY_KP6: "6", ecodes.KEY_KP7: "7",
    ecodes.KEY_KP8: "8", ecodes.KEY_KP9: "9",
}


def _is_modifier_keysym(keysym: int) -> bool:
    # ISO_Lock .. ISO_Level5_Lock, ISO group shifts; Shift_L .. Hyper_R; Num_Lock, Scroll_Lock.
    return 0xFE01 <= keysym <= 0xFE0F or 0xFFE1 <= keysym <= 0xFFEE or keysym in (
        0xFF7F, 0xFF14, 0xFF7E)

_MAX_ERRORS = 5


@dataclass(frozen=True, slots=True)
class DecodedScan:
    """One scan decoded from key events.

    ``text`` is best effort; ``error`` is set when it is not a trustworthy read (dropped events,
    unknown keys, over-long, no terminator). ``started_us`` / ``ended_us`` are the timestamps
    (microseconds, on the events' clock) of its first key and of its end.

    ``loose_dead_keys`` counts the dead keys that typed their own character because the key
    after them was not one they combine with, or the scan ended. Not an error (a desktop types
    them too), but a scanner set to the decoding layout never sends one: it types a dead key's
    character as the dead key then Space. The layout finder rejects a layout that needs them.
    """

    text: str
    error: str | None = None
    started_us: int = 0
    ended_us: int = 0
    loose_dead_keys: int = 0


def can_type_barcode(key_codes: Collection[int]) -> bool:
    """Whether a device with these keys can type a barcode: Enter and digit keys.

    Tells a scanner's keyboard interface from its extra "consumer control" or "system
    control" interfaces, which share its USB ids but have no digits.
    """
    keys = set(key_codes)
    return bool(keys & {ecodes.KEY_ENTER, ecodes.KEY_KPENTER}) and bool(
        keys & {ecodes.KEY_1, ecodes.KEY_KP1})


def _key_name(code: int) -> str:
    name = ecodes.KEY.get(code)
    if isinstance(name, tuple):
        name = name[0]
    return str(name) if name else f"key {code}"


def alt_code_char(digits: str) -> str | None:
    """The character of an Alt+numpad code typed as ``digits``; None if it names none.

    >>> alt_code_char("0029"), alt_code_char("065"), alt_code_char("0228"), alt_code_char("132")
    ('\\x1d', 'A', 'ä', 'ä')
    """
    if not digits or not digits.isdigit():
        return None
    n = int(digits)
    if n < 128:
        return chr(n)  # control characters too: scanners mean GS by Alt+029 as by Alt+0029
    if digits.startswith("0"):
        if n < 256:
            try:
                return bytes([n]).decode("cp1252")
            except UnicodeDecodeError:
                return chr(n)
        if n > 0x10FFFF or 0xD800 <= n <= 0xDFFF:
            return None
        return chr(n)
    n %= 256
    return chr(n) if n < 128 else bytes([n]).decode("cp437")


class KeyDecoder:
    """Turns a stream of key events from one scanner into scans.

    Feed every event read from the device, in order, to :meth:`feed`; it returns the scans that
    ended. In timeout mode, and to end a scan whose terminator never came, the driver calls
    :meth:`expire` when it has seen no event for :attr:`quiet_ms`. ``layout`` is an XKB layout
    name (``"de"``, ``"ch(fr)"``) or a compiled :class:`~drivers.xkb.Keymap`; an unknown name
    raises :class:`~drivers.errors.UnknownLayoutError`.
    """

    # The scan in progress (reset by _start_scan_state).
    _in_scan: bool
    _started_us: int
    _text: list[str]
    _errors: list[str]
    _dead: list[int]  # dead keysyms waiting for the key they combine with
    _alt_digits: str
    _loose_dead: int  # dead keys that typed themselves, not followed by Space or a partner
    _tainted: bool
    _overflow: bool

    def __init__(
        self,
        layout: Keymap | str = "us",
        *,
        terminator: Terminator = "enter",
        timeout_ms: int = 50,
        stale_ms: int = 500,
        max_length: int = 512,
        numlock: bool = True,
        capslock: bool = False,
    ) -> None:
        if terminator not in ("enter", "tab", "timeout"):
            raise ValueError(f"terminator must be enter, tab or timeout, not {terminator!r}")
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self.keymap = load_keymap(layout) if isinstance(layout, str) else layout
        self._us = load_keymap("us")
        self.terminator: Terminator = terminator
        self.timeout_ms = timeout_ms
        self.stale_ms = stale_ms
        self.max_length = max_length
        # On layouts with AltGr the right Alt key is AltGr, not Alt.
        self._alt_keys = (frozenset({ecodes.KEY_LEFTALT}) if self.keymap.has_altgr
                          else _ALTS)
        self._state: Any = self.keymap.new_state(numlock=numlock, capslock=capslock)
        self._compose: Any = new_compose_state()
        self._held: set[int] = set()
        self._down: set[int] = set()  # every key down, as far as the events tell
        self._dropping = False
        self._resync_needed = False
        self._last_us: int | None = None
        self._start_scan_state()

    # -- public surface ---------------------------------------------------------------------

    @property
    def layout(self) -> str:
        """The layout's name as XKB spells it (``"gb"`` for ``"uk"``)."""
        return self.keymap.name

    @property
    def numlock(self) -> bool:
        """Whether Num Lock is on (the keypad types digits)."""
        return self.keymap.mod_active(self._state, "Mod2")

    @property
    def capslock(self) -> bool:
        """Whether Caps Lock is on."""
        return self.keymap.mod_active(self._state, "Lock")

    @property
    def pending(self) -> bool:
        """Whether a scan is in progress (keys seen since the last scan ended)."""
        return self._in_scan

    @property
    def quiet_ms(self) -> int:
        """How long without events ends the scan in progress (see :meth:`expire`)."""
        return self.timeout_ms if self.terminator == "timeout" else self.stale_ms

    @property
    def resync_needed(self) -> bool:
        """True after a ``SYN_DROPPED`` window closed: call :meth:`resync` with the held keys."""
        return self._resync_needed

    def feed(self, event: InputEvent) -> list[DecodedScan]:
        """Take one event; return the scans it ended (usually none, at most two)."""
        if event.type == ecodes.EV_SYN:
            self._on_syn(event)
            return []
        if self._dropping or event.type != ecodes.EV_KEY:
            return []
        ts = event.sec * 1_000_000 + event.usec
        out: list[DecodedScan] = []
        code, value = event.code, event.value
        if value == _KEY_DOWN and self._in_scan and self._gap_exceeded(ts):
            self._emit(out, self._finish(self._last_us or ts, self._no_terminator_error()))
        self._last_us = ts
        if value == _KEY_REPEAT:
            return out
        # As the kernel's input core does: a key goes down only if it is up, and up only if
        # it is down (a device never sends otherwise; a broken stream must not leave the
        # keyboard state with a lock key pressed twice or a modifier released never pressed).
        if value == _KEY_DOWN:
            if code in self._down:
                return out
            self._down.add(code)
        elif value == _KEY_UP:
            if code not in self._down:
                return out
            self._down.discard(code)
        else:
            return out
        if value == _KEY_DOWN and not self._in_scan:
            self._in_scan, self._started_us = True, ts
        if value == _KEY_DOWN:
            # The keysym is read before the state learns of this key, as a keyboard does.
            if code in _MODIFIERS:
                self._held.add(code)
            elif code not in _LOCKS:
                self._on_key_down(code, ts, out)
            self.keymap.press(self._state, code, True)
        elif value == _KEY_UP:
            self.keymap.press(self._state, code, False)
            if code in _MODIFIERS:
                self._held.discard(code)
                if (code in self._alt_keys and not (self._held & self._alt_keys)
                        and self._alt_digits):
                    self._finish_alt_code()
        return out

    def feed_many(self, events: Iterable[InputEvent]) -> list[DecodedScan]:
        """:meth:`feed` for each event; all the scans they ended, in order."""
        out: list[DecodedScan] = []
        for event in events:
            out.extend(self.feed(event))
        return out

    def expire(self) -> DecodedScan | None:
        """End the scan in progress because no event came for :attr:`quiet_ms`.

        In timeout mode that is the normal end of a scan; in enter and tab modes the scan is
        flagged as having no terminator. Returns None when nothing was in progress.
        """
        if not self._in_scan:
            return None
        return self._finish(self._last_us or 0, self._no_terminator_error())

    def reset(self, reason: str) -> DecodedScan | None:
        """Forget all key state (the device went away); the scan in progress, flagged, if any."""
        scan = self._finish(self._last_us or 0, reason) if self._in_scan else None
        self._forget_held()
        self._dropping = self._resync_needed = False
        self._last_us = None
        return scan

    def resync(self, held_keys: Iterable[int]) -> None:
        """Set the held keys from the device's current key state (``EVIOCGKEY``).

        Modifiers held take effect again; lock keys held are not pressed again (their press,
        if it was lost, cannot be told from one that was not).
        """
        self._forget_held()
        for code in held_keys:
            self._down.add(code)
            if code in _LOCKS:
                continue
            if code in _MODIFIERS or _is_modifier_keysym(self.keymap.level_keysym(code, 0)):
                self.keymap.press(self._state, code, True)
                if code in _MODIFIERS:
                    self._held.add(code)
        self._resync_needed = False

    @property
    def keys_down(self) -> frozenset[int]:
        """The keys down, as the events fed so far tell (or :meth:`resync` said)."""
        return frozenset(self._down)

    # -- internals --------------------------------------------------------------------------

    def _forget_held(self) -> None:
        """Release every held key in the xkb state, keeping Caps Lock and Num Lock."""
        self._state = self.keymap.new_state(numlock=self.numlock, capslock=self.capslock)
        self._held.clear()
        self._down.clear()

    def _start_scan_state(self) -> None:
        self._in_scan = False
        self._started_us = 0
        self._text = []
        self._errors = []
        self._dead = []
        self._alt_digits = ""
        self._loose_dead = 0
        self._tainted = False
        self._overflow = False
        if self._compose is not None:
            self._compose.reset()

    def _no_terminator_error(self) -> str | None:
        if self.terminator == "timeout":
            return None
        return (f"no {self.terminator.capitalize()} after the last key within "
                f"{self.stale_ms} ms (check the scanner's suffix setting)")

    def _gap_exceeded(self, ts: int) -> bool:
        return self._last_us is not None and ts - self._last_us > self.quiet_ms * 1000

    def _on_syn(self, event: InputEvent) -> None:
        if event.code == ecodes.SYN_DROPPED:
            # The kernel lost events: whatever scan they belonged to cannot be trusted, and
            # the key-ups of held modifiers may be among them.
            self._dropping = True
            if not self._in_scan:
                self._in_scan = True
                self._started_us = event.sec * 1_000_000 + event.usec
            self._tainted = True
            self._forget_held()
            self._flush_dead()
            self._alt_digits = ""
        elif event.code == ecodes.SYN_REPORT and self._dropping:
            self._dropping = False
            self._resync_needed = True

    def _finish_alt_code(self) -> None:
        digits, self._alt_digits = self._alt_digits, ""
        ch = alt_code_char(digits)
        if ch is None:
            self._error(f"Alt+{digits} is not a character code")
        else:
            self._type_plain(ch)

    def _levels(self) -> str:
        names = [n for n, on in (("Shift", bool(self._held & _SHIFT)),
                                 ("AltGr", self.keymap.mod_active(self._state, "Mod5")))
                 if on]
        return "".join("+" + n for n in names)

    def _on_key_down(self, code: int, ts: int, out: list[DecodedScan]) -> None:
        held = self._held
        alt = bool(held & self._alt_keys)
        ctrl = bool(held & _CTRL)
        if code in _ENTER:
            if self.terminator in ("enter", "timeout"):
                self._emit(out, self._finish(ts, None))
            else:
                self._type_plain("\r")
            return
        if code == ecodes.KEY_TAB:
            if self.terminator in ("tab", "timeout"):
                self._emit(out, self._finish(ts, None))
            else:
                self._type_plain("\t")
            return
        if alt and not ctrl:
            if code in _KP_DIGITS:
                self._alt_digits += _KP_DIGITS[code]
            else:
                self._error(f"Alt+{_key_name(code)} types no character")
            return
        keysym = self.keymap.keysym(self._state, code)
        if _is_modifier_keysym(keysym):
            return  # a key this layout makes a modifier (AltGr, a level-5 shift...)
        if ctrl:
            ctl = self._control_char(code, keysym)
            if ctl is None:
                self._error(f"Ctrl+{_key_name(code)} types no control character")
            else:
                self._type_plain(ctl)
            return
        if held & _META:
            self._error(f"Meta+{_key_name(code)} types no character")
            return
        if is_dead_keysym(keysym):
            self._dead_key(code, keysym)
            return
        ch = keysym_char(keysym)
        if not ch:
            if code in _KP_DIGITS or code == ecodes.KEY_KPDOT:
                self._error(f"keypad key {_key_name(code)} with NumLock off types no character")
            elif self.keymap.types_text(code):
                self._error(f"{_key_name(code)}{self._levels()} types no character "
                            f"on the {self.layout!r} layout")
            else:
                self._error(f"unknown key {_key_name(code)} (no character on the "
                            f"{self.layout!r} layout)")
            return
        self._type_composed(keysym, ch)

    def _control_char(self, code: int, keysym: int) -> str | None:
        level = 1 if self._held & _SHIFT else 0
        for ch in (keysym_char(keysym), keysym_char(self._us.level_keysym(code, level))):
            c = ch.upper() if ch.isascii() else ch
            if len(c) == 1 and "@" <= c <= "_":
                return chr(ord(c) - 0x40)
        return None

    def _dead_key(self, code: int, keysym: int) -> None:
        compose = self._compose
        if compose is None:
            self._error(f"{_key_name(code)}{self._levels()} is a dead key, and composing it "
                        "needs the X11 compose tables (Debian package libx11-data)")
            return
        compose.feed(keysym)
        status = compose_status(compose)
        if status == "composing":
            self._dead.append(keysym)
        elif status == "composed":
            self._dead.clear()
            self._type_plain_raw(str(compose.get_utf8()))
        else:  # the dead keys before it do not combine with it: type them, start again
            self._flush_dead()
            compose.feed(keysym)
            if compose_status(compose) == "composing":
                self._dead.append(keysym)
            elif alone := spacing_char(keysym):
                self._loose_dead += 1
                self._type_plain_raw(alone)
            else:
                self._error(f"{_key_name(code)}{self._levels()}: a dead key that types nothing "
                            f"on the {self.layout!r} layout")

    def _type_composed(self, keysym: int, ch: str) -> None:
        """Type the character of ``keysym``, combined with pending dead keys if they combine."""
        compose = self._compose
        if compose is None or not self._dead:
            if compose is not None:
                compose.reset()
            self._type_plain_raw(ch)
            return
        compose.feed(keysym)
        if compose_status(compose) == "composed" and (text := str(compose.get_utf8())):
            self._dead.clear()
            compose.reset()
            self._type_plain_raw(text)
            return
        self._flush_dead()
        self._type_plain_raw(ch)

    def _flush_dead(self) -> None:
        """Type the pending dead keys as themselves (as a dead key then Space would)."""
        dead, self._dead = self._dead, []
        self._loose_dead += len(dead)
        if self._compose is not None:
            self._compose.reset()
        for keysym in dead:
            self._type_plain_raw(spacing_char(keysym))

    def _type_plain(self, ch: str) -> None:
        """Type a character that no dead key combines with (control characters, Alt codes)."""
        self._flush_dead()
        self._type_plain_raw(ch)

    def _type_plain_raw(self, text: str) -> None:
        for c in text:
            if len(self._text) >= self.max_length:
                self._overflow = True
            else:
                self._text.append(c)

    def _error(self, message: str) -> None:
        if message not in self._errors:
            self._errors.append(message)

    def _emit(self, out: list[DecodedScan], scan: DecodedScan | None) -> None:
        if scan is not None:
            out.append(scan)

    def _finish(self, ended_us: int, error: str | None) -> DecodedScan | None:
        self._flush_dead()
        if self._alt_digits:
            self._error(f"Alt+{self._alt_digits} was not completed (Alt still held)")
        problems: list[str] = []
        if self._tainted:
            problems.append("key events were dropped (SYN_DROPPED): characters may be missing")
        problems.extend(self._errors)
        if self._overflow:
            problems.append(f"over-long input: more than {self.max_length} characters")
        text = "".join(self._text)
        started, loose = self._started_us, self._loose_dead
        self._start_scan_state()
        if not text and not problems:
            return None  # a lone Enter, lock keys or modifiers only: nothing was scanned
        errors = ([error] if error else []) + problems
        if len(errors) > _MAX_ERRORS:
            errors[_MAX_ERRORS:] = [f"and {len(errors) - _MAX_ERRORS} more"]
        return DecodedScan(text, "; ".join(errors) or None, started, ended_us, loose)


def decode_events(
    events: Iterable[InputEvent],
    layout: Keymap | str = "us",
    *,
    terminator: Terminator = "enter",
    timeout_ms: int = 50,
    max_length: int = 512,
) -> list[DecodedScan]:
    """Decode a finished recording of events; a trailing partial scan is expired too.

    ``layout`` is an XKB layout name such as ``"be"`` or ``"ch(fr)"``; an unknown one raises
    :class:`~drivers.errors.UnknownLayoutError` (a ``LookupError``) naming close ones.
    """
    decoder = KeyDecoder(layout, terminator=terminator, timeout_ms=timeout_ms,
                         max_length=max_length)
    scans = decoder.feed_many(events)
    last = decoder.expire()
    if last is not None:
        scans.append(last)
    return scans
