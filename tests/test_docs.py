"""The configuration examples users copy from the docs are valid."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.config import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = [
    (path.relative_to(ROOT), i, block)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", path.read_text(), re.S))
    if re.search(r"^station\s*=", block, re.M)
]


@pytest.mark.parametrize(("path", "index", "block"), BLOCKS,
                         ids=[f"{p}#{i}" for p, i, _ in BLOCKS])
def test_dock_config_examples_in_the_docs_are_valid(path: Path, index: int, block: str) -> None:
    parse_config(tomllib.loads(block), f"{path} example {index}")


def test_the_example_dock_config_is_valid() -> None:
    cfg = load_config(ROOT / "systemd" / "dock.example.toml")
    assert cfg.scanners, "the example should show at least one scanner"


def test_there_are_examples_to_check() -> None:
    assert any(p == Path("README.md") for p, _, _ in BLOCKS)


def test_the_example_grammar_shows_the_defaults_it_says_it_shows() -> None:
    """dock.example.toml said "defaults shown" while setting a non-default sku_patterns; it now
    says which value is not the default, and every other one must be."""
    from dataclasses import asdict, replace

    from agent.config import GrammarConfig

    example = load_config(ROOT / "systemd" / "dock.example.toml").grammar
    assert example.sku_patterns, "the example shows a site pattern"
    assert "except sku_patterns" in (ROOT / "systemd" / "dock.example.toml").read_text()
    assert asdict(replace(example, sku_patterns=())) == asdict(GrammarConfig())


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_the_docs_do_not_send_readers_to_a_design_they_do_not_have(path: Path) -> None:
    """docs/ledger.md and docs/agent.md pointed to "the design" and "DESIGN section 5", which
    is not in the repository: the docs say it themselves."""
    text = path.read_text()
    assert not re.search(r"\bDESIGN\b|\b[Tt]he design\b|\b[Dd]esign section", text), path
