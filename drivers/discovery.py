"""Find the scanners attached to this machine (``scan-agent devices``).

Lists input devices that can type a barcode (keyboards with Enter and digit keys) and serial
ports, marks those that look like scanners (a known scanner maker's USB vendor id, or a name
with "scanner", "barcode", "reader" or "imager" in it), and gives each a ``[[scanners]]`` snippet
to paste into the dock config.

Input devices are described from sysfs, so a device this user may not open is still listed (with
a note about permissions), and nothing is opened or grabbed. Serial ports come from pyserial.
On a machine without /dev/input or serial ports the list is simply shorter.

>>> print(format_candidates(list_candidates()))   # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from drivers.keymap import can_type_barcode

__all__ = [
    "KNOWN_SCANNER_VENDORS",
    "Candidate",
    "format_candidates",
    "input_candidates",
    "list_candidates",
    "serial_candidates",
]

#: USB vendor ids of scanner makers (lower-case hex) -> maker.
KNOWN_SCANNER_VENDORS: dict[str, str] = {
    "05e0": "Zebra (Symbol)",
    "0c2e": "Honeywell (Metrologic)",
    "0536": "Honeywell (Hand Held Products)",
    "05f9": "Datalogic (PSC)",
    "080c": "Datalogic",
    "1eab": "Newland",
    "065a": "Opticon",
}

_SCANNER_WORDS = re.compile(r"scanner|barcode|bar code|reader|imager", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device that could be a scanner, with the config snippet to use it.

    ``stable_paths`` are the udev links that survive re-plugging (by-id first, then by-path);
    ``reasons`` say why it looks like a scanner; ``notes`` warn about what would stop the agent
    from using it (permissions).
    """

    kind: Literal["input", "serial"]
    device: str
    name: str
    stable_paths: tuple[str, ...] = ()
    vendor: str | None = None
    product: str | None = None
    serial: str | None = None
    likely_scanner: bool = False
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    snippet: str = ""


def list_candidates(
    *,
    input_dir: str = "/dev/input",
    sys_root: str = "/sys",
    serial_dir: str = "/dev/serial",
    serial_ports: Callable[[], Iterable[Any]] | None = None,
) -> list[Candidate]:
    """Input devices and serial ports that could be scanners, likely scanners first.

    Never raises for a missing or unreadable /dev/input, /sys or serial port list: what cannot
    be read is left out.
    """
    cands = input_candidates(input_dir=input_dir, sys_root=sys_root)
    cands += serial_candidates(serial_dir=serial_dir, ports=serial_ports)
    cands.sort(key=lambda c: (not c.likely_scanner, c.kind, c.device))
    return _unique_names(cands)


# -- input devices ----------------------------------------------------------------------------


def input_candidates(*, input_dir: str = "/dev/input", sys_root: str = "/sys") -> list[Candidate]:
    """Event devices (from sysfs) that can type a barcode."""
    links = _links(input_dir, ("by-id", "by-path"))
    out: list[Candidate] = []
    for sys_dev in sorted(glob.glob(os.path.join(sys_root, "class", "input", "event*")),
                          key=_event_number):
        info = os.path.join(sys_dev, "device")
        keys = _parse_bitmap(_read(os.path.join(info, "capabilities", "key")))
        if not can_type_barcode(keys):
            continue
        node = os.path.join(input_dir, os.path.basename(sys_dev))
        name = _read(os.path.join(info, "name")) or os.path.basename(sys_dev)
        vendor = _hex4(_read(os.path.join(info, "id", "vendor")))
        product = _hex4(_read(os.path.join(info, "id", "product")))
        uniq = _read(os.path.join(info, "uniq")) or None
        stable = links.get(os.path.realpath(node), ())
        reasons = _scanner_reasons(vendor, name)
        notes: list[str] = []
        if not os.path.exists(node):
            notes.append(f"{node} does not exist here (no /dev/input in this environment?)")
        elif not os.access(node, os.R_OK):
            notes.append("not readable by this user: add it to the 'input' group or install "
                         "the udev rule (docs/scanners.md)")
        out.append(Candidate(
            kind="input", device=node, name=name, stable_paths=stable, vendor=vendor,
            product=product, serial=uniq, likely_scanner=bool(reasons), reasons=reasons,
            notes=tuple(notes),
            snippet=_evdev_snippet(_slug(name), name, stable, vendor, product, uniq),
        ))
    return out


def _evdev_snippet(slug: str, name: str, stable: Sequence[str], vendor: str | None,
                   product: str | None, uniq: str | None) -> str:
    lines = ["[[scanners]]", f"name = {_toml(slug)}", 'driver = "evdev"']
    by_id = [p for p in stable if "/by-id/" in p]
    if by_id:
        lines.append(f"device = {_toml(by_id[0])}")
    elif vendor and product and (vendor, product) != ("0000", "0000"):
        lines += [f"vendor = {_toml(vendor)}", f"product = {_toml(product)}"]
        if uniq:
            lines.append(f"serial = {_toml(uniq)}")
    elif stable:
        lines.append(f"device = {_toml(stable[0])}")
    else:
        lines.append(f"match_name = {_toml('^' + re.escape(name) + '$')}")
    lines += ['layout = "us"            # the keyboard layout set in the scanner (find-layout)',
              'terminator = "enter"     # the scanner\'s suffix: enter, tab, or "timeout"']
    return "\n".join(lines)


# -- serial ports -----------------------------------------------------------------------------


def serial_candidates(*, serial_dir: str = "/dev/serial",
                      ports: Callable[[], Iterable[Any]] | None = None) -> list[Candidate]:
    """Serial ports from pyserial (``ports`` replaces ``serial.tools.list_ports.comports``)."""
    if ports is None:
        try:
            from serial.tools.list_ports import comports
        except ImportError:
            return []
        ports = comports
    try:
        found = list(ports())
    except OSError:
        return []
    links = _links(serial_dir, ("by-id", "by-path"))
    out: list[Candidate] = []
    for port in found:
        device = str(port.device)
        vid = f"{port.vid:04x}" if getattr(port, "vid", None) is not None else None
        pid = f"{port.pid:04x}" if getattr(port, "pid", None) is not None else None
        parts: list[str] = []
        for attr in ("manufacturer", "product", "description"):
            value = getattr(port, attr, None)
            if value and value != "n/a" and str(value) not in " ".join(parts):
                parts.append(str(value))
        words = " ".join(parts)
        name = words or os.path.basename(device)
        stable = links.get(os.path.realpath(device), ())
        reasons = _scanner_reasons(vid, words)
        notes: list[str] = []
        if os.path.exists(device) and not os.access(device, os.R_OK | os.W_OK):
            notes.append("not readable and writable by this user: add it to the 'dialout' "
                         "group")
        port_path = next((p for p in stable if "/by-id/" in p), device)
        out.append(Candidate(
            kind="serial", device=device, name=name, stable_paths=stable, vendor=vid,
            product=pid, serial=getattr(port, "serial_number", None) or None,
            likely_scanner=bool(reasons), reasons=reasons, notes=tuple(notes),
            snippet="\n".join([
                "[[scanners]]", f"name = {_toml(_slug(name))}", 'driver = "serial"',
                f"port = {_toml(port_path)}", "baudrate = 9600",
                '# ack = "\\u0006"   # only for scanners in host-acknowledge mode',
                '# nak = "\\u0015"',
            ]),
        ))
    return out


# -- shared -----------------------------------------------------------------------------------


def format_candidates(cands: Sequence[Candidate]) -> str:
    """Human-readable listing, each candidate with its config snippet."""
    if not cands:
        return ("No scanner candidates found: no keyboard-like input devices and no serial "
                "ports.\nPlug the scanner in (USB keyboard mode or USB-CDC serial) and run "
                "this again.")
    blocks = []
    for c in cands:
        ids = f" {c.vendor}:{c.product}" if c.vendor and c.product else ""
        head = f"{c.kind:<6} {c.device}  {c.name!r}{ids}"
        if c.serial:
            head += f" serial {c.serial!r}"
        lines = [head]
        lines.append("  " + ("likely a scanner: " + "; ".join(c.reasons) if c.likely_scanner
                             else "maybe a scanner (a keyboard or port of unknown kind)"))
        lines += [f"  link: {p}" for p in c.stable_paths]
        lines += [f"  note: {n}" for n in c.notes]
        lines += ["", *("    " + s for s in c.snippet.splitlines())]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _scanner_reasons(vendor: str | None, name: str) -> tuple[str, ...]:
    reasons = []
    if vendor and vendor in KNOWN_SCANNER_VENDORS:
        reasons.append(f"USB vendor {vendor} is {KNOWN_SCANNER_VENDORS[vendor]}")
    m = _SCANNER_WORDS.search(name)
    if m:
        reasons.append(f"its name says {m.group(0).lower()!r}")
    return tuple(reasons)


def _links(root: str, subdirs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Target device node -> the udev links pointing at it, by-id before by-path."""
    found: dict[str, list[str]] = {}
    for sub in subdirs:
        for link in sorted(glob.glob(os.path.join(root, sub, "*"))):
            found.setdefault(os.path.realpath(link), []).append(link)
    return {target: tuple(paths) for target, paths in found.items()}


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _hex4(text: str) -> str | None:
    text = text.strip().lower()
    return text.rjust(4, "0") if re.fullmatch(r"[0-9a-f]{1,4}", text) else None


def _parse_bitmap(text: str) -> set[int]:
    """Bits set in a sysfs capability bitmap: hex words of a C long, most significant first."""
    bits = struct.calcsize("l") * 8
    codes: set[int] = set()
    for i, word in enumerate(reversed(text.split())):
        try:
            value = int(word, 16)
        except ValueError:
            return set()
        while value:
            low = value & -value
            codes.add(i * bits + low.bit_length() - 1)
            value ^= low
    return codes


def _event_number(path: str) -> int:
    digits = re.sub(r"\D", "", os.path.basename(path))
    return int(digits) if digits else -1


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "scanner"


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \\uXXXX included).
    return json.dumps(value, ensure_ascii=False)


def _unique_names(cands: list[Candidate]) -> list[Candidate]:
    """Give each snippet a distinct scanner name (the config rejects duplicates)."""
    seen: dict[str, int] = {}
    out = []
    for c in cands:
        base = _slug(c.name)
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            new = f"{base}-{seen[base]}"
            c = replace(c, snippet=c.snippet.replace(f"name = {_toml(base)}",
                                                     f"name = {_toml(new)}", 1))
        out.append(c)
    return out
