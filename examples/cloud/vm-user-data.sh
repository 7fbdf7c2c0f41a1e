#!/bin/sh
# autopyfactory VM: factory {{ factory_id }}, queue {{ queue }}, intent {{ intent_id }} ({{ cloud }})
# Runs once at first boot (cloud-init runs a user-data script that starts with #!).
set -u
# lease fuse: power off after the maximum lifetime even if the factory is gone; the EC2 plugin
# launches with InstanceInitiatedShutdownBehavior=terminate, so power-off ends the instance
shutdown -h +{{ max_lifetime_minutes }} "autopyfactory: maximum lifetime reached" >/dev/null 2>&1 &

# the pilot environment AutoPyFactory pilots expect (APFFID, FACTORYQUEUE, APF_INTENT, ...)
{{ pilot_environment }}

# this VM's instance id, from the metadata service (EC2 IMDSv2; OpenStack serves the same path)
TOKEN=$(curl -s -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token)
INSTANCE_ID=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)
# the node slot this VM fills (a FUTURE node of the pool, e.g. from a site lookup by address)
NODE=$(curl -s "{{ var.slurm_conf_url }}.slots?ip=$(hostname -I | cut -d' ' -f1)")

# join the Slurm pool at {{ pool_address }} and advertise the instance id on the node
curl -s -o /etc/slurm/slurm.conf "{{ var.slurm_conf_url }}"
systemctl start munge
slurmd -N "$NODE"
until scontrol show node "$NODE" >/dev/null 2>&1; do sleep 1; done
scontrol update nodename="$NODE" comment="$INSTANCE_ID"
