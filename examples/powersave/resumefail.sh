#!/bin/sh
# slurm.conf: ResumeFailProgram=/etc/autopyfactory/powersave/resumefail.sh (slurm.conf takes a path, no arguments)
# slurmctld runs this with a host list: the nodes that did not come up within ResumeTimeout: the factory writes their VMs off.
# It only leaves a request in the factory's spool and exits 0 at once (docs/slurm-powersave.md).
# slurmscriptd starts it with stdin closed, a minimal PATH and none of your environment: hence
# the full paths in powersave.env and </dev/null.
. "$(dirname "$0")/powersave.env"
exec "$APF" powersave resumefail "$1" --spool "$APF_POWERSAVE_SPOOL" </dev/null >>"$APF_POWERSAVE_LOG" 2>&1
