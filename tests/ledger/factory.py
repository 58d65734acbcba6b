"""Hand-built movement events for the ledger tests (DESIGN section 5 shape)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

BASE = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
_seq = itertools.count(1)


def at(minutes: float) -> str:
    """A timestamp ``minutes`` after 10:00 on the test day."""
    return (BASE + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(type: str, *, item: str = "04006381333931", qty: int = 1,
          frm: str | None = None, to: str | None = None, minute: float = 0.0,
          station: str = "dock-1", site: str = "WH1", scanner: str = "handheld",
          seq: int | None = None, voids: str | None = None, **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": str(uuid.uuid4()), "station": station, "site": site, "scanner": scanner,
        "seq": next(_seq) if seq is None else seq, "type": type, "item": item, "lot": None,
        "serial": None, "qty": qty, "from_location": frm, "to_location": to,
        "occurred_at": at(minute), "reference": None, "operator": None, "voids": voids,
        "clock": {"synced": True, "offset_ms": 0.0, "basis": "ntp"}, "raw": [],
    }
    ev.update(extra)
    return ev


def receipt(qty: int, to: str, minute: float, **kw: Any) -> dict[str, Any]:
    return event("receipt", qty=qty, to=to, minute=minute, **kw)


def pick(qty: int, frm: str, minute: float, **kw: Any) -> dict[str, Any]:
    return event("pick", qty=qty, frm=frm, minute=minute, **kw)


def move(qty: int, frm: str, to: str, minute: float, **kw: Any) -> dict[str, Any]:
    return event("move", qty=qty, frm=frm, to=to, minute=minute, **kw)


def count(qty: int, loc: str, minute: float, **kw: Any) -> dict[str, Any]:
    return event("count", qty=qty, to=loc, minute=minute, **kw)


def void(target: dict[str, Any], minute: float, **kw: Any) -> dict[str, Any]:
    kw.setdefault("station", target["station"])
    kw.setdefault("site", target["site"])
    return event("void", item=target["item"], qty=target["qty"], minute=minute,
                 voids=target["event_id"], **kw)


def batch(events: list[dict[str, Any]], station: str = "dock-1",
          watermark: str | None = None) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"station": station, "sent_at": now, "watermark": watermark or at(0),
            "events": events}
