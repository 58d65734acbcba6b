"""Operator feedback after each commit: a buzzer and LEDs on GPIO, and a log line.

The daemon calls exactly one of :meth:`Feedback.good`, :meth:`Feedback.error` or
:meth:`Feedback.warning` once a scan's outcome is final (after the journal commit, or after the
ledger answered with a warning). None of them blocks or raises: GPIO patterns run in gpiozero's
background threads, and a failing buzzer is logged, never allowed to stop capture.

==============  =========================  ===================
outcome         buzzer                     LED
==============  =========================  ===================
good read       one short beep             green, one blink
error / NAK     three short beeps          red, longer
ledger warning  two long beeps             amber, longest
==============  =========================  ===================

>>> fb = build_feedback(cfg.feedback)        # doctest: +SKIP
>>> fb.good(); fb.error("no location yet"); fb.close()    # doctest: +SKIP

gpiozero is imported only when a pin is configured, so docks without GPIO never load it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agent.config import FeedbackConfig
from agent.errors import AgentError

__all__ = [
    "DEFAULT_PATTERNS",
    "CombinedFeedback",
    "Feedback",
    "GpioFeedback",
    "LogFeedback",
    "Pattern",
    "Patterns",
    "build_feedback",
    "escape_controls",
]

log = logging.getLogger(__name__)

_MAX_LOGGED = 200


@runtime_checkable
class Feedback(Protocol):
    """What the operator sees and hears after a scan."""

    def good(self, detail: str = "") -> None:
        """The scan was committed (a movement or an accepted command)."""

    def error(self, reason: str) -> None:
        """The scan was rejected (NAK): ``reason`` says why."""

    def warning(self, text: str) -> None:
        """The ledger accepted an event with a warning (e.g. a negative balance)."""

    def close(self) -> None:
        """Release devices; idempotent."""


def escape_controls(text: str, limit: int = _MAX_LOGGED) -> str:
    r"""Make text safe for one log line: control characters and backslashes escaped.

    >>> escape_controls("01\x1d10ABC\r\n")
    '01\\x1d10ABC\\r\\n'
    """
    named = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out: list[str] = []
    for ch in text:
        if ch in named:
            out.append(named[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    s = "".join(out)
    return s if len(s) <= limit else s[: limit - 1] + "…"


class LogFeedback:
    """One log line per outcome (the journal under systemd; the console in a shell)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log

    def good(self, detail: str = "") -> None:
        self._log.info("ACK%s", f" {escape_controls(detail)}" if detail else "")

    def error(self, reason: str) -> None:
        self._log.warning("NAK %s", escape_controls(reason))

    def warning(self, text: str) -> None:
        self._log.warning("ledger warning: %s", escape_controls(text))

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Pattern:
    """One feedback signal: ``beeps`` beeps of ``beep_on`` seconds ``beep_off`` apart, and the
    LED lit for ``led_on`` seconds."""

    beeps: int
    beep_on: float
    beep_off: float
    led_on: float


@dataclass(frozen=True, slots=True)
class Patterns:
    """The three signals; distinct by ear (count and length of beeps) and by eye (colour)."""

    good: Pattern = Pattern(beeps=1, beep_on=0.08, beep_off=0.0, led_on=0.3)
    error: Pattern = Pattern(beeps=3, beep_on=0.08, beep_off=0.08, led_on=1.5)
    warning: Pattern = Pattern(beeps=2, beep_on=0.4, beep_off=0.2, led_on=2.5)


DEFAULT_PATTERNS = Patterns()


class GpioFeedback:
    """A buzzer and up to three LEDs (good = green, error = red, warning = amber) on GPIO.

    Pins are BCM numbers; any of them may be None (not fitted). ``pin_factory`` is passed to
    gpiozero (tests give a ``MockFactory``); by default gpiozero picks one (lgpio on bookworm).
    Raises :class:`AgentError` when gpiozero is missing or a pin cannot be opened.
    """

    def __init__(self, cfg: FeedbackConfig, *, patterns: Patterns = DEFAULT_PATTERNS,
                 pin_factory: Any = None) -> None:
        try:
            import gpiozero
        except ImportError as exc:
            raise AgentError(
                "GPIO feedback is configured ([feedback] pins) but gpiozero is not installed; "
                "install the 'gpio' extra (pip install 'scan-agent[gpio]')") from exc
        self._patterns = patterns
        self._failed = False
        self._devices: list[Any] = []
        try:
            self._buzzer = self._open(gpiozero.Buzzer, cfg.buzzer_pin, pin_factory)
            self._good = self._open(gpiozero.LED, cfg.good_led_pin, pin_factory)
            self._error = self._open(gpiozero.LED, cfg.error_led_pin, pin_factory)
            self._warning = self._open(gpiozero.LED, cfg.warning_led_pin, pin_factory)
        except Exception as exc:  # gpiozero raises its own tree and OSError subclasses
            self.close()
            raise AgentError(f"cannot open GPIO feedback pins: {exc}") from exc

    def _open(self, cls: Any, pin: int | None, factory: Any) -> Any:
        if pin is None:
            return None
        device = cls(pin, pin_factory=factory)
        self._devices.append(device)
        return device

    def good(self, detail: str = "") -> None:
        self._signal(self._patterns.good, self._good)

    def error(self, reason: str) -> None:
        self._signal(self._patterns.error, self._error)

    def warning(self, text: str) -> None:
        self._signal(self._patterns.warning, self._warning)

    def _signal(self, p: Pattern, led: Any) -> None:
        try:
            # A new signal replaces whatever is still showing, so the lit LED is always the
            # latest outcome.
            for other in (self._good, self._error, self._warning):
                if other is not None and other is not led:
                    other.off()
            if led is not None:
                led.blink(on_time=p.led_on, off_time=0, n=1, background=True)
            if self._buzzer is not None:
                self._buzzer.beep(on_time=p.beep_on, off_time=max(p.beep_off, 0.001),
                                  n=p.beeps, background=True)
        except Exception as exc:
            if not self._failed:
                self._failed = True
                log.error("GPIO feedback failed: %s (further failures are not logged)", exc)

    def close(self) -> None:
        devices, self._devices = self._devices, []
        for device in devices:
            try:
                device.close()
            except Exception as exc:
                log.debug("closing %r: %s", device, exc)


class CombinedFeedback:
    """Several feedback channels at once (e.g. GPIO and the log line)."""

    def __init__(self, channels: Sequence[Feedback]) -> None:
        self.channels: tuple[Feedback, ...] = tuple(channels)

    def good(self, detail: str = "") -> None:
        for c in self.channels:
            c.good(detail)

    def error(self, reason: str) -> None:
        for c in self.channels:
            c.error(reason)

    def warning(self, text: str) -> None:
        for c in self.channels:
            c.warning(text)

    def close(self) -> None:
        for c in self.channels:
            c.close()


def build_feedback(cfg: FeedbackConfig, *, logger: logging.Logger | None = None,
                   pin_factory: Any = None, strict: bool = False,
                   log_line: bool = True) -> Feedback:
    """The feedback a dock's ``[feedback]`` table asks for: the log line (unless ``log_line``
    is False, for a caller that logs each outcome itself), plus GPIO when any pin is set.

    When the GPIO pins cannot be opened the error is logged and the dock goes on with the log
    line only (a broken buzzer must not stop capture); with ``strict=True`` it is raised instead
    (for ``scan-agent check-config``-style checks).
    """
    lines: list[Feedback] = [LogFeedback(logger)] if log_line else []
    line: Feedback = lines[0] if lines else CombinedFeedback([])
    pins = (cfg.buzzer_pin, cfg.good_led_pin, cfg.error_led_pin, cfg.warning_led_pin)
    if all(p is None for p in pins):
        return line
    try:
        gpio = GpioFeedback(cfg, pin_factory=pin_factory)
    except AgentError as exc:
        if strict:
            raise
        log.error("%s; continuing without GPIO feedback", exc)
        return line
    return CombinedFeedback([gpio, *lines])
