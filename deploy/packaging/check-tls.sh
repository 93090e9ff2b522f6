#!/bin/sh
# check-tls DIR: ExecStartPre of constance-collector.service. The collector
# starts with mTLS only; this names what is missing in DIR (default
# /etc/constance/tls) and how to make it, instead of a plaintext fallback.
# Runs as the service's user, so "unreadable" means unreadable to it.
dir=${1:-/etc/constance/tls}
missing=""
for f in ca.pem collector.pem collector.key crl; do
  [ -r "$dir/$f" ] || missing="$missing $dir/$f"
done
[ -z "$missing" ] && exit 0
pki=/usr/lib/constance-collector/pki.sh
cat >&2 <<MSG
constance-collector: not starting without mTLS: missing or unreadable by $(id -un):$missing
Make the CA and the collector's certificate (README, "Certificates"), e.g.:
  $pki init /srv/constance-ca
  $pki issue /srv/constance-ca collector \$(hostname -f)
  install -d -m 0750 -g constance-collector $dir
  install -m 0640 -g constance-collector /srv/constance-ca/ca.pem $dir/ca.pem
  install -m 0640 -g constance-collector /srv/constance-ca/issued/collector-\$(hostname -f).pem $dir/collector.pem
  install -m 0640 -g constance-collector /srv/constance-ca/issued/collector-\$(hostname -f).key $dir/collector.key
  cp -r /srv/constance-ca/crl $dir/crl && chgrp -R constance-collector $dir/crl
then: systemctl restart constance-collector
MSG
exit 1
