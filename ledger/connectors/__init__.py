"""Connectors into the ERP (DESIGN section 13): every accepted movement of a site forwarded
into the ERP's own stock ledger, exactly once, dated when it happened.

- :mod:`ledger.connectors.settings`: ``[[connectors]]`` and the credentials files;
- :mod:`ledger.connectors.plan`: the pure core (movement -> ERP operations, corrections);
- :mod:`ledger.connectors.forwarder`: one thread per connector over the store's outbox;
- :mod:`ledger.connectors.base`: the adapter interface; one adapter per ERP:
  :mod:`~ledger.connectors.tryton`, :mod:`~ledger.connectors.erpnext`,
  :mod:`~ledger.connectors.odoo`.

docs/connectors.md lists the exact calls per ERP.
"""

__all__: list[str] = []
