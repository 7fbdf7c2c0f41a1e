#!/usr/bin/env bash
# Runs every benchmark in bench/ (each prints its ratios/figures as its last line).
# Slurm and moto are started by bench/slurm_submit.py and bench/cloud.py if they are not running
# (and stopped again); bench/arc.py starts its own Slurm, test CA and A-REX under
# /tmp/apf-bench-arc the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { python3 -m venv .venv; .venv/bin/python -m pip install -q -e '.[test]'; }
echo "== bench/decide.py (10,000 queues, 1,000,000 pilots, 7-plugin chain)"
.venv/bin/python bench/decide.py
echo "== bench/engine.py (the real engine, 1,000 and 10,000 queues, every queue submitting; daemon latency)"
.venv/bin/python bench/engine.py
echo "== bench/slurm_submit.py (real local Slurm)"
.venv/bin/python bench/slurm_submit.py
echo "== bench/arc.py (real A-REX with Slurm: 100 pilots in one cycle vs 100 arcsub; status of 1,000 jobs)"
.venv/bin/python bench/arc.py
echo "== bench/cloud.py (moto's EC2 server: 100 VMs in one cycle, poll + reconcile of 1,000)"
.venv/bin/python bench/cloud.py
echo "== apf simulate (two months of the example cascade at a 10-minute step)"
.venv/bin/apf simulate --conf examples/policy/autopyfactory.conf --demand examples/policy/demand.csv \
  --start 2027-01-01T00:00:00Z --days 62 --step 10m --json \
  | .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); print(f"simulate_s={r[\"elapsed_s\"]} cycles={r[\"cycles_run\"]}")'
echo "== bench/web.py (a daemon with 10,000 queues: page times, loop cadence while Chromium polls)"
.venv/bin/python bench/web.py
echo "== bench/simulate_compare.py (apf simulate --compare: two months, 10-minute step, three configurations and the optimum)"
.venv/bin/python bench/simulate_compare.py
if [ "${APF_BENCH_SOAK:-0}" = 1 ]; then
  echo "== bench/soak_kill.py (apf run SIGKILLed 100 times during its cycles; 6-8 minutes)"
  .venv/bin/python bench/soak_kill.py --kills 100
fi
