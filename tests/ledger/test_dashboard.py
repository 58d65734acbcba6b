"""The dashboard in a real headless Chromium, not only over HTTP."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.ledger.factory import move, pick, receipt

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (Debian package chromium)")


def dump_dom(url: str, profile: Path, budget_ms: int = 3000) -> str:
    """The DOM after the page ran, its own script included."""
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def no_script_dom(url: str, profile: Path, wait_s: float = 3.0) -> tuple[str, int]:
    """The DOM as a browser with JavaScript turned off shows it after ``wait_s``, and how
    many times the page loaded meanwhile (a ``<noscript>`` meta refresh reloads it).

    ``--dump-dom`` needs script to read the page, so this drives Chromium over the DevTools
    protocol on a pipe: the page's scripts are disabled (``Emulation.
    setScriptExecutionDisabled``) and the DOM is read with ``DOM.getOuterHTML``."""
    assert CHROMIUM is not None
    # Chromium reads commands on fd 3 and answers on fd 4: bash puts the pipes there
    # (from fds above 4, so that placing one cannot close the other)
    def above_4(fd: int) -> int:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return moved

    to_r, to_w, from_r, from_w = (above_4(fd) for fd in (*os.pipe(), *os.pipe()))
    proc = subprocess.Popen(
        ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-',
         CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-pipe",
         "about:blank"], pass_fds=(to_r, from_w), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(to_r)
    os.close(from_w)
    buf = b""
    sent = 0
    events: list[dict[str, Any]] = []

    def receive(deadline: float) -> dict[str, Any] | None:
        nonlocal buf
        while b"\0" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([from_r], [], [], left)[0]:
                return None
            chunk = os.read(from_r, 1 << 16)
            assert chunk, "chromium closed its DevTools pipe"
            buf += chunk
        raw, buf = buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        nonlocal sent
        sent += 1
        msg: dict[str, Any] = {"id": sent, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        os.write(to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30
        while (m := receive(deadline)) is not None:
            if m.get("id") == sent:
                assert "error" not in m, (method, m["error"])
                result: dict[str, Any] = m["result"]
                return result
            events.append(m)
        raise AssertionError(f"chromium did not answer {method}")

    try:
        page = next(t for t in call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = call("Target.attachToTarget", {"targetId": page["targetId"],
                                                 "flatten": True})["sessionId"]
        call("Page.enable", session=session)
        call("Emulation.setScriptExecutionDisabled", {"value": True}, session=session)
        events.clear()
        call("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + wait_s
        while (m := receive(deadline)) is not None:
            events.append(m)
        loads = sum(1 for e in events if e.get("method") == "Page.loadEventFired")
        root = call("DOM.getDocument", {"depth": -1}, session=session)["root"]
        dom = str(call("DOM.getOuterHTML", {"nodeId": root["nodeId"]},
                       session=session)["outerHTML"])
        return dom, loads
    finally:
        try:
            call("Browser.close")
            proc.wait(10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        os.close(to_w)
        os.close(from_r)


def populate(ledger: Any) -> dict[str, Any]:
    one, two = ledger.dock("dock-1"), ledger.dock("dock-2")
    shortage = pick(2, "A-01", 5, item="00000000000017")
    wrong_bin = pick(1, "C-03", 6)
    nasty = pick(1, "Z-9", 7, item="<script>alert(1)</script>")
    one.post(receipt(4, "B-02", 0), shortage, wrong_bin, nasty)
    two.post(move(1, "B-02", "D-04", 1))
    return {"shortage": shortage, "wrong_bin": wrong_bin}


@needs_chromium
def test_dashboard_shows_incidents_by_class_held_and_stations(ledger: Any,
                                                              tmp_path: Path) -> None:
    populate(ledger)
    dom = dump_dom(ledger.server.url + "/?refresh=1", tmp_path / "profile")
    assert 'id="open-item"' in dom and 'id="open-location"' in dom
    item_section = dom.split('id="open-item"')[1].split("</section>")[0]
    location_section = dom.split('id="open-location"')[1].split("</section>")[0]
    assert "A-01" in item_section and "C-03" in location_section
    assert "provisional" in item_section
    assert "dock-1" in dom and "dock-2" in dom
    # escaped, never executed: the item name is shown as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script>alert(1)</script>" not in dom
    # the inline refresh ran in the browser and swapped the content in
    refreshes = dom.split('data-refreshes="')[1].split('"')[0]
    assert int(refreshes) >= 1


@needs_chromium
def test_dashboard_screenshot_renders(ledger: Any, tmp_path: Path) -> None:
    populate(ledger)
    shot = tmp_path / "dashboard.png"
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,900", f"--screenshot={shot}", ledger.server.url + "/"],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_fragment_is_the_main_content_only(ledger: Any) -> None:
    populate(ledger)
    r = ledger.http.get("/", headers={"X-Ledger-Fragment": "1"})
    assert r.status_code == 200
    assert r.text.startswith('<div class="cards">')
    assert "<html" not in r.text
