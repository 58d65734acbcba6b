"""Keyboard layouts for keyboard-wedge scanners (filled in by the evdev driver work)."""

LAYOUTS: dict[str, object] = {"us": None}
