"""What the dock agent and the ledger both use, and neither owns: strict TOML tables and
systemd's notify protocol. Imports nothing from ``agent``, ``drivers`` or ``ledger``."""
