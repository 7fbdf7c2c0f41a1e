#!/usr/bin/env bash
# A real MyProxy server (myproxy-server 6.2) on 127.0.0.1 that trusts the test CA of grid-ca.sh,
# holding one credential of "Pilot User" (stored with myproxy-init under a random passphrase, kept
# in a 0600 file so tests can plant it as a secret and retrieve with it).
#
# usage: myproxy.sh start|stop|status|env
#   start   install packages, start the server and store the credential; a no-op when running
#   stop    stop the server
#   status  exit 0 when this base dir's server runs
#   env     print the env file written at start
#
# env (defaults in brackets):
#   APF_GRID_BASE       [/tmp/apf-grid]  state under $APF_GRID_BASE/myproxy (the CA under .../ca)
#   APF_MYPROXY_PORT    [17512]          port on 127.0.0.1 (next free one if taken)
#
# Gotchas: the packaged config allows nothing; root clients authenticate with the host cert unless
# X509_USER_CERT/KEY point elsewhere (here: the user's own cert, so the owner is Pilot User).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

BASE=${APF_GRID_BASE:-/tmp/apf-grid}
D=$BASE/myproxy
LOGIN=pilotuser

start() {
  if pid_alive "$D/myproxy.pid"; then
    el "already running (base $BASE)"
    cat "$D/env"
    return 0
  fi
  apt_ensure myproxy myproxy-server
  bash "$HERE/grid-ca.sh" start >/dev/null
  ca() { sed -n "s/^$1=//p" "$BASE/ca/env"; }
  local cadir hostcert hostkey usercert userkey port
  cadir=$(ca APF_GRID_CADIR); hostcert=$(ca APF_GRID_HOSTCERT); hostkey=$(ca APF_GRID_HOSTKEY)
  usercert=$(ca APF_GRID_USERCERT); userkey=$(ca APF_GRID_USERKEY)
  stop_pidfile "$D/myproxy.pid" 5
  rm -rf "$D"
  mkdir -p "$D/store"
  chmod 700 "$D/store"
  port=$(pick_port "${APF_MYPROXY_PORT:-17512}")
  cat >"$D/myproxy-server.config" <<'EOF'
accepted_credentials       "/DC=test/DC=grid/*"
authorized_retrievers      "*"
default_retrievers         "*"
authorized_renewers        "/DC=test/DC=grid/*"
default_renewers           "none"
authorized_key_retrievers  "/DC=test/DC=grid/*"
default_key_retrievers     "none"
trusted_retrievers         "/DC=test/DC=grid/*"
default_trusted_retrievers "none"
max_proxy_lifetime         168
EOF
  X509_USER_CERT=$hostcert X509_USER_KEY=$hostkey X509_CERT_DIR=$cadir \
    myproxy-server -c "$D/myproxy-server.config" -s "$D/store" -l 127.0.0.1 -p "$port" -P "$D/myproxy.pid" \
    </dev/null >"$D/server.log" 2>&1
  wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  el "myproxy-server up on 127.0.0.1:$port"

  # the stored credential: 24 h, proxies of at most 12 h, under a random passphrase
  (umask 077; openssl rand -hex 16 >"$D/passphrase")
  X509_USER_CERT=$usercert X509_USER_KEY=$userkey X509_CERT_DIR=$cadir \
    MYPROXY_SERVER=localhost MYPROXY_SERVER_PORT=$port \
    myproxy-init -S -l "$LOGIN" -c 24 -t 12 --certfile "$usercert" --keyfile "$userkey" \
    <"$D/passphrase" >"$D/init.log" 2>&1
  el "credential of $LOGIN stored"
  cat >"$D/env" <<EOF
APF_MYPROXY_HOST=localhost
APF_MYPROXY_PORT=$port
APF_MYPROXY_USER=$LOGIN
APF_MYPROXY_PASSFILE=$D/passphrase
EOF
  cat "$D/env"
}

stop() {
  stop_pidfile "$D/myproxy.pid" 5
  el "stopped (base $BASE)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) pid_alive "$D/myproxy.pid" ;;
  env) cat "$D/env" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
