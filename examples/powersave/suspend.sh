#!/bin/sh
# slurm.conf: SuspendProgram=/etc/autopyfactory/powersave/suspend.sh (slurm.conf takes a path, no arguments)
# slurmctld runs this with a host list: the idle nodes it powers down: the factory terminates their VMs.
# It only leaves a request in the factory's spool and exits 0 at once (docs/slurm-powersave.md).
# slurmscriptd starts it with stdin closed, a minimal PATH and none of your environment: hence
# the full paths in powersave.env and </dev/null.
. "$(dirname "$0")/powersave.env"
exec "$APF" powersave suspend "$1" --spool "$APF_POWERSAVE_SPOOL" </dev/null >>"$APF_POWERSAVE_LOG" 2>&1
