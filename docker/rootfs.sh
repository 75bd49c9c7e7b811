#!/bin/sh
# Lays out the final image's files under DIR: the static binary, a passwd/group entry for
# the non-root user, the CA bundle, the default config and the data directory. The
# Dockerfile's builder stage runs it, and so does CI with a binary it built itself.
#   docker/rootfs.sh BINARY DIR
set -eu
bin=$1
out=$2
here=$(dirname "$0")
mkdir -p "$out/etc/ssl/certs" "$out/etc/hookrelay" "$out/var/lib/hookrelay" "$out/tmp"
install -m 0755 "$bin" "$out/hookrelay"
printf 'root:x:0:0:root:/:/sbin/nologin\nhookrelay:x:10001:10001:hookrelay:/var/lib/hookrelay:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nhookrelay:x:10001:\n' >"$out/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
cp "$here/config.yaml" "$out/etc/hookrelay/config.yaml"
