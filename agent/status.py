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
from agent.journal import open_readonly

__all__ = ["events", "format_events", "format_status", "status"]


def status(cfg: Config, now: float | None = None) -> dict[str, Any]:
    """Scanners, modes, queue depth, last scan, last sync, clock offset, recent errors."""
    now = time.time() if now is None else now
    journal = Path(cfg.database).exists()
    if journal:
        conn = open_readonly(cfg.database)
        try:
            meta = {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")}
            counts = {r[0]: r[1] for r in conn.execute(
                "SELECT state, count(*) FROM movements GROUP BY state")}
            top_seq = conn.execute("SELECT max(seq) FROM movements").fetchone()[0] or 0
            oldest = conn.execute("SELECT seq, wall_time FROM movements WHERE state = 'pending'"
                                  " ORDER BY seq LIMIT 1").fetchone()
            states = {r["scanner"]: dict(r) for r in conn.execute("SELECT * FROM scanners")}
            sessions = {r["scanner"]: json.loads(r["state"]) for r in conn.execute(
                "SELECT scanner, state FROM sessions")}
            last = {r["scanner"]: dict(r) for r in conn.execute(
                "SELECT scanner, max(wall_time) AS at, text, outcome, reason FROM scans"
                " GROUP BY scanner")}
            alerts = [dict(r) for r in conn.execute(
                "SELECT at, source, message FROM alerts ORDER BY id DESC LIMIT 10")]
            rejects = [dict(r) for r in conn.execute(
                "SELECT wall_time AS at, scanner, text, reason FROM scans"
                " WHERE outcome = 'rejected' ORDER BY id DESC LIMIT 10")]
            warned = _still_true(conn)
        finally:
            conn.close()
    else:  # the agent has not run with this config yet: nothing captured
        meta, counts, states, sessions, last = {}, {}, {}, {}, {}
        top_seq, oldest, alerts, rejects, warned = 0, None, [], [], []

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
        "ledger_warnings": [
            {"seq": w["seq"], "warnings": json.loads(w["warnings"])} for w in warned
        ],
    }


_NEGATIVE = "negative balance at "  # the ledger's warning on a depletion it found negative


def _still_true(conn: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The newest ledger warnings that this station's own journal has not made stale.

    A warning is the ledger's word at the time it took the movement. Since then the
    operator may have undone the movement (its void ends every warning on it), or counted
    the item in the bin it went negative in (a later count settles that negative, so the
    ledger resolves the incident). What another station sends can resolve an incident too;
    the station cannot see that, and the ledger's page is the place for it.
    """
    rows = [dict(r) for r in conn.execute(
        "SELECT seq, event_id, item, from_location, warnings FROM movements"
        " WHERE warnings IS NOT NULL ORDER BY seq DESC LIMIT ?", (limit * 5,))]
    if not rows:
        return []
    ids = [r["event_id"] for r in rows]
    marks = ",".join("?" * len(ids))
    voided = {v for (v,) in conn.execute(
        f"SELECT voids FROM movements WHERE voids IN ({marks})", ids)}
    items = sorted({r["item"] for r in rows})
    counted = {(i, loc): seq for i, loc, seq in conn.execute(
        f"SELECT item, to_location, max(seq) FROM movements WHERE type = 'count'"
        f" AND item IN ({','.join('?' * len(items))}) GROUP BY item, to_location", items)}
    out = []
    for r in rows:
        if r["event_id"] in voided:
            continue
        settled = counted.get((r["item"], r["from_location"]), 0) > r["seq"]
        warnings = [w for w in json.loads(r["warnings"])
                    if not (settled and str(w).startswith(_NEGATIVE))]
        if warnings:
            out.append({"seq": r["seq"], "warnings": json.dumps(warnings)})
    return out[:limit]


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
        lines += ["", "ledger warnings (on movements not since undone or recounted here):"]
        lines += [f"  seq {w['seq']}: {'; '.join(w['warnings'])}" for w in s["ledger_warnings"]]
    return "\n".join(lines)


def events(cfg: Config, *, pending: bool = False, limit: int | None = None
           ) -> list[dict[str, Any]]:
    """Journaled movements, newest first (none before the agent's first run)."""
    if not Path(cfg.database).exists():
        return []
    conn = open_readonly(cfg.database)
    try:
        where = "WHERE state = 'pending'" if pending else ""
        rows = [dict(r) for r in conn.execute(
            f"SELECT seq, event_id, scanner, type, item, lot, serial, qty, from_location,"
            f" to_location, reference, operator, voids, wall_time, occurred_at, state, result,"
            f" reason, warnings, raw FROM movements {where} ORDER BY seq DESC LIMIT ?",
            (-1 if limit is None else limit,))]
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
