"""Keyboard layouts from the machine's own XKB data, compiled by libxkbcommon.

A keyboard-wedge scanner types each character as the keys of the layout set in the scanner
(its "keyboard country"). This module is the one source of truth for what those keys mean:
libxkbcommon (the keymap library of every Linux desktop, through its ``xkbcommon`` cffi
binding) compiles the layout from the xkb-data files, and its compose tables (from the X11
locale data) say what a dead key followed by another key types.

A layout is named as in XKB: ``"us"``, ``"be"``, or with a variant in parentheses, ``"ch(fr)"``,
``"de(nodeadkeys)"``. :func:`installed_layouts` lists what this machine's data knows (the
``evdev.lst`` of xkb-data); :func:`load_keymap` compiles one, and raises
:class:`~drivers.errors.UnknownLayoutError` with close names when there is no such layout.

>>> km = load_keymap("de")
>>> keysym_char(km.keysym(km.new_state(), 21))               # KEY_Y on a German keyboard
'z'
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from xkbcommon import xkb
except ImportError as exc:  # the [wedge] extra is not installed
    raise ImportError(
        "keyboard-wedge (evdev) scanners decode keys with libxkbcommon, whose Python binding "
        "is not installed: install scan-agent with its 'wedge' extra "
        "(pip install 'scan-agent[wedge]'; it builds from source, so first "
        "apt install gcc python3-dev libxkbcommon-dev xkb-data libx11-data)") from exc

from drivers.errors import UnknownLayoutError

__all__ = [
    "ALIASES",
    "EVDEV_OFFSET",
    "Keymap",
    "LayoutInfo",
    "compile_keymap",
    "compose_status",
    "compose_table",
    "installed_layouts",
    "is_dead_keysym",
    "keysym_char",
    "load_keymap",
    "new_compose_state",
    "normalize_layout",
    "spacing_char",
    "suggest_layouts",
    "xkb_root",
]

log = logging.getLogger(__name__)

#: XKB keycodes are the kernel's evdev key codes plus 8.
EVDEV_OFFSET = 8
#: Old names accepted in configs, and the XKB layout they mean.
ALIASES: dict[str, str] = {"uk": "gb"}

_KEY_RIGHTALT = 100
_ISO_LEVEL3_SHIFT = 0xFE03
_NAME = re.compile(r"^([a-z][a-z0-9_-]*)(?:\(([A-Za-z0-9_+-]+)\))?$")
_COMPOSE_LOCALE = "en_US.UTF-8"
_KEY_DOWN = xkb.KeyDirection.XKB_KEY_DOWN
_KEY_UP = xkb.KeyDirection.XKB_KEY_UP


def xkb_root() -> Path:
    """Where xkb-data lives (``$XKB_CONFIG_ROOT``, as libxkbcommon reads it)."""
    return Path(os.environ.get("XKB_CONFIG_ROOT") or "/usr/share/X11/xkb")


def _locale_root() -> Path:
    return Path(os.environ.get("XLOCALEDIR") or "/usr/share/X11/locale")


@dataclass(frozen=True, slots=True)
class LayoutInfo:
    """One layout or variant this machine's XKB data lists: ``name`` is what a config says."""

    name: str
    layout: str
    variant: str
    description: str


@functools.cache
def _installed(root: Path) -> tuple[LayoutInfo, ...]:
    path = root / "rules" / "evdev.lst"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ()
    out: list[LayoutInfo] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("!"):
            section = line[1:].strip()
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            continue
        name, desc = parts
        if section == "layout":
            out.append(LayoutInfo(name, name, "", desc.strip()))
        elif section == "variant" and ":" in desc:
            layout, _, vdesc = desc.partition(":")
            out.append(LayoutInfo(f"{layout.strip()}({name})", layout.strip(), name,
                                  vdesc.strip()))
    return tuple(out)


def installed_layouts() -> tuple[LayoutInfo, ...]:
    """Every layout and variant listed by this machine's xkb-data (``rules/evdev.lst``)."""
    return _installed(xkb_root())


def normalize_layout(name: str) -> str:
    """``name`` as XKB spells it: aliases resolved, spaces around the variant dropped.

    >>> normalize_layout("uk"), normalize_layout(" ch( fr ) ")
    ('gb', 'ch(fr)')
    """
    spec = re.sub(r"\s+", "", name)
    layout, paren, rest = spec.partition("(")
    return ALIASES.get(layout, layout) + paren + rest


def suggest_layouts(name: str, n: int = 5) -> list[str]:
    """Installed layout names close to ``name``, best first.

    Layouts whose description holds the name come first (``"german"`` finds ``de``), then
    names alike by difflib's ratio, those starting with the same letter and plain layouts
    (not variants) first among equals.

    >>> suggest_layouts("ch(fx)")[0]
    'ch(fr)'
    """
    spec = normalize_layout(name).lower()
    if not spec:
        return []
    infos = installed_layouts()
    layout = spec.partition("(")[0]
    known_layout = any(i.layout == layout for i in infos)

    def rank(info: LayoutInfo) -> tuple[float, bool, bool, str]:
        ratio = difflib.SequenceMatcher(None, spec, info.name).ratio()
        if "(" in spec and known_layout and info.layout == layout:
            ratio += 0.5  # a known layout with an unknown variant: its variants first
        return (-ratio, info.name[0] != spec[0], bool(info.variant), info.name)

    by_description = sorted((i for i in infos if spec in i.description.lower()),
                            key=lambda i: (bool(i.variant), i.description.lower() != spec,
                                           i.name))
    alike = [i for i in sorted(infos, key=rank) if -rank(i)[0] >= 0.5]
    seen: list[str] = []
    for info in [*by_description, *alike]:
        if info.name not in seen:
            seen.append(info.name)
    return seen[:n]


def _unknown(name: str, why: str) -> UnknownLayoutError:
    close = suggest_layouts(name)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownLayoutError(
        f"unknown keyboard layout {name!r} ({why}){hint} (`scan-agent find-layout` finds the "
        "scanner's)", close)


@functools.cache
def _context() -> Any:
    ctx = xkb.Context(no_environment_names=True)
    ctx.set_log_fn(lambda _ctx, _level, message: log.debug("xkbcommon: %s", message.rstrip()))
    return ctx


def keysym_char(keysym: int) -> str:
    """The printable text a keysym types; ``""`` for none (dead keys, F1, Escape, Return).

    >>> keysym_char(0x61), keysym_char(0xFE52), keysym_char(0xFF1B)
    ('a', '', '')
    """
    if not keysym:
        return ""
    text = xkb.keysym_to_string(keysym) or ""
    if not text or not text.isprintable():
        return ""
    return str(text)


def is_dead_keysym(keysym: int) -> bool:
    """Whether ``keysym`` is a dead key (``dead_circumflex``, ``dead_grave`` ...)."""
    return 0xFE50 <= keysym <= 0xFE93


class Keymap:
    """A compiled layout: key codes (evdev's) to keysyms, through an xkb keyboard state."""

    def __init__(self, name: str, layout: str, variant: str, keymap: Any) -> None:
        self.name = name
        self.layout = layout
        self.variant = variant
        self._keymap = keymap
        first = keymap.key_get_syms_by_level(_KEY_RIGHTALT + EVDEV_OFFSET, 0, 0)
        #: Whether the right Alt key is AltGr (ISO_Level3_Shift) rather than a second Alt.
        self.has_altgr = bool(first) and first[0] == _ISO_LEVEL3_SHIFT

    def __repr__(self) -> str:
        return f"Keymap({self.name!r})"

    @functools.cached_property
    def has_dead_keys(self) -> bool:
        """Whether some key types a dead key (then composing needs the compose table)."""
        km = self._keymap
        return any(is_dead_keysym(sym)
                   for code in km
                   for level in range(km.num_levels_for_key(code, 0))
                   for sym in km.key_get_syms_by_level(code, 0, level))

    def new_state(self, *, numlock: bool = False, capslock: bool = False) -> Any:
        """A fresh keyboard state (nothing held), with the lock keys as asked."""
        state = self._keymap.state_new()
        for on, code in ((numlock, 69), (capslock, 58)):  # KEY_NUMLOCK, KEY_CAPSLOCK
            if on:
                state.update_key(code + EVDEV_OFFSET, _KEY_DOWN)
                state.update_key(code + EVDEV_OFFSET, _KEY_UP)
        return state

    def press(self, state: Any, code: int, down: bool) -> bool:
        """Tell ``state`` that evdev key ``code`` went down or up; whether modifiers changed."""
        changed = state.update_key(code + EVDEV_OFFSET, _KEY_DOWN if down else _KEY_UP)
        return bool(changed)

    def keysym(self, state: Any, code: int) -> int:
        """The keysym evdev key ``code`` types in ``state`` (Caps Lock applied); 0 for none."""
        return int(state.key_get_one_sym(code + EVDEV_OFFSET))

    def level_keysym(self, code: int, level: int) -> int:
        """The keysym at shift level ``level`` (0 plain, 1 Shift) of key ``code``; 0 if none."""
        syms = self._keymap.key_get_syms_by_level(code + EVDEV_OFFSET, 0, level)
        return int(syms[0]) if len(syms) == 1 else 0

    def types_text(self, code: int) -> bool:
        """Whether any level of key ``code`` types a character (or a dead key)."""
        kc = code + EVDEV_OFFSET
        km = self._keymap
        try:
            levels = km.num_levels_for_key(kc, 0)
        except Exception:  # not a key of this keymap
            return False
        return any(keysym_char(s) or is_dead_keysym(s)
                   for level in range(levels) for s in km.key_get_syms_by_level(kc, 0, level))

    def mod_active(self, state: Any, name: str) -> bool:
        """Whether modifier ``name`` ("Lock", "Mod2" ...) is in effect in ``state``."""
        try:
            return bool(state.mod_name_is_active(name, xkb.StateComponent.XKB_STATE_MODS_EFFECTIVE))
        except xkb.XKBError:
            return False


def _compile(layout: str, variant: str) -> Any:
    try:
        return _context().keymap_new_from_names(rules="evdev", model="pc105", layout=layout,
                                                variant=variant or None)
    except xkb.XKBKeymapCreationFailure:
        return None


def compile_keymap(name: str) -> Keymap:
    """Compile layout ``name`` now (uncached: see :func:`load_keymap`)."""
    spec = normalize_layout(name)
    m = _NAME.match(spec)
    if not m:
        raise _unknown(name, 'write a layout, with an optional variant: "be", "ch(fr)"')
    layout, variant = m.group(1), m.group(2) or ""
    km = _compile(layout, variant)
    if km is None:
        what = f"no variant {variant!r} of layout {layout!r}" if variant and _compile(
            layout, "") is not None else f"no layout {layout!r}"
        raise _unknown(name, f"{what} in the XKB data at {xkb_root()}")
    return Keymap(spec, layout, variant, km)


@functools.lru_cache(maxsize=32)
def load_keymap(name: str) -> Keymap:
    """The compiled layout ``name`` (cached); raises ``UnknownLayoutError`` naming close ones.

    Keymaps are read-only once compiled: every decoder keeps its own keyboard state.
    """
    return compile_keymap(name)


@functools.cache
def compose_table() -> Any | None:
    """The compose table that says what dead keys type (X11's ``en_US.UTF-8/Compose``).

    Read from the system's X11 locale data, never from a user's ``~/.XCompose``, so a
    scanner decodes the same for every user. None when the file is not installed (Debian
    package ``libx11-data``).
    """
    path = _locale_root() / _COMPOSE_LOCALE / "Compose"
    try:
        # From a buffer: the binding's from-file path maps the file writable, which fails.
        return _context().compose_table_new_from_buffer(path.read_bytes(), _COMPOSE_LOCALE)
    except (OSError, xkb.XKBError) as exc:
        log.debug("no compose table at %s: %s", path, exc)
        return None


def new_compose_state() -> Any | None:
    """A fresh compose state, or None without a compose table."""
    table = compose_table()
    return None if table is None else table.compose_state_new()


def compose_status(state: Any) -> str:
    """``"nothing"``, ``"composing"``, ``"composed"`` or ``"cancelled"``."""
    status = state.get_status()
    return {
        xkb.ComposeStatus.XKB_COMPOSE_NOTHING: "nothing",
        xkb.ComposeStatus.XKB_COMPOSE_COMPOSING: "composing",
        xkb.ComposeStatus.XKB_COMPOSE_COMPOSED: "composed",
        xkb.ComposeStatus.XKB_COMPOSE_CANCELLED: "cancelled",
    }[status]


def spacing_char(dead_keysym: int) -> str:
    """What a dead key types on its own (followed by Space), from the compose table.

    >>> spacing_char(0xFE52)   # dead_circumflex
    '^'
    """
    state = new_compose_state()
    if state is None:
        return ""
    state.feed(dead_keysym)
    state.feed(0x20)
    return str(state.get_utf8()) if compose_status(state) == "composed" else ""
