#!/bin/sh
# constance PKI: the chain's own certificate authority, with openssl.
#
#   pki.sh init DIR [--days N]                      make the CA in DIR (once)
#   pki.sh issue DIR location ID [options]          a store's agent certificate
#   pki.sh issue DIR operator NAME [options]        an operator (constance CLI)
#   pki.sh issue DIR collector HOST [HOST|IP ...] [options]   the collector
#   pki.sh renew DIR KIND NAME [HOST ...] [options] a new key and certificate,
#                                                   replacing the files atomically
#   pki.sh revoke DIR KIND NAME [--serial HEX]      revoke NAME's current certificate
#                                                   (or an older one by serial, e.g.
#                                                   the one a renewal superseded)
#   pki.sh crl DIR                                  publish a fresh CRL (run weekly)
#
# options: --days N (validity, default 365), --not-before/--not-after
#   YYYYMMDDHHMMSSZ (explicit validity, e.g. for tests of expiry).
#
# Identities are URI SANs (see README, "Certificates"):
#   spiffe://constance/location/ID     may send observations for ID only
#   spiffe://constance/operator/NAME   may call the Query API
# The collector's certificate has DNS/IP SANs of the names agents dial.
#
# Layout of DIR:
#   ca.pem ca.key           the CA (keep ca.key offline in production)
#   issued/KIND-NAME.pem .key   current certificate and key per identity
#   crl/                    CRLs under hashed names <issuer-hash>.r<N>; give
#                           it to the collector as --tls_crl_dir
#   db/                     openssl ca's index, serials, issued copies
#
# Revocation takes effect at a client's next handshake (the collector closes
# connections after --max_connection_age). Each CRL is written under a new
# suffix rather than over the previous file: OpenSSL's directory lookup
# loads each hashed name once per process and then picks the newest CRL it
# has, so a new suffix is what a running collector sees. (`openssl rehash`
# would renumber existing links, which a running process would not notice.)
set -eu

die() { echo "pki.sh: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: pki.sh init|issue|renew|revoke|crl DIR ... (see the header of $0)"
cmd=$1
dir=$2
shift 2
command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"

ca_conf() {
  cat >"$dir/db/ca.cnf" <<CNF
[ ca ]
default_ca = constance_ca
[ constance_ca ]
dir = $dir/db
database = \$dir/index.txt
new_certs_dir = \$dir/certs
serial = \$dir/serial
crlnumber = \$dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = 365
default_crl_days = 30
policy = any_policy
unique_subject = no
copy_extensions = none
[ any_policy ]
commonName = supplied
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = constance CA
[ v3_ca ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
}

publish_crl() {
  mkdir -p "$dir/crl"
  # A CRL is chosen by its lastUpdate (one-second resolution): never publish
  # two in the same second.
  last=$(cat "$dir/db/crl.last" 2>/dev/null || echo 0)
  while [ "$(date +%s)" -le "$last" ]; do sleep 0.2; done
  openssl ca -batch -config "$dir/db/ca.cnf" -gencrl -out "$dir/db/crl.pem" 2>"$dir/db/last.log" \
    || { cat "$dir/db/last.log" >&2; die "cannot make the CRL"; }
  date +%s >"$dir/db/crl.last"
  hash=$(openssl crl -in "$dir/db/crl.pem" -noout -hash)
  n=0
  while [ -e "$dir/crl/$hash.r$n" ]; do n=$((n + 1)); done
  cp "$dir/db/crl.pem" "$dir/crl/.$hash.r$n.tmp"
  mv "$dir/crl/.$hash.r$n.tmp" "$dir/crl/$hash.r$n"
  echo "published $dir/crl/$hash.r$n"
}

need_ca() {
  [ -f "$dir/ca.pem" ] && [ -f "$dir/db/ca.cnf" ] || die "$dir: no CA here (pki.sh init $dir)"
}

days=365
not_before=
not_after=
parse_options() {
  names=
  while [ $# -gt 0 ]; do
    case $1 in
      --days) [ $# -ge 2 ] || die "--days needs a value"; days=$2; shift 2 ;;
      --days=*) days=${1#--days=}; shift ;;
      --not-before) [ $# -ge 2 ] || die "--not-before needs a value"; not_before=$2; shift 2 ;;
      --not-before=*) not_before=${1#--not-before=}; shift ;;
      --not-after) [ $# -ge 2 ] || die "--not-after needs a value"; not_after=$2; shift 2 ;;
      --not-after=*) not_after=${1#--not-after=}; shift ;;
      -*) die "unknown option $1" ;;
      *) names="$names $1"; shift ;;
    esac
  done
  case $days in ''|*[!0-9]*) die "--days: '$days' is not a whole number" ;; esac
}

check_name() {
  # The location id rule of constance (validate.h): [a-z0-9][a-z0-9._-]{0,62}.
  printf '%s' "$1" | grep -Eq '^[a-z0-9][a-z0-9._-]{0,62}$' \
    || die "'$1' is not a valid id ([a-z0-9][a-z0-9._-]{0,62})"
}

issue() {
  kind=$1
  shift
  parse_options "$@"
  set -- $names
  [ $# -ge 1 ] || die "issue $kind: which name?"
  name=$1
  need_ca
  ext="$dir/db/ext-$kind-$name.cnf"
  case $kind in
    location|operator)
      [ $# -eq 1 ] || die "issue $kind takes one name"
      check_name "$name"
      printf '%s\n' "[ ext ]" "basicConstraints = critical, CA:false" \
        "keyUsage = critical, digitalSignature" "extendedKeyUsage = clientAuth" \
        "subjectAltName = URI:spiffe://constance/$kind/$name" >"$ext"
      ;;
    collector)
      sans=
      for h in "$@"; do
        if printf '%s' "$h" | grep -Eq '^[0-9.]+$|:'; then t=IP; else t=DNS; fi
        sans="${sans:+$sans, }$t:$h"
      done
      printf '%s\n' "[ ext ]" "basicConstraints = critical, CA:false" \
        "keyUsage = critical, digitalSignature" "extendedKeyUsage = serverAuth" \
        "subjectAltName = $sans" >"$ext"
      ;;
    *) die "kind must be location, operator or collector, not '$kind'" ;;
  esac
  mkdir -p "$dir/issued"
  base="$dir/issued/$kind-$name"
  tmp="$dir/issued/.$kind-$name.$$"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp.key" 2>/dev/null
  chmod 600 "$tmp.key"
  openssl req -new -key "$tmp.key" -subj "/CN=$kind $name" -out "$tmp.csr"
  if [ -n "$not_before$not_after" ]; then
    [ -n "$not_before" ] && [ -n "$not_after" ] || die "give both --not-before and --not-after"
    validity="-startdate $not_before -enddate $not_after"
  else
    validity="-days $days"
  fi
  # shellcheck disable=SC2086
  openssl ca -batch -notext -config "$dir/db/ca.cnf" -extfile "$ext" -extensions ext \
    $validity -in "$tmp.csr" -out "$tmp.pem" 2>"$dir/db/last.log" \
    || { rm -f "$tmp.key" "$tmp.csr" "$tmp.pem"; cat "$dir/db/last.log" >&2; die "cannot issue $kind $name"; }
  rm -f "$tmp.csr"
  # Key first, then certificate, each by rename: a watcher never reads a
  # half-written file, and sees a matching pair once the certificate lands.
  mv "$tmp.key" "$base.key"
  mv "$tmp.pem" "$base.pem"
  echo "issued $base.pem (serial $(openssl x509 -in "$base.pem" -noout -serial | cut -d= -f2))"
}

case $cmd in
  init)
    parse_options "$@"
    [ ! -e "$dir/ca.pem" ] || die "$dir already holds a CA"
    mkdir -p "$dir/db/certs" "$dir/crl" "$dir/issued"
    dir=$(cd "$dir" && pwd)
    : >"$dir/db/index.txt"
    echo 1000 >"$dir/db/serial"
    echo 1000 >"$dir/db/crlnumber"
    ca_conf
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null
    chmod 600 "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -config "$dir/db/ca.cnf" -extensions v3_ca \
      -days $((days * 10)) -out "$dir/ca.pem"
    echo "CA in $dir/ca.pem"
    publish_crl
    ;;
  issue|renew)
    [ $# -ge 1 ] || die "$cmd DIR KIND NAME"
    dir=$(cd "$dir" && pwd)
    kind=$1
    shift
    issue "$kind" "$@"
    ;;
  revoke)
    [ $# -eq 2 ] || [ $# -eq 4 ] || die "revoke DIR KIND NAME [--serial HEX]"
    dir=$(cd "$dir" && pwd)
    need_ca
    cert="$dir/issued/$1-$2.pem"
    if [ $# -eq 4 ]; then
      [ "$3" = --serial ] || die "unknown option $3"
      cert="$dir/db/certs/$(printf '%s' "$4" | tr a-f A-F).pem"
      openssl x509 -in "$cert" -noout -ext subjectAltName 2>/dev/null | grep -q "/$1/$2\$\|:$2\$\|$2," \
        || [ "$1" = collector ] || die "serial $4 is not a certificate of $1 $2"
    fi
    [ -f "$cert" ] || die "no certificate $cert"
    openssl ca -batch -config "$dir/db/ca.cnf" -revoke "$cert" 2>"$dir/db/last.log" \
      || { cat "$dir/db/last.log" >&2; die "cannot revoke $cert"; }
    echo "revoked $1 $2 (serial $(openssl x509 -in "$cert" -noout -serial | cut -d= -f2))"
    publish_crl
    ;;
  crl)
    dir=$(cd "$dir" && pwd)
    need_ca
    publish_crl
    ;;
  *) die "unknown command '$cmd' (init, issue, renew, revoke, crl)" ;;
esac
