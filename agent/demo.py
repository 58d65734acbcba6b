"""``scan-agent demo``: a warehouse shift on one machine, with no hardware and no setup.

What runs, all real: the reference ledger on 127.0.0.1 (a free port, a temporary database);
three ``scan-agent run`` processes (receiving dock, put-away, picking), each reading a scanner
on a pseudo-terminal through the real serial driver; one fault proxy per station between it
and the ledger. The script types barcodes into the pseudo-terminals as operators would.

The story: goods are received, put away and picked. The receiving dock loses its network
while picking goes on, so the ledger sees picks and put-aways of stock it has not yet seen
arrive: negatives that resolve as ``ordering`` when the dock comes back. A pick from the wrong
bin stays a ``location`` negative; a pick of an item the warehouse never had stays an ``item``
negative; a double scan is flagged as a suspected duplicate and undone by the operator. The
put-away station runs with its wall clock 10 minutes behind, and its movements still land at
the right time.

It narrates from the agents' own log lines and the ledger's incident feed, prints a summary,
and returns True only if every expected outcome happened.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from agent.clock import parse_utc

__all__ = ["run_demo"]

SITE = "WH1"
SKEW_S = -600  # the put-away station's wall clock runs 10 minutes behind

# The demo's item list: letter -> (GTIN-13, name)
CATALOGUE = {
    "A": ("4006381333931", "mugs"),
    "B": ("5901234123457", "tea"),
    "C": ("4012345678901", "kettles"),  # received while the dock is offline, then picked
    "D": ("9780201379624", "books"),  # received while offline, moved on at once
    "E": ("8711253001202", "lamps"),  # never received anywhere
    "F": ("5449000000996", "lemonade"),  # the last bottle, scanned twice at the pick face
}
ITEMS = {k: gtin for k, (gtin, _) in CATALOGUE.items()}
NAMES = {gtin.rjust(14, "0"): name for gtin, name in CATALOGUE.values()}


def named(text: str) -> str:
    """``text`` with each of the demo's items (as the agent logs it: 14 digits) named.

    >>> named("pick 04012345678901 x4 (seq 2)")
    'pick 04012345678901 (kettles) x4 (seq 2)'
    """
    for gtin14, name in NAMES.items():
        text = re.sub(rf"\b{gtin14}\b", f"{gtin14} ({name})", text)
    return text


@dataclass
class Dock:
    station: str
    role: str
    location: str
    mode: str
    skewed: bool = False
    master: int = -1
    slave: int = -1
    port: str = ""
    proc: subprocess.Popen[str] | None = None
    proxy: Any = None
    token: str = ""
    config: Path = Path()
    ready: threading.Event = field(default_factory=threading.Event)
    written: list[tuple[str, float]] = field(default_factory=list)


class Narrator:
    """Prints one readable line per event, with the shift's elapsed time."""

    def __init__(self, speed: float) -> None:
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.speed = speed
        self.step = 0
        self.steps = 0

    def line(self, who: str, text: str, color: str | None = None) -> None:
        t = time.monotonic() - self.t0
        with self.lock:
            click.echo(f"{t:6.1f}s  " + click.style(f"{who:<9}", fg=color or "white", bold=True)
                       + f" {text}")

    def stage(self, text: str) -> None:
        self.step += 1
        with self.lock:
            bar = "#" * self.step + "." * (self.steps - self.step)
            click.echo(click.style(f"\n[{bar}] {self.step}/{self.steps} {text}", fg="cyan",
                                   bold=True))


# an agent's log line: its local time (the narrator shows the shift's own), level, logger
_AGENT_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} )?"
                         r"(?P<level>\w+) (?P<logger>[\w.]+): (?P<msg>.*)$")


def _pump(dock: Dock, n: Narrator, lines: queue.Queue[tuple[str, str]]) -> None:
    """Narrate one agent's log lines (its real output) as they arrive."""
    assert dock.proc is not None and dock.proc.stderr is not None
    for raw in dock.proc.stderr:
        raw = raw.rstrip("\n")
        lines.put((dock.station, raw))
        m = _AGENT_LINE.match(raw)
        msg = m.group("msg") if m else raw
        if " ready: " in msg:
            dock.ready.set()
        color = "green"
        if m and m.group("level") in ("WARNING", "ERROR"):
            color = "yellow" if m.group("level") == "WARNING" else "red"
        if msg.startswith("sync: ledger unreachable"):
            msg = "sync: ledger unreachable; scans stay queued in the journal"
        if m and m.group("logger") == "scan_agent.sync" and msg.startswith("synced"):
            color = "blue"
        n.line(dock.station, named(msg), color)


def _pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def _write_config(d: Dock, work: Path, url: str) -> None:
    token_file = work / f"{d.station}.token"
    token_file.write_text(d.token + "\n")
    token_file.chmod(0o600)
    d.config = work / f"{d.station}.toml"
    d.config.write_text(
        f'station = "{d.station}"\nsite = "{SITE}"\nmode = "{d.mode}"\n'
        f'location = "{d.location}"\ndatabase = "{work / d.station / "journal.db"}"\n\n'
        f'[ledger]\nurl = "{url}"\ntoken_file = "{token_file}"\ntimeout = 2.0\n'
        f"max_backoff = 1.0\n\n"
        f'[[scanners]]\nname = "{d.role}-gun"\ndriver = "serial"\nport = "{d.port}"\n'
        f'baudrate = 9600\nack = "\\u0006"\nnak = "\\u0015"\n')


def _agent_command(d: Dock) -> tuple[list[str], dict[str, str], str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(d.config)]
    how = ""
    if d.skewed:
        faketime = shutil.which("faketime")
        if faketime:
            cmd = [faketime, "-f", f"{SKEW_S:+d}s", *cmd]
            how = "faketime"
        else:
            cmd = [sys.executable, "-m", "agent.demo_skew", str(SKEW_S), *cmd[3:]]
            how = "a shifted wall clock in the process"
    return cmd, env, how


class Shift:
    """The scripted shift; every wait is scaled by ``speed``."""

    def __init__(self, docks: dict[str, Dock], n: Narrator, ledger_url: str, speed: float):
        self.docks, self.n, self.url, self.speed = docks, n, ledger_url, speed
        self.http = httpx.Client(base_url=ledger_url, timeout=5)
        self.seen: dict[str, tuple[str, str]] = {}

    def pause(self, s: float) -> None:
        deadline = time.monotonic() + s / self.speed
        while time.monotonic() < deadline:
            self.poll_incidents()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def scan(self, station: str, *texts: str, gap: float = 0.35) -> None:
        d = self.docks[station]
        for text in texts:
            os.write(d.master, text.encode() + b"\r")
            d.written.append((text, time.time()))
            self.pause(gap)

    def poll_incidents(self) -> None:
        try:
            incidents = self.http.get("/v1/negatives").json()["incidents"]
        except (httpx.HTTPError, ValueError, KeyError):
            return
        for inc in incidents:
            key = (inc["class"], inc["status"])
            if self.seen.get(inc["id"]) == key:
                continue
            first = inc["id"] not in self.seen
            self.seen[inc["id"]] = key
            item = NAMES.get(inc["item"], inc["item"])
            where = f"{item} at {inc['location']}"
            dup = " (suspected duplicate scan)" if inc.get("suspected_duplicate") else ""
            state = "provisional" if not inc.get("confirmed") else "confirmed"
            if inc["status"] == "resolved":
                event = self.event(inc.get("resolved_by_event_id"))
                if inc["class"] == "ordering":
                    text = (f"negative of {where} resolved: only the order the ledger heard "
                            "of things made it (ordering, self-correcting)")
                elif event is not None and event["type"] == "void":
                    what = "double read" if inc.get("suspected_duplicate") else "pick"
                    text = (f"negative of {where} resolved: the {what} was undone (CMD-UNDO at "
                            f"{event['station']}); no shortage")
                else:
                    text = (f"negative of {where} resolved by "
                            + (f"a {event['type']} from {event['station']}" if event
                               else "a later event"))
                color = "green"
            elif first:
                text = (f"NEGATIVE {where}: balance {inc['balance']}, class {inc['class']}, "
                        f"{state}{dup}")
                color = "magenta"
            else:
                text = f"negative of {where} is now class {inc['class']}"
                color = "magenta"
            self.n.line("ledger", text, color)

    def event(self, event_id: str | None) -> dict[str, Any] | None:
        """The ledger's stored event ``event_id``, if it has it."""
        return _event(self.http, event_id)

    def wait_drained(self, stations: list[str], timeout: float = 15) -> bool:
        from agent.journal import open_readonly

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = 0
            for s in stations:
                conn = open_readonly(self.docks[s].config.parent / s / "journal.db")
                try:
                    pending += conn.execute(
                        "SELECT count(*) FROM movements WHERE state = 'pending'").fetchone()[0]
                finally:
                    conn.close()
            if pending == 0:
                self.poll_incidents()
                return True
            self.pause(0.2 * self.speed)
        return False

    def run(self) -> None:
        n, g = self.n, ITEMS
        n.stage("morning: goods arrive at the receiving dock")
        self.scan("recv", "USER-maria", "REF-PO-4711", "QTY-10", g["A"], "QTY-5", g["B"],
                  "QTY-1", g["F"], "hello-world")
        n.stage("put-away (its clock is 10 minutes behind) moves them to their bins")
        self.scan("putaway", "USER-tom", "LOC-DOCK-1", "LOC-A-01", "QTY-10", g["A"],
                  "LOC-DOCK-1", "LOC-B-01", "QTY-5", g["B"], "LOC-DOCK-1", "LOC-F-01", g["F"])
        self.wait_drained(["recv", "putaway"])
        n.stage("picking starts")
        self.scan("pick", "USER-ana", "REF-SO-1001", "LOC-A-01", "QTY-3", g["A"])
        n.stage("the receiving dock loses its network; it keeps scanning")
        self.docks["recv"].proxy.faults.down = True
        self.docks["recv"].proxy.cut()
        self.pause(0.3)
        self.scan("recv", "REF-PO-4712", "QTY-12", g["C"], "QTY-8", g["D"])
        n.stage("picking and put-away go on with stock the ledger has not seen arrive")
        self.scan("pick", "REF-SO-1002", "LOC-DOCK-1", "QTY-4", g["C"])
        self.scan("putaway", "LOC-DOCK-1", "LOC-D-01", "QTY-8", g["D"])
        self.pause(1.0)
        n.stage("mistakes: a pick from the wrong bin, a pick of an item never received")
        self.scan("pick", "REF-SO-1003", "LOC-A-01", "QTY-2", g["B"])
        self.scan("pick", "REF-SO-1004", "LOC-A-01", g["E"])
        n.stage("a double scan of the last bottle; the operator undoes it")
        # A second read, not a bounce: at any --speed, further apart than a debounce
        # window a dock might set (300 ms is usual), which would swallow it.
        self.scan("pick", "REF-SO-1005", "LOC-F-01", g["F"], gap=max(0.6, 0.5 * self.speed))
        self.scan("pick", g["F"], gap=1.2)
        self.scan("pick", "CMD-UNDO", gap=0.5)
        self.pause(1.0)
        n.stage("the receiving dock's network returns")
        self.docks["recv"].proxy.faults.down = False
        self.wait_drained(list(self.docks))
        self.pause(1.0)


def _event(http: httpx.Client, event_id: str | None) -> dict[str, Any] | None:
    """The ledger's stored event ``event_id`` (None if unknown or unreachable)."""
    if event_id is None:
        return None
    try:
        events = http.get("/v1/events", params={"limit": 10000}).json()["events"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return next((e for e in events if e["event_id"] == event_id), None)


# What each kind of negative was, for someone who has not read the design.
_KINDS = {
    "ordering": "timing only, resolved by itself (ordering)",
    "location": "stock is in another bin (location)",
    "item": "a real shortage of the item (item)",
    "undone": "a double read, undone at the scanner",
}


def _kind(inc: dict[str, Any], http: httpx.Client) -> str:
    """An incident's kind for the summary: its class, or "undone" when its depletion was
    voided (a double read is not a shortage, whatever class it had while it stood)."""
    if inc["status"] == "resolved" and inc["class"] != "ordering":
        event = _event(http, inc.get("resolved_by_event_id"))
        if event is not None and event["type"] == "void":
            return "undone"
    return str(inc["class"])


def _summary(docks: dict[str, Dock], http: httpx.Client) -> tuple[list[str], dict[str, Any]]:
    from agent.journal import open_readonly

    out = ["", click.style("Summary", bold=True), "",
           f"  {'station':<10} {'scans':>6} {'rejected':>9} {'movements':>10} {'synced':>7}"]
    facts: dict[str, Any] = {"stations": {}}
    for s, d in docks.items():
        conn = open_readonly(d.config.parent / s / "journal.db")
        try:
            scans = conn.execute("SELECT count(*) FROM scans").fetchone()[0]
            rej = conn.execute("SELECT count(*) FROM scans WHERE outcome = 'rejected'"
                               ).fetchone()[0]
            moves = conn.execute("SELECT count(*) FROM movements").fetchone()[0]
            synced = conn.execute("SELECT count(*) FROM movements WHERE state = 'synced'"
                                  ).fetchone()[0]
        finally:
            conn.close()
        facts["stations"][s] = {"scans": scans, "rejected": rej, "movements": moves,
                                "synced": synced}
        out.append(f"  {s:<10} {scans:>6} {rej:>9} {moves:>10} {synced:>7}")
    incidents = http.get("/v1/negatives").json()["incidents"]
    facts["incidents"] = incidents
    kinds = {i["id"]: _kind(i, http) for i in incidents}
    facts["kinds"] = kinds
    out += ["", f"  {'negatives the ledger found':<44} {'count':>5} {'resolved':>9} "
                f"{'open':>5}"]
    for kind, label in _KINDS.items():
        of = [i for i in incidents if kinds[i["id"]] == kind]
        res = sum(1 for i in of if i["status"] == "resolved")
        out.append(f"  {label:<44} {len(of):>5} {res:>9} {len(of) - res:>5}")
    still = [i for i in incidents if i["status"] == "open"]
    if still:
        out += ["", "  Still open, for a person to look at (what the manager's page shows):"]
        for i in still:
            state = ("confirmed: no station can still send anything older" if i["confirmed"]
                     else "provisional: a station may still send what explains it")
            out.append(f"    {NAMES.get(i['item'], i['item'])} at {i['location']}: balance "
                       f"{i['balance']}, {i['class']}, {state}")
    return out, facts


def _check(docks: dict[str, Dock], facts: dict[str, Any], http: httpx.Client) -> list[str]:
    """Every outcome the shift must show; returns what failed."""
    fails: list[str] = []
    inc = facts["incidents"]
    a14 = {k: v.rjust(14, "0") for k, v in ITEMS.items()}

    def find(item: str, loc: str) -> list[dict[str, Any]]:
        return [i for i in inc if i["item"] == a14[item] and i["location"] == loc]

    for s, f in facts["stations"].items():
        if f["synced"] != f["movements"]:
            fails.append(f"{s}: {f['movements'] - f['synced']} movement(s) not synced")
    for i in inc:
        if i["status"] == "open" and not i["confirmed"]:
            fails.append(f"expected the open negative of {NAMES.get(i['item'], i['item'])} at "
                         f"{i['location']} confirmed once every station stopped cleanly")
    for item, loc in (("C", "DOCK-1"), ("D", "DOCK-1")):
        got = find(item, loc)
        if not got or any(i["class"] != "ordering" or i["status"] != "resolved" for i in got):
            fails.append(f"expected the offline dock's negative {item}@{loc} to resolve as "
                         f"ordering, got {[(i['class'], i['status']) for i in got]}")
    got = find("B", "A-01")
    if not got or got[0]["class"] != "location" or got[0]["status"] != "open":
        fails.append(f"expected a location negative for the wrong-bin pick, got {got}")
    got = find("E", "A-01")
    if not got or got[0]["class"] != "item" or got[0]["status"] != "open":
        fails.append(f"expected an item negative for the never-received item, got {got}")
    got = find("F", "F-01")
    if not any(i.get("suspected_duplicate") and i["status"] == "resolved"
               and facts["kinds"][i["id"]] == "undone" for i in got):
        fails.append(f"expected the double scan flagged as a suspected duplicate and undone, "
                     f"got {got}")
    # The skewed put-away station: its movements landed at the true time, not 10 min early.
    events = http.get("/v1/events", params={"station": "putaway", "limit": 1000}).json()["events"]
    writes = [t for text, t in docks["putaway"].written if text.lstrip("0").isdigit()]
    items = sorted(events, key=lambda e: e["seq"])
    if len(items) != len(writes):
        fails.append(f"putaway: {len(items)} events for {len(writes)} item scans")
    errs = [abs(parse_utc(e["occurred_at"]) / 1e9 - t)
            for e, t in zip(items, writes, strict=False)]
    for e, err in zip(items, errs, strict=False):
        if err > 1.0:
            fails.append(f"putaway seq {e['seq']}: occurred_at off by {err:.1f}s")
    stations = {s["station"]: s for s in http.get("/v1/stations").json()["stations"]}
    offset = stations.get("putaway", {}).get("clock_offset_ms")
    if errs and offset is not None:
        way = "behind" if offset > 0 else "ahead of"
        click.echo(f"\nputaway's wall clock was {abs(offset) / 1000:.0f} s {way} the ledger's; "
                   f"its movements were still dated within {max(errs) * 1000:.0f} ms of when "
                   "they were scanned.")
    return fails


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        if p.exists() and any(p.iterdir()):
            raise click.UsageError(f"--workdir {path} is not empty")
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix="scan-agent-demo-") as d:
            yield Path(d)


def run_demo(*, keep: bool = False, speed: float = 1.0, workdir: str | None = None) -> bool:
    """Run the shift; True if every expected outcome happened."""
    import asyncio

    from agent.faultproxy import FaultProxy
    from ledger.server import LedgerServer

    n = Narrator(speed)
    n.steps = 8
    docks = {
        "recv": Dock("recv", "receiving", "DOCK-1", "receipt"),
        "putaway": Dock("putaway", "putaway", "DOCK-1", "move", skewed=True),
        "pick": Dock("pick", "picking", "A-01", "pick"),
    }
    t_start = time.monotonic()
    with _workdir(workdir) as work, LedgerServer(work / "ledger.db") as ledger:
        _name_items(ledger)
        click.echo(click.style("scan-agent demo: one warehouse shift", bold=True)
                   + f"  (ledger {ledger.url}, files in {work})")
        click.echo("items: " + ", ".join(f"{name} {gtin}" for gtin, name in CATALOGUE.values())
                   + "\n(the agents log items as 14-digit GTINs; the demo adds their names)")
        loop = asyncio.new_event_loop()
        proxy_thread = threading.Thread(target=loop.run_forever, name="proxies", daemon=True)
        proxy_thread.start()
        lines: queue.Queue[tuple[str, str]] = queue.Queue()
        pumps: list[threading.Thread] = []
        try:
            for d in docks.values():
                d.token = ledger.add_station(d.station, site=SITE)
                d.proxy = FaultProxy(ledger.url)
                asyncio.run_coroutine_threadsafe(d.proxy.start(), loop).result(5)
                d.master, d.slave, d.port = _pty()
                _write_config(d, work, d.proxy.url)
                cmd, env, how = _agent_command(d)
                d.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True, errors="replace", start_new_session=True)
                pump = threading.Thread(target=_pump, args=(d, n, lines), daemon=True)
                pump.start()
                pumps.append(pump)
                extra = f", wall clock {SKEW_S // 60:+d} min via {how}" if how else ""
                n.line("demo", f"started {d.station} ({d.role}, default {d.mode} at "
                       f"{d.location}, scanner on {d.port}{extra})")
            for d in docks.values():
                if not d.ready.wait(15):
                    raise click.ClickException(f"{d.station} did not start; see its log above")
            shift = Shift(docks, n, ledger.url, speed)
            shift.run()
            _stop_agents(docks)
            for t in pumps:
                t.join(5)
            lines_out, facts = _summary(docks, shift.http)
            for line in lines_out:
                click.echo(line)
            fails = _check(docks, facts, shift.http)
            elapsed = time.monotonic() - t_start
            click.echo("")
            if fails:
                click.echo(click.style("Some expected outcomes did not happen:", fg="red",
                                       bold=True))
                for f in fails:
                    click.echo(f"  - {f}")
            else:
                click.echo(click.style(
                    "Every expected outcome happened: timing negatives resolved by themselves "
                    "as 'ordering', the double read was undone; the wrong bin and the real "
                    "shortage stay open for a person, confirmed once every station had "
                    "stopped.", fg="green", bold=True))
            click.echo(f"(the shift took {elapsed:.1f}s)")
            if keep:
                manager = ledger.add_manager("manager")
                still_open = shift.http.get("/v1/negatives", params={"status": "open"}).json()[
                    "incidents"]
                one = still_open[0]["id"] if still_open else "ID"
                # a Ctrl-C as soon as this is shown stops it cleanly too, and does even when
                # the demo was started with SIGINT ignored (a shell's background job)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                with contextlib.suppress(KeyboardInterrupt):
                    click.echo(f"\nThe ledger keeps running (database {work / 'ledger.db'}):\n"
                               f"  dashboard  {ledger.url}/\n"
                               f"  JSON       {ledger.url}/v1/negatives\n"
                               f"  a note     curl -H 'Authorization: Bearer {manager}' "
                               "-H 'Content-Type: application/json' -d '{\"text\": \"Counted "
                               f"it.\"}}' {ledger.url}/v1/negatives/{one}/notes\n"
                               "Press Ctrl-C to stop it.")
                    while True:  # not signal.pause(): a Ctrl-C just before it was lost
                        time.sleep(1)
            else:
                click.echo("The ledger stopped with the demo; 'scan-agent demo --keep' leaves "
                           "it running to browse its dashboard.")
            return not fails
        finally:
            _stop_agents(docks)
            for d in docks.values():
                if d.proxy is not None:
                    with contextlib.suppress(Exception):
                        asyncio.run_coroutine_threadsafe(d.proxy.close(), loop).result(5)
                for fd in (d.master, d.slave):
                    if fd >= 0:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                d.master = d.slave = -1
            loop.call_soon_threadsafe(loop.stop)
            proxy_thread.join(5)
            loop.close()


# what the manager's page shows beside the item codes
ITEM_NAMES = {"A": "Mug, stoneware 0.3 l", "B": "Green tea, 250 g", "C": "Kettle, 1.7 l",
              "D": "Book: The Art of Computer Programming", "E": "Desk lamp, LED",
              "F": "Lemonade, 0.33 l"}


def _name_items(ledger: Any) -> None:
    """Import the demo's item names into its ledger (as ``scan-ledger items import`` does)."""
    ledger.import_items([(ITEMS[k].rjust(14, "0"), name) for k, name in ITEM_NAMES.items()])


def _stop_agents(docks: dict[str, Dock]) -> None:
    # each agent runs in its own process group, so faketime and its child both get the signal
    for d in docks.values():
        if d.proc is not None and d.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.proc.pid, signal.SIGTERM)
    for d in docks.values():
        if d.proc is not None:
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(d.proc.pid, signal.SIGKILL)
                d.proc.wait()
