"""scan-agent: the dock station daemon (capture, journal, sync) and its command line.

The command line is ``scan-agent`` (:mod:`agent.cli`). Library entry points: load a dock
config with :func:`agent.config.load_config`, run a station with :class:`agent.daemon.Agent`.
"""

__all__: list[str] = []
