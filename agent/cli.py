"""``scan-agent``: the command line (DESIGN section 9). Only this module exits.

Every command is a thin call into a library function; errors from the library become one
message on standard error and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError, DriverError
from agent.logs import setup_logging

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CONFIG = 2
EXIT_ERROR = 1

config_option = click.option(
    "--config", "-c", "config_path", required=True, metavar="FILE",
    type=click.Path(dir_okay=False),
    help="The dock's TOML config, e.g. /etc/scan-agent/dock-3.toml.",
)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"scan-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _fail(exc: AgentError | DriverError) -> None:
    click.echo(f"scan-agent: {exc}", err=True)
    sys.exit(EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scan-agent")
def main() -> None:
    """Barcode-scanner edge agent: scans become durable movements, synced to the ledger."""


@main.command()
@config_option
def run(config_path: str) -> None:
    """Run the station daemon in the foreground (what systemd runs)."""
    cfg = _load(config_path)
    setup_logging(cfg.log_level)
    from agent.daemon import run as run_daemon

    try:
        asyncio.run(run_daemon(cfg))
    except (AgentError, DriverError) as exc:
        _fail(exc)


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
def check_config(file: str) -> None:
    """Validate a dock config: exit 0, or non-zero with what is wrong and where."""
    cfg = _load(file)
    names = ", ".join(f"{s.name} ({s.driver})" for s in cfg.scanners) or "no scanners"
    click.echo(f"{file}: OK: station {cfg.station}, site {cfg.site}, {names}")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: str, as_json: bool) -> None:
    """Scanners, modes, queue depth, last scan and sync, clock offset, recent errors."""
    from agent.status import format_status
    from agent.status import status as read_status

    cfg = _load(config_path)
    try:
        s = read_status(cfg)
    except AgentError as exc:
        _fail(exc)
        return
    click.echo(json.dumps(s, indent=2) if as_json else format_status(s))


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--pending", is_flag=True, help="Only movements not yet synced.")
@click.option("--limit", "-n", default=None, type=click.IntRange(1, None),
              help="At most this many, the newest (default: the whole journal).")
def events(config_path: str, as_json: bool, pending: bool, limit: int | None) -> None:
    """The journal's movements, newest first."""
    from agent.status import events as read_events
    from agent.status import format_events

    cfg = _load(config_path)
    try:
        rows = read_events(cfg, pending=pending, limit=limit)
    except AgentError as exc:
        _fail(exc)
        return
    click.echo(json.dumps(rows, indent=2) if as_json else format_events(rows))


@main.command("new-journal")
@config_option
@click.option("--first-seq", required=True, type=click.IntRange(1, None),
              help="The seq of the first movement: one more than the last the ledger has.")
def new_journal(config_path: str, first_seq: int) -> None:
    """Start a new journal for a station whose journal was lost or damaged.

    Its seqs carry on from FIRST_SEQ instead of starting again at 1 (the ledger orders a
    station's movements by seq). Find the last seq the ledger has with
    GET /v1/events?station=NAME&limit=1.
    """
    from agent.journal import create_journal

    cfg = _load(config_path)
    try:
        create_journal(cfg.database, cfg.station, cfg.site, first_seq)
    except AgentError as exc:
        _fail(exc)
        return
    click.echo(f"{cfg.database}: new journal for station {cfg.station}; "
               f"the next movement gets seq {first_seq}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def devices(as_json: bool) -> None:
    """Scanner candidates on this machine (input and serial devices), with config snippets."""
    from drivers.discovery import format_candidates, list_candidates

    cands = list_candidates()
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps([asdict(c) for c in cands], indent=2))
    else:
        click.echo(format_candidates(cands))


@main.command()
@click.option("--keep", is_flag=True, help="Leave the ledger running for its dashboard.")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(0.1, 50),
              help="Scale the shift's pace (2 = twice as fast).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the demo's files here instead of a temporary directory.")
def demo(keep: bool, speed: float, workdir: str | None) -> None:
    """A warehouse shift on this machine, no hardware, no setup."""
    from agent.demo import run_demo

    try:
        ok = run_demo(keep=keep, speed=speed, workdir=workdir)
    except AgentError as exc:
        _fail(exc)
        return
    sys.exit(0 if ok else EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    main()
