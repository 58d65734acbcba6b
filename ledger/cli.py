"""``scan-ledger``: the reference central ledger's command line (DESIGN section 9).

Every command is a thin call into the library; only this module prints and exits.
Exit codes: 0 ok, 1 operation failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from ledger import __version__
from ledger.config import load_config
from ledger.errors import ConfigError, LedgerError
from ledger.events import format_time, now_us
from ledger.items import read_items
from ledger.service import hash_token, new_token, valid_station_name
from ledger.store import open_store

__all__ = ["cli", "main"]

_DB = click.option("--db", "db", required=True, envvar="SCAN_LEDGER_DB", metavar="FILE|URL",
                   help="The ledger's database: a SQLite file, or a "
                        "postgresql:// URL whose password, if any, libpq reads from "
                        "~/.pgpass, PGPASSFILE, a service file or PGPASSWORD (serve and "
                        "station add create the ledger; other commands need it to exist). "
                        "Default: $SCAN_LEDGER_DB.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scan-ledger")
def cli() -> None:
    """The reference central ledger for scan-agent stations."""


@cli.command()
@_DB
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 picks a free one (printed on the 'listening' line).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Ledger TOML config (site policies, limits, webhook, read token).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--advertise", metavar="URL",
              help="With several processes on one PostgreSQL database: the base URL the "
                   "others use to reach this one (default: the listening address, or this "
                   "machine's name when listening on every address).")
def serve(db: str, host: str, port: int, config_path: str | None, log_level: str,
          advertise: str | None) -> None:
    """Run the ledger HTTP server in the foreground until SIGTERM or SIGINT.

    Once listening, prints one line to standard output:
    ``scan-ledger listening on http://HOST:PORT``.
    """
    from ledger.notify import to_journal
    from ledger.server import serve as run_server

    # Under systemd the journal stamps each line; elsewhere the line carries its own time.
    stamp = "" if to_journal(sys.stderr.fileno()) else "%(asctime)s "
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format=stamp + "%(levelname)s %(name)s: %(message)s")
    # a line per forwarded batch and per read of another process's sites is noise
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, logging.getLogger().level))
    config = load_config(config_path)
    run_server(db, host=host, port=port, config=config, advertise=advertise,
               log_level="warning" if log_level in ("info", "debug") else log_level)


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
def check_config(file: str) -> None:
    """Validate a ledger config file."""
    cfg = load_config(file)
    click.echo(f"{file}: ok ({len(cfg.sites)} site policies, {len(cfg.connectors)} "
               "ERP connectors)")


@cli.group()
def station() -> None:
    """Register, list and revoke stations."""


@station.command("add")
@click.argument("name")
@click.option("--site", required=True, help="Site (warehouse) the station belongs to.")
@_DB
def station_add(name: str, site: str, db: str) -> None:
    """Register station NAME; prints its token once, alone on the last line.

    Only a hash of the token is stored: keep the printed token (e.g. in the dock's
    token_file). Adding a revoked station again issues a new token.
    """
    for what, value in (("station", name), ("site", site)):
        if not valid_station_name(value):
            raise click.BadParameter(f"{value!r} is not a valid {what} id (letters, digits, "
                                     "'.', '_', '-'; at most 64)")
    token = new_token()
    with open_store(db) as store:
        store.add_station(name, site, hash_token(token), format_time(now_us()))
    click.echo(f"station {name} added at site {site}; its token follows (shown once, "
               "only a hash is kept):")
    click.echo(token)


@station.command("list")
@_DB
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def station_list(db: str, as_json: bool) -> None:
    """List stations with their last contact and watermark (never creates a database)."""
    with open_store(db, create=False) as store:
        stations = store.stations()
    if as_json:
        click.echo(json.dumps([{
            "name": s.name, "site": s.site, "created_at": s.created_at,
            "revoked_at": s.revoked_at, "last_contact": s.last_contact,
            "watermark": s.watermark, "clock_offset_ms": s.clock_offset_ms} for s in stations],
            indent=2))
        return
    if not stations:
        click.echo("no stations")
        return
    click.echo(f"{'STATION':<20} {'SITE':<10} {'STATE':<8} {'LAST CONTACT':<28} WATERMARK")
    for s in stations:
        state = "revoked" if s.revoked_at else "active"
        click.echo(f"{s.name:<20} {s.site:<10} {state:<8} {s.last_contact or '-':<28} "
                   f"{s.watermark or '-'}")


@station.command("revoke")
@click.argument("name")
@_DB
def station_revoke(name: str, db: str) -> None:
    """Revoke station NAME's token; a running server refuses it at once."""
    with open_store(db, create=False) as store:
        store.revoke_station(name, format_time(now_us()))
    click.echo(f"station {name} revoked")


_URL = click.option("--url", required=True, help="The running ledger, e.g. http://127.0.0.1:8080.")
_READ_TOKEN = click.option("--token", envvar="SCAN_LEDGER_READ_TOKEN",
                           help="The read token, if the ledger has one (or "
                                "$SCAN_LEDGER_READ_TOKEN).")
_PAGE = click.option("--page-size", default=1000, show_default=True,
                     type=click.IntRange(1, 10_000), help="Items asked for per request.")


@cli.command("events")
@_URL
@click.option("--station", help="Only this station's events.")
@_READ_TOKEN
@_PAGE
def events_cmd(url: str, station: str | None, token: str | None, page_size: int) -> None:
    """Print every event the ledger holds, newest first, one JSON object a line (read
    page after page, however long the history)."""
    from ledger.client import read_all

    params = {"station": station} if station else {}
    for ev in read_all(url, "/v1/events", "events", params, token=token, page=page_size):
        click.echo(json.dumps(ev, sort_keys=True))


@cli.command("negatives")
@_URL
@click.option("--status", type=click.Choice(["open", "resolved"]), help="Only these.")
@_READ_TOKEN
@_PAGE
def negatives_cmd(url: str, status: str | None, token: str | None, page_size: int) -> None:
    """Print every incident (negative), in the order they opened, one JSON object a line."""
    from ledger.client import read_all

    params = {"status": status} if status else {}
    for inc in read_all(url, "/v1/negatives", "incidents", params, token=token,
                        page=page_size):
        click.echo(json.dumps(inc, sort_keys=True))
@cli.group()
def items() -> None:
    """Item names shown beside item codes on the manager's page."""


@items.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@_DB
def items_import(file: str, db: str) -> None:
    """Load item names from the CSV FILE (header row with at least item and name).

    ``item`` is the code exactly as stations send it (a GTIN-14 or a SKU). Importing again
    updates names. A file with a bad row imports nothing; every bad row is listed with its
    line and column.
    """
    parsed = read_items(file)
    for hint in parsed.hints:
        click.echo(f"note: {hint}", err=True)
    with open_store(db) as store:
        added, updated = store.put_items(parsed.names, format_time(now_us()))
    same = len(parsed.names) - added - updated
    click.echo(f"{file}: {len(parsed.names)} item names: {added} added, {updated} updated, "
               f"{same} unchanged")


@cli.group()
def manager() -> None:
    """Managers: their tokens add notes to incidents."""


@manager.command("add")
@click.argument("name")
@_DB
def manager_add(name: str, db: str) -> None:
    """Register manager NAME; prints a token once, alone on the last line.

    The token goes in ``Authorization: Bearer ...`` of ``POST /v1/negatives/{id}/notes``;
    notes carry NAME as their author. Only a hash of the token is stored.
    """
    if not valid_station_name(name):
        raise click.BadParameter(f"{name!r} is not a valid manager name (letters, digits, "
                                 "'.', '_', '-'; at most 64)")
    token = new_token()
    with open_store(db) as store:
        store.add_manager(name, hash_token(token), format_time(now_us()))
    click.echo(f"manager {name} added; the token follows (shown once, only a hash is kept):")
    click.echo(token)


@manager.command("revoke")
@click.argument("name")
@_DB
def manager_revoke(name: str, db: str) -> None:
    """Revoke manager NAME's token; its notes stay."""
    with open_store(db) as store:
        store.revoke_manager(name, format_time(now_us()))
    click.echo(f"manager {name} revoked")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scan-ledger`` console script."""
    try:
        cli.main(args=argv, prog_name="scan-ledger", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return 2
    except ConfigError as exc:
        click.echo(f"scan-ledger: {exc}", err=True)
        return 2
    except LedgerError as exc:
        click.echo(f"scan-ledger: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
