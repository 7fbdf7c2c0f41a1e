"""VM contextualisation stand-in for moto's EC2: moto starts no machines, so this plays their boot.

A test/demo component, outside the factory (the factory sees only the EC2 API and the pool).

usage: vmboot.py --endpoint URL [--slots f1,f2,f3] --state DIR [--region us-east-1] [--tag apf:factory=ID]
                 [--slurm-conf PATH] [--interval 0.2]

For every instance the endpoint reports ``running`` (and carrying the tag), once: take a free slot
(a host name; with --slurm-conf, only a slot Slurm shows no node for, i.e. a FUTURE node), fetch the
instance's user data and run it as cloud-init runs a ``#!`` user-data script at first boot, in its
own session, with what a VM reads from its metadata service in the environment:
``APF_VM_INSTANCE_ID`` and ``APF_VM_HOSTNAME`` (the slot). When the instance is stopped,
terminated or gone, the whole session is killed (the VM is gone) and the slot is freed.
Without --slots every running instance boots at once, with ``APF_VM_HOSTNAME=vm-<instance id>``:
the VM finds its node itself (Slurm power saving: the node whose Comment is its instance id).
SIGTERM kills every VM and exits. One line per boot and per stop on stdout.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"{time.time():.3f} {message}", flush=True)


class Booter:
    def __init__(self, args: argparse.Namespace) -> None:
        import boto3

        self.ec2 = boto3.client(
            "ec2",
            endpoint_url=args.endpoint,
            region_name=args.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.slots = [s for s in args.slots.split(",") if s]
        self.state = Path(args.state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.filters = []
        if args.tag:
            key, _, value = args.tag.partition("=")
            self.filters.append({"Name": f"tag:{key}", "Values": [value]})
        self.slurm_conf = args.slurm_conf
        self.vms: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}  # instance -> (slot, process)
        self.done: set[str] = set()  # booted once; never booted again

    def states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=self.filters)
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    out[inst["InstanceId"]] = inst["State"]["Name"]
        return out

    def slot_free(self, slot: str) -> bool:
        if any(s == slot for s, _ in self.vms.values()):
            return False
        if not self.slurm_conf:
            return True
        shown = subprocess.run(
            ["scontrol", "show", "node", slot],
            env={**os.environ, "SLURM_CONF": self.slurm_conf},
            capture_output=True,
            check=False,
        )
        return shown.returncode != 0  # "Node fN not found": a FUTURE slot, free

    def boot(self, iid: str) -> None:
        if not self.slots:
            slot: str | None = f"vm-{iid}"  # no slots: the VM finds its node itself
        else:
            slot = next((s for s in self.slots if self.slot_free(s)), None)
        if slot is None:
            return  # no free slot now: try again next round
        attr = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        data = base64.b64decode((attr.get("UserData") or {}).get("Value") or b"")
        vm = self.state / iid
        vm.mkdir(parents=True, exist_ok=True)
        script = vm / "user-data"
        script.write_bytes(data)
        script.chmod(0o755)
        env = {**os.environ, "APF_VM_INSTANCE_ID": iid, "APF_VM_HOSTNAME": slot}
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        with (vm / "console.log").open("ab") as console:
            proc = subprocess.Popen(
                [str(script)] if data.startswith(b"#!") else ["/bin/sh", str(script)],
                cwd=vm,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.vms[iid] = (slot, proc)
        self.done.add(iid)
        log(f"boot {iid} on {slot} (pid {proc.pid})")

    def kill(self, iid: str, why: str) -> None:
        slot, proc = self.vms.pop(iid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                # the session may outlive its leader (a daemon it started): wait for all of it
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    os.killpg(proc.pid, 0)
                    time.sleep(0.05)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        log(f"gone {iid} from {slot} ({why})")

    def round(self) -> None:
        states = self.states()
        for iid in list(self.vms):
            state = states.get(iid, "gone")
            if state not in ("pending", "running"):
                self.kill(iid, state)
        for iid, state in sorted(states.items()):
            if state == "running" and iid not in self.done:
                self.boot(iid)

    def shutdown(self) -> None:
        for iid in list(self.vms):
            self.kill(iid, "vmboot stopping")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--slots", default="", help="host names for the VMs, e.g. f1,f2,f3; none: vm-<id>")
    parser.add_argument("--state", required=True, help="directory for user data and console logs")
    parser.add_argument("--tag", help="only instances carrying this tag, KEY=VALUE")
    parser.add_argument("--slurm-conf", help="use only slots Slurm shows no node for (FUTURE nodes)")
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    booter = Booter(args)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"vmboot watching {args.endpoint} ({args.region}), slots {args.slots}")
    try:
        while not stopping:
            try:
                booter.round()
            except Exception as exc:  # the endpoint restarting, a slurmctld hiccup: try again
                log(f"round failed: {exc}")
            time.sleep(args.interval)
    finally:
        booter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
