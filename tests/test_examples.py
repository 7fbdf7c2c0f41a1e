"""Every example configuration in examples/ passes ``apf check`` (they are documentation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*/autopyfactory.conf"))


@pytest.mark.parametrize("conf", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_config_is_valid(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--conf", str(conf)]) == 0, capsys.readouterr().err
    assert "configuration OK" in capsys.readouterr().out


def test_all_examples_are_covered() -> None:
    assert {p.parent.name for p in EXAMPLES} >= {"demo", "hpc", "panda", "policy", "grid"}
