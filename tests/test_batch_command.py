"""The shared command-backend base (plugins/batch/command.py) through Slurm, PBS and LSF.

One rule per concern, checked on every backend: which keys a status endpoint takes, how a
failed command is classified, which cancel complaints mean "already finished" (each backend's
narrow pattern: a message that merely mentions "finished" is still a failure), chunking.
Commands run through a transport that answers with recorded or documented outputs
(tests/data/batch/); the real Slurm runs in test_slurm.py.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest

from autopyfactory.model import PilotTags
from autopyfactory.plugins.base import BackendError, PluginError
from autopyfactory.plugins.batch.command import CommandStatus, CommandSubmit
from autopyfactory.plugins.batch.lsf import LSFStatus, LSFSubmit
from autopyfactory.plugins.batch.pbs import PBSStatus, PBSSubmit
from autopyfactory.plugins.batch.slurm import SlurmStatus, SlurmSubmit
from autopyfactory.plugins.transport.base import Result, Transport

DATA = Path(__file__).parent / "data" / "batch"
SRC = Path(__file__).resolve().parents[1] / "src" / "autopyfactory"
BACKENDS = {"Slurm": (SlurmSubmit, SlurmStatus), "PBS": (PBSSubmit, PBSStatus), "LSF": (LSFSubmit, LSFStatus)}


class ReplayTransport(Transport):
    """Answers every command with one Result; records the argv it was given."""

    name = "replay"

    def __init__(self, answer: Result) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], input: bytes | None = None, timeout: float = 60) -> Result:
        self.calls.append(list(argv))
        return self.answer


def submitter(make_queue, make_factory, backend: str, keys: dict[str, str] | None = None) -> CommandSubmit:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue("q1", {"executable": "/bin/true", **(keys or {})}, submit=backend)
    sub = BACKENDS[backend][0](queue, queue.batchsubmit.options, factory)
    assert isinstance(sub, CommandSubmit)
    return sub


def replay(
    plugin: CommandSubmit | CommandStatus, rc: int, stdout: str = "", stderr: str = ""
) -> ReplayTransport:
    plugin.transport = ReplayTransport(Result(rc, stdout, stderr))
    return plugin.transport


# ---------------------------------------------------------------------------------------------
# status keys: one rule for every backend


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_status_keys_follow_one_rule(backend: str, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    status_cls = BACKENDS[backend][1]
    factory = make_factory("f1", auth={"hpc": ("SSH", {"ssh.privatekeyfile": "/dev/null"})})
    sub_keys = {
        "executable": "/bin/true",
        f"batchsubmit.{backend.lower()}.host": "head1",
        f"batchsubmit.{backend.lower()}.user": "apf",
        f"batchsubmit.{backend.lower()}.authprofile": "hpc",
        f"batchsubmit.{backend.lower()}.timeout": "30",
    }
    # the status plugin takes the queue's submit keys it does not set itself
    only_submit = status_cls.endpoint(make_queue("a", sub_keys, submit=backend), factory)
    target = only_submit.target
    assert (target.host, target.user, target.port, target.authprofile) == ("head1", "apf", 22, "hpc")
    assert only_submit.timeout == 30
    # a batchstatus key the queue sets wins over the batchsubmit key of the same name
    st = f"batchstatus.{backend.lower()}"
    both = status_cls.endpoint(
        make_queue("b", {**sub_keys, f"{st}.host": "head2", f"{st}.timeout": "5"}, submit=backend), factory
    )
    assert (both.target.host, both.target.user, both.timeout) == ("head2", "apf", 5)
    assert both != only_submit
    # queues on one target share one poller, whatever else differs
    again = status_cls.endpoint(
        make_queue("c", {**sub_keys, f"batchsubmit.{backend.lower()}.workdir": "/tmp"}, submit=backend),
        factory,
    )
    assert again == only_submit and hash(again) == hash(only_submit)
    # another backend submits: only the status keys count
    other = make_queue(
        "d", {"executable": "/bin/true", f"{st}.host": "head3"}, submit="Local", status=backend
    )
    alone = status_cls.endpoint(other, factory)
    assert (alone.target.host, alone.target.user, alone.timeout) == ("head3", None, 60)
    local = status_cls.endpoint(
        make_queue("e", {"executable": "/bin/true"}, submit="Local", status=backend), factory
    )
    assert local.target.host is None and local.target.label == f"{backend.lower()}:local"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_status_errors_name_the_key_the_queue_set(backend: str, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    status_cls = BACKENDS[backend][1]
    factory = make_factory("f1")
    low = backend.lower()
    for prefix, submit in (
        (f"batchsubmit.{low}", backend),
        (f"batchstatus.{low}", backend),
        (f"batchstatus.{low}", "Local"),
    ):
        queue = make_queue(
            "q", {"executable": "/bin/true", f"{prefix}.host": "head1"}, submit=submit, status=backend
        )
        with pytest.raises(PluginError, match=rf"^{prefix}\.host is 'head1' but {prefix}\.authprofile"):
            status_cls(status_cls.endpoint(queue, factory), factory)


def test_backend_specific_status_keys(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    # Slurm: sacct follows batchsubmit.slurm.sacct unless the status key says otherwise
    off = make_queue(
        "a", {"batchsubmit.slurm.sacct": "False", "batchsubmit.slurm.cluster": "c1"}, submit="Slurm"
    )
    ep = SlurmStatus.endpoint(off, factory)
    assert ep.sacct is False and ep.target.label == "slurm:local/c1"
    on = make_queue(
        "b", {"batchsubmit.slurm.sacct": "False", "batchstatus.slurm.sacct": "True"}, submit="Slurm"
    )
    assert SlurmStatus.endpoint(on, factory).sacct is True
    # PBS: the flavor (which qstat to run) follows the submit key too
    torque = make_queue("c", {"batchsubmit.pbs.flavor": "torque"}, submit="PBS")
    status = PBSStatus(PBSStatus.endpoint(torque, factory), factory)
    try:
        assert status.status_argv() == ["qstat", "-f", "-x", "-t"]
    finally:
        status.close()


# ---------------------------------------------------------------------------------------------
# cancel: "already finished" is each backend's narrow rule


GONE = {
    "Slurm": [
        # recorded from Slurm 22.05 (scancel -v; older versions print it without -v)
        (DATA / "slurm_scancel_gone.stderr").read_text(),
        "scancel: error: Kill job error on job id 12_3: Job/step already completing or completed\n",
    ],
    "PBS": [
        "qdel: Unknown Job Id 1.s\n",
        "qdel: Job 1.s has finished\n",
        "qdel: Job has finished\n",
        "qdel: Unknown Job Id Error 5001.torque01\n",
        "qdel: nonexistent job id: 5001.torque01\n",
        "qdel: Request invalid for state of job MSG=invalid state for job - COMPLETE 5001.torque01\n",
    ],
    "LSF": [
        "Job <7002>: Job has already finished\n",
        "Job <7001[2]>: No matching job found\nJob <7003>: Job has already finished\n",
    ],
}
FAILED = {
    "Slurm": [
        "scancel: error: Invalid job id 1a\n",
        "scancel: error: Kill job error on job id 7: Access/permission denied\n",
        (DATA / "slurm_scancel_gone.stderr").read_text()
        + "scancel: error: Kill job error on job id 8: Access/permission denied\n",
    ],
    "PBS": [
        # the old rule swallowed anything that mentioned "finished"
        "qdel: Unauthorized Request 1.s (a finished reservation cannot be changed)\n",
        "qdel: Job 1.s has finished\nqdel: Unauthorized Request 2.s\n",
        "qdel: cannot connect to server pbs01 (errno=111)\n",
    ],
    "LSF": [
        "Job <7004>: User permission denied\n",
        "Job <7002>: Job has already finished\nJob <7004>: User permission denied\n",
        "Job <7002>: Job has already finished, but its output was lost\n",
    ],
}


@pytest.mark.parametrize(("backend", "stderr"), [(b, e) for b, errs in GONE.items() for e in errs])
def test_cancel_of_finished_jobs_is_success(backend: str, stderr: str, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    sub = submitter(make_queue, make_factory, backend)
    rec = replay(sub, 1, stderr=stderr)
    sub.cancel(["1", "2"])
    assert len(rec.calls) == 1
    sub.close()


@pytest.mark.parametrize(("backend", "stderr"), [(b, e) for b, errs in FAILED.items() for e in errs])
def test_cancel_failures_are_errors(backend: str, stderr: str, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    sub = submitter(make_queue, make_factory, backend)
    replay(sub, 1, stderr=stderr)
    program = {"Slurm": "scancel", "PBS": "qdel", "LSF": "bkill"}[backend]
    with pytest.raises(BackendError, match=rf"^{backend.lower()}:local: {program}"):
        sub.cancel(["1", "2"])
    sub.close()


@pytest.mark.parametrize(("backend", "size"), [("Slurm", 500), ("PBS", 200), ("LSF", 200)])
def test_cancel_is_chunked(backend: str, size: int, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    sub = submitter(make_queue, make_factory, backend)
    rec = replay(sub, 0)
    ids = [str(i) for i in range(2 * size + 7)]
    sub.cancel(ids)
    cancelled = [[a for a in argv if a.isdigit()] for argv in rec.calls]
    assert [len(c) for c in cancelled] == [size, size, 7]
    assert [i for chunk in cancelled for i in chunk] == ids
    sub.close()


# ---------------------------------------------------------------------------------------------
# submit and status errors


CAPACITY = {
    "Slurm": "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)\n",
    "PBS": "qsub: would exceed queue workq's per-user limit of jobs in 'Q' state\n",
    "LSF": "User <apf>: Pending job threshold reached. Retrying in 60 seconds...\nJob not submitted.\n",
}
NOT_CAPACITY = {
    "Slurm": "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
    "PBS": "qsub: Unknown queue\n",
    # a refused option that mentions a limit is a config error, not a full cluster
    "LSF": "-M 8000: The memory limit must be a positive integer. Job not submitted.\n",
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_submit_errors_are_classified(backend: str, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    sub = submitter(make_queue, make_factory, backend)
    tags = PilotTags("f1", "q1", "i1")
    program = {"Slurm": "sbatch", "PBS": "qsub", "LSF": "bsub"}[backend]
    replay(sub, 1, stderr=CAPACITY[backend])
    with pytest.raises(BackendError) as full:
        sub.submit(3, tags, 0.0)
    assert full.value.capacity and full.value.target == f"{backend.lower()}:local"
    assert str(full.value).startswith(f"{backend.lower()}:local: {program} failed (exit 1): ")
    replay(sub, 1, stderr=NOT_CAPACITY[backend])
    with pytest.raises(BackendError) as bad:
        sub.submit(3, tags, 0.0)
    assert not bad.value.capacity
    # over SSH a missing tool is the shell's exit 127
    replay(sub, 127, stderr=f"bash: line 1: {program}: command not found\n")
    with pytest.raises(BackendError, match=f"{program}: {backend} client tools not found on the target"):
        sub.submit(1, tags, 0.0)
    # a submit that printed no job id did not give pilots
    replay(sub, 0, stdout="something else\n")
    with pytest.raises(BackendError, match="no job id"):
        sub.submit(1, tags, 0.0)
    sub.close()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_retire_without_kill_leaves_running_pilots(backend: str, make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    sub = submitter(make_queue, make_factory, backend)
    rec = replay(sub, 0)
    sub.retire([])
    sub.retire(["5"], kill=True)
    assert len(rec.calls) == 1 and rec.calls[0][-1] == "5"
    sub.close()


def test_no_jobs_is_empty_only_when_every_line_says_so(make_queue, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory("f1")
    queue = make_queue("q", {"executable": "/bin/true"}, submit="LSF")
    status = LSFStatus(LSFStatus.endpoint(queue, factory), factory)
    for text in ("No unfinished job found\n", "No matching job found\n"):
        replay(status, 255, stderr=text)
        assert status.poll(1.0).pilots == ()
    replay(status, 255, stderr="No job found\nLSF is down. Please wait ...\n")
    with pytest.raises(BackendError, match="bjobs failed"):
        status.poll(1.0)
    status.close()


# ---------------------------------------------------------------------------------------------
# layout: no import cycles among the transports and the batch backends


def _imports(path: Path) -> set[str]:
    """Modules of autopyfactory a file imports at run time (anywhere in it, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autopyfactory"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("autopyfactory"))
    return out


def test_no_import_cycles_in_transports_and_batch_backends() -> None:
    modules = {}
    for folder in ("plugins/transport", "plugins/batch"):
        for path in (SRC / folder).glob("*.py"):
            name = "autopyfactory." + str(path.relative_to(SRC).with_suffix("")).replace("/", ".")
            modules[name.removesuffix(".__init__")] = path
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    assert "autopyfactory.plugins.transport.local" not in graph["autopyfactory.plugins.transport.base"]

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(name) :], name]))
        for dep in graph[name]:
            visit(dep, [*stack, name])

    for name in graph:
        visit(name, [])
