"""The dashboard in a real headless Chromium, not only over HTTP."""

from __future__ import annotations

import shutil
import subprocess
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
