#!/usr/bin/env bash
# Installs everything the tests need and runs the whole suite, on a fresh Debian 12 machine.
#   - Debian packages for the real components (Slurm + slurmdbd/MariaDB, OpenSSH, PostgreSQL; systemd
#     only for systemd-analyze, which checks the shipped unit file);
#     the test session starts them on 127.0.0.1 on first use and stops what it started
#   - a venv in .venv with autopyfactory and its test extras
#   - ruff (lint + format check), then pytest; extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s (+%ss)\n' "$1" "$SECONDS"; }

PKGS="munge slurmctld slurmd slurm-client slurmdbd mariadb-server mariadb-client openssh-server openssh-client postgresql-15 util-linux procps systemd"
step "Debian packages"
missing=$(for p in $PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $missing >/dev/null
  }
fi

step "Python environment"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

step "ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench

step "pytest"
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
step "done (pytest exit status $rc)"
exit "$rc"
