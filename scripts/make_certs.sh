#!/usr/bin/env bash
# make_certs.sh DIR [DAYS]: a certificate set for mutual TLS between the
# AsymCache services (docs/security.md), made with the openssl command line.
# The tests (tests/services/security/) use it; for a real cluster, run it (or
# its openssl lines) against your own CA and host names.
#
# Writes, in DIR (created; existing files are replaced), each NAME.pem with
# its NAME.key (EC P-256, unencrypted, mode 0600):
#   ca            the cluster CA (CN=asymcache-test-ca)
#   component     CN=asymcache-component, SAN IP:127.0.0.1, DNS:localhost;
#                 server and client use: every daemon, coordinator and worker
#                 presents it (list "asymcache-component" in --trusted-peers)
#   tenant-a      CN=tenant-a, client use only (a tenant's frontend)
#   tenant-b      CN=tenant-b, client use only
#   rogue-ca      another CA (CN=asymcache-rogue-ca) nobody trusts
#   rogue         CN=tenant-a signed by rogue-ca (an impersonation attempt)
#   rogue-server  CN=asymcache-component, SAN IP:127.0.0.1, signed by rogue-ca
# Certificates are valid from now for DAYS days (default 30).
set -euo pipefail

[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 DIR [DAYS]" >&2; exit 2; }
dir="$1"
days="${2:-30}"
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
umask 077

new_key() {  # new_key NAME
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
}

make_ca() {  # make_ca NAME CN
  new_key "$1"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days "$days" -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem" 2>/dev/null
}

make_leaf() {  # make_leaf NAME CN CA USAGE [SAN]: USAGE serverAuth,clientAuth or clientAuth
  local name="$1" cn="$2" ca="$3" usage="$4" san="${5:-}"
  new_key "$name"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

make_ca ca asymcache-test-ca
make_leaf component asymcache-component ca serverAuth,clientAuth "IP:127.0.0.1,DNS:localhost"
make_leaf tenant-a tenant-a ca clientAuth
make_leaf tenant-b tenant-b ca clientAuth
make_ca rogue-ca asymcache-rogue-ca
make_leaf rogue tenant-a rogue-ca clientAuth
make_leaf rogue-server asymcache-component rogue-ca serverAuth,clientAuth "IP:127.0.0.1"
chmod 0644 ./*.pem
echo "certificates in $dir: ca component tenant-a tenant-b rogue-ca rogue rogue-server"
