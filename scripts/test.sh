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
# the browser tests drive Debian's Chromium with Playwright (no browser download); installed with
# its recommended packages (fonts), as tested
BROWSER_PKGS="chromium fonts-dejavu-core"
APT="apt-get -o DPkg::Lock::Timeout=600"  # other sessions may hold the dpkg lock: wait, do not fail
missing_of() { for p in "$@"; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done; }
step "Debian packages"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
missing=$(missing_of $PKGS)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  # shellcheck disable=SC2086
  $APT install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
    $APT update -q >/dev/null
    $APT install -y -q --no-install-recommends $missing >/dev/null
  }
fi
# shellcheck disable=SC2086
missing=$(missing_of $BROWSER_PKGS)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  # shellcheck disable=SC2086
  $APT install -y -q $missing >/dev/null 2>&1 || {
    $APT update -q >/dev/null
    $APT install -y -q $missing >/dev/null
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
