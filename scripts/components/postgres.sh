#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster on 127.0.0.1 with a database "apf" (trust auth, no fsync: tests only).
# Run as root; the server runs as the Debian user "postgres" (initdb and pg_ctl refuse root).
#
# usage: postgres.sh start|stop|status|env
#   start   install postgresql-15 if missing, initdb a fresh cluster, start it, create the database;
#           a no-op when this base dir's server already runs
#   stop    stop this base dir's server (fast shutdown)
#   env     print the env file written at start (port and URL)
#
# env (defaults in brackets):
#   APF_PG_BASE   [/tmp/apf-pg]   data directory, socket and log live here
#   APF_PG_PORT   [55433]         port on 127.0.0.1 (next free one if taken)
#   APF_PG_DB     [apf]           database created at start
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

BASE=${APF_PG_BASE:-/tmp/apf-pg}
DB=${APF_PG_DB:-apf}
PGBIN=/usr/lib/postgresql/15/bin

running() { [ -f "$BASE/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$BASE/data" status >/dev/null 2>&1; }

start() {
  if running; then
    el "already running (base $BASE)"
    cat "$BASE/env"
    return 0
  fi
  [ -x "$PGBIN/pg_ctl" ] || apt_ensure postgresql-15
  local port
  port=$(pick_port "${APF_PG_PORT:-55433}")
  rm -rf "$BASE"
  install -d -o postgres -g postgres -m 755 "$BASE"
  runuser -u postgres -- "$PGBIN/initdb" -D "$BASE/data" -U postgres -A trust -E UTF8 --no-sync >"$BASE/initdb.log" 2>&1 \
    || { cat "$BASE/initdb.log" >&2; exit 1; }
  el "initdb done"
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$BASE/data" -l "$BASE/pg.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $BASE -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$BASE/pg.log" >&2; exit 1; }
  el "postgres ready on 127.0.0.1:$port"
  psql -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtAc "create database $DB" >/dev/null
  el "created database $DB"
  cat >"$BASE/env" <<EOT
APF_PG_BASE=$BASE
APF_PG_HOST=127.0.0.1
APF_PG_PORT=$port
APF_PG_USER=postgres
APF_PG_DB=$DB
APF_PG_URL=postgresql://postgres@127.0.0.1:$port/$DB
EOT
  cat "$BASE/env"
}

stop() {
  if running; then runuser -u postgres -- "$PGBIN/pg_ctl" -D "$BASE/data" -m fast -w -t 30 stop >/dev/null || true; fi
  el "stopped (base $BASE)"
}

status() {
  if running; then echo "postgres running, base $BASE"; else echo "postgres not running (base $BASE)"; return 1; fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) cat "$BASE/env" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
