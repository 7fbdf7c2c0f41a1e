"""Cloud VMs as pilots: EC2 (boto3), OpenStack (openstacksdk) and Script (commands from config).

One VM is one pilot. The life cycle is written once (``lifecycle``: tags, user data, pilot states,
which VMs to drain or terminate now, leaks; all pure) and shared by every cloud; ``pools`` tells
which pool node carries which instance id (Slurm, HTCondor) and drains nodes; ``base`` holds the
submit and status plugins every cloud module specialises with its own API adapter. See
docs/cloud.md.
"""
