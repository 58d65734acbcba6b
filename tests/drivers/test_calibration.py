"""The layout finder: the calibration barcode, recordings, and finding the scanner's layout.

The recordings are typed by :class:`tests.drivers.keyevents.Typist`, which takes each
character's keys from libxkbcommon's keymap of the layout, as a scanner set to it would.
"""

from __future__ import annotations

import asyncio
import os
import re
import string
from pathlib import Path

import pytest
from click.testing import CliRunner
from evdev import InputEvent

from agent.cli import main
from drivers.calibration import (
    CALIBRATION_TEXT,
    calibration_barcode_svg,
    find_layouts,
    listen_for_calibration,
)
from drivers.errors import RecordingError
from drivers.evdev import FdEventSource
from drivers.recording import format_recording, parse_recording, read_recording, write_recording
from tests.drivers.keyevents import PRINTABLE_ASCII, Typist, to_bytes

ROOT = Path(__file__).resolve().parents[2]
#: The layouts most tests search among (the whole XKB list takes seconds per recording).
SOME = ["us", "gb", "de", "at", "fr", "be", "es", "it", "ch", "ch(fr)", "ch(legacy)", "se", "no",
        "dk", "fi", "pt", "pl", "de(nodeadkeys)", "fr(azerty)", "us(intl)", "nl", "cz", "hu"]


def test_the_calibration_text_is_every_printable_ascii_character_once() -> None:
    assert sorted(CALIBRATION_TEXT) == sorted(PRINTABLE_ASCII)
    assert len(CALIBRATION_TEXT) == 95 and CALIBRATION_TEXT.strip() == CALIBRATION_TEXT


# -- the barcode ---------------------------------------------------------------------------------

_RECT = re.compile(r'<rect x="([\d.]+)mm" y="[\d.]+mm" width="([\d.]+)mm"')


def decode_code128_svg(svg: bytes) -> str:
    """Read the bars of a Code 128 SVG back into text (sets A, B, C; checks the checksum)."""
    from barcode.charsets import code128 as c128

    bars = [(float(x), float(w)) for x, w in _RECT.findall(svg.decode())]
    module = min(w for _, w in bars)
    start = bars[0][0]
    modules = ["0"] * (round((bars[-1][0] + bars[-1][1] - start) / module))
    for x, w in bars:
        first = round((x - start) / module)
        for i in range(first, first + round(w / module)):
            modules[i] = "1"
    pattern = "".join(modules)
    assert pattern.endswith(c128.STOP + "11"), "no stop pattern"
    values = [c128.CODES.index(pattern[i:i + 11]) for i in range(0, len(pattern) - 13, 11)]
    *data, check = values
    assert sum([data[0], *(i * v for i, v in enumerate(data[1:], 1))]) % 103 == check
    sets = {103: "A", 104: "B", 105: "C"}
    current, text = sets[data[0]], ""
    for v in data[1:]:
        if current == "C":
            if v < 100:
                text += f"{v:02d}"
                continue
            current = {100: "B", 101: "A"}[v]
        elif v >= 96:
            current = {99: "C", 100: "B", 101: "A"}[v]
        else:
            text += (c128._charset_b if current == "B" else c128._charset_a)[v]
    return text


def test_the_barcode_holds_the_calibration_text() -> None:
    svg = calibration_barcode_svg()
    assert decode_code128_svg(svg) == CALIBRATION_TEXT
    width = float(re.search(rb'<svg [^>]*width="([\d.]+)mm"', svg).group(1))  # type: ignore
    assert width < 250, "fits a landscape A4 or Letter page"


def test_the_shipped_image_is_the_barcode_the_code_makes() -> None:
    """docs/calibration-barcode.svg is what `scan-agent calibration-barcode` writes."""
    shipped = (ROOT / "docs" / "calibration-barcode.svg").read_bytes()
    assert _RECT.findall(shipped.decode()) == _RECT.findall(calibration_barcode_svg().decode())
    assert decode_code128_svg(shipped) == CALIBRATION_TEXT


def test_the_cli_writes_the_barcode(tmp_path: Path) -> None:
    out = tmp_path / "cal.svg"
    result = CliRunner().invoke(main, ["calibration-barcode", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert decode_code128_svg(out.read_bytes()) == CALIBRATION_TEXT


# -- recordings ----------------------------------------------------------------------------------


def test_a_recording_round_trips_and_reads_evemu_record_output(tmp_path: Path) -> None:
    events = Typist("de").scan("Zug^").take()
    path = tmp_path / "scan.rec"
    write_recording(path, events, name="Honeywell 1900")
    back = read_recording(path)
    assert [(e.sec, e.usec, e.type, e.code, e.value) for e in back] == [
        (e.sec, e.usec, e.type, e.code, e.value) for e in events]
    evemu = ("# EVEMU 1.3\n# Input device name: \"Scanner\"\nN: Scanner\nI: 0003 0c2e 0b61 0111\n"
             "B: 00 0b 00 00 00 00 00 00 00\n"
             "E: 0.000001 0004 0004 458756\t# EV_MSC / MSC_SCAN             458756\n"
             "E: 0.000001 0001 001e 0001\t# EV_KEY / KEY_A                1\n"
             "E: 0.000001 0000 0000 0000\t# ------------ SYN_REPORT (0) ---------- +0ms\n")
    assert [(e.type, e.code, e.value) for e in parse_recording(evemu)] == [
        (4, 4, 458756), (1, 30, 1), (0, 0, 0)]
    assert format_recording(back).count("\nE: ") == len(events)


@pytest.mark.parametrize(
    ("text", "message"),
    [("E: 1.5 0001 001e 0001\n", "<recording>: line 1: expected an event line such as "
      "'E: 1700000000.000800 0001 001e 0001', got 'E: 1.5 0001 001e 0001'"),
     ("# fine\nKEY_A down\n", "<recording>: line 2: expected an event line such as "
      "'E: 1700000000.000800 0001 001e 0001', got 'KEY_A down'")],
    ids=["short-microseconds", "not-an-event"],
)
def test_a_bad_recording_names_the_line(text: str, message: str) -> None:
    with pytest.raises(RecordingError) as info:
        parse_recording(text)
    assert str(info.value) == message


# -- finding the layout --------------------------------------------------------------------------


def calibration(layout: str, **kw: object) -> list[InputEvent]:
    return Typist(layout, **kw).scan(CALIBRATION_TEXT).take()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("layout", "found", "recommended"),
    [("de", {"de", "at"}, "de"), ("fr", {"fr"}, "fr"),
     ("fr(azerty)", {"fr", "fr(azerty)"}, "fr"), ("be", {"be"}, "be"),
     ("es", {"es"}, "es"), ("it", {"it"}, "it"), ("se", {"se", "fi"}, "se"),
     ("fi", {"se", "fi"}, "se"), ("pt", {"pt"}, "pt"), ("dk", {"dk"}, "dk"),
     ("no", {"no"}, "no"), ("gb", {"gb"}, "gb"), ("us", {"us", "pl"}, "us"),
     ("pl", {"us", "pl"}, "us"), ("ch", {"ch", "ch(fr)", "ch(legacy)"}, "ch")],
)
def test_the_finder_picks_the_scanners_layout(layout: str, found: set[str],
                                              recommended: str) -> None:
    """Among the layouts of SOME, exactly those that type ASCII with the same keys match."""
    finding = find_layouts(calibration(layout), layouts=SOME)
    assert {m.name for m in finding.matches} == found
    assert finding.recommended == recommended


def test_the_finder_over_every_installed_layout_and_combined_reports() -> None:
    """The whole XKB list, with Shift and AltGr in the key's own report."""
    finding = find_layouts(calibration("de", combined=True))
    names = [m.name for m in finding.matches]
    assert "de" in names and "de(nodeadkeys)" not in names and "us" not in names
    assert finding.recommended == "de"
    assert finding.checked > 400
    assert 'layout = "de"' in finding.report()


def test_the_finders_output_in_the_docs_is_what_it_prints() -> None:
    """docs/scanners.md shows the finder's answer for a Portuguese scanner configured as US:
    over every installed layout, that is what it says."""
    finding = find_layouts(calibration("pt"))
    shown = finding.report() + "\n" + finding.verdict("us")
    assert "```\n" + shown + "\n```" in (ROOT / "docs" / "scanners.md").read_text()


def test_the_finder_says_when_layouts_are_indistinguishable() -> None:
    """ch and ch(fr) differ only in letters with accents: the ASCII barcode cannot tell."""
    finding = find_layouts(calibration("ch(fr)"))
    names = [m.name for m in finding.matches]
    assert {"ch", "ch(fr)"} <= set(names)
    report = finding.report()
    assert report.startswith(f"{len(names)} layouts give exactly the calibration text. They "
                             "type every printable ASCII character with the same keys, so the "
                             "barcode cannot tell them apart")
    assert report.endswith('layout = "ch"')
    assert finding.report("ch(fr)").endswith('layout = "ch(fr)"')  # a right config stays
    assert finding.report("de").endswith('layout = "ch"')
    assert finding.verdict("ch(fr)") == 'The configured layout = "ch(fr)" is right.'
    assert "does not decode the calibration barcode right" in finding.verdict("de")


def test_dead_keys_tell_layouts_apart() -> None:
    """de types ^ as a dead key then Space, de(nodeadkeys) as one key: not the same keys."""
    assert [m.name for m in find_layouts(calibration("de(nodeadkeys)"),
                                         layouts=["de", "de(nodeadkeys)"]).matches] == [
        "de(nodeadkeys)"]
    assert [m.name for m in find_layouts(calibration("de"),
                                         layouts=["de", "de(nodeadkeys)"]).matches] == ["de"]


def test_a_layout_that_needs_a_dead_key_alone_is_not_the_scanners() -> None:
    """A German scanner types the final '~' with AltGr+], a dead tilde on de(deadtilde): the
    text comes out right there only because the dead key ends the scan, and that layout would
    make the scanner's '~A' an 'Ã'. The finder does not offer it."""
    events = calibration("de")
    assert find_layouts(events, layouts=["de(deadtilde)"]).scans == 1
    assert [m.name for m in find_layouts(events, layouts=["de", "de(deadtilde)"]).matches] == [
        "de"]
    assert [m.name for m in find_layouts(calibration("de(deadtilde)"),
                                         layouts=["de", "de(deadtilde)"]).matches] == [
        "de(deadtilde)"]


def test_a_scanner_typing_alt_codes_fits_every_layout() -> None:
    """A "universal" keyboard mode types each character as Alt+numpad digits: every layout
    decodes it, and the finder says so rather than listing them all."""
    t = Typist("fr")
    for ch in CALIBRATION_TEXT:
        t.alt_code(f"0{ord(ch):03d}")
    finding = find_layouts(t.enter().take(), layouts=SOME)
    assert len(finding.matches) == finding.checked == len(SOME)
    assert finding.report() == (
        f"All {len(SOME)} layouts checked give exactly the calibration text, so any of them "
        "decodes this scanner's ASCII barcodes the same (a scanner in a \"universal\" keyboard "
        "mode, typing Alt+numpad codes, fits every layout).\n\nPut this in the scanner's "
        '[[scanners]] table of the dock config:\n    layout = "us"')
    assert finding.verdict("fr") == 'The configured layout = "fr" is right.'


def test_an_aim_identifier_before_the_barcode_is_accepted() -> None:
    events = Typist("be").scan("]C0" + CALIBRATION_TEXT).take()
    assert [m.name for m in find_layouts(events, layouts=["us", "be", "fr"]).matches] == ["be"]


def test_another_barcode_finds_nothing_and_says_what_came_closest() -> None:
    events = Typist("de").scan("4006381333931").scan(CALIBRATION_TEXT[:-5]).take()
    finding = find_layouts(events, layouts=SOME)
    assert finding.matches == () and finding.recommended is None
    report = finding.report()
    assert report.startswith(f"No layout of the {len(SOME)} installed gives exactly")
    assert "Closest:\n  de " in report
    assert find_layouts([], layouts=SOME).report().startswith("The recording holds no scan")


def test_find_layout_command_on_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "be.rec"
    write_recording(path, calibration("be"), name="wedge")
    result = CliRunner().invoke(main, ["find-layout", "--recording", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith('Put this in the scanner\'s [[scanners]] table of '
                                           'the dock config:\n    layout = "be"')
    bad = tmp_path / "bad.rec"
    bad.write_text("E: nonsense\n")
    result = CliRunner().invoke(main, ["find-layout", "--recording", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: line 1: expected an event line" in result.output


def test_find_layout_command_needs_a_recording_or_a_scanner(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["find-layout"])
    assert result.exit_code == 2
    assert "give either --config FILE --scanner NAME, or --recording FILE" in result.output
    dock = tmp_path / "dock.toml"
    dock.write_text('station = "s"\nsite = "w"\n[[scanners]]\nname = "wedge"\ndriver = "evdev"\n'
                    'vendor = "ffff"\nproduct = "fffe"\nlayout = "de"\n')
    result = CliRunner().invoke(main, ["find-layout", "--config", str(dock), "--scanner", "x"])
    assert result.exit_code == 2 and "has no scanner named 'x'" in result.output
    result = CliRunner().invoke(main, ["find-layout", "--config", str(dock),
                                       "--scanner", "wedge"])
    assert result.exit_code == 1
    assert "no input device matches vendor ffff product fffe" in result.output


async def test_listening_skips_other_scans_until_the_calibration_barcode() -> None:
    """Events through evdev's own reader over a pipe: a product barcode first (reported, and
    the listening goes on), then the calibration barcode, typed by a Danish scanner."""
    r, w = os.pipe()
    source = FdEventSource(r, name="pipe")
    missed: list[object] = []
    listening = asyncio.ensure_future(listen_for_calibration(
        source, on_scan=missed.append, layouts=["us", "dk", "de"]))
    os.write(w, to_bytes(Typist("dk").scan("4006381333931").take()))
    await asyncio.sleep(0.2)
    os.write(w, to_bytes(Typist("dk", t0_us=1_800_000_000_000_000).scan(
        string.ascii_letters).take()))  # not the calibration text
    os.write(w, to_bytes(calibration("dk", t0_us=1_900_000_000_000_000)))
    events, finding = await asyncio.wait_for(listening, 30)
    assert [m.name for m in finding.matches] == ["dk"]
    assert len(missed) == 2
    assert find_layouts(events, layouts=["dk"]).matches  # the winning scan's own events
    os.close(w)
    source.close()


_NO_UINPUT = not os.access("/dev/uinput", os.R_OK | os.W_OK)


@pytest.mark.hardware
@pytest.mark.skipif(_NO_UINPUT,
                    reason="needs /dev/uinput (read-write) for a virtual keyboard; absent here")
async def test_record_calibration_from_a_virtual_scanner() -> None:
    """A real input device: found by its name, grabbed, read until the calibration barcode."""
    from evdev import UInput, ecodes

    from drivers.calibration import record_calibration
    from drivers.evdev import EvdevScannerConfig

    ui = UInput({ecodes.EV_KEY: list(range(1, 128))}, name="Virtual Calibration Scanner")
    try:
        await asyncio.sleep(0.3)
        cfg = EvdevScannerConfig(name="wedge", name_pattern="^virtual calibration scanner$",
                                 layout="us")
        opened: list[str] = []
        recording = asyncio.ensure_future(record_calibration(
            cfg, on_open=opened.append, layouts=["us", "pt", "de"]))
        while not opened:
            await asyncio.sleep(0.05)
        for ev in calibration("pt"):
            ui.write(ev.type, ev.code, ev.value)
        events, finding = await asyncio.wait_for(recording, 30)
        assert [m.name for m in finding.matches] == ["pt"]
        assert opened[0].endswith("(Virtual Calibration Scanner)")
        assert events
    finally:
        ui.close()
