#!/usr/bin/env bash
# A real panda-server 1.0.4 on loopback for the contract tier (tests/test_panda_contract.py).
#
# It installs panda-server-source 1.0.4 and its import-time dependencies in its own venv (~600 MB,
# a few minutes the first time), starts a throwaway PostgreSQL 15 (postgres.sh) with a minimal
# hand-written schema (the four tables the statistics calls read), writes a config, and runs the
# server's WSGI application under Werkzeug on 127.0.0.1.
#
# usage: panda-contract.sh start|stop|env
# env (defaults in brackets):
#   APF_PANDA_BASE   [/tmp/apf-panda]  venv, config, logs, pid and env file
#   APF_PANDA_PORT   [25980]           HTTP port on 127.0.0.1 (next free one if taken)
#   APF_PANDA_PG_PORT [55533]          PostgreSQL port
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

BASE=${APF_PANDA_BASE:-/tmp/apf-panda}
VENV=$BASE/venv
PGBASE=$BASE/pg
export APF_PG_BASE=$PGBASE APF_PG_DB=panda_db APF_PG_PORT=${APF_PANDA_PG_PORT:-55533}
PANDA_VERSION=1.0.4
PYTHON=${APF_PANDA_PYTHON:-/usr/bin/python3}

install_server() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pandaserver, werkzeug, psycopg2, cryptography" 2>/dev/null; then
    return 0
  fi
  el "installing panda-server-source $PANDA_VERSION (about 600 MB)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # panda-server-source: the server code without the build hook and mod_wsgi; the rest is what
  # importing the server needs (panda-api.md 3.1)
  "$VENV/bin/pip" install -q "panda-server-source==$PANDA_VERSION" psycopg2-binary werkzeug pyjwt polars \
    numpy ruamel.yaml idds-client idds-common idds-workflow idds-doma idds-atlas snakemake rucio-clients cryptography
  el "installed"
}

schema() {
  # The minimal schema: table and column names are the server's interface; the DDL is ours.
  psql -h 127.0.0.1 -p "$1" -U postgres -d panda_db -v ON_ERROR_STOP=1 -q -o /dev/null <<'SQL' 2> >(grep -v NOTICE >&2)
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'panda') THEN
    CREATE ROLE panda LOGIN PASSWORD 'panda';
  END IF;
END $$;
ALTER ROLE panda SET search_path = doma_panda, public;
CREATE SCHEMA IF NOT EXISTS doma_panda AUTHORIZATION panda;
CREATE SCHEMA IF NOT EXISTS doma_pandameta AUTHORIZATION panda;
CREATE SCHEMA IF NOT EXISTS doma_pandaarch AUTHORIZATION panda;
SET search_path = doma_panda;
-- a throwaway database: recreate the tables so a changed DDL always applies
DROP TABLE IF EXISTS config, jobsactive4, jobsdefined4, mv_jobsactive4_stats;
CREATE TABLE config (
  app varchar(64), component varchar(64), key varchar(64), value varchar(256),
  type varchar(64), vo varchar(32), descr varchar(256), value_json jsonb
);
CREATE TABLE jobsactive4 (
  pandaid bigint PRIMARY KEY, computingsite varchar(128), jobstatus varchar(15),
  prodsourcelabel varchar(20), resource_type varchar(56)
);
CREATE TABLE jobsdefined4 (
  pandaid bigint PRIMARY KEY, computingsite varchar(128), jobstatus varchar(15),
  prodsourcelabel varchar(20), resource_type varchar(56)
);
CREATE TABLE mv_jobsactive4_stats (
  computingsite varchar(128), jobstatus varchar(15), prodsourcelabel varchar(20),
  resource_type varchar(56), num_of_jobs numeric  -- numeric as in the real schema: its sums come back as Decimal
);
GRANT ALL ON ALL TABLES IN SCHEMA doma_panda TO panda;
SQL
}

write_config() {
  local pgport=$1 port=$2 etc=$BASE/home/etc/panda
  mkdir -p "$etc" "$BASE/log" "$BASE/cache"
  # our own minimal server config (panda-server-source ships no panda_server.cfg template): only
  # what a loopback server answering the statistics calls needs
  cat >"$etc/panda_server.cfg" <<EOT
[server]
backend = postgres
dbhost = 127.0.0.1
dbport = $pgport
dbuser = panda
dbpasswd = panda
dbname = panda_db
dbtimeout = 60
usedbtimeout = True
nDBConnection = 1
schemaPANDA = DOMA_PANDA
schemaJEDI = DOMA_PANDA
schemaMETA = DOMA_PANDAMETA
schemaPANDAARCH = DOMA_PANDAARCH
schemaDEFT = DOMA_PANDA
logdir = $BASE/log
cache_dir = $BASE/cache
token_authType = None
pserverhost = 127.0.0.1
pserverhosthttp = 127.0.0.1
pserverport = $port
pserverporthttp = $port
entryVerbose = False
dumpBadRequest = False
record_statuschange = False
mq_configFile =
emailSender = panda@localhost
emailSMTPsrv = 127.0.0.1
emailLogin =
emailPass =
EOT
  local common
  common=$(find "$VENV" -name 'panda_common.cfg.rpmnew' | head -1)
  if [ -n "$common" ]; then
    sed -E "s|^logdir\s*=.*$|logdir = $BASE/log|" "$common" >"$etc/panda_common.cfg"
  else
    printf '[common]\nlogdir = %s/log\n' "$BASE" >"$etc/panda_common.cfg"
  fi
  cat >"$BASE/wsgi_shim.py" <<'PY'
"""Run the panda-server WSGI app under Werkzeug: SCRIPT_NAME carries the whole path, as Apache's
WSGIScriptAliasMatch sets it in production."""
import sys

from werkzeug.serving import run_simple

import pandaserver.server.panda as panda


def application(environ, start_response):
    environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    environ["PATH_INFO"] = ""
    return panda.application(environ, start_response)


run_simple("127.0.0.1", int(sys.argv[1]), application, threaded=True)
PY
}

start() {
  if pid_alive "$BASE/server.pid"; then
    el "already running"
    cat "$BASE/env"
    return 0
  fi
  mkdir -p "$BASE"
  install_server
  "$HERE/postgres.sh" start >/dev/null
  # shellcheck disable=SC1091
  . "$PGBASE/env"
  schema "$APF_PG_PORT"
  el "schema ready"
  local port
  port=$(pick_port "${APF_PANDA_PORT:-25980}")
  write_config "$APF_PG_PORT" "$port"
  local url=http://127.0.0.1:$port
  (
    export PANDA_HOME=$BASE/home PANDA_BEHIND_REAL_LB=1
    export PANDA_URL=$url/server/panda PANDA_URL_SSL=$url/server/panda PANDACACHE_URL=$url/server/panda
    export PANDA_API_URL=$url/api/v1 PANDA_API_URL_SSL=$url/api/v1
    cd "$BASE"
    nohup "$VENV/bin/python" "$BASE/wsgi_shim.py" "$port" >"$BASE/server.log" 2>&1 &
    echo $! >"$BASE/server.pid"
  )
  el "server starting on $url (import takes 20-30 s)"
  alive() { pid_alive "$BASE/server.pid" && curl -sf -H 'Accept: application/json' "$url/api/v1/system/is_alive"; }
  local i
  for (( i = 0; i < 1800; i++ )); do
    alive >/dev/null 2>&1 && break
    pid_alive "$BASE/server.pid" || break  # died (e.g. an import error): do not wait any longer
    sleep 0.1
  done
  if ! alive >/dev/null 2>&1; then
    tail -50 "$BASE/server.log" >&2
    exit 1
  fi
  el "server ready"
  cat >"$BASE/env" <<EOT
APF_PANDA_URL=$url/api/v1
APF_PANDA_BASE_URL=$url
APF_PANDA_DB_URL=postgresql://panda:panda@127.0.0.1:$APF_PG_PORT/panda_db
EOT
  cat "$BASE/env"
}

stop() {
  # the server forks a DB-bridge child: stop the whole process group we started
  if pid_alive "$BASE/server.pid"; then
    pkill -TERM -P "$(cat "$BASE/server.pid")" 2>/dev/null || true
  fi
  stop_pidfile "$BASE/server.pid" 10
  "$HERE/postgres.sh" stop >/dev/null || true
  el "stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  env) cat "$BASE/env" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
