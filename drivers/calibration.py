"""The layout finder: which keyboard layout is the scanner set to? Ask it to type a known text.

The calibration barcode is a Code 128 holding every printable ASCII character once
(:data:`CALIBRATION_TEXT`). A keyboard-wedge scanner types it with the keys of the layout set
in the scanner; :func:`find_layouts` decodes those key events under every layout this
machine's XKB data knows and keeps those that give exactly the calibration text, with no dead
key that typed itself for want of a Space after it (a scanner set to a layout types a dead
key's character as the dead key then Space). Two layouts that both give it decode every
printable ASCII character the scanner types the same way: the barcode cannot tell them apart,
and either decodes ASCII barcodes the same.

>>> from tests.drivers.keyevents import Typist                        # doctest: +SKIP
>>> finding = find_layouts(Typist("ch(fr)").scan(CALIBRATION_TEXT).take())  # doctest: +SKIP
>>> finding.recommended                                               # doctest: +SKIP
'ch'
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from evdev import InputEvent

from drivers.calibration_barcode import CALIBRATION_TEXT, calibration_barcode_svg, save_svg
from drivers.errors import DriverError, UnknownLayoutError
from drivers.keymap import DecodedScan, KeyDecoder, Terminator
from drivers.xkb import LayoutInfo, compile_keymap, installed_layouts

__all__ = [
    "CALIBRATION_TEXT",
    "Finding",
    "Near",
    "calibration_barcode_svg",
    "find_layouts",
    "listen_for_calibration",
    "record_calibration",
    "save_svg",
]

log = logging.getLogger(__name__)

#: An AIM symbology identifier the scanner may put before it (``]C0`` for Code 128).
_AIM = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
#: The finder's own framing: Enter or Tab ends a scan, or half a second without a key.
_FINDER_TIMEOUT_MS = 500


def _matches(text: str) -> bool:
    return text == CALIBRATION_TEXT or (
        text.endswith(CALIBRATION_TEXT)
        and _AIM.fullmatch(text[:-len(CALIBRATION_TEXT)]) is not None)


@dataclass(frozen=True, slots=True)
class Near:
    """A layout that did not give the calibration text: how close it came."""

    name: str
    ratio: float
    text: str


@dataclass(frozen=True, slots=True)
class Finding:
    """What the finder found: the layouts that decode the recording to the calibration text."""

    matches: tuple[LayoutInfo, ...]
    checked: int
    closest: tuple[Near, ...] = ()
    scans: int = 0
    broken: tuple[str, ...] = field(default=())

    @property
    def recommended(self) -> str | None:
        """The layout to configure.

        ``us`` (the default) when it matches; else a plain layout (no variant) of the
        matches, the one whose variants are most of the others (``de`` rather than ``at``
        when ``de(e1)``, ``de(T3)``... match too); else the first match.
        """
        plain = [m for m in self.matches if not m.variant]
        if any(m.name == "us" for m in plain):
            return "us"  # the default, and what many layouts agree with on ASCII
        if not plain:
            return self.matches[0].name if self.matches else None
        family = {p.layout: sum(m.layout == p.layout for m in self.matches) for p in plain}
        return max(plain, key=lambda p: family[p.layout]).name

    def verdict(self, configured: str) -> str:
        """Whether the layout a config names is one of the matches, in words."""
        if any(m.name == configured for m in self.matches):
            return f'The configured layout = "{configured}" is right.'
        if self.matches:
            return (f'The config says layout = "{configured}", which does not decode the '
                    "calibration barcode right: change it as above.")
        return ""

    def report(self, configured: str | None = None) -> str:
        """The finding in words, with the config line to paste.

        That line keeps the ``configured`` layout when it is one of the matches (a Swedish
        scanner's dock that says ``se`` is not told to write ``fi``), else it is
        :attr:`recommended`.
        """
        keep = configured is not None and any(m.name == configured for m in self.matches)
        line = f'    layout = "{configured if keep else self.recommended}"'
        if not self.scans:
            return ("The recording holds no scan (no key events that end with Enter, Tab or a "
                    "pause). Scan the calibration barcode (docs/calibration-barcode.svg).")
        if not self.matches:
            lines = [f"No layout of the {self.checked} installed gives exactly the calibration "
                     "text, so this is not the calibration barcode, or the scanner changes it "
                     "(Caps Lock on, a prefix, or a suffix other than Enter or Tab)."]
            if self.closest:
                lines.append("Closest:")
                lines += [f"  {n.name:<20} {n.ratio:.0%} alike: {n.text[:60]!r}"
                          for n in self.closest]
            return "\n".join(lines)
        if self.checked > 1 and len(self.matches) == self.checked:
            return (f"All {self.checked} layouts checked give exactly the calibration text, "
                    "so any of them decodes this scanner's ASCII barcodes the same (a scanner "
                    "in a \"universal\" keyboard mode, typing Alt+numpad codes, fits every "
                    "layout).\n\n"
                    "Put this in the scanner's [[scanners]] table of the dock config:\n"
                    + line)
        width = max(len(m.name) for m in self.matches) + 2
        listed = [f"  {m.name:<{width}}{m.description}" for m in self.matches]
        if len(self.matches) == 1:
            head = "The scanner types the calibration barcode as this layout does:"
        else:
            head = (f"{len(self.matches)} layouts give exactly the calibration text. They type "
                    "every printable ASCII character with the same keys, so the barcode cannot "
                    "tell them apart; for ASCII barcodes any of them decodes the same:")
        return "\n".join([
            head, *listed, "",
            "Put this in the scanner's [[scanners]] table of the dock config:",
            line,
        ])


def _scans(events: Sequence[InputEvent], decoder: KeyDecoder) -> list[DecodedScan]:
    scans = decoder.feed_many(events)
    last = decoder.expire()
    return [*scans, *([last] if last else [])]


def _types_calibration(scan: DecodedScan) -> bool:
    """Whether ``scan`` is the calibration barcode as typed by a scanner set to the layout.

    Besides the text, no dead key may have typed itself without a Space after it: a scanner
    set to the layout sends a dead key's character as the dead key then Space, so a layout
    where one of its keys is a dead key followed by something else (or by the end of the scan)
    is not the scanner's, even when the text comes out right (``de(deadtilde)`` for a ``de``
    scanner's final ``~``: it would make ``~A`` an ``Ã``).
    """
    return scan.loose_dead_keys == 0 and _matches(scan.text)


def find_layouts(events: Iterable[InputEvent], *,
                 layouts: Iterable[LayoutInfo | str] | None = None) -> Finding:
    """Decode ``events`` under every installed layout (or ``layouts``); which give the text.

    ``events`` are a recording of the scanner typing the calibration barcode (more scans
    around it do no harm). Takes a few seconds: every layout is compiled once.
    """
    recorded = list(events)
    candidates = [
        (c if isinstance(c, LayoutInfo) else LayoutInfo(c, c.partition("(")[0], "", ""))
        for c in (installed_layouts() if layouts is None else layouts)]
    matches: list[LayoutInfo] = []
    decoded: list[tuple[str, list[str]]] = []
    broken: list[str] = []
    scans = 0
    for info in candidates:
        try:
            keymap = compile_keymap(info.name)
        except UnknownLayoutError:
            broken.append(info.name)  # listed, but its symbols do not compile here
            continue
        got = _scans(recorded, KeyDecoder(keymap, terminator="timeout",
                                          timeout_ms=_FINDER_TIMEOUT_MS, max_length=4096))
        scans = max(scans, len(got))
        if any(_types_calibration(s) for s in got):
            matches.append(info)
        elif got and not matches:
            decoded.append((info.name, [s.text for s in got]))
    if broken:
        log.debug("layouts that do not compile: %s", ", ".join(broken))
    near: list[Near] = []
    if not matches:
        for name, texts in decoded:
            ratio, best = max((difflib.SequenceMatcher(None, t, CALIBRATION_TEXT).ratio(), t)
                              for t in texts)
            near.append(Near(name, ratio, best))
        near.sort(key=lambda n: -n.ratio)
    return Finding(tuple(matches), len(candidates) - len(broken), tuple(near[:3]), scans,
                   tuple(broken))


async def listen_for_calibration(
    source: object,
    *,
    terminator: Terminator = "enter",
    on_scan: Callable[[Finding], None] | None = None,
    layouts: Iterable[LayoutInfo | str] | None = None,
) -> tuple[list[InputEvent], Finding]:
    """Read key events from an open device until a scan is the calibration barcode.

    ``source`` is an opened event device (``evdev.InputDevice`` or
    :class:`~drivers.evdev.devices.FdEventSource`). Each scan (ended by the scanner's
    ``terminator``, or by a pause) is tried under every layout, off the event loop; scans
    that no layout turns into the calibration text are reported to ``on_scan`` and the
    listening goes on. Returns the winning scan's events and the finding.
    """
    loop = asyncio.get_running_loop()
    fd = source.fileno()  # type: ignore[attr-defined]
    boundaries = KeyDecoder("us", terminator=terminator, timeout_ms=_FINDER_TIMEOUT_MS,
                            stale_ms=_FINDER_TIMEOUT_MS, max_length=4096)
    chosen = list(layouts) if layouts is not None else None
    ready: asyncio.Queue[list[InputEvent] | None] = asyncio.Queue()
    pending: list[InputEvent] = []
    quiet: asyncio.TimerHandle | None = None

    def end_scan() -> None:
        nonlocal pending
        if pending:
            ready.put_nowait(pending)
            pending = []

    def on_quiet() -> None:
        if boundaries.expire() is not None:
            end_scan()

    def on_readable() -> None:
        nonlocal quiet
        try:
            events = list(source.read())  # type: ignore[attr-defined]
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("reading the scanner failed: %s", exc)
            ready.put_nowait(None)
            return
        if not events:
            ready.put_nowait(None)
            return
        for event in events:
            pending.append(event)
            if boundaries.feed(event):
                end_scan()
        if quiet is not None:
            quiet.cancel()
        quiet = loop.call_later(_FINDER_TIMEOUT_MS / 1000, on_quiet)

    loop.add_reader(fd, on_readable)
    try:
        while True:
            scan = await ready.get()
            if scan is None:
                raise DriverError("the scanner went away while listening")
            finding = await asyncio.to_thread(find_layouts, scan, layouts=chosen)
            if finding.matches:
                return scan, finding
            if on_scan is not None:
                on_scan(finding)
    finally:
        loop.remove_reader(fd)
        if quiet is not None:
            quiet.cancel()


async def record_calibration(
    cfg: object,
    *,
    input_dir: str = "/dev/input",
    on_open: Callable[[str], None] | None = None,
    on_scan: Callable[[Finding], None] | None = None,
    layouts: Iterable[LayoutInfo | str] | None = None,
) -> tuple[list[InputEvent], Finding]:
    """Open the evdev scanner ``cfg`` (an ``EvdevScannerConfig``), wait for the calibration
    barcode, and return its events and the finding.

    The device is grabbed (unless ``grab = false``) so the barcode is not typed into a console
    meanwhile; ``on_open`` is told the device's path and name once it is listening.
    """
    from drivers.evdev.config import EvdevScannerConfig
    from drivers.evdev.devices import open_matching_device

    if not isinstance(cfg, EvdevScannerConfig):
        raise DriverError("the layout finder listens on keyboard-wedge scanners "
                          "(driver = \"evdev\") only")
    device = await asyncio.to_thread(open_matching_device, cfg, input_dir)
    path = os.fsdecode(device.path)
    try:
        if cfg.grab:
            try:
                device.grab()
            except OSError as exc:
                raise DriverError(f"{path}: cannot grab: {exc.strerror or exc} (stop "
                                  "the agent that reads this scanner first)") from exc
        if on_open is not None:
            on_open(f"{path} ({device.name})")
        return await listen_for_calibration(device, terminator=cfg.terminator,
                                            on_scan=on_scan, layouts=layouts)
    finally:
        with contextlib.suppress(OSError):
            device.close()
