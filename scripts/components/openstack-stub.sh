#!/usr/bin/env bash
# The OpenStack wire stub (Keystone v3 + Nova v2.1 + a Glance image list) on 127.0.0.1, and a
# clouds.yaml naming it. No OpenStack runs here: openstacksdk is tested against this stub.
#
# usage: openstack-stub.sh start|stop|status|env
#   start   start the stub (a no-op when this base dir's stub runs), write clouds.yaml
#   stop    stop it
#   env     print the env file written at start (URL, clouds.yaml path, cloud name)
#
# env (defaults in brackets):
#   APF_VENV            [<repo>/.venv]        the venv whose python runs the stub
#   APF_OPENSTACK_BASE  [/tmp/apf-openstack]  pid file, log and clouds.yaml live here
#   APF_OPENSTACK_PORT  [15200]               port on 127.0.0.1 (next free one if taken)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

VENV=${APF_VENV:-$(cd "$HERE/../.." && pwd)/.venv}
BASE=${APF_OPENSTACK_BASE:-/tmp/apf-openstack}

start() {
  if pid_alive "$BASE/stub.pid"; then
    el "already running (base $BASE)"
    cat "$BASE/env"
    return 0
  fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local port
  port=$(pick_port "${APF_OPENSTACK_PORT:-15200}")
  rm -rf "$BASE"
  mkdir -p "$BASE"
  setsid "$VENV/bin/python" "$HERE/openstack_stub.py" "$port" </dev/null >"$BASE/stub.log" 2>&1 &
  echo $! >"$BASE/stub.pid"
  if ! wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$port/v3"; then
    cat "$BASE/stub.log" >&2
    exit 1
  fi
  el "OpenStack stub up on 127.0.0.1:$port"
  cat >"$BASE/clouds.yaml" <<EOT
clouds:
  stub:
    auth_type: password
    auth:
      auth_url: http://127.0.0.1:$port/v3
      username: apf
      password: stub-password-not-secret
      project_name: apf
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
    interface: public
EOT
  cat >"$BASE/env" <<EOT
APF_OPENSTACK_BASE=$BASE
APF_OPENSTACK_URL=http://127.0.0.1:$port
APF_OPENSTACK_CLOUDS=$BASE/clouds.yaml
APF_OPENSTACK_CLOUD=stub
EOT
  cat "$BASE/env"
}

stop() {
  stop_pidfile "$BASE/stub.pid" 5
  el "stopped (base $BASE)"
}

status() {
  if pid_alive "$BASE/stub.pid"; then echo "OpenStack stub running (pid $(cat "$BASE/stub.pid")), base $BASE"; else
    echo "OpenStack stub not running (base $BASE)"; return 1; fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) cat "$BASE/env" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
