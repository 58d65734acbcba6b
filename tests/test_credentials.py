"""The ledger token from a systemd credential directory or from token_file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.config import LedgerConfig
from agent.credentials import CREDENTIAL_NAME, read_token
from agent.errors import AgentError, ConfigError

TOKEN = "st_4f9c1e0b7a2d4c8e9f1a3b5c7d9e0f12"
MORE_THAN_ONE = (
    "holds more than one word, control or non-ASCII characters; expected the token alone "
    "(as printed by 'scan-ledger station add')"
)


def ledger(token_file: Path | None) -> LedgerConfig:
    return LedgerConfig(url="http://ledger", token_file=str(token_file) if token_file else None)


def write(path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_credential_directory_comes_first(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / CREDENTIAL_NAME, TOKEN + "\n")
    other = write(tmp_path / "dock-3.token", "st_other")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert read_token(ledger(other), environ=env) == TOKEN


def test_token_file_when_no_credential(tmp_path: Path) -> None:
    """A CREDENTIALS_DIRECTORY without ledger-token (another credential only) falls through."""
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "something-else", "x")
    token_file = write(tmp_path / "dock-3.token", f"  {TOKEN}\r\n")
    assert read_token(ledger(token_file), environ={"CREDENTIALS_DIRECTORY": str(creds)}) == TOKEN
    assert read_token(ledger(token_file), environ={}) == TOKEN


def test_no_source_at_all() -> None:
    assert read_token(ledger(None), environ={}) is None
    assert read_token(None, environ={}) is None


BAD_FILES = [
    pytest.param("", "token file is empty", id="empty"),
    pytest.param(" \n\t\n", "token file is empty", id="whitespace-only"),
    pytest.param(f"{TOKEN}\n{TOKEN}x\n", MORE_THAN_ONE,
                 id="two-lines"),
    pytest.param(f"Bearer {TOKEN}", MORE_THAN_ONE,
                 id="two-words"),
    pytest.param(f"{TOKEN}\x00", MORE_THAN_ONE, id="nul"),
    pytest.param(b"\xff\xfe" + TOKEN.encode(), "not UTF-8 text; not a token file",
                 id="not-utf8"),
    pytest.param(TOKEN * 200, "larger than 4096 bytes; not a token file", id="too-large"),
]


@pytest.mark.parametrize(("content", "problem"), BAD_FILES)
def test_bad_token_file(tmp_path: Path, content: str | bytes, problem: str) -> None:
    path = write(tmp_path / "dock-3.token", content)
    with pytest.raises(ConfigError) as info:
        read_token(ledger(path), environ={})
    assert str(info.value) == f"{path}: ledger.token_file: {problem}"
    assert TOKEN not in str(info.value)
    assert isinstance(info.value, AgentError)


@pytest.mark.parametrize(("content", "problem"), BAD_FILES)
def test_bad_credential(tmp_path: Path, content: str | bytes, problem: str) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    path = write(creds / CREDENTIAL_NAME, content)
    with pytest.raises(ConfigError) as info:
        read_token(None, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert str(info.value) == f"{path}: systemd credential 'ledger-token': {problem}"
    assert TOKEN not in str(info.value)


def test_missing_token_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.token"
    with pytest.raises(ConfigError) as info:
        read_token(ledger(path), environ={})
    assert str(info.value) == f"{path}: ledger.token_file: token file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_token(ledger(tmp_path), environ={})
    expected = f"{tmp_path}: ledger.token_file: is a directory, expected a token file"
    assert str(info.value) == expected


def test_unreadable_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message tells the operator what to do (the tests may run as root, so fake EACCES)."""
    path = write(tmp_path / "dock-3.token", TOKEN, mode=0o000)

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    if os.geteuid() == 0:
        monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ConfigError) as info:
        read_token(ledger(path), environ={})
    assert str(info.value) == (
        f"{path}: ledger.token_file: permission denied: the token file must be readable by the "
        "user running scan-agent (under systemd, pass it as the credential 'ledger-token')"
    )


def test_loose_permissions_warn_without_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "dock-3.token", TOKEN, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="agent.credentials"):
        assert read_token(ledger(path), environ={}) == TOKEN
    assert "chmod 600" in caplog.text
    assert TOKEN not in caplog.text


def test_a_non_ascii_token_is_refused_before_it_reaches_an_http_header(tmp_path: Path) -> None:
    """Regression: a token with a non-ASCII letter passed and then broke every sync request."""
    f = tmp_path / "t"
    f.write_text("t\u00f6ken")
    f.chmod(0o600)
    with pytest.raises(ConfigError, match="non-ASCII"):
        read_token(LedgerConfig(url="http://l", token_file=str(f)), environ={})
