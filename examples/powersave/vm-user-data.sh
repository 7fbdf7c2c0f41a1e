#!/bin/sh
# autopyfactory VM for Slurm power saving: factory {{ factory_id }}, queue {{ queue }} ({{ cloud }})
# Runs once at first boot (cloud-init). The factory has written this VM's instance id into the
# Comment of the CLOUD node Slurm is powering up for it; the VM finds that node and starts its
# slurmd with -b ("just booted"), which is what slurmctld waits for before ResumeTimeout.
set -u
shutdown -h +{{ max_lifetime_minutes }} "autopyfactory: maximum lifetime reached" >/dev/null 2>&1 &

TOKEN=$(curl -s -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token)
INSTANCE_ID=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)

curl -s -o /etc/slurm/slurm.conf "{{ var.slurm_conf_url }}"
systemctl start munge

# the node whose Comment is this instance id (the factory usually wrote it before the VM booted)
node_of() {
  scontrol show node -o 2>/dev/null | awk -v want="Comment=$1" \
    '{ for (i = 2; i <= NF; i++) if ($i == want) { sub("^NodeName=", "", $1); print $1; exit } }'
}
NODE=""
for i in $(seq 120); do NODE=$(node_of "$INSTANCE_ID"); [ -n "$NODE" ] && break; sleep 5; done
[ -n "$NODE" ] || { echo "no node carries $INSTANCE_ID"; shutdown -h now; exit 1; }
# tell slurmctld where the node is now (or let DNS do it: SlurmctldParameters=cloud_dns)
scontrol update nodename="$NODE" nodeaddr="$(hostname -I | cut -d' ' -f1)" nodehostname="$(hostname)"
exec /usr/sbin/slurmd -b -N "$NODE"
