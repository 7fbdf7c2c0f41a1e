"""Every example in examples/ is valid (they are documentation): each ``autopyfactory.conf``, at any
depth, passes ``apf check``; each policy passes ``apf policy check`` against its directory's
configuration; each demand trace loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.sim.trace import load_trace

ROOT = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(ROOT.glob("**/autopyfactory.conf"))
POLICIES = sorted(ROOT.glob("**/*.yaml"))
TRACES = sorted(ROOT.glob("**/*.csv"))


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT).parent if path.name == "autopyfactory.conf" else path.relative_to(ROOT))


@pytest.mark.parametrize("conf", EXAMPLES, ids=[_id(p) for p in EXAMPLES])
def test_example_config_is_valid(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--conf", str(conf)]) == 0, capsys.readouterr().err
    assert "configuration OK" in capsys.readouterr().out


@pytest.mark.parametrize("policy", POLICIES, ids=[_id(p) for p in POLICIES])
def test_example_policy_is_valid(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["policy", "check", str(policy)]
    conf = policy.parent / "autopyfactory.conf"
    if conf.exists():
        args += ["--conf", str(conf)]  # every tier names a queue of the example
    assert main(args) == 0, capsys.readouterr()


@pytest.mark.parametrize("trace", TRACES, ids=[_id(p) for p in TRACES])
def test_example_trace_loads(trace: Path) -> None:
    assert load_trace(trace) is not None


def test_all_examples_are_covered() -> None:
    assert {p.parent.name for p in EXAMPLES} >= {
        "demo",
        "hpc",
        "panda",
        "policy",
        "grid",
        "static",
        "elastic",
    }
    assert {p.name for p in POLICIES} >= {"cascade.yaml", "cascade-eager.yaml"}
    assert {p.name for p in TRACES} >= {"demand.csv", "burst.csv", "quota.csv"}
