"""The settings of an ``evdev`` scanner (a keyboard wedge): which device, which layout.

>>> from drivers.settings import Settings
>>> cfg = parse_config(Settings({"device": "/dev/input/by-id/x-event-kbd", "layout": "ch(fr)"}),
...                    name="dock")
>>> cfg.layout, cfg.terminator, cfg.name_pattern is None
('ch(fr)', 'enter', True)
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from drivers.settings import ScannerConfig, Settings

__all__ = ["EvdevScannerConfig", "parse_config"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EvdevScannerConfig(ScannerConfig):
    """``driver = "evdev"``: USB and Bluetooth keyboard-wedge scanners read through /dev/input."""

    driver: ClassVar[str] = "evdev"
    device: str | None = None
    vendor: str | None = None  # hex, e.g. "05e0"
    product: str | None = None  # hex, e.g. "1200"
    serial: str | None = None
    # A regular expression (config key "match_name") matched case-insensitively against the
    # input device's name. When device, vendor/product and match_name are all absent, the
    # scanner's own ``name`` is taken as a glob pattern for the device name (DESIGN section 3).
    name_pattern: str | None = None
    layout: str = "us"  # an XKB layout, with an optional variant: "be", "ch(fr)"
    terminator: Literal["enter", "tab", "timeout"] = "enter"
    timeout_ms: int = 50  # inter-key gap that ends a scan when terminator = "timeout"
    grab: bool = True


def _hex(s: Settings, k: str) -> str | None:
    v: str | None = s.text(k, None)
    if v is None:
        return None
    h = v.lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,4}", h):
        raise s.error(k, f"expected a USB id in hex such as \"05e0\", got {v!r}")
    return h.rjust(4, "0")


def parse_config(s: Settings, *, name: str, max_length: int = 512) -> EvdevScannerConfig:
    """The evdev keys of a ``[[scanners]]`` table; raises ``DriverConfigError`` naming the key.

    The layout is compiled here, once, so a name the machine's XKB data does not know fails
    at start (with close names) rather than at the first scan.
    """
    from drivers.xkb import load_keymap, normalize_layout

    vendor, product = _hex(s, "vendor"), _hex(s, "product")
    device = s.text("device", None)
    pattern = s.text("match_name", None)
    layout = s.text("layout", "us")
    cfg = EvdevScannerConfig(
        name=name,
        max_length=max_length,
        device=device,
        vendor=vendor,
        product=product,
        serial=s.text("serial", None),
        # DESIGN section 3: with no device or USB ids, the scanner's name is the pattern
        # (a glob, case-insensitive) that the input device's name must match.
        name_pattern=(fnmatch.translate(name) if device is None and pattern is None
                      and vendor is None else pattern),
        layout=normalize_layout(layout),
        terminator=s.choice("terminator", ("enter", "tab", "timeout"), "enter"),
        timeout_ms=s.integer("timeout_ms", 50, lo=5, hi=5000),
        grab=s.flag("grab", True),
    )
    if (vendor is None) != (product is None):
        raise s.error("vendor" if vendor is None else "product", "vendor and product go together")
    if pattern is not None:
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise s.error("match_name", f"invalid regular expression: {exc}") from None
    load_keymap(cfg.layout)  # raises UnknownLayoutError (key "layout") with close names
    return cfg
