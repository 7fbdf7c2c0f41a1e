"""Issue 13, "apf plugins": every installed plugin by kind; each key with type, default, bounds
and a description written next to its declaration; docs/keys.md generated from the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.config import reference
from autopyfactory.config.models import FactorySettings, QueueSettings
from autopyfactory.plugins import base as plugins

DOCS = Path(__file__).resolve().parents[1] / "docs" / "keys.md"


def test_apf_plugins_lists_every_plugin_by_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in reference.KIND_TITLES:
        assert reference.KIND_TITLES[kind] in out
        for name in plugins.names(kind):
            assert f"  {name} " in out or out.count(f"  {name}\n"), (kind, name)


def test_apf_plugins_name_shows_keys_with_type_default_bounds_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plugins", "MaxPerCycle"]) == 0
    out = capsys.readouterr().out
    assert "sched.maxpercycle.maximum  (integer | None, >= 0, <= 1000000; default None)" in out
    assert "pilots submitted per cycle at most" in out
    assert main(["plugins", "CondorOSGCE"]) == 0
    out = capsys.readouterr().out
    assert "key prefixes (most specific first): batchsubmit.condorosgce., batchsubmit.condorce." in out
    assert "needs: Python module htcondor2 (pip install 'autopyfactory[htcondor]'" in out
    assert "[auth.conf profile names: X509]" in out
    assert main(["plugins", "--factory"]) == 0
    assert "config.reconfig.interval" in capsys.readouterr().out
    assert main(["plugins", "--queue"]) == 0
    assert "cancel.pending_after" in capsys.readouterr().out
    assert main(["plugins", "maxpercycle"]) == 2
    assert "did you mean 'MaxPerCycle'?" in capsys.readouterr().err


def test_every_key_has_a_description() -> None:
    missing = []
    for model in (FactorySettings, QueueSettings):
        missing += [k.key for k in reference.model_keys(model) if not k.description]
    for kind in reference.KIND_TITLES:
        for name in plugins.names(kind):
            try:
                cls = plugins.load(kind, name)
            except plugins.PluginError:
                continue  # a retired plugin: its load error is its documentation
            missing += [f"{name}: {k.key}" for k in reference.plugin_keys(cls) if not k.description]
    assert not missing, missing


def test_docs_keys_md_is_generated_and_current() -> None:
    assert DOCS.read_text() == reference.markdown(), "regenerate with: apf plugins --markdown > docs/keys.md"
