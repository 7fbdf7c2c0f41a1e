#!/bin/sh
# the demo's pilot: it "runs a job" for a while on the node a VM brought
echo "pilot on $SLURMD_NODENAME (job ${SLURM_JOB_ID})"
sleep 40
