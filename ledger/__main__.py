"""``python -m ledger`` is ``scan-ledger``."""

from ledger.cli import main

raise SystemExit(main())
