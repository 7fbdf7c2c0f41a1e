#!/usr/bin/env bash
# moto's server (an EC2 emulator) on 127.0.0.1, from the project's venv.
#
# usage: moto.sh start|stop|status|env
#   start   pip-install moto into the venv if its server is missing, start it, wait until it answers;
#           a no-op when this base dir's server already runs
#   stop    stop this base dir's server
#   env     print the env file written at start (endpoint URL)
#
# env (defaults in brackets):
#   APF_VENV        [<repo>/.venv]   the venv whose moto_server runs (created if missing)
#   APF_MOTO_BASE   [/tmp/apf-moto]  pid file and log live here
#   APF_MOTO_PORT   [5000]           port on 127.0.0.1 (next free one if taken)
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
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >"$BASE/moto.log" 2>&1 &
  echo $! >"$BASE/moto.pid"
  if ! wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$port/moto-api/"; then
    cat "$BASE/moto.log" >&2
    exit 1
  fi
  el "moto_server up on 127.0.0.1:$port"
  cat >"$BASE/env" <<EOT
APF_MOTO_BASE=$BASE
APF_MOTO_PORT=$port
APF_MOTO_URL=http://127.0.0.1:$port
EOT
  cat "$BASE/env"
}

stop() {
  stop_pidfile "$BASE/moto.pid" 5
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
