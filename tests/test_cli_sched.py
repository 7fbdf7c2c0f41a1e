"""``apf sched``: the chain calculator, in-process through ``cli.main`` and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.plugins.base import PluginError, load


def apf_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["sched", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def apf_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["sched", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    return captured.err


def test_ready(capsys: pytest.CaptureFixture[str]) -> None:
    result = apf_json(capsys, "--chain", "Ready", "--activated", "120", "--pending", "20")
    assert result == {
        "steps": [
            {"plugin": "Ready", "in": 0, "out": 100, "reason": "ready=120 - offset=0 - pending=20 = 100"}
        ],
        "n": 100,
    }


def test_ready_scale(capsys: pytest.CaptureFixture[str]) -> None:
    result = apf_json(
        capsys,
        *("--chain", "Ready, Scale", "--set", "sched.scale.factor=0.25"),
        *("--activated", "83", "--pending", "10"),
    )
    assert [s["out"] for s in result["steps"]] == [73, 19]
    assert result["n"] == 19


@pytest.mark.parametrize(("pending", "expected"), [(0, 500), (40, 60), (150, -50)])
def test_ready_maxpending(capsys: pytest.CaptureFixture[str], pending: int, expected: int) -> None:
    result = apf_json(
        capsys,
        *("--chain", "Ready, MaxPending", "--set", "sched.maxpending.maximum=100"),
        *("--activated", "500", "--pending", str(pending)),
    )
    assert result["n"] == expected


def test_human_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sched", "--chain", "Ready, Scale, MaxPerCycle", "--set", "sched.scale.factor=0.25"]
    argv += [
        "--set",
        "sched.maxpercycle.maximum=50",
        "--activated",
        "83",
        "--pending",
        "10",
        "--running",
        "17",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["plugin", "in", "out", "reason"]
    assert lines[1].split()[:3] == ["Ready", "0", "73"]
    assert "ready=83 - offset=0 - pending=10 = 73" in lines[1]
    assert lines[2].split()[:3] == ["Scale", "73", "19"]
    assert lines[3].split()[:3] == ["MaxPerCycle", "19", "19"]
    assert lines[-1] == "n = 19"
    assert len(lines) == 5


# --- the worked examples of apf-reference section 3.3 -----------------------------------------

EXAMPLES = [
    # 1
    (
        [
            "--chain",
            "Ready, MaxPerCycle",
            "--set",
            "sched.maxpercycle.maximum=50",
            "--activated",
            "300",
            "--pending",
            "10",
        ],
        [290, 50],
    ),
    # 2
    (
        [
            *("--chain", "Ready, Scale, MaxPerCycle, MinPerCycle, StatusTest, StatusOffline, MaxPending"),
            *("--set", "sched.scale.factor=0.25", "--set", "sched.maxpercycle.maximum=50"),
            *("--set", "sched.maxpending.maximum=10", "--site-status", "online"),
            *("--activated", "83", "--pending", "10", "--running", "17"),
        ],
        [73, 19, 19, 19, 19, 19, 0],
    ),
    # 3
    (
        [
            "--chain",
            "Ready, MaxPending",
            "--set",
            "sched.maxpending.maximum=100",
            "--activated",
            "500",
            "--pending",
            "0",
        ],
        [500, 500],
    ),
    (
        [
            "--chain",
            "Ready, MaxPending",
            "--set",
            "sched.maxpending.maximum=100",
            "--activated",
            "500",
            "--pending",
            "40",
        ],
        [460, 60],
    ),
    (
        [
            "--chain",
            "Ready, MaxPending",
            "--set",
            "sched.maxpending.maximum=100",
            "--activated",
            "500",
            "--pending",
            "150",
        ],
        [350, -50],
    ),
    # 4
    (
        [
            *("--chain", "Ready, MaxToRun", "--set", "sched.maxtorun.maximum=100"),
            *("--activated", "80", "--pending", "20", "--running", "90"),
        ],
        [60, -10],
    ),
    # 5
    (
        [
            "--chain",
            "KeepNRunning",
            "--set",
            "sched.keepnrunning.keep_running=20",
            "--running",
            "12",
            "--pending",
            "3",
        ],
        [5],
    ),
    (
        [
            "--chain",
            "KeepNRunning",
            "--set",
            "sched.keepnrunning.keep_running=20",
            "--running",
            "25",
            "--pending",
            "0",
        ],
        [-5],
    ),
    # 6
    (
        [
            *("--chain", "KeepNRunning, MinPerCycle, MaxPerCycle, MaxPending"),
            *("--set", "sched.keepnrunning.keep_running=5", "--set", "sched.minpercycle.minimum=-2"),
            *("--set", "sched.maxpercycle.maximum=2", "--set", "sched.maxpending.maximum=3"),
            *("--running", "10", "--pending", "0"),
        ],
        [-5, -2, -2, -2],
    ),
    # 7
    (
        [
            *("--chain", "Fixed, Scale", "--set", "sched.fixed.pilotspercycle=36"),
            *("--set", "sched.scale.factor=0.0277777777778"),
        ],
        [36, 2],
    ),
    # 8
    (
        [
            *("--chain", "Fixed, MaxPending", "--set", "sched.fixed.pilotspercycle=5"),
            *("--set", "sched.maxpending.maximum=10", "--pending", "8"),
        ],
        [5, 2],
    ),
]


@pytest.mark.parametrize(
    ("argv", "expected"), EXAMPLES, ids=[f"ex{i}" for i in (1, 2, 3, 3, 3, 4, 5, 5, 6, 7, 8)]
)
def test_worked_examples(capsys: pytest.CaptureFixture[str], argv: list[str], expected: list[int]) -> None:
    result = apf_json(capsys, *argv)
    assert [s["out"] for s in result["steps"]] == expected
    assert result["n"] == expected[-1]
    assert [s["in"] for s in result["steps"]] == [0, *expected[:-1]]


# --- observed-state flags ----------------------------------------------------------------------


def test_no_wms_info_gives_zero(capsys: pytest.CaptureFixture[str]) -> None:
    result = apf_json(capsys, "--chain", "Ready, StatusTest", "--activated", "100", "--no-wms-info")
    assert result["n"] == 0
    assert "missing or stale" in result["steps"][0]["reason"]


def test_no_batch_info(capsys: pytest.CaptureFixture[str]) -> None:
    result = apf_json(capsys, "--chain", "Ready", "--activated", "100", "--no-batch-info")
    assert result["n"] == 0
    # MaxPending passes n through without batch info (APF)
    result = apf_json(
        capsys,
        *("--chain", "Fixed, MaxPending", "--set", "sched.fixed.pilotspercycle=7"),
        *("--set", "sched.maxpending.maximum=1", "--no-batch-info"),
    )
    assert result["n"] == 7


def test_held_counts_as_pending(capsys: pytest.CaptureFixture[str]) -> None:
    result = apf_json(capsys, "--chain", "Ready", "--activated", "100", "--pending", "10", "--held", "5")
    assert result["n"] == 85


@pytest.mark.parametrize(("status", "expected"), [("test", 3), ("offline", 0), ("brokeroff", 100)])
def test_site_status(capsys: pytest.CaptureFixture[str], status: str, expected: int) -> None:
    result = apf_json(
        capsys,
        *("--chain", "Ready, StatusTest, StatusOffline", "--set", "sched.statustest.pilots=3"),
        *("--activated", "100", "--site-status", status),
    )
    assert result["n"] == expected


def test_factory_cap(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--chain", "Ready, MaxPerFactory", "--activated", "100"]
    assert apf_json(capsys, *argv, "--factory-active", "950", "--factory-max", "1000")["n"] == 50
    # the plugin's own key wins over [Factory] maxperfactory.maximum
    assert (
        apf_json(
            capsys,
            *argv,
            "--set",
            "sched.maxperfactory.maximum=980",
            "--factory-active",
            "950",
            "--factory-max",
            "1000",
        )["n"]
        == 30
    )
    assert apf_json(capsys, *argv, "--factory-active", "950")["n"] == 100


def test_throttle_history(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--chain", "Ready, Throttle", "--activated", "100"]
    assert apf_json(capsys, *argv, "--history-total", "10", "--history-short", "8")["n"] == 1
    assert apf_json(capsys, *argv, "--history-total", "10", "--history-short", "2")["n"] == 100
    assert "go together" in apf_error(capsys, *argv, "--history-total", "10")


# --- errors ------------------------------------------------------------------------------------


def test_unknown_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    err = apf_error(capsys, "--chain", "Ready, MaxPerCylce", "--activated", "5")
    assert "unknown sched plugin 'MaxPerCylce'" in err
    assert "did you mean 'MaxPerCycle'" in err


def test_unknown_key_has_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    err = apf_error(capsys, "--chain", "Ready, MaxPerCycle", "--set", "sched.maxpercycle.maximun=5")
    assert "--set" in err
    assert "sched.maxpercycle.maximun" in err
    assert "did you mean 'sched.maxpercycle.maximum'" in err


def test_bad_value_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = apf_error(capsys, "--chain", "Ready, Scale", "--set", "sched.scale.factor=quarter")
    assert "sched.scale.factor" in err
    assert "quarter" in err


def test_key_of_a_plugin_not_in_the_chain(capsys: pytest.CaptureFixture[str]) -> None:
    err = apf_error(capsys, "--chain", "Ready", "--set", "sched.maxpercycle.maximum=5")
    assert "sched.maxpercycle.maximum" in err
    assert "no plugin in the chain" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--activated", "5"], "--chain"),
        (["--chain", "Ready,,Scale"], "empty plugin name"),
        (["--chain", "Ready", "--set", "novalue"], "KEY=VALUE"),
        (["--chain", "Ready", "--pending", "-1"], "--pending"),
        (["--chain", "Ready", "--queue", "Q"], "--conf"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in apf_error(capsys, *argv)


# --- --conf ------------------------------------------------------------------------------------


def _conf_ready() -> bool:
    try:
        from autopyfactory.config.loader import load_queue_sections  # noqa: F401

        load("batchstatus", "Local")
        load("batchsubmit", "Local")
    except (ImportError, PluginError):
        return False
    return True


QUEUES_CONF = """\
[DEFAULT]
enabled = True
batchstatusplugin = Local
batchsubmitplugin = Local
sched.maxpercycle.maximum = 50

[ANALY_X]
wmsqueue = ANALY_X
schedplugin = Ready, Scale, MaxPerCycle
sched.scale.factor = 0.25

[PROD_Y]
wmsqueue = PROD_Y
schedplugin = Ready, MaxPending
sched.maxpending.maximum = 100
"""


@pytest.mark.skipif(not _conf_ready(), reason="needs config.loader and the Local batch plugins")
def test_conf_section(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = tmp_path / "queues.conf"
    conf.write_text(QUEUES_CONF)
    base = ["--conf", str(conf), "--activated", "83", "--pending", "10"]
    result = apf_json(capsys, *base, "--queue", "ANALY_X")
    assert [s["plugin"] for s in result["steps"]] == ["Ready", "Scale", "MaxPerCycle"]
    assert result["n"] == 19
    # --set overrides the file
    assert apf_json(capsys, *base, "--queue", "ANALY_X", "--set", "sched.maxpercycle.maximum=5")["n"] == 5
    assert apf_json(capsys, *base, "--queue", "PROD_Y", "--activated", "500", "--pending", "40")["n"] == 60
    err = apf_error(capsys, *base, "--queue", "ANALY_Z")
    assert "ANALY_Z" in err and "ANALY_X" in err
    err = apf_error(capsys, *base, "--queue", "ANALY_X", "--set", "sched.scale.fcator=1")
    assert "did you mean 'sched.scale.factor'" in err


@pytest.mark.skipif(not _conf_ready(), reason="needs config.loader and the Local batch plugins")
def test_conf_error_names_file_section_and_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = tmp_path / "queues.conf"
    conf.write_text(QUEUES_CONF.replace("sched.scale.factor = 0.25", "sched.scale.factor = quarter"))
    err = apf_error(capsys, "--conf", str(conf), "--queue", "ANALY_X")
    assert str(conf) in err and "ANALY_X" in err and "sched.scale.factor" in err


# --- a real process ----------------------------------------------------------------------------


def test_real_process() -> None:
    apf = Path(sys.executable).parent / "apf"
    assert apf.exists(), f"{apf} missing: run pip install -e ."
    argv = [str(apf), "sched", "--chain", "Ready, Scale, MaxPerCycle", "--set", "sched.scale.factor=0.25"]
    argv += [
        "--set",
        "sched.maxpercycle.maximum=50",
        "--activated",
        "83",
        "--pending",
        "10",
        "--running",
        "17",
    ]
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "steps": [
            {"plugin": "Ready", "in": 0, "out": 73, "reason": "ready=83 - offset=0 - pending=10 = 73"},
            {"plugin": "Scale", "in": 73, "out": 19, "reason": "ceil(73 * 0.25) = 19"},
            {"plugin": "MaxPerCycle", "in": 19, "out": 19, "reason": "19 <= maximum=50: unchanged"},
        ],
        "n": 19,
    }
    bad = subprocess.run(
        [str(apf), "sched", "--chain", "Raedy"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2
    assert "unknown sched plugin 'Raedy'" in bad.stderr
    assert "Traceback" not in bad.stderr
