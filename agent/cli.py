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
EXIT_NOT_RUNNING = 3  # status: the agent is not running (as `systemctl is-active` says)

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
    """Validate a dock config: exit 0, or non-zero with what is wrong and where.

    Besides the file itself: the ledger token it names can be read (with
    $CREDENTIALS_DIRECTORY set, the systemd credential), there is a scanner, and the metrics
    textfile is somewhere the shipped unit can write (else a warning).
    """
    from agent.preflight import check_dock

    cfg = _load(file)
    try:
        warnings = check_dock(cfg)
    except ConfigError as exc:
        _fail(exc)
        return
    for w in warnings:
        click.echo(f"scan-agent: warning: {w}", err=True)
    names = ", ".join(f"{s.name} ({s.driver})" for s in cfg.scanners) or "no scanners"
    click.echo(f"{file}: OK: station {cfg.station}, site {cfg.site}, {names}")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: str, as_json: bool) -> None:
    """Scanners, modes, queue depth, last scan and sync, clock offset, recent errors.

    Exits 0 when the agent is running and 3 when it is not, whatever it prints (the codes
    systemctl uses for a unit that is active or not); 2 for a bad config file.
    """
    from agent.status import format_status
    from agent.status import status as read_status

    cfg = _load(config_path)
    try:
        s = read_status(cfg)
    except AgentError as exc:
        _fail(exc)
        return
    click.echo(json.dumps(s, indent=2) if as_json else format_status(s))
    sys.exit(0 if s["running"] else EXIT_NOT_RUNNING)


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
    station's movements by seq). The last seq the ledger has is that of the station's newest
    event, GET /v1/events?station=NAME&limit=1; FIRST_SEQ is one more.
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


@main.command("calibration-barcode")
@click.option("--output", "-o", required=True, metavar="FILE",
              help="Where to write the SVG image ('-' for standard output).")
def calibration_barcode(output: str) -> None:
    """Write the layout finder's calibration barcode: an SVG to print at 100%, landscape."""
    from drivers.calibration_barcode import CALIBRATION_TEXT, save_svg  # no libxkbcommon

    try:
        save_svg(output)
    except DriverError as exc:
        _fail(exc)
    if output != "-":
        click.echo(f"{output}: Code 128 of every printable ASCII character: {CALIBRATION_TEXT}")


@main.command("find-layout")
@click.option("--config", "-c", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="The dock's TOML config: listen on one of its evdev scanners.")
@click.option("--scanner", metavar="NAME", help="The [[scanners]] name to listen on.")
@click.option("--recording", metavar="FILE", type=click.Path(dir_okay=False),
              help="Decode a saved recording instead of listening.")
@click.option("--save", metavar="FILE", type=click.Path(dir_okay=False),
              help="Save the calibration scan's key events as a recording.")
def find_layout(config_path: str | None, scanner: str | None, recording: str | None,
                save: str | None) -> None:
    """Find the keyboard layout a wedge scanner is set to, from the calibration barcode.

    Print the barcode with `scan-agent calibration-barcode`, then either listen on a
    configured scanner (--config FILE --scanner NAME) and scan it, or decode a recording
    (--recording FILE). The key events are decoded under every layout this machine's XKB
    data knows; those that give the barcode's text exactly are listed, with the config line.
    """
    try:
        from drivers.calibration import find_layouts, record_calibration
        from drivers.recording import read_recording, write_recording
    except ImportError as exc:  # the wedge extra is not installed
        raise click.ClickException(str(exc)) from exc

    if (recording is None) == (config_path is None):
        raise click.UsageError("give either --config FILE --scanner NAME, or --recording FILE")
    configured: str | None = None
    try:
        if recording is not None:
            events = read_recording(recording)
            click.echo(f"Decoding {recording} under every installed layout...", err=True)
            finding = find_layouts(events)
            name = ""
        else:
            assert config_path is not None
            cfg = _load(config_path)
            if scanner is None:
                raise click.UsageError("--scanner NAME: which of the config's scanners")
            try:
                settings = cfg.scanner(scanner).settings
            except KeyError:
                raise click.UsageError(f"{config_path} has no scanner named {scanner!r}") \
                    from None
            configured = getattr(settings, "layout", None)

            def opened(device: str) -> None:
                click.echo(f"Listening on {device}. Scan the calibration barcode "
                           "(docs/calibration-barcode.svg) ... Ctrl+C stops.", err=True)

            def missed(f: object) -> None:
                click.echo("That scan is not the calibration barcode under any layout; "
                           "scan it again.", err=True)

            events, finding = asyncio.run(record_calibration(settings, on_open=opened,
                                                             on_scan=missed))
            name = scanner
        if save is not None:
            write_recording(save, events, name=name)
            click.echo(f"Saved the key events to {save}.", err=True)
    except (AgentError, DriverError) as exc:
        _fail(exc)
        return
    except KeyboardInterrupt:
        click.echo("scan-agent: stopped before the calibration barcode was scanned", err=True)
        sys.exit(EXIT_ERROR)
    report = finding.report(configured)
    if configured is not None and (verdict := finding.verdict(configured)):
        report += "\n" + verdict
    click.echo(report)
    sys.exit(0 if finding.matches else EXIT_ERROR)


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
