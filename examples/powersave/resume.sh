#!/bin/sh
# slurm.conf: ResumeProgram=/etc/autopyfactory/powersave/resume.sh (slurm.conf takes a path, no arguments)
# slurmctld runs this with a host list: the nodes to power up, e.g. c[1-2]: the factory creates a VM for each.
# It only leaves a request in the factory's spool and exits 0 at once (docs/slurm-powersave.md).
# slurmscriptd starts it with stdin closed, a minimal PATH and none of your environment: hence
# the full paths in powersave.env and </dev/null.
. "$(dirname "$0")/powersave.env"
exec "$APF" powersave resume "$1" --spool "$APF_POWERSAVE_SPOOL" </dev/null >>"$APF_POWERSAVE_LOG" 2>&1
