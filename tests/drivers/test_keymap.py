"""The key-event decoder, fed real ``evdev.InputEvent`` values built by hand.

What a layout types is asked of libxkbcommon directly (:mod:`tests.drivers.keyevents`), not of
the decoder: the keys a scanner presses for each character are found in the layout's xkb
keymap, and the decoder must give the characters back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from evdev import InputEvent, ecodes
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import UnknownLayoutError
from drivers.keymap import DecodedScan, KeyDecoder, alt_code_char, decode_events
from tests.drivers.keyevents import (
    ALT,
    ALTGR,
    CTRL,
    KP,
    PRINTABLE_ASCII,
    SHIFT,
    Typist,
    dead_only_chars,
    xkb_keymap,
)

E = ecodes
GS = "\x1d"
#: The layouts a European warehouse needs first; every test below runs on each.
EUROPE = ["us", "gb", "de", "fr", "be", "es", "it", "ch", "se", "no", "dk", "fi", "pt", "pl"]
VARIANTS = ["ch(fr)", "de(nodeadkeys)", "fr(azerty)", "us(intl)", "gb(extd)", "be(oss)"]


def texts(scans: list[DecodedScan]) -> list[str]:
    return [s.text for s in scans]


def decode(events: list[InputEvent], layout: str = "us", **kw: object) -> list[DecodedScan]:
    decoder = KeyDecoder(layout, **kw)  # type: ignore[arg-type]
    return decoder.feed_many(events)


# -- layouts ----------------------------------------------------------------------------------


def test_us_text_with_shift_and_enter() -> None:
    scans = decode(Typist("us").scan("LOC-A_01/02 #7").take())
    assert scans == [DecodedScan("LOC-A_01/02 #7", None, scans[0].started_us,
                                 scans[0].ended_us)]


def test_de_scanner_keys_decode_to_german_characters() -> None:
    """A scanner set to German sends KEY_Y for 'z' and Shift+7 for '/'."""
    t = Typist("de")
    t.tap(E.KEY_Y).tap(E.KEY_7, SHIFT).tap(E.KEY_Q, ALTGR).tap(E.KEY_SEMICOLON)
    t.tap(E.KEY_SLASH).tap(E.KEY_2, SHIFT).tap(E.KEY_RIGHTBRACE).enter()
    assert texts(decode(t.take(), "de")) == ['z/@ö-"+']


def test_de_dead_keys_compose_or_type_themselves() -> None:
    t = Typist("de")
    t.tap(E.KEY_GRAVE).tap(E.KEY_SPACE)            # ^ then Space: '^'
    t.tap(E.KEY_GRAVE).tap(E.KEY_E)                # ^ then e: 'ê'
    t.tap(E.KEY_EQUAL, SHIFT).tap(E.KEY_A)         # ` then a: 'à'
    t.tap(E.KEY_GRAVE).tap(E.KEY_Q)                # ^ then q: no composition, both
    t.tap(E.KEY_GRAVE).enter()                     # a pending dead key at the end
    assert texts(decode(t.take(), "de")) == ["^êà^q^"]


def test_dead_keys_that_type_themselves_are_counted() -> None:
    """A dead key then Space, or then a key it combines with, is how a layout types; a dead
    key then another key, or the end of the scan, is not what a scanner set to it sends."""
    t = Typist("de")
    t.tap(E.KEY_GRAVE).tap(E.KEY_SPACE).tap(E.KEY_GRAVE).tap(E.KEY_E).enter()  # '^', 'ê'
    t.tap(E.KEY_GRAVE).tap(E.KEY_Q).enter()                                     # '^q'
    t.tap(E.KEY_A).tap(E.KEY_GRAVE).enter()                                     # 'a^'
    t.tap(E.KEY_GRAVE).tap(E.KEY_EQUAL, SHIFT).tap(E.KEY_GRAVE).tap(E.KEY_SPACE).enter()
    assert [(s.text, s.loose_dead_keys) for s in decode(t.take(), "de")] == [
        ("^ê", 0), ("^q", 1), ("a^", 1), ("^`^", 2)]


def test_fr_digits_need_shift() -> None:
    """AZERTY: the digit row types &é"'(-è_çà unshifted; a scanner sends Shift for digits."""
    t = Typist("fr")
    for d in "4006381333931":
        t.tap(getattr(E, f"KEY_{d}"), SHIFT)
    t.enter()
    t.tap(E.KEY_1).tap(E.KEY_2).tap(E.KEY_4).tap(E.KEY_Q).tap(E.KEY_W).tap(E.KEY_M).enter()
    assert texts(decode(t.take(), "fr")) == ["4006381333931", "&é'az,"]


def test_fr_altgr_and_dead_circumflex() -> None:
    t = Typist("fr")
    t.tap(E.KEY_0, ALTGR).tap(E.KEY_3, ALTGR).tap(E.KEY_LEFTBRACE).tap(E.KEY_E)
    t.tap(E.KEY_LEFTBRACE, SHIFT).tap(E.KEY_I).enter()
    assert texts(decode(t.take(), "fr")) == ["@#êï"]


def test_layout_matters_us_decoder_garbles_a_french_scanner() -> None:
    """The bug this module exists for: decoding with the host's layout, not the scanner's."""
    events = Typist("fr").scan("LOC-A1").take()
    assert texts(decode(events, "fr")) == ["LOC-A1"]
    assert texts(decode(events, "us")) != ["LOC-A1"]


@pytest.mark.parametrize("combined", [False, True], ids=["separate-reports", "combined-reports"])
@pytest.mark.parametrize("layout", EUROPE + VARIANTS)
def test_every_printable_ascii_character_decodes_on_the_layout(layout: str,
                                                               combined: bool) -> None:
    """The keys come from libxkbcommon's keymap (not from the decoder): every printable ASCII
    character, Shift and AltGr pressed and released around its key, in reports of their own or
    in the key's own report, and dead-key-only characters as the dead key then Space."""
    t = Typist(layout, combined=combined)
    t.scan(PRINTABLE_ASCII).scan(PRINTABLE_ASCII[::-1])
    assert [(s.text, s.error) for s in decode(t.take(), layout)] == [
        (PRINTABLE_ASCII, None), (PRINTABLE_ASCII[::-1], None)]


@pytest.mark.parametrize(
    ("layout", "dead"),
    [("de", "^`"), ("ch", "^`~"), ("se", "^`~"), ("no", "^`~"), ("dk", "^`~"), ("fi", "^`~"),
     ("pt", "^`~"), ("es", "^`"), ("be", "`~"), ("ch(fr)", "^`~"), ("us", ""),
     ("de(nodeadkeys)", "")],
)
def test_dead_key_only_characters_come_out_as_the_layout_types_them(layout: str,
                                                                    dead: str) -> None:
    """On these layouts ^ ` ~ exist only as dead keys: a scanner types the dead key, then Space.
    Each alone, between letters, and next to a letter it would combine with."""
    assert dead_only_chars(layout, "^`~") == dead  # libxkbcommon says so, not the decoder
    for ch in dead:
        text = f"{ch}A{ch}{ch}e{ch}1{ch}"
        assert texts(decode(Typist(layout).scan(text).take(), layout)) == [text]


@pytest.mark.parametrize("layout", EUROPE)
def test_gs_through_both_control_paths(layout: str) -> None:
    """GS1 separators as Ctrl+] (at the US ']' position) and as Alt+0029 / Alt+029."""
    gs1 = "]d2" + "0104006381333931" + "10ABC123" + GS + "21XYZ987"
    t = Typist(layout).scan(gs1)
    t.type("0104006381333931" + "10AB").alt_code("0029").type("21C").alt_code("029").enter()
    assert [(s.text, s.error) for s in decode(t.take(), layout)] == [
        (gs1, None), ("010400638133393110AB" + GS + "21C" + GS, None)]


def test_capslock_follows_the_layout() -> None:
    """Caps Lock does what the layout's key types say (on fr it also capitalises é on the
    digit row, as Linux does), read from libxkbcommon here."""
    from xkbcommon import xkb

    state = xkb_keymap("fr").state_new()
    for direction in (xkb.KeyDirection.XKB_KEY_DOWN, xkb.KeyDirection.XKB_KEY_UP):
        state.update_key(E.KEY_CAPSLOCK + 8, direction)
    expected = "".join(xkb.keysym_to_string(state.key_get_one_sym(code + 8))
                       for code in (E.KEY_Q, E.KEY_2, E.KEY_M))
    t = Typist("fr").tap(E.KEY_CAPSLOCK).tap(E.KEY_Q).tap(E.KEY_2).tap(E.KEY_M).enter()
    assert texts(decode(t.take(), "fr")) == [expected]
    assert expected[0] == "A"


@pytest.mark.parametrize(
    ("name", "message"),
    [("bx", "unknown keyboard layout 'bx' (no layout 'bx' in the XKB data at "
            "/usr/share/X11/xkb); did you mean 'ba', 'bd', 'be', 'bg', 'br'?"),
     ("ch(fx)", "unknown keyboard layout 'ch(fx)' (no variant 'fx' of layout 'ch' in the XKB "
                "data at /usr/share/X11/xkb); did you mean 'ch(fr)'"),
     ("German", "unknown keyboard layout 'German' (write a layout, with an optional variant: "
                "\"be\", \"ch(fr)\"); did you mean 'de', 'at', 'ch'")],
    ids=["typo", "variant-typo", "description"],
)
def test_unknown_layouts_raise_naming_close_ones(name: str, message: str) -> None:
    with pytest.raises(UnknownLayoutError) as info:
        decode_events([], name)
    assert str(info.value).startswith("layout: " + message)
    assert isinstance(info.value, LookupError)


def test_without_the_compose_tables_a_dead_key_is_flagged(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without libx11-data cannot compose: the scan says so instead of guessing."""
    from drivers import xkb

    monkeypatch.setenv("XLOCALEDIR", str(tmp_path))
    xkb.compose_table.cache_clear()
    try:
        [scan] = decode(Typist("de").scan("a^b").take(), "de")
    finally:
        xkb.compose_table.cache_clear()
    assert (scan.text, scan.error) == (
        "a b", "KEY_GRAVE is a dead key, and composing it needs the X11 compose tables "
        "(Debian package libx11-data)")


def test_uk_is_the_xkb_gb_layout() -> None:
    events = Typist("gb").scan('"@£#~').take()
    assert texts(decode(events, "uk")) == texts(decode(events, "gb")) == ['"@£#~']
    assert KeyDecoder("uk").layout == "gb"


# -- Shift, CapsLock, keypad ------------------------------------------------------------------


def test_capslock_toggles_letters_only() -> None:
    t = Typist("us").tap(E.KEY_CAPSLOCK)
    t.tap(E.KEY_A).tap(E.KEY_B, SHIFT).tap(E.KEY_1).tap(E.KEY_2, E.KEY_RIGHTSHIFT)
    t.tap(E.KEY_CAPSLOCK).tap(E.KEY_C).enter()
    assert texts(decode(t.take())) == ["Ab1@c"]


def test_keypad_digits_with_numlock_and_kpenter_terminates() -> None:
    t = Typist("us")
    for d in "4006":
        t.tap(KP[d])
    t.tap(E.KEY_KPMINUS).tap(E.KEY_KPDOT).tap(E.KEY_KPPLUS).tap(E.KEY_KPSLASH)
    t.tap(E.KEY_KPASTERISK).tap(E.KEY_KPENTER)
    assert texts(decode(t.take())) == ["4006-.+/*"]


def test_keypad_decimal_follows_the_layout() -> None:
    t = Typist("de").tap(KP["1"]).tap(E.KEY_KPDOT).tap(KP["5"]).enter()
    assert texts(decode(t.take(), "de")) == ["1,5"]


def test_keypad_digits_with_numlock_off_are_flagged() -> None:
    t = Typist("us").tap(E.KEY_NUMLOCK).tap(KP["7"]).tap(KP["8"]).tap(E.KEY_KPMINUS)
    t.tap(E.KEY_NUMLOCK).tap(KP["9"]).enter()
    [scan] = decode(t.take())
    assert scan.text == "-9"
    assert scan.error == ("keypad key KEY_KP7 with NumLock off types no character; "
                          "keypad key KEY_KP8 with NumLock off types no character")


def test_numlock_initially_off_can_be_turned_on_by_the_scanner() -> None:
    t = Typist("us").tap(E.KEY_NUMLOCK).tap(KP["1"]).enter()
    assert texts(decode(t.take(), numlock=False)) == ["1"]


# -- control characters: GS1 -------------------------------------------------------------------

GS1 = "]d2" + "0104006381333931" + "10ABC123" + GS + "21XYZ987"


def test_gs1_datamatrix_with_gs_as_ctrl_bracket() -> None:
    assert texts(decode(Typist("us").scan(GS1).take())) == [GS1]


def test_gs1_datamatrix_with_gs_as_alt_0029_and_alt_029() -> None:
    t = Typist("us").type("]d20104006381333931" + "10ABC123").alt_code("0029")
    t.type("21XYZ987").alt_code("029").type("17261231").enter()
    assert texts(decode(t.take())) == [GS1 + GS + "17261231"]


@pytest.mark.parametrize("layout", ["de", "fr"])
def test_gs_via_ctrl_at_the_us_bracket_position_on_other_layouts(layout: str) -> None:
    """Scanners send Ctrl + the key where US has ']' whatever their layout."""
    t = Typist(layout).type("10AB").tap(E.KEY_RIGHTBRACE, CTRL).type("21C").enter()
    assert texts(decode(t.take(), layout)) == ["10AB" + GS + "21C"]


def test_gs_via_ctrl_altgr_bracket_on_german() -> None:
    t = Typist("de").type("10AB").tap(E.KEY_9, CTRL, ALTGR).type("21C").enter()
    assert texts(decode(t.take(), "de")) == ["10AB" + GS + "21C"]


def test_alt_codes_on_german_use_left_alt_only() -> None:
    """On layouts with AltGr the right Alt key is AltGr; Alt+numpad codes use the left one."""
    t = Typist("de").alt_code("065").tap(E.KEY_Q, ALTGR).enter()
    assert texts(decode(t.take(), "de")) == ["A@"]


def test_other_control_characters() -> None:
    t = Typist("us").tap(E.KEY_6, CTRL, SHIFT).tap(E.KEY_D, CTRL).tap(E.KEY_A, CTRL).enter()
    assert texts(decode(t.take())) == ["\x1e\x04\x01"]


@pytest.mark.parametrize(
    ("digits", "expected"),
    [("0029", GS), ("029", GS), ("29", GS), ("065", "A"), ("65", "A"), ("0228", "ä"),
     ("132", "ä"), ("0128", "€"), ("08364", "€"), ("0", "\x00"), ("", None),
     ("01114112", None), ("055296", None)],
    ids=["gs-ansi", "gs-oem-0", "gs-oem", "A-0", "A", "a-uml-1252", "a-uml-cp437", "euro-1252",
         "euro-unicode", "nul", "empty", "beyond-unicode", "surrogate"],
)
def test_alt_code_char(digits: str, expected: str | None) -> None:
    assert alt_code_char(digits) == expected


def test_unfinished_alt_code_is_flagged() -> None:
    t = Typist("us").type("AB").key(ALT, 1).tap(KP["6"]).enter()
    [scan] = decode(t.take())
    assert scan.text == "AB"
    assert scan.error == "Alt+6 was not completed (Alt still held)"


# -- terminators and timing ---------------------------------------------------------------------


def test_fast_scans_back_to_back_stay_apart() -> None:
    """Three scans in one burst (0.1 ms per event, no pause): three scans, nothing glued."""
    t = Typist("us", step_us=100)
    for code in ("LOC-A-01", "4006381333931", "QTY-12"):
        t.scan(code)
    assert texts(decode(t.take())) == ["LOC-A-01", "4006381333931", "QTY-12"]


def test_tab_terminator_and_enter_inside() -> None:
    t = Typist("us").scan("AB", suffix=E.KEY_TAB).type("C").enter().type("D").tap(E.KEY_TAB)
    assert texts(decode(t.take(), terminator="tab")) == ["AB", "C\rD"]


def test_enter_terminator_keeps_tab_as_a_character() -> None:
    t = Typist("us").type("A").tap(E.KEY_TAB).type("B").enter()
    assert texts(decode(t.take())) == ["A\tB"]


def test_timeout_terminator_splits_on_the_gap_measured_on_event_timestamps() -> None:
    t = Typist("us", step_us=2000).scan("ABC", suffix=None).pause(80).scan("DEF", suffix=None)
    decoder = KeyDecoder("us", terminator="timeout", timeout_ms=50)
    assert texts(decoder.feed_many(t.take())) == ["ABC"]
    assert decoder.pending
    last = decoder.expire()
    assert last is not None and (last.text, last.error) == ("DEF", None)
    assert decoder.expire() is None


def test_timeout_mode_still_ends_on_enter() -> None:
    t = Typist("us").scan("AB").scan("CD", suffix=E.KEY_TAB)
    assert texts(decode(t.take(), terminator="timeout")) == ["AB", "CD"]


def test_missing_enter_is_flagged_not_glued_to_the_next_scan() -> None:
    t = Typist("us").scan("ABC", suffix=None).pause(600).scan("DEF")
    scans = decode(t.take())
    assert texts(scans) == ["ABC", "DEF"]
    assert scans[0].error is not None and "no Enter after the last key" in scans[0].error
    assert scans[1].error is None


def test_expire_in_enter_mode_flags_the_partial_scan() -> None:
    decoder = KeyDecoder("us")
    decoder.feed_many(Typist("us").type("AB").take())
    scan = decoder.expire()
    assert scan is not None and scan.text == "AB"
    assert scan.error == ("no Enter after the last key within 500 ms "
                          "(check the scanner's suffix setting)")


def test_scan_timestamps_come_from_the_events() -> None:
    [scan] = decode(Typist("us", t0_us=5_000_000, step_us=1000).scan("A").take())
    assert scan.started_us == 5_000_000
    assert scan.ended_us > scan.started_us


def test_lone_enter_and_modifier_only_presses_make_no_scan() -> None:
    t = Typist("us").enter().tap(SHIFT).tap(E.KEY_CAPSLOCK).tap(E.KEY_CAPSLOCK).enter()
    decoder = KeyDecoder("us")
    assert decoder.feed_many(t.take()) == []
    assert decoder.expire() is None


def test_key_changes_a_device_cannot_send_are_ignored() -> None:
    """The kernel never sends a key down twice without an up between (nor an up for a key
    that is up): a broken stream that does must not toggle Caps Lock twice, nor release a
    Shift that was never pressed."""
    t = Typist("us").key(E.KEY_CAPSLOCK, 1).key(E.KEY_CAPSLOCK, 1).key(E.KEY_CAPSLOCK, 0)
    t.key(E.KEY_CAPSLOCK, 0).key(E.KEY_RIGHTSHIFT, 0).tap(E.KEY_A).enter()
    decoder = KeyDecoder("us")
    assert texts(decoder.feed_many(t.take())) == ["A"]
    assert decoder.capslock and decoder.keys_down == frozenset()


def test_auto_repeat_is_ignored() -> None:
    t = Typist("us").key(E.KEY_A, 1).key(E.KEY_A, 2).key(E.KEY_A, 2).key(E.KEY_A, 0).enter()
    assert texts(decode(t.take())) == ["a"]


# -- SYN_DROPPED ------------------------------------------------------------------------------


def test_syn_dropped_flags_the_scan_and_never_glues_it_to_the_next() -> None:
    t = Typist("us").type("400638")
    t.syn(E.SYN_DROPPED).bare(E.KEY_3, 0).bare(E.KEY_1, 1).syn(E.SYN_REPORT)  # the overrun
    t.type("3931").enter().scan("LOC-B")
    scans = decode(t.take())
    assert texts(scans) == ["4006383931", "LOC-B"]
    assert scans[0].error == "key events were dropped (SYN_DROPPED): characters may be missing"
    assert scans[1].error is None


def test_syn_dropped_that_swallowed_the_enter_ends_at_the_next_gap() -> None:
    t = Typist("us").type("AB").syn(E.SYN_DROPPED).bare(E.KEY_ENTER, 1).syn(E.SYN_REPORT)
    t.pause(600).scan("NEXT")
    scans = decode(t.take())
    assert texts(scans) == ["AB", "NEXT"]
    assert scans[0].error is not None and "SYN_DROPPED" in scans[0].error
    assert scans[1].error is None


def test_syn_dropped_forgets_held_modifiers_and_resync_restores_them() -> None:
    decoder = KeyDecoder("us")
    t = Typist("us").key(SHIFT, 1).tap(E.KEY_A).syn(E.SYN_DROPPED)
    t.bare(SHIFT, 0).syn(E.SYN_REPORT)  # the Shift release was lost
    decoder.feed_many(t.take())
    assert decoder.resync_needed
    decoder.resync([])  # EVIOCGKEY: nothing held
    assert not decoder.resync_needed
    scans = decoder.feed_many(t.tap(E.KEY_B).enter().scan("c").take())
    assert texts(scans) == ["Ab", "c"]

    decoder.feed_many(t.type("x").syn(E.SYN_DROPPED).syn(E.SYN_REPORT).take())
    decoder.resync([E.KEY_LEFTSHIFT, E.KEY_A])  # Shift is still held on the device
    assert texts(decoder.feed_many(t.tap(E.KEY_Y).enter().take())) == ["xY"]


def test_syn_dropped_between_scans_is_reported() -> None:
    """A whole scan may have been lost: the operator is told to scan again."""
    t = Typist("us").scan("A").syn(E.SYN_DROPPED).syn(E.SYN_REPORT)
    decoder = KeyDecoder("us")
    assert texts(decoder.feed_many(t.take())) == ["A"]
    lost = decoder.expire()
    assert lost is not None and lost.text == "" and "SYN_DROPPED" in (lost.error or "")


# -- unknown keys, length ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("press", "error"),
    [((E.KEY_F1,), "unknown key KEY_F1 (no character on the 'us' layout)"),
     ((E.KEY_X, ALT), "Alt+KEY_X types no character"),
     ((E.KEY_1, CTRL), "Ctrl+KEY_1 types no control character"),
     ((E.KEY_A, E.KEY_LEFTMETA), "Meta+KEY_A types no character"),
     ((E.KEY_UP,), "unknown key KEY_UP (no character on the 'us' layout)")],
    ids=["function-key", "alt-letter", "ctrl-digit", "meta", "arrow"],
)
def test_keys_that_type_nothing_are_flagged(press: tuple[int, ...], error: str) -> None:
    t = Typist("us").type("AB").tap(*press).type("C").enter()
    [scan] = decode(t.take())
    assert (scan.text, scan.error) == ("ABC", error)


def test_over_long_input_is_capped_and_flagged() -> None:
    [scan] = decode(Typist("us", step_us=10).scan("7" * 600).take(), max_length=512)
    assert scan.text == "7" * 512
    assert scan.error == "over-long input: more than 512 characters"


def test_decode_events_expires_a_trailing_partial_scan() -> None:
    scans = decode_events(Typist("us").scan("A").type("B").take(), terminator="enter")
    assert texts(scans) == ["A", "B"]
    assert scans[1].error is not None


def test_reset_on_disconnect_returns_the_partial_scan_flagged() -> None:
    decoder = KeyDecoder("us")
    decoder.feed_many(Typist("us").key(SHIFT, 1).tap(E.KEY_A).take())
    scan = decoder.reset("unplugged")
    assert scan is not None and (scan.text, scan.error) == ("A", "unplugged")
    assert decoder.feed_many(Typist("us").scan("b").take())[0].text == "b"  # Shift forgotten


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="terminator must be enter, tab or timeout"):
        KeyDecoder("us", terminator="cr")  # type: ignore[arg-type]
    with pytest.raises(UnknownLayoutError, match="unknown keyboard layout 'xx'"):
        KeyDecoder("xx")


# -- property: never raises, never longer than max ----------------------------------------------

_CODES = [E.KEY_A, E.KEY_1, E.KEY_Q, E.KEY_Y, E.KEY_2, E.KEY_GRAVE, E.KEY_LEFTBRACE,
          E.KEY_RIGHTBRACE, E.KEY_EQUAL, E.KEY_SPACE, E.KEY_ENTER, E.KEY_KPENTER, E.KEY_TAB,
          E.KEY_LEFTSHIFT, E.KEY_RIGHTSHIFT, E.KEY_LEFTCTRL, E.KEY_LEFTALT, E.KEY_RIGHTALT,
          E.KEY_LEFTMETA, E.KEY_CAPSLOCK, E.KEY_NUMLOCK, E.KEY_KP0, E.KEY_KP2, E.KEY_KP9,
          E.KEY_KPDOT, E.KEY_KPMINUS, E.KEY_F1, E.KEY_UP, E.KEY_102ND, E.KEY_SCROLLLOCK, 0, 767]

_event = st.one_of(
    st.tuples(st.just(E.EV_KEY), st.sampled_from(_CODES), st.sampled_from([0, 1, 1, 2])),
    st.tuples(st.just(E.EV_SYN), st.sampled_from([E.SYN_REPORT, E.SYN_DROPPED]), st.just(0)),
    st.tuples(st.just(E.EV_MSC), st.just(E.MSC_SCAN), st.integers(0, 2**31 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(
    layout=st.sampled_from(["us", "uk", "de", "fr"]),
    terminator=st.sampled_from(["enter", "tab", "timeout"]),
    max_length=st.integers(1, 24),
    steps=st.lists(st.tuples(_event, st.integers(0, 700_000)), max_size=200),
    resync=st.booleans(),
)
def test_random_key_sequences_never_raise_nor_exceed_max_length(
    layout: str, terminator: str, max_length: int,
    steps: list[tuple[tuple[int, int, int], int]], resync: bool,
) -> None:
    decoder = KeyDecoder(layout, terminator=terminator,  # type: ignore[arg-type]
                         max_length=max_length)
    t = 1_700_000_000_000_000
    scans: list[DecodedScan] = []
    for (type_, code, value), dt in steps:
        t += dt
        scans += decoder.feed(InputEvent(t // 1_000_000, t % 1_000_000, type_, code, value))
        if resync and decoder.resync_needed:
            decoder.resync([E.KEY_LEFTSHIFT])
    last = decoder.expire()
    scans += [last] if last is not None else []
    assert not decoder.pending
    for scan in scans:
        assert len(scan.text) <= max_length
        assert scan.text or scan.error
