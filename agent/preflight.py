"""What ``scan-agent check-config`` checks beyond the file itself: that the dock can run.

:func:`load_config` validates the file (keys, types, values). :func:`check_dock` then looks
at what the file points to, as the daemon will find it: the ledger token (the file, or the
systemd credential when ``$CREDENTIALS_DIRECTORY`` is set), that there is a scanner to read,
and where the metrics textfile goes. A problem that stops the dock raises
:class:`~agent.errors.ConfigError` naming the config file and the key; one that only
surprises (a path the shipped unit cannot write) comes back as a warning.

>>> check_dock(load_config("/etc/scan-agent/dock-3.toml"))   # doctest: +SKIP
[]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from agent.config import Config
from agent.credentials import CREDENTIAL_NAME, read_token
from agent.errors import ConfigError

__all__ = ["UNIT", "UNIT_METRICS_DIR", "check_dock"]

UNIT = "scan-agent@.service"
"""The shipped systemd unit (``systemd/scan-agent@.service``)."""

UNIT_METRICS_DIR = "/var/lib/scan-agent/metrics"
"""The one place for metrics textfiles that the shipped unit can write (its
``ReadWritePaths=``; everything else is read-only under ``ProtectSystem=strict``, and its /tmp
is private, out of node_exporter's sight)."""


def check_dock(cfg: Config, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Check what ``cfg`` points to; returns warnings, raises :class:`ConfigError`."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if not cfg.scanners:
        raise ConfigError(cfg.path, "scanners", "no scanners: a dock reads at least one; add "
                          "a [[scanners]] table (`scan-agent devices` lists candidates)")
    if cfg.ledger is not None:
        _check_token(cfg, env)
    warnings: list[str] = []
    textfile = cfg.metrics.textfile
    if textfile is not None and not _under(textfile, UNIT_METRICS_DIR):
        warnings.append(
            f"{cfg.path}: metrics.textfile: {textfile} cannot be written by the shipped unit "
            f"{UNIT} (only {UNIT_METRICS_DIR}/ is writable for metrics there); use "
            f"{UNIT_METRICS_DIR}/{cfg.station}.prom, or add the path to ReadWritePaths= in a "
            "drop-in")
    return warnings


def _check_token(cfg: Config, env: Mapping[str, str]) -> None:
    """The token the daemon will read, read now: the credential when ``$CREDENTIALS_DIRECTORY``
    holds one, else ``[ledger] token_file``."""
    assert cfg.ledger is not None
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    credential = Path(cred_dir) / CREDENTIAL_NAME if cred_dir else None
    key = ("$CREDENTIALS_DIRECTORY/" + CREDENTIAL_NAME
           if credential is not None and (credential.exists() or not cfg.ledger.token_file)
           else "ledger.token_file")
    try:
        token = read_token(cfg.ledger, environ=env)
    except ConfigError as exc:
        raise ConfigError(cfg.path, key, f"{exc.file}: {exc.problem}") from None
    if token is None:
        where = (f"nor is there a systemd credential {credential}" if credential is not None
                 else f"nor is the systemd credential {CREDENTIAL_NAME!r} passed")
        raise ConfigError(cfg.path, "ledger.token_file",
                          f"required with [ledger]: the ledger refuses a station without its "
                          f"token (not set, {where})")


def _under(path: str, directory: str) -> bool:
    p = PurePosixPath(os.path.normpath(path))
    return p.parent == PurePosixPath(directory) or PurePosixPath(directory) in p.parents
