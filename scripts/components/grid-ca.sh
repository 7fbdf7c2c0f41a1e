#!/usr/bin/env bash
# A throwaway grid trust domain made with openssl: a test CA, a host certificate for localhost and
# a user certificate, in a CA directory laid out the way grid tools read it (hash links, signing
# policy, namespaces). Nothing is written under /etc/grid-security: clients and servers are pointed
# at these files (X509_CERT_DIR, x509_cert_dir, ...).
#
# usage: grid-ca.sh start|stop|status|env
#   start   install the grid client packages, make the CA and certificates (kept when they exist)
#   stop    nothing runs; a no-op (the files stay with the base dir)
#   status  exit 0 when the CA and certificates exist
#   env     print the env file written at start
#
# env (defaults in brackets):
#   APF_GRID_BASE   [/tmp/apf-grid]   everything lives under $APF_GRID_BASE/ca
#
# Files: ca/certificates/ (the CA dir: <hash>.0, .signing_policy, .namespaces, old-hash links),
# ca/host/{hostcert,hostkey}.pem (CN=localhost, SAN localhost + 127.0.0.1),
# ca/user/{usercert,userkey}.pem (/DC=test/DC=grid/CN=Pilot User), ca/ca.key (the CA's key).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

BASE=${APF_GRID_BASE:-/tmp/apf-grid}
D=$BASE/ca
DAYS=30
SUBJECT_BASE="/DC=test/DC=grid"

sign() {  # sign CSR with the CA: sign NAME SERIAL EXTFILE
  # small serials: VOMS 2.1 writes long serials into the AC as ffffffffffffffff
  openssl x509 -req -in "$D/$1.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" -set_serial "$2" \
    -days $DAYS -sha256 -extfile "$3" -out "$D/$1.pem" 2>/dev/null
  rm -f "$D/$1.csr"
}

make_ca() {
  rm -rf "$D"
  mkdir -p "$D/certificates" "$D/host" "$D/user"
  chmod 755 "$BASE" "$D" "$D/certificates" "$D/host" "$D/user"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days $DAYS -keyout "$D/ca.key" -out "$D/ca.pem" \
    -subj "$SUBJECT_BASE/CN=Test Grid CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -addext "subjectKeyIdentifier=hash" 2>/dev/null

  openssl req -newkey rsa:2048 -nodes -keyout "$D/host/hostkey.pem" -out "$D/host.csr" \
    -subj "$SUBJECT_BASE/CN=localhost" 2>/dev/null
  cat >"$D/host.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
  sign host 0x1001 "$D/host.ext"
  mv "$D/host.pem" "$D/host/hostcert.pem"

  openssl req -newkey rsa:2048 -nodes -keyout "$D/user/userkey.pem" -out "$D/user.csr" \
    -subj "$SUBJECT_BASE/CN=Pilot User" 2>/dev/null
  cat >"$D/user.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment,dataEncipherment
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
  sign user 0x1002 "$D/user.ext"
  mv "$D/user.pem" "$D/user/usercert.pem"
  chmod 600 "$D/ca.key" "$D/host/hostkey.pem" "$D/user/userkey.pem"
  chmod 644 "$D/host/hostcert.pem" "$D/user/usercert.pem" "$D/ca.pem"

  local h ho
  h=$(openssl x509 -in "$D/ca.pem" -noout -hash)
  ho=$(openssl x509 -in "$D/ca.pem" -noout -subject_hash_old)
  cp "$D/ca.pem" "$D/certificates/$h.0"
  cat >"$D/certificates/$h.signing_policy" <<EOF
access_id_CA   X509   '$SUBJECT_BASE/CN=Test Grid CA'
pos_rights     globus CA:sign
cond_subjects  globus '"$SUBJECT_BASE/*"'
EOF
  cat >"$D/certificates/$h.namespaces" <<EOF
TO Issuer "$SUBJECT_BASE/CN=Test Grid CA" \\
  PERMIT Subject "$SUBJECT_BASE/.*"
EOF
  ln -sf "$h.0" "$D/certificates/$ho.0"
  ln -sf "$h.signing_policy" "$D/certificates/$ho.signing_policy"
  ln -sf "$h.namespaces" "$D/certificates/$ho.namespaces"
  chmod 644 "$D/certificates/"*
}

write_env() {
  cat >"$D/env" <<EOF
APF_GRID_BASE=$BASE
APF_GRID_CADIR=$D/certificates
APF_GRID_CA_CERT=$D/ca.pem
APF_GRID_CA_KEY=$D/ca.key
APF_GRID_HOSTCERT=$D/host/hostcert.pem
APF_GRID_HOSTKEY=$D/host/hostkey.pem
APF_GRID_HOST_DN=$SUBJECT_BASE/CN=localhost
APF_GRID_USERCERT=$D/user/usercert.pem
APF_GRID_USERKEY=$D/user/userkey.pem
APF_GRID_USER_DN=$SUBJECT_BASE/CN=Pilot User
APF_GRID_CA_DN=$SUBJECT_BASE/CN=Test Grid CA
EOF
}

valid() {
  [ -f "$D/env" ] && [ -f "$D/user/usercert.pem" ] && [ -f "$D/host/hostcert.pem" ] &&
    openssl x509 -in "$D/host/hostcert.pem" -noout -checkend 86400 >/dev/null 2>&1
}

start() {
  apt_ensure openssl globus-proxy-utils voms-clients
  if valid; then
    el "CA already made (base $BASE)"
  else
    make_ca
    write_env
    el "test CA, host and user certificates made in $D"
  fi
  cat "$D/env"
}

case "${1:-start}" in
  start) start ;;
  stop) el "nothing to stop" ;;
  status) valid ;;
  env) cat "$D/env" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
