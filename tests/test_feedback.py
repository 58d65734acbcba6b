"""Operator feedback: GPIO patterns on gpiozero's mock pins, and the log line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import FeedbackConfig
from agent.errors import AgentError
from agent.feedback import (
    CombinedFeedback,
    Feedback,
    GpioFeedback,
    LogFeedback,
    Pattern,
    Patterns,
    build_feedback,
    escape_controls,
)

gpiozero = pytest.importorskip("gpiozero")
from gpiozero.pins.mock import MockFactory  # noqa: E402

BUZZER, GREEN, RED, AMBER = 17, 27, 22, 23
PINS = FeedbackConfig(buzzer_pin=BUZZER, good_led_pin=GREEN, error_led_pin=RED,
                      warning_led_pin=AMBER)
# The default patterns scaled down so the tests run fast; the shape (counts) is what matters.
FAST = Patterns(
    good=Pattern(beeps=1, beep_on=0.01, beep_off=0.0, led_on=0.02),
    error=Pattern(beeps=3, beep_on=0.01, beep_off=0.01, led_on=0.05),
    warning=Pattern(beeps=2, beep_on=0.03, beep_off=0.01, led_on=0.08),
)


@pytest.fixture
def factory() -> Iterator[Any]:
    f = MockFactory()
    gpiozero.Device.pin_factory = f
    yield f
    f.reset()
    gpiozero.Device.pin_factory = None


def highs(pin: Any) -> int:
    """How many times the pin went high since its history was cleared."""
    return sum(1 for s in pin.states[1:] if s.state)


def settle(*pins: Any, timeout: float = 5.0) -> None:
    """Wait until the background patterns have finished (all pins low and quiet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [len(p.states) for p in pins]
        time.sleep(0.15)
        if [len(p.states) for p in pins] == counts and not any(p.state for p in pins):
            return
    raise AssertionError("feedback pattern did not finish")


def pins(factory: Any) -> tuple[Any, Any, Any, Any]:
    return (factory.pin(BUZZER), factory.pin(GREEN), factory.pin(RED), factory.pin(AMBER))


@pytest.mark.parametrize(
    ("signal", "beeps", "lit"),
    [("good", 1, GREEN), ("error", 3, RED), ("warning", 2, AMBER)],
    ids=["good", "error", "warning"],
)
def test_gpio_patterns(factory: Any, signal: str, beeps: int, lit: int) -> None:
    fb = GpioFeedback(PINS, patterns=FAST)
    buzzer, green, red, amber = pins(factory)
    for p in (buzzer, green, red, amber):
        p.clear_states()
    getattr(fb, signal)("why")
    settle(buzzer, green, red, amber)
    assert highs(buzzer) == beeps
    assert {pin: highs(factory.pin(pin)) for pin in (GREEN, RED, AMBER)} == {
        pin: int(pin == lit) for pin in (GREEN, RED, AMBER)
    }
    fb.close()


def test_gpio_is_non_blocking(factory: Any) -> None:
    """The daemon calls feedback on its event loop: the pattern must run in the background."""
    slow = Patterns(warning=Pattern(beeps=2, beep_on=0.5, beep_off=0.5, led_on=2.0))
    fb = GpioFeedback(PINS, patterns=slow)
    started = time.monotonic()
    fb.warning("negative balance")
    assert time.monotonic() - started < 0.5
    assert factory.pin(AMBER).state
    fb.close()


def test_new_signal_replaces_the_lit_led(factory: Any) -> None:
    slow = Patterns(error=Pattern(beeps=1, beep_on=0.01, beep_off=0.01, led_on=5.0),
                    good=FAST.good)
    fb = GpioFeedback(PINS, patterns=slow)
    fb.error("unknown barcode")
    assert factory.pin(RED).state
    fb.good()
    assert not factory.pin(RED).state
    fb.close()


def test_only_fitted_pins_are_opened(factory: Any) -> None:
    fb = GpioFeedback(FeedbackConfig(buzzer_pin=BUZZER), patterns=FAST)
    fb.good()
    fb.error("x")
    fb.warning("y")
    settle(factory.pin(BUZZER))
    fb.close()
    fb.close()  # idempotent


def test_close_releases_pins(factory: Any) -> None:
    fb = GpioFeedback(PINS, patterns=FAST)
    fb.close()
    again = GpioFeedback(PINS, patterns=FAST)  # would raise GPIOPinInUse if not released
    again.close()


def test_pin_in_use_is_an_agent_error(factory: Any) -> None:
    holder = gpiozero.LED(GREEN)
    try:
        with pytest.raises(AgentError, match=r"^cannot open GPIO feedback pins: "):
            GpioFeedback(PINS)
        # The pins opened before the failure were released again.
        gpiozero.Buzzer(BUZZER).close()
    finally:
        holder.close()


def test_build_feedback_without_pins_never_imports_gpiozero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # import gpiozero would raise
    fb = build_feedback(FeedbackConfig())
    assert isinstance(fb, LogFeedback)


def test_build_feedback_with_pins(factory: Any) -> None:
    fb = build_feedback(PINS)
    assert isinstance(fb, CombinedFeedback)
    assert [type(c) for c in fb.channels] == [GpioFeedback, LogFeedback]
    assert isinstance(fb, Feedback)
    fb.close()


def test_build_feedback_falls_back_to_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A dock whose GPIO is broken keeps scanning, with the failure in the log."""
    monkeypatch.setitem(sys.modules, "gpiozero", None)
    with caplog.at_level(logging.ERROR, logger="agent.feedback"):
        fb = build_feedback(PINS)
    assert isinstance(fb, LogFeedback)
    assert "gpiozero is not installed" in caplog.text
    with pytest.raises(AgentError, match="gpiozero is not installed"):
        build_feedback(PINS, strict=True)


def test_log_feedback_lines(caplog: pytest.LogCaptureFixture) -> None:
    fb = LogFeedback(logging.getLogger("test.feedback"))
    with caplog.at_level(logging.INFO, logger="test.feedback"):
        fb.good("receipt 04006381333931 x1 -> DOCK-3")
        fb.error("unknown barcode '\x1b[2J\x07rm -rf'")
        fb.warning("negative balance at A-01\r\nforged line")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "ACK receipt 04006381333931 x1 -> DOCK-3"),
        ("WARNING", "NAK unknown barcode '\\x1b[2J\\x07rm -rf'"),
        ("WARNING", "ledger warning: negative balance at A-01\\r\\nforged line"),
    ]


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain text", "plain text"),
        ("01\x1d10LOT", "01\\x1d10LOT"),
        ("back\\slash", "back\\\\slash"),
        ("\x7f\x85\u2028", "\\x7f\\x85\\u2028"),
        ("Größe", "Größe"),
    ],
    ids=["plain", "gs1-gs", "backslash", "del-nel-linesep", "unicode"],
)
def test_escape_controls(raw: str, escaped: str) -> None:
    assert escape_controls(raw) == escaped


def test_escape_controls_caps_length() -> None:
    assert escape_controls("x" * 1000, limit=10) == "x" * 9 + "…"
