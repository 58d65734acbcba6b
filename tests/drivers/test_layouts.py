"""Keyboard layout tables: the characters a scanner set to a layout types with each key."""

from __future__ import annotations

import string

import pytest
from evdev import ecodes

from agent.config import parse_config
from agent.errors import ConfigError
from drivers.layouts import LAYOUTS, KeyChars, Layout, get_layout
from tests.drivers.keyevents import Typist

E = ecodes


def test_layouts_is_a_dict_of_layouts_keyed_by_name() -> None:
    """agent.config validates ``layout`` against these keys."""
    assert {"us", "uk", "de", "fr"} <= set(LAYOUTS)
    for name, layout in LAYOUTS.items():
        assert isinstance(layout, Layout) and layout.name == name


@pytest.mark.parametrize(
    ("layout", "key", "shift", "altgr", "expected"),
    [
        ("us", "KEY_Z", False, False, "z"), ("us", "KEY_2", True, False, "@"),
        ("us", "KEY_RIGHTBRACE", False, False, "]"), ("us", "KEY_APOSTROPHE", True, False, '"'),
        ("uk", "KEY_2", True, False, '"'), ("uk", "KEY_3", True, False, "£"),
        ("uk", "KEY_APOSTROPHE", True, False, "@"), ("uk", "KEY_BACKSLASH", False, False, "#"),
        ("uk", "KEY_102ND", False, False, "\\"),
        ("de", "KEY_Y", False, False, "z"), ("de", "KEY_Z", True, False, "Y"),
        ("de", "KEY_7", True, False, "/"), ("de", "KEY_MINUS", False, False, "ß"),
        ("de", "KEY_SLASH", False, False, "-"), ("de", "KEY_SLASH", True, False, "_"),
        ("de", "KEY_Q", False, True, "@"), ("de", "KEY_8", False, True, "["),
        ("de", "KEY_102ND", False, True, "|"), ("de", "KEY_E", False, True, "€"),
        ("fr", "KEY_1", False, False, "&"), ("fr", "KEY_1", True, False, "1"),
        ("fr", "KEY_0", True, False, "0"), ("fr", "KEY_2", False, False, "é"),
        ("fr", "KEY_Q", False, False, "a"), ("fr", "KEY_A", False, False, "q"),
        ("fr", "KEY_SEMICOLON", False, False, "m"), ("fr", "KEY_M", False, False, ","),
        ("fr", "KEY_6", False, False, "-"), ("fr", "KEY_8", False, False, "_"),
        ("fr", "KEY_0", False, True, "@"), ("fr", "KEY_MINUS", False, True, "]"),
    ],
)
def test_key_levels(layout: str, key: str, shift: bool, altgr: bool, expected: str) -> None:
    code = E.ecodes[key]
    assert LAYOUTS[layout].char(code, shift=shift, altgr=altgr) == expected


@pytest.mark.parametrize("layout", ["us", "uk", "de", "fr"])
def test_every_printable_ascii_character_can_be_typed(layout: str) -> None:
    """Code 128 barcodes carry any printable ASCII character: each must have a key."""
    typist = Typist(layout)
    for ch in string.ascii_letters + string.digits + string.punctuation + " ":
        typist.lookup(ch)  # raises KeyError when missing


def test_capslock_applies_to_letters_only() -> None:
    assert KeyChars("ü", "Ü").is_letter
    assert not KeyChars("ß", "?").is_letter
    assert not KeyChars("é", "2").is_letter
    assert not KeyChars("1", "!").is_letter
    de = LAYOUTS["de"]
    assert de.char(E.KEY_LEFTBRACE, shift=False, altgr=False, capslock=True) == "Ü"
    assert de.char(E.KEY_MINUS, shift=False, altgr=False, capslock=True) == "ß"


def test_dead_keys() -> None:
    assert LAYOUTS["de"].is_dead(E.KEY_GRAVE, shift=False, altgr=False)
    assert not LAYOUTS["de"].is_dead(E.KEY_GRAVE, shift=True, altgr=False)  # ° is not dead
    assert LAYOUTS["fr"].is_dead(E.KEY_LEFTBRACE, shift=True, altgr=False)
    assert not LAYOUTS["us"].dead


def test_unknown_key_types_nothing() -> None:
    assert E.KEY_F1 not in LAYOUTS["us"]
    assert LAYOUTS["us"].char(E.KEY_F1, shift=False, altgr=False) == ""


def test_get_layout_names_the_known_ones() -> None:
    assert get_layout("fr") is LAYOUTS["fr"]
    with pytest.raises(KeyError, match="unknown keyboard layout 'dvorak'; known: de, fr, uk, us"):
        get_layout("dvorak")


def _evdev_config(layout: str) -> dict[str, object]:
    return {"station": "dock-3", "site": "WH1",
            "scanners": [{"name": "wedge", "driver": "evdev", "device": "/dev/input/event3",
                          "layout": layout}]}


@pytest.mark.parametrize("layout", ["us", "uk", "de", "fr"])
def test_config_accepts_each_layout(layout: str) -> None:
    cfg = parse_config(_evdev_config(layout), "dock-3.toml")
    assert cfg.scanners[0].layout == layout  # type: ignore[attr-defined]


def test_config_rejects_an_unknown_layout_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_evdev_config("azerty"), "dock-3.toml")
    assert str(exc.value) == ("dock-3.toml: scanners[0].layout: unknown layout 'azerty'; "
                              "known: de, fr, uk, us")
