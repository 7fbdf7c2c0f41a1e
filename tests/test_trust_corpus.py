"""Issue 13, the corpus: a few hundred configurations mutated from examples/ (deleted lines,
duplicated sections, garbage, NaN/inf/negative/huge values, wrong encodings, special files,
interpolation bombs, a hanging http source) and a few hundred bad command lines. For each:
no traceback, no hang, every error names where it is, and nothing known to be invalid is accepted.

Deterministic (fixed seeds); bounded time: everything runs in-process except one hanging source."""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config
from autopyfactory.preflight import check_factory
from tests.trustkit import RawHTTP, no_traceback

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONF_FILES = ("autopyfactory.conf", "queues.conf", "auth.conf", "monitor.conf")
NUMERIC_KEY = re.compile(
    r"^(?P<key>(apfqueue\.sleep|sched\.[a-z]+\.(maximum|minimum|pilots|factor|offset)|share|"
    r"wmsstatus\.[a-z]+\.(sleep|maxage|timeout)|batchstatus\.[a-z]+\.(sleep|maxage)|"
    r"batchsubmit\.[a-z]+\.(slots|cores)|store\.keepdays|factory\.sleep|cleanlogs\.keepdays|"
    r"monitor\.apf\.(timeout|retry|maxbackoff|queuesize)))\s*=\s*(?P<value>\S+)\s*$",
    re.M,
)
BAD_NUMBERS = ("nan", "inf", "-inf", "-1", "1e308", "99999999999999999999999", "NaN", "1e-400x", "ten")
GARBAGE = ("\x00\x01\x02", "=", "[", "[]", "key", " = value", "%(", "%%(x)s%", "\u202e\ufeff", "k = v\\")


@dataclass
class Case:
    name: str
    mutate: Callable[[Path, random.Random], None]
    invalid: bool  # must be refused


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _files(root: Path) -> list[Path]:
    return [root / f for f in CONF_FILES if (root / f).exists()]


def delete_line(root: Path, rnd: random.Random) -> None:
    path = rnd.choice(_files(root))
    lines = _lines(path)
    del lines[rnd.randrange(len(lines))]
    path.write_text("\n".join(lines) + "\n")


def duplicate_section(root: Path, rnd: random.Random) -> None:
    path = rnd.choice(_files(root))
    text = path.read_text()
    sections = re.findall(r"^\[[^\]]+\][^\[]*", text, re.M)
    if sections:
        path.write_text(text + "\n" + rnd.choice(sections))


def garbage_line(root: Path, rnd: random.Random) -> None:
    path = rnd.choice(_files(root))
    lines = _lines(path)
    lines.insert(rnd.randrange(len(lines) + 1), rnd.choice(GARBAGE))
    path.write_text("\n".join(lines) + "\n")


def bad_number(root: Path, rnd: random.Random) -> None:
    candidates = [(p, m) for p in _files(root) for m in NUMERIC_KEY.finditer(p.read_text())]
    path, match = rnd.choice(candidates)
    text = path.read_text()
    bad = rnd.choice(BAD_NUMBERS)
    path.write_text(text[: match.start("value")] + bad + text[match.end("value") :])


def wrong_encoding(root: Path, rnd: random.Random) -> None:
    path = rnd.choice(_files(root))
    text = path.read_text()
    choice = rnd.randrange(3)
    if choice == 0:
        path.write_bytes(text.encode("utf-16"))
    elif choice == 1:
        path.write_bytes(text.encode("utf-8") + b"\n# \xe9t\xe9\n")
    else:
        path.write_bytes(text.encode("utf-8")[: len(text) // 2] + b"\x00\x00" + os.urandom(16))


def special_file(root: Path, rnd: random.Random) -> None:
    path = root / rnd.choice([f for f in ("queues.conf", "auth.conf", "monitor.conf") if (root / f).exists()])
    path.unlink()
    if rnd.random() < 0.5:
        os.mkfifo(path)
    else:
        path.mkdir()


def interpolation_bomb(root: Path, rnd: random.Random) -> None:
    path = root / "queues.conf"
    width = rnd.randint(4, 10)
    bomb = (
        "".join(f"b{i} = " + f"%(b{i + 1})s" * width + "\n" for i in range(10)) + "b10 = " + "x" * 20 + "\n"
    )
    text = path.read_text()
    at = text.find("[DEFAULT]")
    at = text.find("\n", at) + 1 if at >= 0 else 0
    path.write_text(text[:at] + bomb + text[at:])


def negative_maximum(root: Path, rnd: random.Random) -> None:
    path = root / "queues.conf"
    path.write_text(path.read_text() + f"\nsched.maxpercycle.maximum = -{rnd.randint(1, 100)}\n")


def bad_factory_id(root: Path, rnd: random.Random) -> None:
    path = root / "autopyfactory.conf"
    text = re.sub(
        r"^factoryId = .*$",
        f"factoryId = {rnd.choice(['', 'a:b', 'x/y', 'has space'])}",
        path.read_text(),
        flags=re.M,
    )
    path.write_text(text)


def empty_plugin(root: Path, rnd: random.Random) -> None:
    path = root / "queues.conf"
    key = rnd.choice(["batchstatusplugin", "batchsubmitplugin", "schedplugin"])
    path.write_text(path.read_text() + f"\n{key} =\n")


def truncate(root: Path, rnd: random.Random) -> None:
    path = rnd.choice(_files(root))
    data = path.read_bytes()
    path.write_bytes(data[: rnd.randrange(len(data))])


def typo_key(root: Path, rnd: random.Random) -> None:
    path = root / "queues.conf"
    text = path.read_text()
    keys = re.findall(r"^(sched\.[a-z]+\.[a-z_]+) =", text, re.M)
    if keys:
        key = rnd.choice(keys)
        typo = key[:-1] if len(key) > 3 else key + "x"
        path.write_text(text + f"\n{typo} = 1\n")


MUTATIONS: list[tuple[Callable[[Path, random.Random], None], bool]] = [
    (delete_line, False),
    (duplicate_section, False),
    (garbage_line, False),
    (bad_number, True),
    (wrong_encoding, True),
    (special_file, True),
    (interpolation_bomb, True),
    (negative_maximum, True),
    (bad_factory_id, True),
    (empty_plugin, True),
    (truncate, False),
    (typo_key, True),
]
PER_EXAMPLE = 75  # per example that has an autopyfactory.conf (8 to 10 examples: 600 to 750 configurations)


def cases() -> Iterator[tuple[str, int]]:
    for example in sorted(p.name for p in EXAMPLES.iterdir() if (p / "autopyfactory.conf").exists()):
        for i in range(PER_EXAMPLE):
            yield example, i


def _copy(example: str, dest: Path) -> Path:
    shutil.copytree(EXAMPLES / example, dest, dirs_exist_ok=True)
    conf = dest / "autopyfactory.conf"
    text = re.sub(
        r"^(factory\.statedir|baseLogDir) = .*$",
        lambda m: f"{m.group(1)} = {dest / 'state'}",
        conf.read_text(),
        flags=re.M,
    )
    conf.write_text(text)
    return conf


@pytest.mark.timeout(120)
def test_corpus_of_mutated_example_configurations(tmp_path: Path) -> None:
    started = time.monotonic()
    outcomes = {"accepted": 0, "refused": 0}
    for example, i in cases():
        rnd = random.Random(f"{example}-{i}")
        mutate, must_fail = MUTATIONS[i % len(MUTATIONS)]
        root = tmp_path / f"{example}-{i}"
        conf = _copy(example, root)
        if mutate is typo_key and "sched." not in (root / "queues.conf").read_text():
            continue
        mutate(root, rnd)
        label = f"{example} #{i} {mutate.__name__}"
        one = time.monotonic()
        try:
            config = load_factory_config(str(conf))
        except ConfigError as exc:
            outcomes["refused"] += 1
            assert exc.problems, label
            for problem in exc.problems:
                text = str(problem)
                no_traceback(text)
                assert problem.file, (label, text)  # every error names its file (or URL)
                assert (
                    problem.line is not None
                    or problem.section is not None
                    or problem.key is not None
                    or "queueConf" in text
                    or ": is" in text
                    or "cannot" in text
                ), (label, text)
                assert "<config>" not in text
        else:
            outcomes["accepted"] += 1
            assert not must_fail, f"{label}: accepted an invalid configuration"
            report = check_factory(config, store=False, construct=False)  # never raises either
            assert all(str(f) for f in report.findings)
        assert time.monotonic() - one < 5, f"{label} took too long"
    assert outcomes["refused"] > 150 and outcomes["accepted"] > 10, outcomes
    assert time.monotonic() - started < 90


@pytest.mark.timeout(60)
def test_a_hanging_remote_source_in_the_corpus(tmp_path: Path) -> None:
    server = RawHTTP()
    server.responses = {"/queues.conf": None}
    try:
        conf = _copy("demo", tmp_path / "demo")
        conf.write_text(
            conf.read_text().replace("queueConf = queues.conf", f"queueConf = {server.url('/queues.conf')}")
        )
        from autopyfactory.config.sources import read_source

        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            load_factory_config(str(conf), fetcher=lambda s, b: read_source(s, b, timeout=1.0))
        assert time.monotonic() - started < 10
        assert server.url("/queues.conf") in str(info.value)
    finally:
        server.close()


# -- the command line ------------------------------------------------------------------------------

BAD_VALUES = ("nan", "inf", "-1", "1e400", "", "garbage", "99999999999999999999999", "0x10", "-0", "1.5")


@pytest.fixture
def keep_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _cli_cases(conf: str, missing: str, fifo: str, directory: str) -> Iterator[list[str]]:
    for value in BAD_VALUES:
        yield ["sched", "--chain", "Ready, Scale", "--activated", value]
        yield ["sched", "--chain", "Ready", "--pending", value]
        yield ["sched", "--chain", "Ready, Scale", "--set", f"sched.scale.factor={value}", "--activated", "5"]
        yield ["sched", "--chain", "MaxPerCycle", "--set", f"sched.maxpercycle.maximum={value}"]
        yield ["sched", "--chain", "Throttle", "--history-total", value, "--history-short", "1"]
        yield ["sched", "--chain", "MaxPerFactory", "--factory-max", value]
        yield ["explain", "Q", "--conf", conf, "--last", value]
        yield ["run", "--conf", conf, "--once", "--cycles", value]
        yield ["plugins", value]
        yield ["sched", "--chain", value]
    for path in (missing, fifo, directory, "/dev/null", "http://127.0.0.1:1/x.conf", "ftp://x/y", ""):
        for command in (
            ["check"],
            ["status"],
            ["explain", "Q"],
            ["plan"],
            ["run", "--once"],
            ["check", "--migrate"],
        ):
            yield [*command, "--conf", path]
        yield ["sched", "--conf", path, "--queue", "Q"]
        yield ["policy", "check", path]
    for target in ("syslog:/nonexistent/sock", "syslog:host:notaport", directory, f"{missing}/x/y.log"):
        yield ["run", "--conf", conf, "--once", "--log", target]
    yield ["run", "--conf", conf, "--once", "--runas", "no-such-user-anywhere"]
    yield ["install-service", "--root", missing]
    yield ["install-service", "--print", "--user", "bad\nname"]
    yield ["nosuchcommand"]
    yield []


@pytest.mark.timeout(180)
def test_corpus_of_bad_command_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    conf = _copy("demo", tmp_path / "demo")
    os.mkfifo(tmp_path / "fifo.conf")
    (tmp_path / "dir.conf").mkdir()
    seen = 0
    for argv in _cli_cases(
        str(conf), str(tmp_path / "missing"), str(tmp_path / "fifo.conf"), str(tmp_path / "dir.conf")
    ):
        started = time.monotonic()
        code = main(argv)  # an exception here is a traceback for the operator: the test fails
        out = capsys.readouterr()
        no_traceback(out.out, out.err)
        assert time.monotonic() - started < 15, argv
        assert code in (0, 1, 2), (argv, code)
        if code:
            assert out.err.strip(), (argv, "an error must say why")
        seen += 1
    assert seen > 150
