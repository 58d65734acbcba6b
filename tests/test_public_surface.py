"""The public surface is deliberate: every module says what it exports, and every command
has help and is documented where users look."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import agent
import drivers
import ledger
from agent.cli import main as agent_cli
from ledger.cli import cli as ledger_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
MODULES = sorted(
    m.name for pkg in (agent, drivers, ledger)
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_lists_what_it_exports(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, cmd in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


COMMANDS = [("scan-agent", agent_cli, c) for c in _commands(agent_cli)] + [
    ("scan-ledger", ledger_cli, c) for c in _commands(ledger_cli)]


@pytest.mark.parametrize(("prog", "group", "command"), COMMANDS,
                         ids=[f"{p} {' '.join(c)}" for p, _, c in COMMANDS])
def test_every_command_has_help_and_docs(prog: str, group: click.Group,
                                         command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(group, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    words = r"\s+".join(map(re.escape, (prog, *command)))
    assert re.search(words, DOCS), f"`{prog} {' '.join(command)}` is not in README.md or docs/"


def test_the_ledger_imports_nothing_from_the_agent() -> None:
    """The ledger runs on a server without the dock's code: no ``agent`` import anywhere in
    ``ledger/``, and of ``drivers`` only the strict settings reader both sides' config files
    are read with (``drivers.settings``: no device code)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "ledger").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*(from|import)\s+(agent|drivers)\b", line)
        and not re.match(r"\s*from\s+drivers\.settings\s+import\b", line)
    ]
    assert not offenders, offenders


def test_the_drivers_import_nothing_from_the_agent() -> None:
    """Drivers stand on their own: the agent imports ``drivers``, never the other way, so a
    driver can be used and tested without the agent (docs/scanners.md)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "drivers").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*(from|import)\s+agent\b", line)
    ]
    assert not offenders, offenders
