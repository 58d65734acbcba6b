"""The scan grammar (DESIGN section 4): every row of the table, as pure text -> token."""

from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.config import GrammarConfig
from agent.grammar import (
    GS,
    Item,
    Location,
    ModeSwitch,
    Operator,
    Quantity,
    Reference,
    Rejected,
    Reset,
    Token,
    Undo,
    gtin_check_digit,
    interpret,
    printable,
)

G = GrammarConfig()
SITE = GrammarConfig(sku_patterns=(r"SKU-(?P<sku>[A-Z0-9]{4,})", r"[A-Z]{3}\d{5}"))


@pytest.mark.parametrize(("text", "token"), [
    pytest.param("MODE-RECEIPT", ModeSwitch("receipt"), id="receipt"),
    pytest.param("MODE-PICK", ModeSwitch("pick"), id="pick"),
    pytest.param("MODE-MOVE", ModeSwitch("move"), id="move"),
    pytest.param("MODE-COUNT", ModeSwitch("count"), id="count"),
    pytest.param("MODE-count", ModeSwitch("count"), id="mode-name-any-case"),
])
def test_mode_switch(text: str, token: Token) -> None:
    assert interpret(text, G) == token


@pytest.mark.parametrize(("text", "token"), [
    pytest.param("LOC-A-01-02", Location("A-01-02"), id="location"),
    pytest.param("LOC-DOCK-3", Location("DOCK-3"), id="dock-location"),
    pytest.param("QTY-0", Quantity(0), id="qty-zero-a-count-of-an-empty-bin"),
    pytest.param("QTY-1", Quantity(1), id="qty-one"),
    pytest.param("QTY-12", Quantity(12), id="qty"),
    pytest.param("QTY-9999", Quantity(9999), id="qty-at-default-cap"),
    pytest.param("QTY-007", Quantity(7), id="qty-leading-zeros"),
    pytest.param("REF-PO-1234", Reference("PO-1234"), id="reference"),
    pytest.param("USER-u17", Operator("u17"), id="operator"),
    pytest.param("CMD-UNDO", Undo(), id="undo"),
    pytest.param("CMD-RESET", Reset(), id="reset"),
])
def test_commands(text: str, token: Token) -> None:
    assert interpret(text, G) == token


@pytest.mark.parametrize(("text", "item"), [
    pytest.param("96385074", "00000096385074", id="gtin-8"),
    pytest.param("036000291452", "00036000291452", id="gtin-12-upc-a"),
    pytest.param("4006381333931", "04006381333931", id="gtin-13-ean"),
    pytest.param("10012345678902", "10012345678902", id="gtin-14"),
    pytest.param("00000096385074", "00000096385074", id="gtin-14-padded"),
])
def test_gtins_with_valid_check_digit_are_normalised_to_14_digits(text: str, item: str) -> None:
    assert interpret(text, G) == Item(item)


@pytest.mark.parametrize(("text", "reason"), [
    pytest.param("96385075", "invalid GTIN check digit in 96385075: expected 4, got 5",
                 id="gtin-8"),
    pytest.param("036000291453", "invalid GTIN check digit in 036000291453: expected 2, got 3",
                 id="gtin-12"),
    pytest.param("4006381333932", "invalid GTIN check digit in 4006381333932: expected 1, got 2",
                 id="gtin-13"),
    pytest.param("10012345678903",
                 "invalid GTIN check digit in 10012345678903: expected 2, got 3", id="gtin-14"),
])
def test_gtins_with_wrong_check_digit_are_rejected(text: str, reason: str) -> None:
    """A misread digit must never become a movement of some other product."""
    assert interpret(text, G) == Rejected(reason)


def test_check_digit_matches_gs1_examples() -> None:
    assert gtin_check_digit("400638133393") == 1
    assert gtin_check_digit("9638507") == 4
    assert gtin_check_digit("0061414199999") == 6


@pytest.mark.parametrize("body", ["40063813339a", "4006\u00b2", " 123"])
def test_gtin_check_digit_refuses_what_is_not_digits(body: str) -> None:
    with pytest.raises(ValueError, match=r"digits|ascii"):
        gtin_check_digit(body)


GTIN = "00614141999996"


@pytest.mark.parametrize(("text", "token"), [
    pytest.param(f"]C101{GTIN}10ABC123", Item(GTIN, lot="ABC123"), id="gs1-128-lot"),
    pytest.param(f"]C101{GTIN}10LOT42{GS}21SER7", Item(GTIN, lot="LOT42", serial="SER7"),
                 id="gs1-128-lot-gs-serial"),
    pytest.param(f"]C101{GTIN}21SER7{GS}10LOT42", Item(GTIN, lot="LOT42", serial="SER7"),
                 id="gs1-128-serial-gs-lot"),
    pytest.param(f"]d201{GTIN}17251231{GS}10L1", Item(GTIN, lot="L1", expiry=date(2025, 12, 31)),
                 id="datamatrix-expiry-lot"),
    pytest.param(f"]d201{GTIN}1725123121S-9", Item(GTIN, serial="S-9",
                                                   expiry=date(2025, 12, 31)),
                 id="datamatrix-expiry-serial"),
    pytest.param(f"]Q302{GTIN}3712", Item(GTIN, count=12), id="qr-ai02-count-37"),
    pytest.param(f"]C101{GTIN}3024", Item(GTIN, count=24), id="ai30-count"),
    pytest.param(f"]C102{GTIN}37{GS}", Rejected(
        "invalid GS1 data: Failed to match '37' with GS1 AI (37) pattern '^37(\\d{1,8})$'."),
        id="ai37-without-value"),
    pytest.param(f"01{GTIN}{GS}3012", Item(GTIN, count=12), id="no-aim-gs-separated"),
    pytest.param(f"01{GTIN}10LOT{GS}21S1", Item(GTIN, lot="LOT", serial="S1"),
                 id="no-aim-gs-lot-serial"),
    pytest.param(f"01{GTIN}3012", Item(GTIN, count=12), id="no-aim-digits-only"),
    pytest.param(f"01{GTIN}17261130", Item(GTIN, expiry=date(2026, 11, 30)),
                 id="no-aim-expiry"),
    pytest.param("]C10100000096385074", Item("00000096385074"), id="ai01-gtin-8-padded"),
])
def test_gs1_element_strings(text: str, token: Token) -> None:
    assert interpret(text, G) == token


def test_gs1_string_with_only_ai01_and_no_aim_id_is_an_item() -> None:
    """Regression: a GS1-128 carton label carrying only (01) reads as 16 digits when the
    scanner sends no AIM identifier; it was rejected as an unknown barcode."""
    assert interpret(f"01{GTIN}", G) == Item(GTIN)
    assert interpret(f"02{GTIN}", G) == Item(GTIN)


@pytest.mark.parametrize(("text", "reason"), [
    pytest.param(f"]C110ABC{GS}21S", "GS1 data without a GTIN (AI 01 or 02)", id="no-gtin"),
    pytest.param("]C1", "GS1 data without a GTIN (AI 01 or 02)", id="aim-only"),
    pytest.param(f"]C101{GTIN}300", "GS1 count (AI 30) must be at least 1", id="count-zero"),
])
def test_gs1_rejections(text: str, reason: str) -> None:
    assert interpret(text, G) == Rejected(reason)


def test_gs1_with_bad_gtin_check_digit_is_rejected() -> None:
    token = interpret("]C10100614141999997", G)
    assert isinstance(token, Rejected)
    assert token.reason.startswith("invalid GTIN in GS1 data: ")
    assert "00614141999997" in token.reason


def test_gs1_that_biip_cannot_parse_is_rejected_not_raised() -> None:
    token = interpret("]C1garbage", G)
    assert isinstance(token, Rejected)
    assert token.reason.startswith("invalid GS1 data: ")


@pytest.mark.parametrize(("text", "token"), [
    pytest.param("]E04006381333931", Item("04006381333931"), id="ean13-aim"),
    pytest.param("]C0LOC-A-01", Location("A-01"), id="code128-aim-command"),
    pytest.param("]A0SKU-AB12", Item("AB12"), id="code39-aim-sku"),
])
def test_non_gs1_aim_identifier_is_stripped_before_interpretation(text: str,
                                                                  token: Token) -> None:
    assert interpret(text, SITE) == token


@pytest.mark.parametrize(("text", "token"), [
    pytest.param("SKU-AB12", Item("AB12"), id="named-group-is-the-sku"),
    pytest.param("ABC12345", Item("ABC12345"), id="no-group-whole-scan-is-the-sku"),
    pytest.param("SKU-ab12", Rejected("unknown barcode 'SKU-ab12'"), id="pattern-not-matched"),
    pytest.param("xABC12345", Rejected("unknown barcode 'xABC12345'"),
                 id="pattern-must-match-whole-scan"),
])
def test_site_sku_patterns(text: str, token: Token) -> None:
    assert interpret(text, SITE) == token


def test_an_all_digit_site_code_that_is_not_a_gtin_matches_the_site_pattern() -> None:
    """A site SKU of 8, 12, 13 or 14 digits whose last digit is no GTIN check digit used to
    be refused as a bad GTIN before the site's patterns were tried."""
    site = GrammarConfig(sku_patterns=(r"[0-9]{8}",))
    assert interpret("12345678", site) == Item("12345678")
    assert interpret("12345670", site) == Item("00000012345670")  # a valid GTIN-8 stays one
    assert interpret("12345678", G) == Rejected(
        "invalid GTIN check digit in 12345678: expected 0, got 8")
    long_site = GrammarConfig(sku_patterns=(r"[0-9]{16}",))  # digits that start like GS1
    assert interpret("0212345678901234", long_site) == Item("0212345678901234")
    assert isinstance(interpret("0212345678901234", G), Rejected)


def test_sku_patterns_are_off_by_default() -> None:
    assert interpret("ABC12345", G) == Rejected("unknown barcode 'ABC12345'")


LONG = "X" * 513


@pytest.mark.parametrize(("text", "reason"), [
    pytest.param("", "empty scan", id="empty"),
    pytest.param("]C0", "empty scan", id="aim-identifier-only"),
    pytest.param(LONG, "over-long scan (513 characters, at most 512)", id="over-long"),
    pytest.param("A\x07B", "control character \\x07 at position 2", id="bell"),
    pytest.param("LOC-A\tB", "control character \\x09 at position 6", id="tab-in-location"),
    pytest.param("]C0AB\x00", "control character \\x00 at position 6", id="nul-after-aim"),
    pytest.param("4006381333931\r", "control character \\x0d at position 14", id="stray-cr"),
    pytest.param("hello", "unknown barcode 'hello'", id="unknown"),
    pytest.param("Z" * 50, f"unknown barcode '{'Z' * 39}…'", id="unknown-shortened"),
    pytest.param("12345", "unknown barcode '12345'", id="digits-not-a-gtin-length"),
    pytest.param("MODE-PUTAWAY",
                 "unknown mode 'PUTAWAY' (known: RECEIPT, PICK, MOVE, COUNT)", id="bad-mode"),
    pytest.param("LOC-", "empty location", id="empty-location"),
    pytest.param("LOC-" + "A" * 65, f"invalid location '{'A' * 65}' (printable ASCII, at most 64)",
                 id="location-too-long"),
    pytest.param("LOC-Bä", "invalid location 'Bä' (printable ASCII, at most 64)",
                 id="location-not-ascii"),
    pytest.param("REF-", "empty reference", id="empty-reference"),
    pytest.param("USER-", "empty operator badge", id="empty-operator"),
    pytest.param("QTY-10000", "quantity 10000 is over this site's maximum of 9999",
                 id="qty-over-cap"),
    pytest.param("QTY-abc", "quantity must be a whole number, got 'abc'",
                 id="qty-not-numeric"),
    pytest.param("QTY--3", "quantity must be a whole number, got '-3'",
                 id="qty-negative"),
    pytest.param("QTY-1.5", "quantity must be a whole number, got '1.5'",
                 id="qty-fraction"),
    pytest.param("QTY-", "quantity must be a whole number, got ''", id="qty-empty"),
    pytest.param("QTY-\u0663", "quantity must be a whole number, got '\u0663'",
                 id="qty-non-ascii-digit"),
])
def test_rejections_carry_a_reason(text: str, reason: str) -> None:
    assert interpret(text, G) == Rejected(reason)


def test_prefixes_caps_and_lengths_are_configurable() -> None:
    g = GrammarConfig(mode_prefix="M:", location_prefix="BIN-", qty_prefix="Q",
                      reference_prefix="PO:", operator_prefix="BADGE", undo="UNDO!",
                      reset="RST", max_qty=50, max_length=20)
    assert interpret("M:PICK", g) == ModeSwitch("pick")
    assert interpret("BIN-A1", g) == Location("A1")
    assert interpret("Q50", g) == Quantity(50)
    assert interpret("Q51", g) == Rejected("quantity 51 is over this site's maximum of 50")
    assert interpret("PO:4711", g) == Reference("4711")
    assert interpret("BADGE42", g) == Operator("42")
    assert interpret("UNDO!", g) == Undo()
    assert interpret("RST", g) == Reset()
    # The default spellings mean nothing on this site.
    assert interpret("LOC-A1", g) == Rejected("unknown barcode 'LOC-A1'")
    assert interpret("CMD-UNDO", g) == Rejected("unknown barcode 'CMD-UNDO'")
    assert interpret("X" * 21, g) == Rejected("over-long scan (21 characters, at most 20)")


def test_printable_escapes_control_characters_and_shortens() -> None:
    assert printable(f"01{GS}10\x07") == "01\\x1d10\\x07"
    assert printable("A" * 10, limit=5) == "AAAA…"


# -- properties ------------------------------------------------------------------------------

_prefixes = st.sampled_from(["", "]C1", "]d2", "]Q3", "]E0", "]C0", "01", "02", "0100614141999996",
                             "LOC-", "QTY-", "REF-", "USER-", "MODE-", "CMD-", GS, "SKU-"])
_anything = st.builds(lambda p, t, s: p + t + s, _prefixes,
                      st.text(max_size=80), st.sampled_from(["", GS, "\r", "10", "21"]))


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=600), _anything))
def test_any_text_is_interpreted_without_raising(text: str) -> None:
    """A scanner can send any bytes at all; interpretation must answer, never crash."""
    token = interpret(text, SITE)
    assert isinstance(token, ModeSwitch | Location | Quantity | Reference | Operator | Undo
                      | Reset | Item | Rejected)
    if isinstance(token, Rejected):
        assert token.reason


_ITEMISH = re.compile(r"^(\][A-Za-z][0-9A-Za-z])?[0-9(]")


@settings(max_examples=400, deadline=None)
@given(text=st.text(max_size=80))
def test_garbage_never_becomes_an_item(text: str) -> None:
    """Text that starts like no GTIN or GS1 string (and matches no SKU pattern) must not
    turn into a movement of some product."""
    assume(not _ITEMISH.match(text) and GS not in text)
    assert not isinstance(interpret(text, G), Item)
