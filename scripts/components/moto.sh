#!/usr/bin/env bash
# moto's server (an EC2 emulator) on 127.0.0.1, from the project's venv, and a fault-injecting proxy
# in front of it.
#
# usage: moto.sh start|stop|status|env
#   start   pip-install moto into the venv if its server is missing, start it, wait until it answers;
#           a no-op when this base dir's server already runs
#   stop    stop this base dir's server and proxy
#   env     print the env file written at start (endpoint URLs)
#
# The server is moto_ec2.py (moto with EC2's launch count, a boot delay, capacity limits and
# provider interruptions, controlled at /_apf/control and /_apf/interrupt); the proxy is
# ec2_fault_proxy.py (EC2's real error XML for chosen actions, armed at /_fault).
#
# env (defaults in brackets):
#   APF_VENV        [<repo>/.venv]   the venv whose moto_server runs (created if missing)
#   APF_MOTO_BASE   [/tmp/apf-moto]  pid file and log live here
#   APF_MOTO_PORT   [5000]           port on 127.0.0.1 (next free one if taken)
#   APF_MOTO_PROXY_PORT [port+1]     the fault proxy's port (next free one if taken)
#   MOTO_EC2_LOAD_DEFAULT_AMIS [false]  moto's catalogue of public images (register_image your own)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

VENV=${APF_VENV:-$(cd "$HERE/../.." && pwd)/.venv}
BASE=${APF_MOTO_BASE:-/tmp/apf-moto}

start() {
  if pid_alive "$BASE/moto.pid"; then
    el "already running (base $BASE)"
    cat "$BASE/env"
    return 0
  fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  if [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import flask, flask_cors, moto.ec2' 2>/dev/null; then
    # moto[server] pulls every service's dependencies; EC2 and the web server are enough here
    "$VENV/bin/python" -m pip install -q 'moto[ec2]>=5,<6' flask flask-cors
    el "pip installed moto"
  fi
  local port
  port=$(pick_port "${APF_MOTO_PORT:-5000}")
  rm -rf "$BASE"
  mkdir -p "$BASE"
  # without moto's ~1300 default images a reset costs 0.01 s instead of 2 s; tests register their own
  MOTO_EC2_LOAD_DEFAULT_AMIS=${MOTO_EC2_LOAD_DEFAULT_AMIS:-false} \
    setsid "$VENV/bin/python" "$HERE/moto_ec2.py" -H 127.0.0.1 -p "$port" </dev/null >"$BASE/moto.log" 2>&1 &
  echo $! >"$BASE/moto.pid"
  if ! wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$port/_apf/control"; then
    cat "$BASE/moto.log" >&2
    exit 1
  fi
  el "moto (moto_ec2.py) up on 127.0.0.1:$port"
  local proxy
  proxy=$(pick_port "${APF_MOTO_PROXY_PORT:-$(( port + 1 ))}")
  setsid "$VENV/bin/python" "$HERE/ec2_fault_proxy.py" "$proxy" "http://127.0.0.1:$port" </dev/null >"$BASE/proxy.log" 2>&1 &
  echo $! >"$BASE/proxy.pid"
  if ! wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$proxy/_fault"; then
    cat "$BASE/proxy.log" >&2
    exit 1
  fi
  el "fault proxy up on 127.0.0.1:$proxy"
  cat >"$BASE/env" <<EOT
APF_MOTO_BASE=$BASE
APF_MOTO_PORT=$port
APF_MOTO_URL=http://127.0.0.1:$port
APF_MOTO_PROXY_URL=http://127.0.0.1:$proxy
EOT
  cat "$BASE/env"
}

stop() {
  stop_pidfiles 5 "$BASE/moto.pid" "$BASE/proxy.pid"
  el "stopped (base $BASE)"
}

status() {
  if pid_alive "$BASE/moto.pid"; then echo "moto running (pid $(cat "$BASE/moto.pid")), base $BASE"; else
    echo "moto not running (base $BASE)"; return 1; fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) cat "$BASE/env" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
