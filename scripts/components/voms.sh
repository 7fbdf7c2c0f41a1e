#!/usr/bin/env bash
# A real VOMS server (voms-server 2.1, MySQL plugin) for the VO "testvo", with its own MariaDB on
# 127.0.0.1, trusting the test CA of grid-ca.sh (started first). The user "Pilot User" is a member
# of /testvo and /testvo/prod and holds /testvo/Role=pilot. Nothing is written under /etc: clients
# use the vomses file (VOMS_USERCONF) and vomsdir (X509_VOMS_DIR) written here.
#
# usage: voms.sh start|stop|status|env|server-stop|server-start
#   start         install packages, set up the database and start MariaDB and voms; a no-op when
#                 this base dir's voms runs
#   stop          stop voms and MariaDB
#   status        exit 0 when voms answers on its port
#   server-stop   stop the voms daemon alone (MariaDB stays); server-start brings it back
#   env           print the env file written at start
#
# env (defaults in brackets):
#   APF_GRID_BASE     [/tmp/apf-grid]  state under $APF_GRID_BASE/voms (the CA under .../ca)
#   APF_VOMS_PORT     [15110]          voms port (next free one if taken); voms binds every address
#   APF_VOMS_DB_PORT  [13306]          MariaDB port on 127.0.0.1 (next free one if taken)
#   APF_VOMS_TIMEOUT  [86400]          the longest AC the server issues, in seconds
#
# Gotchas (../shared/reference/grid-components.md): the CA must be in the DB in slash form; ACs in
# the old format (ARC rejects the new one); --uri=localhost:PORT so the LSC file is localhost.lsc;
# voms.pass exactly 0640; voms daemonizes and writes no pid file (found by its port).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

BASE=${APF_GRID_BASE:-/tmp/apf-grid}
D=$BASE/voms
VO=testvo
TIMEOUT=${APF_VOMS_TIMEOUT:-86400}

sql() { mariadb --socket="$D/mysql/mysqld.sock" -uroot "$@"; }

voms_pid() {  # the pid listening on the voms port
  [ -f "$D/env" ] || return 1
  local port
  port=$(sed -n 's/^APF_VOMS_PORT=//p' "$D/env")
  ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}

start_db() {
  local port=$1
  install -d -o mysql -g mysql "$D/mysql"
  mariadb-install-db --user=mysql --datadir="$D/mysql/data" --auth-root-authentication-method=normal \
    --skip-test-db >"$D/log/mariadb-install.log" 2>&1
  setsid runuser -u mysql -- mariadbd --no-defaults --datadir="$D/mysql/data" \
    --socket="$D/mysql/mysqld.sock" --port="$port" --bind-address=127.0.0.1 \
    --pid-file="$D/mysql/mysqld.pid" --log-error="$D/log/mariadb.log" \
    --innodb-buffer-pool-size=32M --innodb-fast-shutdown=2 --skip-name-resolve </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadb-admin --socket="$D/mysql/mysqld.sock" -uroot ping
  el "mariadb up on 127.0.0.1:$port"
}

populate_db() {
  local pass=$1 ca_dn=$2 user_dn=$3
  sql -e "CREATE DATABASE voms_$VO"
  sql "voms_$VO" </usr/share/voms/voms-mysql.data
  # what voms_install_db inserts, plus the VO content (the CA in slash form: the server matches it)
  sql "voms_$VO" <<EOF
INSERT INTO ca VALUES (1, '/O=VOMS/O=System/CN=Dummy Certificate Authority', 'dummy');
INSERT INTO ca VALUES (2, '/O=VOMS/O=System/CN=Authorization Manager Attributes', 'authz');
INSERT INTO ca VALUES (3, '/O=VOMS/O=System/CN=VOMS Group', 'group');
INSERT INTO ca VALUES (4, '/O=VOMS/O=System/CN=VOMS Role', 'role');
INSERT INTO ca VALUES (5, '/O=VOMS/O=System/CN=VOMS Capability', 'capability');
INSERT INTO admins VALUES (1, '/O=VOMS/O=System/CN=Local Database Administrator', '', 1);
INSERT INTO admins VALUES (2, '/$VO/Role=VO-Admin', '', 4);
INSERT INTO groups VALUES (1, '/$VO', 1, 1);
INSERT INTO roles VALUES (1, 'VO-Admin');
INSERT INTO seqnumber VALUES ('00');
INSERT INTO version (version) VALUES (2);
INSERT INTO ca (cid, ca, cadescr) VALUES (20, '$ca_dn', 'Test Grid CA');
INSERT INTO usr (userid, dn, ca, cn) VALUES (1, '$user_dn', 20, 'Pilot User');
INSERT INTO groups (gid, dn, parent, must) VALUES (2, '/$VO/prod', 1, 1);
INSERT INTO roles (rid, role) VALUES (2, 'pilot');
INSERT INTO m (userid, gid, rid, cid) VALUES (1, 1, NULL, NULL);
INSERT INTO m (userid, gid, rid, cid) VALUES (1, 2, NULL, NULL);
INSERT INTO m (userid, gid, rid, cid) VALUES (1, 1, 2, NULL);
CREATE USER 'voms_$VO'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER 'voms_$VO'@'localhost' IDENTIFIED BY '$pass';
GRANT SELECT, LOCK TABLES ON voms_$VO.* TO 'voms_$VO'@'127.0.0.1';
GRANT SELECT, LOCK TABLES ON voms_$VO.* TO 'voms_$VO'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_voms() {
  local port
  port=$(sed -n 's/^APF_VOMS_PORT=//p' "$D/env")
  runuser -u voms -- /usr/sbin/voms --conf "$D/voms.conf"
  wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  el "voms up on port $port"
}

stop_voms() {
  local pid i
  pid=$(voms_pid || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for (( i = 0; i < 50; i++ )); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  el "voms stopped"
}

start() {
  if [ -n "$(voms_pid || true)" ]; then
    el "already running (base $BASE)"
    cat "$D/env"
    return 0
  fi
  apt_ensure voms-server voms-mysql-plugin voms-clients mariadb-server mariadb-client
  bash "$HERE/grid-ca.sh" start >/dev/null
  ca() { sed -n "s/^$1=//p" "$BASE/ca/env"; }
  local APF_GRID_CA_DN APF_GRID_USER_DN APF_GRID_HOST_DN APF_GRID_HOSTCERT APF_GRID_HOSTKEY APF_GRID_CADIR
  APF_GRID_CA_DN=$(ca APF_GRID_CA_DN); APF_GRID_USER_DN=$(ca APF_GRID_USER_DN)
  APF_GRID_HOST_DN=$(ca APF_GRID_HOST_DN); APF_GRID_CADIR=$(ca APF_GRID_CADIR)
  APF_GRID_HOSTCERT=$(ca APF_GRID_HOSTCERT); APF_GRID_HOSTKEY=$(ca APF_GRID_HOSTKEY)
  stop_quiet
  rm -rf "$D"
  mkdir -p "$D/log" "$D/vomses" "$BASE/vomsdir/$VO"
  chmod 755 "$D" "$D/vomses" "$BASE/vomsdir" "$BASE/vomsdir/$VO"
  local port db_port pass
  port=$(pick_port "${APF_VOMS_PORT:-15110}")
  db_port=$(pick_port "${APF_VOMS_DB_PORT:-13306}")
  [ "$db_port" = "$port" ] && db_port=$(pick_port $(( port + 1 )))
  start_db "$db_port"
  pass=$(openssl rand -hex 12)
  populate_db "$pass" "$APF_GRID_CA_DN" "$APF_GRID_USER_DN"
  el "database voms_$VO populated"

  # the server's own copy of the host credential, readable by the voms user only
  install -m 644 -o voms -g voms "$APF_GRID_HOSTCERT" "$D/hostcert.pem"
  install -m 600 -o voms -g voms "$APF_GRID_HOSTKEY" "$D/hostkey.pem"
  printf '%s\n' "$pass" >"$D/voms.pass"
  chown root:voms "$D/voms.pass"
  chmod 640 "$D/voms.pass"
  chown voms:voms "$D/log"
  cat >"$D/voms.conf" <<EOF
--vo=$VO
--dbname=voms_$VO
--port=$port
--username=voms_$VO
--passfile=$D/voms.pass
--sqlloc=/usr/lib/voms/libvomsmysql.so
--logfile=$D/log/voms.$VO
--socktimeout=30
--loglevel=4
--logtype=7
--timeout=$TIMEOUT
--x509_user_cert=$D/hostcert.pem
--x509_user_key=$D/hostkey.pem
--x509_cert_dir=$APF_GRID_CADIR
--contactstring=127.0.0.1
--mysql-port=$db_port
--uri=localhost:$port
EOF
  chmod 644 "$D/voms.conf"
  echo "\"$VO\" \"localhost\" \"$port\" \"$APF_GRID_HOST_DN\" \"$VO\"" >"$D/vomses/$VO"
  printf '%s\n%s\n' "$APF_GRID_HOST_DN" "$APF_GRID_CA_DN" >"$BASE/vomsdir/$VO/localhost.lsc"
  chmod 644 "$D/vomses/$VO" "$BASE/vomsdir/$VO/localhost.lsc"
  cat >"$D/env" <<EOF
APF_VOMS_PORT=$port
APF_VOMS_DB_PORT=$db_port
APF_VOMS_VO=$VO
APF_VOMS_FQAN=/$VO/Role=pilot
APF_VOMS_VOMSES=$D/vomses
APF_VOMS_DIR=$BASE/vomsdir
APF_VOMS_LOG=$D/log/voms.$VO
EOF
  start_voms
  cat "$D/env"
}

stop_quiet() {
  stop_voms
  if [ -S "$D/mysql/mysqld.sock" ]; then
    mariadb-admin --socket="$D/mysql/mysqld.sock" -uroot shutdown >/dev/null 2>&1 || true
  fi
  stop_pidfile "$D/mysql/mysqld.pid" 15
}

stop() {
  stop_quiet
  el "stopped (base $BASE)"
}

status() {
  local pid
  pid=$(voms_pid || true)
  if [ -n "$pid" ]; then echo "voms running (pid $pid), base $BASE"; else echo "voms not running"; return 1; fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) cat "$D/env" ;;
  server-stop) stop_voms ;;
  server-start) [ -n "$(voms_pid || true)" ] || start_voms ;;
  *) echo "usage: $0 start|stop|status|env|server-stop|server-start" >&2; exit 2 ;;
esac
