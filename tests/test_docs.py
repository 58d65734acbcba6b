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
