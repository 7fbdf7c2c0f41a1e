#!/usr/bin/env bash
# The elastic pool on one host (examples/elastic, docs/cloud.md "Elastic pool"), in about 3 minutes:
#   a Slurm cluster whose partition 'cloud' has only State=FUTURE slots f1..f4 (no node yet),
#   moto as EC2, the project's fake PanDA server with 4 activated jobs for CLOUD_SITE, and the VM
#   stand-in (vmboot: it runs each running instance's user data, i.e. starts a slurmd for a slot);
#   then the factory with its live table. PILOTS submits 4 pilots into 'cloud'; VMS sees them
#   waiting, launches 4 VMs, the nodes join, the pilots run (40 s). Once they run, PanDA's demand
#   is dropped (the pilots took the jobs); when they finish, the VMs' nodes are drained by
#   instance id and the VMs terminated, the slots go back to FUTURE. Then everything stops.
# Run as root (slurmd), on Debian 12: missing packages (munge, slurm) are installed.
#   APF_ELASTIC_RUN   [/tmp/apf-elastic]  state, logs and the run's copy of the config
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
RUN=${APF_ELASTIC_RUN:-/tmp/apf-elastic}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[cloud]' >/dev/null

export APF_SLURM_BASE=$RUN/slurm APF_SLURM_ACCOUNTING=0 APF_SLURM_NODES=1 APF_SLURM_FUTURE=4 \
  APF_SLURM_CLUSTER=apfelastic APF_MOTO_BASE=$RUN/moto
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  echo "demo-elastic: stopping what it started"
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/components/moto.sh stop >/dev/null 2>&1 || true
  scripts/components/slurm.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

# a previous run's components, if any
scripts/components/moto.sh stop >/dev/null 2>&1 || true
scripts/components/slurm.sh stop >/dev/null 2>&1 || true
rm -rf "$RUN"
mkdir -p "$RUN"
scripts/components/slurm.sh start >"$RUN/slurm.env"
scripts/components/moto.sh start >"$RUN/moto.env"
SLURM_CONF=$(sed -n 's/^SLURM_CONF=//p' "$RUN/slurm.env")
MOTO=$(sed -n 's/^APF_MOTO_URL=//p' "$RUN/moto.env")
export SLURM_CONF
# moto runs without a public image catalogue: register the image the VMs boot
AMI=$(.venv/bin/python - "$MOTO" <<'EOF'
import sys, boto3
ec2 = boto3.client("ec2", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
print(ec2.register_image(Name="apf-elastic-worker", RootDeviceName="/dev/xvda",
      BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])["ImageId"])
EOF
)

# the fake PanDA server: job counts from a file the demo rewrites
panda_jobs() { echo "$1" >"$RUN/panda-jobs.tmp" && mv "$RUN/panda-jobs.tmp" "$RUN/panda-jobs.json"; }
panda_jobs '{"CLOUD_SITE": {"activated": 4}}'
.venv/bin/python -m tests.fakepanda --jobs "$RUN/panda-jobs.json" --url-file "$RUN/panda.url" \
  >"$RUN/panda.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$RUN/panda.url" ] && break; sleep 0.1; done
PANDA=$(cat "$RUN/panda.url")

# the run's copy of the example, with this run's addresses
mkdir -p "$RUN/conf"
cp examples/elastic/* "$RUN/conf/"
sed -i -e "s|http://127.0.0.1:25080/api/v1|$PANDA|" -e "s|http://127.0.0.1:5000|$MOTO|" \
  -e "s|ami-12c6146b|$AMI|" -e "s|/tmp/apf-elastic/slurm/slurm.conf|$SLURM_CONF|" \
  -e "s|^executable = pilot.sh|executable = $RUN/conf/pilot.sh|" "$RUN/conf/queues.conf"

# the VMs: moto starts no machine, vmboot plays their boot (the factory knows nothing of it)
.venv/bin/python scripts/components/vmboot.py --endpoint "$MOTO" --slots f1,f2,f3,f4 \
  --state "$RUN/vms" --tag apf:factory=elastic-demo --slurm-conf "$SLURM_CONF" >"$RUN/vmboot.log" 2>&1 &
PIDS+=($!)

# PanDA's side of the story, and the end of the demo
drive() {
  local factory=$1 running n
  while :; do  # the pilots take their jobs once they run
    running=$(squeue -h -r -t RUNNING -o %j | grep -c '^apf:elastic-demo:PILOTS:' || true)
    [ "$running" -ge 4 ] && break
    sleep 1
  done
  panda_jobs '{"CLOUD_SITE": {"activated": 0, "running": 4}}'
  while squeue -h -r -o %j | grep -q '^apf:elastic-demo:PILOTS:'; do sleep 1; done
  panda_jobs '{"CLOUD_SITE": {"activated": 0, "running": 0, "finished": 4}}'
  for n in $(seq 120); do  # contraction: every slot back to FUTURE (hidden)
    [ -z "$(sinfo -h -p cloud -o %N 2>/dev/null)" ] && [ "$(grep -c '^.* gone ' "$RUN/vmboot.log")" -ge 4 ] && break
    sleep 1
  done
  sleep 6  # a last look at the table
  kill -TERM "$factory" 2>/dev/null || true
}

cd "$RUN/conf"
"$REPO/.venv/bin/apf" run --conf "$RUN/conf/autopyfactory.conf" --table --log "$RUN/apf.log" "$@" &
FACTORY=$!
PIDS+=("$FACTORY")
drive "$FACTORY" &
PIDS+=($!)
wait "$FACTORY" || true
cd "$REPO"
echo
echo "demo-elastic: VMs (vmboot):"
grep -E ' (boot|gone) ' "$RUN/vmboot.log" || true
echo "demo-elastic: logs and state under $RUN"
