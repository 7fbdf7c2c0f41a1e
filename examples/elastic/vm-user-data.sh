#!/bin/sh
# autopyfactory VM of {{ factory_id }}, queue {{ queue }}, intent {{ intent_id }} ({{ cloud }})
# It joins the Slurm pool {{ pool_address }} as a FUTURE slot and advertises its instance id there.
# A real image reads both from the metadata service; the demo's VM stand-in (vmboot) passes them
# as APF_VM_INSTANCE_ID and APF_VM_HOSTNAME. A real image would also arm the lease fuse:
#   shutdown -h +{{ max_lifetime_minutes }}
export SLURM_CONF={{ pool_address }}
NODE="$APF_VM_HOSTNAME"
slurmd -D -N "$NODE" >/dev/null 2>&1 &
i=0
until scontrol show node "$NODE" >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -gt 600 ] && exit 1; sleep 0.1
done
scontrol update nodename="$NODE" comment="$APF_VM_INSTANCE_ID"
echo "joined the pool as $NODE"
wait
