"""Run ``scan-agent`` with the process's wall clock shifted, for the demo.

``python -m agent.demo_skew -600 run --config dock.toml`` behaves as if the machine's clock
were 600 s behind: ``time.time()`` and ``time.time_ns()`` are shifted, ``CLOCK_BOOTTIME`` is
not (as on a Pi that booted without network time). The demo uses Debian's ``faketime`` when it
is installed and this otherwise.
"""

from __future__ import annotations

import sys
import time

__all__ = ["main"]


def main() -> None:
    offset = float(sys.argv[1])
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + offset
    time.time_ns = lambda: real_time_ns() + int(offset * 1e9)
    sys.argv = ["scan-agent", *sys.argv[2:]]
    from agent.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
