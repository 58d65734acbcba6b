"""Recordings of a keyboard wedge's key events: the event lines of ``evemu-record``.

A recording is text, one kernel input event a line, as evemu-record writes them (so a
recording made with ``evemu-record /dev/input/eventN`` works as well as one made with
``scan-agent find-layout --save``)::

    # scan-agent key recording
    N: Honeywell Imaging & Mobility 1900
    E: 1700000000.000800 0004 0004 458756
    E: 1700000000.000800 0001 001e 0001
    E: 1700000000.000800 0000 0000 0000

``E:`` lines hold the event's timestamp (seconds, a dot, six digits of microseconds), its type
and code in four hex digits and its value in decimal. Lines starting with ``#`` are comments;
evemu's other description lines (``N:`` the device name, ``I:``, ``P:``, ``B:``, ``A:``, ``L:``,
``S:``) are skipped, apart from the name. Anything else is an error naming the line.

>>> events = parse_recording("N: demo\\nE: 0.000001 0001 001e 0001  # KEY_A down\\n")
>>> [(e.sec, e.usec, e.type, e.code, e.value) for e in events]
[(0, 1, 1, 30, 1)]
>>> format_recording(events, name="demo").splitlines()[-1]
'E: 0.000001 0001 001e 0001'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from evdev import InputEvent

from drivers.errors import RecordingError

__all__ = ["format_recording", "parse_recording", "read_recording", "recording_name",
           "write_recording"]

_EVENT = re.compile(r"^E:\s+(\d+)\.(\d{6})\s+([0-9a-fA-F]{4})\s+([0-9a-fA-F]{4})\s+(-?\d+)"
                    r"\s*(?:#.*)?$")
_DESCRIPTION = re.compile(r"^[NIPBALS]:")
_HEADER = "# scan-agent key recording: the event lines of evemu-record (docs/scanners.md)"


def parse_recording(text: str, where: str = "<recording>") -> list[InputEvent]:
    """The events of a recording's text; ``RecordingError`` names the first bad line."""
    events: list[InputEvent] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or _DESCRIPTION.match(line):
            continue
        m = _EVENT.match(line)
        if m is None:
            raise RecordingError(
                f"{where}: line {n}: expected an event line such as "
                f"'E: 1700000000.000800 0001 001e 0001', got {line[:60]!r}")
        sec, usec, type_, code, value = m.groups()
        events.append(InputEvent(int(sec), int(usec), int(type_, 16), int(code, 16),
                                 int(value)))
    return events


def recording_name(text: str) -> str:
    """The device name a recording names (its ``N:`` line), or ``""``."""
    for line in text.splitlines():
        if line.startswith("N:"):
            return line[2:].strip()
    return ""


def format_recording(events: Iterable[InputEvent], *, name: str = "") -> str:
    """A recording's text for ``events`` (see the module docstring)."""
    lines = [_HEADER]
    if name:
        lines.append(f"N: {name}")
    lines += [f"E: {e.sec}.{e.usec:06d} {e.type:04x} {e.code:04x} {e.value:04d}"
              for e in events]
    return "\n".join(lines) + "\n"


def read_recording(path: str | Path) -> list[InputEvent]:
    """The events recorded in file ``path``; ``RecordingError`` if it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: cannot read the recording: {exc}") from exc
    return parse_recording(text, str(path))


def write_recording(path: str | Path, events: Iterable[InputEvent], *, name: str = "") -> None:
    """Save ``events`` to file ``path`` as a recording."""
    try:
        Path(path).write_text(format_recording(events, name=name), encoding="utf-8")
    except OSError as exc:
        raise RecordingError(f"{path}: cannot write the recording: {exc}") from exc
