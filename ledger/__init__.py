"""scan-ledger: the reference central ledger for scan-agent stations.

Idempotent ingest of movement events, balances in recorded and occurrence order, negative
balances detected and classified by cause (posting order, wrong location, real shortage),
holds for sites that forbid negative stock, webhook alerts and a dashboard; history behind the
sites' horizons settled out of memory into snapshots, so memory and start-up do not grow with
it. See docs/ledger.md.

Public surface:

* ``scan-ledger`` (:mod:`ledger.cli`): ``serve``, ``station add|list|revoke``, ``check-config``,
  ``events`` and ``negatives`` (a running ledger's paged lists, via :mod:`ledger.client`);
* :class:`ledger.server.LedgerServer`: the real server on a background thread;
* :func:`ledger.config.load_config`, :class:`ledger.engine.Ledger` (the pure core),
  :mod:`ledger.errors`.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
