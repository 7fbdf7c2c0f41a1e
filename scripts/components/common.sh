# Shared helpers for the component scripts (sourced, not run).
#
#   el MSG              print MSG with the milliseconds since the script started
#   wait_for SECS CMD   run CMD every 0.1 s until it succeeds; fail after SECS
#   port_busy PORT      true when something listens on 127.0.0.1:PORT (or on any address)
#   pick_port PORT      PORT when it is free, else the next free port above it
#   apt_ensure PKG...   install the Debian packages that are missing, quietly and idempotently
#   pid_alive FILE      true when FILE names a live process
#   stop_pidfile FILE [SECS]  TERM the process in FILE, KILL it after SECS (default 10), remove FILE
#   stop_pidfiles SECS FILE...  the same for several processes at once
#
# Every helper prints progress on stdout and problems on stderr.

_T0=$(date +%s%N)
el() { echo "[$(basename "$0")] $1 +$(( ($(date +%s%N) - _T0) / 1000000 ))ms"; }

wait_for() {
  local tries=$(( $1 * 10 )); shift
  local i
  for (( i = 0; i < tries; i++ )); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "[$(basename "$0")] timed out waiting for: $*" >&2
  return 1
}

port_busy() {
  # ss prints one line per listening socket; match ":PORT" at the end of the local address
  ss -Hltn 2>/dev/null | awk '{print $4}' | grep -Eq "[:.]$1\$"
}

pick_port() {
  local p=$1
  while port_busy "$p"; do p=$(( p + 1 )); done
  echo "$p"
}

apt_ensure() {
  local missing=() pkg status
  for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  el "installing ${missing[*]}"
  local log
  log=$(mktemp /tmp/apf-apt.XXXXXX)
  # policy-rc.d on this machine stops postinst scripts from starting daemons, which is what we want
  # other sessions may install at the same time: wait for the dpkg lock instead of failing
  local apt=(apt-get -o DPkg::Lock::Timeout=600)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    # a fresh machine may have no package lists yet
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq >>"$log" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      echo "[$(basename "$0")] apt-get install ${missing[*]} failed" >&2
      return 1
    fi
  fi
  rm -f "$log"
  el "installed ${missing[*]}"
}

pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pidfile() {
  local file=$1 secs=${2:-10} pid i
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for (( i = 0; i < secs * 10; i++ )); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop_pidfiles() {
  local secs=$1 file pid i alive
  shift
  local pids=()
  for file in "$@"; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null && pids+=("$pid")
  done
  for (( i = 0; i < secs * 10; i++ )); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for file in "$@"; do rm -f "$file"; done
}
