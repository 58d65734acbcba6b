"""The one interface every ERP adapter implements, as every scanner driver implements one.

An adapter is blocking (it runs on its connector's own thread, never on the event loop) and
knows one ERP's API. It

- ``find(op)``: looks for the record that carries ``op.key`` (an ``event_id``, or
  ``<event_id>><count_id>`` for a correction) and, if one exists, finishes it (a record left
  half-done by a crash) and returns it: this is how a connector that crashed or lost an
  answer avoids creating a movement twice;
- ``post(op)``: creates the record, carrying ``op.key``, and returns it;
- raises :class:`~ledger.errors.Unmapped` when the ERP has no product, location or
  warehouse for the movement, and :class:`~ledger.errors.ConnectorError` for everything
  else that went wrong (down, slow, refused), with a message that holds no secret.

``reevaluates_counts`` says whether the ERP keeps a count's quantity when an earlier-dated
movement is posted after it (ERPNext reposts); ``sees(later_t, count_t)`` whether a count
posted at ``count_t`` takes into account a movement the ERP already holds dated ``later_t``
(Tryton: the same day, as it keeps dates only; Odoo: always, as it dates everything "now").
See :mod:`ledger.connectors.plan`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from ledger.connectors.plan import Op, Posted

__all__ = ["Adapter", "to_datetime"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(t: int) -> datetime:
    """Microseconds since the epoch -> an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=t)


class Adapter(Protocol):
    kind: str
    reevaluates_counts: bool

    def sees(self, later_t: int, count_t: int) -> bool: ...
    def find(self, op: Op) -> Posted | None: ...
    def post(self, op: Op) -> Posted: ...
    def close(self) -> None: ...
