"""The policy document: the example, validation errors that name file/cascade/tier/key, the JSON
Schema, and ``apf policy check``/``apf policy schema``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.policy import load_policy, parse_policy, policy_json_schema

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policy"


def errors_of(text: str, fmt: str = "yaml", file: str = "p.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, file=file, fmt=fmt)
    return [str(p) for p in info.value.problems]


def test_example_policy_is_the_issue_in_a_few_lines() -> None:
    text = (EXAMPLES / "cascade.yaml").read_text()
    significant = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(significant) <= 20
    doc = load_policy(EXAMPLES / "cascade.yaml")
    (cascade,) = doc.cascades
    assert cascade.demand == "ANALY_EXAMPLE"
    a, b, c = cascade.ordered
    assert (a.queue, a.cap, a.full and a.full.pending, set(a.spill_on)) == (
        "A",
        200,
        20,
        {"capped", "full", "backoff"},
    )
    assert a.full is not None and a.full.pending == 20
    assert (b.queue, b.cap, b.spill_on) == ("B", 100, ("quota", "backoff"))
    assert b.quotas[0].pilots == 3000 and b.quotas[0].period.kind == "month"
    assert (c.queue, c.cap, c.cost_per_hour) == ("C", None, 0.10)
    assert c.drain.retire_running and c.drain.hysteresis == 1800
    assert doc.cascade_of("B") is cascade and doc.cascade_of("Z") is None


def test_json_and_yaml_are_the_same_document() -> None:
    doc = load_policy(EXAMPLES / "cascade.yaml")
    as_json = doc.model_dump_json()
    again = parse_policy(as_json, fmt="json")
    assert again == doc


def test_defaults() -> None:
    doc = parse_policy("cascades: [{name: c, demand: W, tiers: [{queue: Q}]}]")
    tier = doc.cascades[0].tiers[0]
    assert tier.cap is None and tier.full is None and tier.quotas == ()
    assert set(tier.spill_on) == {"capped", "full", "quota", "backoff"}
    assert tier.drain.cancel_pending and not tier.drain.retire_running
    assert tier.backoff == 1800 and tier.provisioning_deadline is None
    assert parse_policy("").cascades == ()


def test_unknown_key_names_file_cascade_tier_path_and_suggests() -> None:
    text = """
cascades:
  - name: analysis
    demand: W
    tiers:
      - queue: A
      - queue: B
        capp: 3
"""
    (err,) = errors_of(text)
    assert (
        err
        == "p.yaml: [cascade analysis, tier B] cascades[0].tiers[1].capp: unknown key (did you mean 'cap'?)"
    )


@pytest.mark.parametrize(
    ("tier", "path", "fragment"),
    [
        ("{queue: A, cap: -1}", "cascades[0].tiers[0].cap", "greater than or equal to 0"),
        ("{queue: A, cap: lots}", "cascades[0].tiers[0].cap", "'lots'"),
        (
            "{queue: A, full: {oldest_pending: 5x}}",
            "cascades[0].tiers[0].full.oldest_pending",
            "not a duration",
        ),
        ("{queue: A, full: {}}", "cascades[0].tiers[0].full", "give 'pending', 'oldest_pending' or both"),
        (
            "{queue: A, quotas: [{per: fortnight, pilots: 3}]}",
            "cascades[0].tiers[0].quotas[0].per",
            "not a period",
        ),
        (
            "{queue: A, quotas: [{per: month}]}",
            "cascades[0].tiers[0].quotas[0]",
            "give 'pilots', 'pilot_hours'",
        ),
        ("{queue: A, spill_on: [capped, overflow]}", "cascades[0].tiers[0].spill_on[1]", "'overflow'"),
        ("{queue: A, drain: {hysteresis: -5}}", "cascades[0].tiers[0].drain.hysteresis", ">= 0"),
        ("{queue: A, backoff: soon}", "cascades[0].tiers[0].backoff", "not a duration"),
        ("{queue: A, weight: .inf}", "cascades[0].tiers[0].weight", "finite"),
        ("{queue: A, weight: 0}", "cascades[0].tiers[0].weight", "greater than 0"),
        ("{queue: A, cost_per_hour: .nan}", "cascades[0].tiers[0].cost_per_hour", "finite"),
        (
            "{queue: A, quotas: [{per: month, pilot_hours: .inf}]}",
            "cascades[0].tiers[0].quotas[0].pilot_hours",
            "finite",
        ),
        ("{cap: 4}", "cascades[0].tiers[0].queue", "required key is missing"),
    ],
)
def test_bad_values_name_their_key(tier: str, path: str, fragment: str) -> None:
    errors = errors_of(f"cascades: [{{name: c, demand: W, tiers: [{tier}]}}]")
    assert len(errors) == 1, errors
    assert f" {path}: " in errors[0]
    assert errors[0].startswith("p.yaml: [cascade c, tier ")
    assert fragment in errors[0]


def test_several_problems_are_all_reported() -> None:
    text = "cascades: [{name: c, tiers: [{queue: A, cap: x}, {queue: B, wieght: 2}]}]"
    errors = errors_of(text)
    assert any("cascades[0].demand: required key is missing" in e for e in errors)
    assert any("cascades[0].tiers[0].cap" in e for e in errors)
    assert any("cascades[0].tiers[1].wieght: unknown key (did you mean 'weight'?)" in e for e in errors)


def test_cross_document_rules() -> None:
    text = """
cascades:
  - {name: c, demand: W, tiers: [{queue: A}, {queue: A}]}
  - {name: c, demand: W, tiers: [{queue: B, quotas: [{per: month, pilots: 1}, {per: month, pilots: 2}]}]}
"""
    errors = errors_of(text)
    assert any("cascades[0].tiers[1].queue: queue 'A' is already a tier of cascade 'c'" in e for e in errors)
    assert any("cascades[1].name: cascade name 'c' is already used" in e for e in errors)
    assert any("cascades[1].demand: demand 'W' is already served by cascade 'c'" in e for e in errors)
    assert any("cascades[1].tiers[0].quotas[1].per: a second quota per month" in e for e in errors)


def test_yaml_syntax_and_duplicate_keys_give_lines() -> None:
    (err,) = errors_of("cascades:\n  - name: c\n    name: d\n")
    assert err.startswith("p.yaml: not valid YAML: line 3 column 5: duplicate key 'name' (first on line 2)")
    (err,) = errors_of("cascades: [\n  {name: c\n")
    assert err.startswith("p.yaml: not valid YAML: line ")
    (err,) = errors_of('{"cascades": [}', fmt="json", file="p.json")
    assert err.startswith("p.json: not valid JSON: line 1 column 15")
    (err,) = errors_of("- just\n- a list\n")
    assert err == "p.yaml: a policy document must be a mapping"
    (err,) = errors_of("version: 2\n")
    assert "version" in err


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read policy"):
        load_policy(tmp_path / "nope.yaml")


def test_json_schema_describes_the_format() -> None:
    schema = policy_json_schema()
    assert schema["title"] == "autopyfactory provisioning policy"
    tier = schema["$defs"]["Tier"]
    assert tier["additionalProperties"] is False
    assert tier["required"] == ["queue"]
    assert {
        "cap",
        "full",
        "spill_on",
        "quotas",
        "cost_per_hour",
        "priority",
        "drain",
        "provisioning_deadline",
        "backoff",
    } <= set(tier["properties"])
    spill_items = tier["properties"]["spill_on"]["items"]
    assert set(spill_items["enum"]) == {"capped", "full", "quota", "backoff"}
    per = schema["$defs"]["Quota"]["properties"]["per"]
    assert {"enum": ["month", "week", "day"]} in per["anyOf"]
    json.dumps(schema)  # serialisable


def test_cli_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == policy_json_schema()


def test_cli_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(EXAMPLES / "cascade.yaml")]) == 0
    out = capsys.readouterr().out
    assert "policy OK" in out and "B: cap 100; 3000 pilots per month; spills on quota, backoff" in out


def test_cli_check_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cascades: [{name: c, demand: W, tiers: [{queue: A, cap: x}]}]\n")
    assert main(["policy", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: [cascade c, tier A] cascades[0].tiers[0].cap:" in err


def _example_copy(tmp_path: Path, policy: str | None = None) -> Path:
    for name in ("autopyfactory.conf", "queues.conf", "cascade.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    if policy is not None:
        (tmp_path / "cascade.yaml").write_text(policy)
    return tmp_path / "autopyfactory.conf"


def test_cli_check_against_queue_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("autopyfactory.config.loader")
    conf = _example_copy(tmp_path)
    # FILE defaults to policyConf of --conf
    assert main(["policy", "check", "--conf", str(conf)]) == 0
    assert "every tier is a queue section" in capsys.readouterr().out
    conf = _example_copy(
        tmp_path,
        "cascades: [{name: c, demand: ANALY_EXAMPLE, tiers: [{queue: A}, {queue: b}, {queue: D}]}]\n",
    )
    assert main(["policy", "check", str(tmp_path / "cascade.yaml"), "--conf", str(conf)]) == 1
    err = capsys.readouterr().err
    assert (
        "cascades[0].tiers[1].queue: no queue section [b] in queues.conf (did you mean 'B'? names are case-sensitive)"
        in err
    )
    assert "cascades[0].tiers[2].queue: no queue section [D] in queues.conf" in err
    # a tier whose queue serves another WMS queue is a warning, not an error
    conf = _example_copy(tmp_path, "cascades: [{name: c, demand: OTHER, tiers: [{queue: A}]}]\n")
    assert main(["policy", "check", "--conf", str(conf)]) == 0
    assert "warning" in capsys.readouterr().err


def _warnings(text: str, sites: dict | None = None) -> list[str]:
    from autopyfactory.config.policy_checks import policy_warnings

    return [str(p) for p in policy_warnings(parse_policy(text, file="p.yaml"), file="p.yaml", sites=sites)]


def test_policy_check_warns_about_combinations_that_defeat_the_intent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from autopyfactory.config.policy_checks import SiteFacts

    # the issue's case: a cap above what the site can run, spilling on capped
    warnings = _warnings(
        "cascades: [{name: c, demand: W, tiers: [{queue: A, cap: 200, spill_on: [capped]}, {queue: B}]}]",
        {"A": SiteFacts(capacity=150)},
    )
    assert (
        len(warnings) == 1
        and "cascades[0].tiers[0].cap: cap 200 is more than the 150 slots of [A]" in warnings[0]
    )
    assert "spills in the very first cycle" in warnings[0]
    assert not _warnings(
        "cascades: [{name: c, demand: W, tiers: [{queue: A, cap: 150, spill_on: [capped]}, {queue: B}]}]",
        {"A": SiteFacts(capacity=150)},
    )
    text = """
cascades:
  - name: c
    demand: W
    tiers:
      - {queue: A, spill_on: [capped, quota, full], weight: 2}
      - {queue: B, full: {pending: 3}, spill_on: [backoff]}
      - {queue: C, full: {oldest_pending: 10m}, provisioning_deadline: 5m, cost_per_hour: 1}
      - {queue: D, cost_per_hour: 0.5, spill_on: [quota]}
"""
    found = "\n".join(_warnings(text, {"C": SiteFacts(start_delay=900)}))
    assert "tiers[0].spill_on: 'capped' in spill_on, but the tier has no cap" in found
    assert "tiers[0].spill_on: 'quota' in spill_on, but the tier has no quotas" in found
    assert "tiers[0].spill_on: 'full' in spill_on, but the tier has no full condition" in found
    assert "tiers[0].weight: no other tier has this priority" in found
    assert "tiers[1].spill_on: the tier has a full condition but 'full' is not in spill_on" in found
    assert "tiers[2].full.oldest_pending: provisioning_deadline (300 s) is not longer" in found
    assert "tiers[2].full.oldest_pending: every pilot of [C] waits at least 900 s" in found
    assert "tiers[3].spill_on: the last tier has nothing to spill to" in found
    assert "tiers[3].cost_per_hour: D (0.5/h) is cheaper than C (1/h)" in found
    # defaults never warn: spill_on lists every condition unless given
    assert not _warnings("cascades: [{name: c, demand: W, tiers: [{queue: A}, {queue: B}]}]")
    # apf policy check prints them as warnings and still succeeds (the example: A has 150 slots)
    assert main(["policy", "check", "--conf", str(EXAMPLES / "autopyfactory.conf")]) == 0
    captured = capsys.readouterr()
    assert "policy OK" in captured.out
    assert "apf: warning:" in captured.err and "cap 200 is more than the 150 slots of [A]" in captured.err
