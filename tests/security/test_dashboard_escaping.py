"""The dashboard escapes everything it shows, in a real headless Chromium (docs/ledger.md:
"Every value is HTML-escaped").

Strings the ledger accepts (printable, no control characters, at most 256) are posted in every
field the dashboard can show: item, locations, and through held depletions the scanner,
reference and operator. The page is loaded, its own script refreshes the content once
(``innerHTML`` of a server-rendered fragment), and the DOM is dumped: no injected element, no
script run, and the text shown escaped.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.server import LedgerServer
from tests.ledger.factory import batch, move, pick, receipt

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Each payload would, if not escaped, add an element or run script that marks the page.
PAYLOADS = [
    '<script>document.body.dataset.pwned="script"</script>',
    '"><img src=x id=injected-img onerror="document.body.dataset.pwned=1">',
    "'><svg id=injected-svg onload=document.body.dataset.pwned=2>",
    "</td></tr></table><b id=injected-b>bold</b>",
    '<a id=injected-a href="javascript:document.body.dataset.pwned=3">x</a>',
    "<style>body{display:none}</style><iframe id=injected-iframe></iframe>",
]


@pytest.fixture
def nasty_ledger(tmp_path: Path) -> Iterator[LedgerServer]:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text("[sites.WH2]\nallow_negative = false\n")
    with LedgerServer(tmp_path / "ledger.db", cfg) as srv:
        yield srv


def _post(srv: LedgerServer, token: str, station: str, events: list[dict[str, object]]) -> None:
    r = httpx.post(srv.url + "/v1/events", json=batch(events, station=station),
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert all(res["status"] in ("accepted", "held") for res in r.json()["results"]), r.text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package "
                                             "chromium)")
def test_every_shown_value_is_escaped_in_a_real_browser(nasty_ledger: LedgerServer,
                                                        tmp_path: Path) -> None:
    srv = nasty_ledger
    one = srv.add_station("dock-1", "WH1")
    held = srv.add_station("dock-9", "WH2")
    events = []
    for i, p in enumerate(PAYLOADS):
        # an incident at a nasty bin for a nasty item; a wrong-location one via a nasty move
        events += [pick(1, p, i, item=p, scanner=p, reference=p, operator=p, lot=p, serial=p,
                        raw=[p]),
                   receipt(2, f"R{i}", i, item=p), move(1, f"R{i}", p + "·to", i + 0.5, item=p)]
    _post(srv, one, "dock-1", events)
    _post(srv, held, "dock-9", [pick(1, p, i, item=p, scanner=p, reference=p, operator=p,
                                     station="dock-9", site="WH2")
                                for i, p in enumerate(PAYLOADS)])
    assert len(httpx.get(srv.url + "/v1/held").json()["held"]) == len(PAYLOADS)

    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         "--virtual-time-budget=3000", srv.url + "/?refresh=1"],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert 'id="open-item"' in dom, dom[:500]
    refreshes = dom.split('data-refreshes="')[1].split('"')[0]
    assert int(refreshes) >= 1, "the page's own refresh swapped fresh content in"
    assert "data-pwned" not in dom, "an injected script ran"
    for tag in ("injected-img", "injected-svg", "injected-b", "injected-a",
                "injected-iframe"):
        assert f'id="{tag}"' not in dom, f"an injected element {tag} is in the DOM"
    assert "<img" not in dom and "<iframe" not in dom
    assert dom.count("<svg") == 1, "only the page's own chart (incidents per day)"
    assert dom.count("<script") == 1, "only the page's own script"
    assert dom.count("<style") == 1, "only the page's own style"
    # the text is there, shown as text
    assert "&lt;script&gt;document.body.dataset.pwned" in dom
    assert "&lt;img src=x id=injected-img onerror=" in dom
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;b id=injected-b&gt;" in dom
