#!/usr/bin/env bash
# Installs autopyfactory into .venv and runs the embedded demo: simulated demand that rises and
# falls, served by real local pilot processes, with a live table of queues (about two minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e . >/dev/null
rm -rf var/demo
exec .venv/bin/apf run --conf examples/demo/autopyfactory.conf --cycles 60 --table "$@"
