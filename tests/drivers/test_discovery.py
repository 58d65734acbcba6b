"""``scan-agent devices`` discovery, on a fake sysfs tree and fake serial ports."""

from __future__ import annotations

import struct
import tomllib
from pathlib import Path

import pytest
from evdev import ecodes
from serial.tools.list_ports_common import ListPortInfo

from agent.config import parse_config
from drivers.discovery import (
    Candidate,
    _parse_bitmap,
    format_candidates,
    list_candidates,
    serial_candidates,
)

E = ecodes
KEYBOARD_KEYS = [E.KEY_ESC, E.KEY_ENTER, E.KEY_A, E.KEY_LEFTSHIFT, E.KEY_KPENTER,
                 *range(E.KEY_1, E.KEY_0 + 1)]
MOUSE_KEYS = [E.BTN_LEFT, E.BTN_RIGHT]


def bitmap(codes: list[int]) -> str:
    """Render key codes as sysfs does: hex C longs, most significant word first."""
    bits = struct.calcsize("l") * 8
    words = [0] * (max(codes) // bits + 1)
    for c in codes:
        words[c // bits] |= 1 << (c % bits)
    return " ".join(f"{w:x}" for w in reversed(words))


class FakeMachine:
    """/sys/class/input and /dev/input under a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.dev = root / "dev" / "input"
        (self.sys / "class" / "input").mkdir(parents=True)
        self.dev.mkdir(parents=True)

    def add(self, event: str, name: str, vendor: str, product: str, keys: list[int],
            uniq: str = "", by_id: str | None = None) -> None:
        info = self.sys / "class" / "input" / event / "device"
        (info / "id").mkdir(parents=True)
        (info / "capabilities").mkdir()
        (info / "name").write_text(name + "\n")
        (info / "uniq").write_text(uniq + "\n")
        (info / "id" / "vendor").write_text(vendor + "\n")
        (info / "id" / "product").write_text(product + "\n")
        (info / "capabilities" / "key").write_text(bitmap(keys) + "\n")
        node = self.dev / event
        node.touch()
        if by_id:
            (self.dev / "by-id").mkdir(exist_ok=True)
            (self.dev / "by-id" / by_id).symlink_to(f"../{event}")

    def candidates(self, ports: list[ListPortInfo] | None = None) -> list[Candidate]:
        return list_candidates(input_dir=str(self.dev), sys_root=str(self.sys),
                               serial_dir=str(self.dev.parent / "serial"),
                               serial_ports=lambda: ports or [])


@pytest.fixture
def machine(tmp_path: Path) -> FakeMachine:
    m = FakeMachine(tmp_path)
    m.add("event2", "AT Translated Set 2 keyboard", "0001", "0001", KEYBOARD_KEYS)
    m.add("event3", "Logitech USB Optical Mouse", "046d", "c077", MOUSE_KEYS)
    m.add("event5", "Honeywell Imaging & Mobility 1900", "0c2e", "0b61", KEYBOARD_KEYS,
          uniq="17088B4F07", by_id="usb-Honeywell_Imaging___Mobility_1900_17088B4F07-event-kbd")
    m.add("event6", "USB Barcode Reader", "28e9", "0301", KEYBOARD_KEYS)
    return m


def port(device: str, vid: int | None = None, pid: int | None = None,
         description: str = "n/a", serial_number: str | None = None) -> ListPortInfo:
    p = ListPortInfo(device, skip_link_detection=True)
    p.vid, p.pid, p.description, p.serial_number = vid, pid, description, serial_number
    return p


def test_input_devices_that_can_type_barcodes_likely_scanners_first(
        machine: FakeMachine) -> None:
    cands = machine.candidates()
    assert [(c.device.rsplit("/", 1)[1], c.likely_scanner) for c in cands] == [
        ("event5", True), ("event6", True), ("event2", False)]  # the mouse is left out
    honeywell = cands[0]
    assert (honeywell.kind, honeywell.vendor, honeywell.product, honeywell.serial) == (
        "input", "0c2e", "0b61", "17088B4F07")
    assert honeywell.reasons == ("USB vendor 0c2e is Honeywell (Metrologic)",)
    assert cands[1].reasons == ("its name says 'barcode'",)
    assert honeywell.stable_paths == (
        str(machine.dev / "by-id" / "usb-Honeywell_Imaging___Mobility_1900_17088B4F07-event-kbd"),)


def test_snippets_prefer_by_id_then_usb_ids(machine: FakeMachine) -> None:
    by_name = {c.device.rsplit("/", 1)[1]: c for c in machine.candidates()}
    assert by_name["event5"].snippet.splitlines()[:4] == [
        "[[scanners]]", 'name = "honeywell-imaging-mobility-1900"', 'driver = "evdev"',
        f'device = "{machine.dev}/by-id/usb-Honeywell_Imaging___Mobility_1900_17088B4F07'
        '-event-kbd"']
    assert by_name["event6"].snippet.splitlines()[3:5] == [
        'vendor = "28e9"', 'product = "0301"']


def test_every_snippet_is_a_valid_scanner_config(machine: FakeMachine) -> None:
    ports = [port("/dev/ttyACM0", 0x05E0, 0x1701, "Symbol Bar Code Scanner", "S123")]
    cands = machine.candidates(ports)
    tables = [tomllib.loads(c.snippet)["scanners"][0] for c in cands]
    cfg = parse_config({"station": "dock-3", "site": "WH1", "scanners": tables}, "dock-3.toml")
    assert [s.driver for s in cfg.scanners] == ["evdev", "evdev", "serial", "evdev"]


def test_devices_without_usb_ids_are_matched_by_name(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.add("event1", 'Odd "Scanner" (v2)', "0000", "0000", KEYBOARD_KEYS)
    [cand] = m.candidates()
    table = tomllib.loads(cand.snippet)["scanners"][0]
    assert table["match_name"] == r'^Odd\ "Scanner"\ \(v2\)$'
    cfg = parse_config({"station": "s", "site": "w", "scanners": [table]}, "x.toml")
    assert cfg.scanners[0].settings.name_pattern == table["match_name"]  # type: ignore[attr-defined]


def test_duplicate_names_get_numbered(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.add("event1", "USB Barcode Scanner", "1234", "0001", KEYBOARD_KEYS)
    m.add("event2", "USB Barcode Scanner", "1234", "0002", KEYBOARD_KEYS)
    names = [tomllib.loads(c.snippet)["scanners"][0]["name"] for c in m.candidates()]
    assert names == ["usb-barcode-scanner", "usb-barcode-scanner-2"]


def test_serial_ports(tmp_path: Path) -> None:
    ports = [port("/dev/ttyACM0", 0x0C2E, 0x0B6A, "Honeywell 1900 CDC", "ABC"),
             port("/dev/ttyUSB0", 0x0403, 0x6001, "FT232R USB UART"),
             port("/dev/ttyS0")]
    cands = serial_candidates(serial_dir=str(tmp_path), ports=lambda: ports)
    assert [(c.device, c.likely_scanner, c.vendor, c.serial) for c in cands] == [
        ("/dev/ttyACM0", True, "0c2e", "ABC"), ("/dev/ttyUSB0", False, "0403", None),
        ("/dev/ttyS0", False, None, None)]
    assert cands[0].snippet.splitlines()[1:5] == [
        'name = "honeywell-1900-cdc"', 'driver = "serial"', 'port = "/dev/ttyACM0"',
        "baudrate = 9600"]
    assert cands[2].name == "ttyS0"


def test_serial_by_id_link_is_used(tmp_path: Path) -> None:
    device = tmp_path / "ttyACM0"
    device.touch()
    (tmp_path / "serial" / "by-id").mkdir(parents=True)
    link = tmp_path / "serial" / "by-id" / "usb-Zebra_Scanner_S1-if00"
    link.symlink_to(device)
    [cand] = serial_candidates(serial_dir=str(tmp_path / "serial"),
                               ports=lambda: [port(str(device), 0x05E0, 0x1701, "Scanner")])
    assert cand.stable_paths == (str(link),)
    assert f'port = "{link}"' in cand.snippet


def test_works_with_no_dev_input_and_no_sysfs(tmp_path: Path) -> None:
    """This machine has neither: discovery returns what it can and never raises."""
    def failing_ports() -> list[ListPortInfo]:
        raise OSError("no /sys/class/tty")

    assert list_candidates(input_dir=str(tmp_path / "no-input"), sys_root=str(tmp_path / "no"),
                           serial_ports=failing_ports) == []
    assert format_candidates([]).startswith("No scanner candidates found")


def test_real_machine_does_not_crash() -> None:
    cands = list_candidates()
    assert isinstance(format_candidates(cands), str)


def test_sysfs_entry_without_a_device_node_is_noted(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.add("event4", "Datalogic Scanner", "05f9", "2214", KEYBOARD_KEYS)
    (m.dev / "event4").unlink()
    [cand] = m.candidates()
    assert cand.notes == (f"{m.dev}/event4 does not exist here (no /dev/input in this "
                          "environment?)",)


def test_format_candidates(machine: FakeMachine) -> None:
    text = format_candidates(machine.candidates())
    first = text.split("\n\n")[0]
    assert first.splitlines()[0] == (
        f"input  {machine.dev}/event5  'Honeywell Imaging & Mobility 1900' 0c2e:0b61 "
        "serial '17088B4F07'")
    assert "  likely a scanner: USB vendor 0c2e is Honeywell (Metrologic)" in text
    assert "maybe a scanner (a keyboard or port of unknown kind)" in text
    assert '    driver = "evdev"' in text


@pytest.mark.parametrize(
    ("text", "codes"),
    [("0", set()), ("1", {0}), ("10000000 0", {64 + 28} if struct.calcsize("l") == 8
                                else {32 + 28}), ("zz", set())],
    ids=["empty", "bit0", "second-word", "garbage"],
)
def test_parse_bitmap(text: str, codes: set[int]) -> None:
    assert _parse_bitmap(text) == codes


def test_parse_bitmap_round_trip() -> None:
    assert _parse_bitmap(bitmap(KEYBOARD_KEYS)) == set(KEYBOARD_KEYS)
