"""The station's ledger token: from a systemd credential or from ``[ledger] token_file``.

Under systemd the unit passes the token with
``LoadCredential=ledger-token:/etc/scan-agent/%i.token`` and the agent reads
``$CREDENTIALS_DIRECTORY/ledger-token`` (a private, read-only copy that only the service can
see); elsewhere (a shell, a test) it reads ``token_file``.

>>> read_token(cfg.ledger)          # doctest: +SKIP
'st_9c1f...'

Every problem raises :class:`~agent.errors.ConfigError` naming the file and what is wrong. The
token itself never appears in a message or a log line.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.config import LedgerConfig
from agent.errors import ConfigError

__all__ = ["CREDENTIAL_NAME", "MAX_TOKEN_BYTES", "read_token"]

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "ledger-token"
"""The name of the systemd credential (``LoadCredential=ledger-token:...``)."""

MAX_TOKEN_BYTES = 4096
"""A token file larger than this is certainly the wrong file."""


def read_token(
    ledger: LedgerConfig | None, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """Return the ledger token, or None when neither source exists.

    ``$CREDENTIALS_DIRECTORY/ledger-token`` is used when that file exists, else
    ``ledger.token_file`` when configured. Surrounding whitespace (a trailing newline) is
    stripped. Raises :class:`ConfigError` when the chosen file cannot be read, is empty, is
    too large, is not UTF-8, or holds more than one token (inner whitespace or control
    characters); the message names the file, never its content.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / CREDENTIAL_NAME
        if path.exists():
            return _read(path, f"systemd credential {CREDENTIAL_NAME!r}", check_mode=False)
    if ledger is not None and ledger.token_file:
        return _read(Path(ledger.token_file), "ledger.token_file", check_mode=True)
    return None


def _read(path: Path, key: str, *, check_mode: bool) -> str:
    name = str(path)
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(name, key, "is not a regular file")
            data = f.read(MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(name, key, "token file not found") from None
    except PermissionError:
        raise ConfigError(
            name, key,
            "permission denied: the token file must be readable by the user running "
            f"scan-agent (under systemd, pass it as the credential {CREDENTIAL_NAME!r})",
        ) from None
    except IsADirectoryError:
        raise ConfigError(name, key, "is a directory, expected a token file") from None
    except OSError as exc:
        raise ConfigError(name, key, f"cannot read token file: {exc.strerror or exc}") from exc
    if len(data) > MAX_TOKEN_BYTES:
        raise ConfigError(name, key, f"larger than {MAX_TOKEN_BYTES} bytes; not a token file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(name, key, "not UTF-8 text; not a token file") from None
    token = text.strip()
    if not token:
        raise ConfigError(name, key, "token file is empty")
    if any(not c.isprintable() or c.isspace() or not c.isascii() for c in token):
        raise ConfigError(
            name, key,
            "holds more than one word, control or non-ASCII characters; expected the token alone "
            "(as printed by 'scan-ledger station add')",
        )
    if check_mode and st.st_mode & 0o077:
        log.warning("token file %s is accessible to other users (mode %03o); "
                    "chmod 600 it", name, stat.S_IMODE(st.st_mode))
    return token
