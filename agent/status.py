"""What ``scan-agent status`` and ``scan-agent events`` report, read from the journal.

These open the journal read-only, so they work while the daemon runs (WAL lets readers in
beside the writer) and after it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.grammar import printable
from agent.incidents import SHOWN, WINDOW, about_incidents, still_true
from agent.journal import (
    LedgerView,
    ledger_view,
    movement_rows,
    open_readonly,
    status_rows,
    warned_movements,
)

__all__ = ["events", "format_events", "format_status", "status"]


def status(cfg: Config, now: float | None = None) -> dict[str, Any]:
    """Scanners, modes, queue depth, last scan, last sync, clock offset, recent errors."""
    now = time.time() if now is None else now
    journal = Path(cfg.database).exists()
    if journal:
        conn = open_readonly(cfg.database)
        try:
            rows = status_rows(conn)
            view = ledger_view(conn)
            warned = still_true(warned_movements(conn, WINDOW), view, SHOWN)
        finally:
            conn.close()
        meta, counts, top_seq, oldest = (rows["meta"], rows["counts"], rows["top_seq"],
                                         rows["oldest"])
        states, last, alerts, rejects = (rows["states"], rows["last"], rows["alerts"],
                                         rows["rejects"])
        sessions = {k: json.loads(v) for k, v in rows["sessions"].items()}
    else:  # the agent has not run with this config yet: nothing captured
        meta, counts, states, sessions, last = {}, {}, {}, {}, {}
        top_seq, oldest, alerts, rejects, warned = 0, None, [], [], []
        view = LedgerView(None, None, (), None, None)

    running = agent_running(meta)
    scanners = []
    for sc in cfg.scanners:
        st = states.get(sc.name, {})
        if not running and (not st or st["connected"]):  # stale: the agent died holding it
            st = {"connected": 0,
                  "detail": "agent not running" if journal else "agent has not run yet"}
        sess = sessions.get(sc.name, {})
        ls = last.get(sc.name)
        scanners.append({
            "name": sc.name, "driver": sc.driver,
            "connected": bool(st["connected"]) if st else None,
            "detail": st.get("detail") if st else None,
            "mode": sess.get("mode", sc.mode or cfg.mode),
            "from_location": sess.get("from_location"), "to_location": sess.get("to_location"),
            "operator": sess.get("operator"), "reference": sess.get("reference"),
            "last_scan": None if not ls else {
                "at": ls["at"], "text": printable(ls["text"], 60), "outcome": ls["outcome"],
                "reason": ls["reason"]},
        })
    last_ok = float(meta["sync.last_ok"]) if meta.get("sync.last_ok") else None
    offset = meta.get("sync.offset_ms")
    return {
        "station": cfg.station, "site": cfg.site, "database": cfg.database,
        "journal": "ok" if journal else "not created yet: the agent has not run with this config",
        "running": running,
        "pid": int(meta["agent.pid"]) if running else None,
        "ledger": cfg.ledger.url if cfg.ledger else None,
        "scanners": scanners,
        "queue": {
            "pending": counts.get("pending", 0), "rejected": counts.get("rejected", 0),
            "synced": counts.get("synced", 0),
            "oldest_pending_age_s": round(now - oldest["wall_time"], 1) if oldest else None,
            # meta's next_seq is only the floor prune leaves; the journal's rows are the truth
            "next_seq": max(top_seq + 1, int(meta.get("next_seq", "1"))),
        },
        "sync": {
            "last_ok": last_ok,
            "last_ok_age_s": round(now - last_ok, 1) if last_ok else None,
            "last_error": meta.get("sync.last_error"),
            "clock_offset_ms": float(offset) if offset not in (None, "None") else None,
            "clock_basis": meta.get("sync.basis", "none"),
            "rtt_ms": _float(meta.get("sync.rtt_ms")),
        },
        "recent_errors": [
            {"at": a["at"], "source": a["source"], "message": printable(a["message"], 200)}
            for a in alerts
        ],
        "recent_rejections": [
            {"at": r["at"], "scanner": r["scanner"], "text": printable(r["text"], 60),
             "reason": r["reason"]} for r in rejects
        ],
        # the ledger's warnings that still hold (agent.incidents): the ledger's open
        # incidents as sync last read them, and what this journal knows since
        "ledger_warnings": warned,
        "ledger_asked": {
            "basis": "ledger" if view.asked_at is not None else "journal",
            "at": view.asked_at,
            "age_s": round(now - view.asked_at, 1) if view.asked_at is not None else None,
            "error": view.error,
            "error_at": view.error_at,
        },
    }


def agent_running(meta: dict[str, str]) -> bool:
    """Whether the daemon that last opened this journal is still running on this boot."""
    from agent.clock import boot_id

    pid = meta.get("agent.pid")
    if not pid or not pid.isdigit() or meta.get("agent.boot_id") != boot_id():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"agent" in cmdline  # a reused pid of another program does not count


def _float(v: str | None) -> float | None:
    try:
        return None if v is None or v == "None" else float(v)
    except ValueError:
        return None


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    d = max(0.0, now - t)
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    return f"{d / 3600:.1f}h ago"


def format_status(s: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    q, sy = s["queue"], s["sync"]
    state = f"running (pid {s['pid']})" if s["running"] else "NOT RUNNING"
    journal = s["database"] if s["journal"] == "ok" else f"{s['database']} ({s['journal']})"
    lines = [f"station {s['station']} (site {s['site']})   agent {state}",
             f"journal {journal}",
             f"ledger  {s['ledger'] or '(none configured: capture only)'}", "", "scanners:"]
    for sc in s["scanners"]:
        conn = {True: "connected", False: "DISCONNECTED", None: "unknown"}[sc["connected"]]
        if sc["connected"] is False and sc["detail"]:
            conn += f" ({sc['detail']})"
        locs = " ".join(f"{k}={sc[k + '_location']}" for k in ("from", "to")
                        if sc[k + "_location"])
        lines.append(f"  {sc['name']:<14} {sc['driver']:<7} {conn:<14} mode={sc['mode']} {locs}")
        if sc["last_scan"]:
            ls = sc["last_scan"]
            tail = f": {ls['reason']}" if ls["reason"] else ""
            lines.append(f"  {'':<14} last scan {_ago(ls['at'], now)} '{ls['text']}' "
                         f"{ls['outcome']}{tail}")
    offset = sy["clock_offset_ms"]
    lines += [
        "",
        f"queue:  {q['pending']} pending, {q['rejected']} rejected (quarantined), "
        f"{q['synced']} synced"
        + (f"; oldest pending {q['oldest_pending_age_s']:.0f}s" if q["oldest_pending_age_s"]
           is not None else ""),
        f"sync:   last success {_ago(sy['last_ok'], now)}"
        + (f"; last error: {sy['last_error']}" if sy["last_error"] else ""),
        "clock:  " + (f"offset {offset:+.1f} ms to the ledger (basis {sy['clock_basis']}, "
                      f"rtt {sy['rtt_ms']} ms)" if offset is not None else
                      "no ledger time yet (basis: local wall clock)"),
    ]
    if s["recent_errors"]:
        lines += ["", "recent errors:"]
        lines += [f"  {_ago(e['at'], now):>9}  {e['source']}: {e['message']}"
                  for e in s["recent_errors"]]
    if s["recent_rejections"]:
        lines += ["", "recent rejected scans:"]
        lines += [f"  {_ago(r['at'], now):>9}  {r['scanner']}: '{r['text']}': {r['reason']}"
                  for r in s["recent_rejections"]]
    if s["ledger_warnings"]:
        lines += ["", *_warnings_heading(s["ledger_asked"], now)]
        lines += [_warning_line(w, s["ledger_asked"]["at"] is not None)
                  for w in s["ledger_warnings"]]
    return "\n".join(lines)


def _warnings_heading(asked: dict[str, Any], now: float) -> list[str]:
    if asked["at"] is None:  # the journal's view: what another dock did is not seen
        return ["ledger warnings, as the ledger answered each movement (less what this "
                "station undid or recounted since):",
                f"  (asking the ledger which still hold failed {_ago(asked['error_at'], now)}: "
                f"{asked['error']})" if asked["error"] else
                "  (the ledger not asked yet which still hold)"]
    out = [f"ledger warnings that still hold (negatives as the ledger answered, asked "
           f"{_ago(asked['at'], now)}):"]
    if asked["error"] and (asked["error_at"] or 0) > asked["at"]:
        out.append(f"  (asking again failed {_ago(asked['error_at'], now)}: "
                   f"{asked['error']}; shown as the ledger last answered)")
    return out


def _warning_line(w: dict[str, Any], asked: bool) -> str:
    line = f"  seq {w['seq']}: {'; '.join(w['warnings'])}"
    if w["incidents"]:
        line += "  [" + "; ".join(
            f"incident {i['id']} open, class {i['class']}, "
            + ("confirmed" if i["confirmed"] else "provisional") for i in w["incidents"]) + "]"
    elif asked and not w["checked"] and any(map(about_incidents, w["warnings"])):
        line += "  [the ledger not asked since]"
    return line


def events(cfg: Config, *, pending: bool = False, limit: int | None = None
           ) -> list[dict[str, Any]]:
    """Journaled movements, newest first (none before the agent's first run)."""
    if not Path(cfg.database).exists():
        return []
    conn = open_readonly(cfg.database)
    try:
        rows = movement_rows(conn, pending=pending, limit=limit)
    finally:
        conn.close()
    for r in rows:
        r["raw"] = json.loads(r["raw"])
        r["warnings"] = json.loads(r["warnings"]) if r["warnings"] else []
    return rows


def format_events(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no movements)"
    head = f"{'seq':>6}  {'time (local)':<19}  {'type':<7} {'item':<15} {'qty':>5}  " \
           f"{'from':<10} {'to':<10} {'state':<9} note"
    out = [head]
    for r in rows:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["wall_time"]))
        note = r["result"] or ""
        if r["voids"]:
            note = f"voids {r['voids'][:8]}… {note}"
        if r["reason"]:
            note += f" {r['reason']}"
        if r["warnings"]:
            note += " ⚠ " + "; ".join(r["warnings"])
        out.append(f"{r['seq']:>6}  {t:<19}  {r['type']:<7} {r['item']:<15} {r['qty']:>5}  "
                   f"{r['from_location'] or '':<10} {r['to_location'] or '':<10} "
                   f"{r['state']:<9} {note.strip()}")
    return "\n".join(out)
