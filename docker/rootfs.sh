#!/bin/sh
# Stages the runtime image's whole file tree from a built aegis-server binary:
#   sh docker/rootfs.sh BINARY OUT
# OUT/root/ is copied into the image owned by root: the binary, exactly the shared
# libraries it links (as `ldd` lists them, the dynamic loader included), the CA
# certificates for HTTPS services, /etc/passwd and /etc/group with the non-root
# `aegis` user (uid and gid 10001), a resolver order for glibc, and the default
# configuration. OUT/app/ becomes /app/ owned by `aegis`: /app/data, the volume.
#
# The Dockerfile runs this in its build stage; scripts/image-test.sh runs it on a
# release binary built on the host, for an image built without network access.
set -eu
binary=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)

rm -rf "$out"
mkdir -p "$out/root/usr/local/bin" "$out/root/etc/ssl/certs" "$out/app/data"
cp "$binary" "$out/root/usr/local/bin/aegis-server"

# Every library the binary loads, at the path the loader looks for it. `ldd` prints
# `name => /path (addr)` for libraries and `/path (addr)` for the loader itself.
libs=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
if [ -z "$libs" ]; then
  echo "rootfs.sh: ldd lists no libraries for $binary" >&2
  exit 1
fi
for lib in $libs; do
  mkdir -p "$out/root$(dirname "$lib")"
  # -L: the image holds the library itself, not a link into a path it lacks.
  cp -L "$lib" "$out/root$lib"
done

cp -L /etc/ssl/certs/ca-certificates.crt "$out/root/etc/ssl/certs/ca-certificates.crt"
cat > "$out/root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
aegis:x:10001:10001:Aegis:/app:/sbin/nologin
PASSWD
cat > "$out/root/etc/group" <<'GROUP'
root:x:0:
aegis:x:10001:
GROUP
# Without this glibc asks DNS before /etc/hosts, so `localhost` in a service URL
# would depend on the resolver.
echo "hosts: files dns" > "$out/root/etc/nsswitch.conf"
mkdir -p "$out/root/app"
cp "$here/aegis.yaml" "$out/root/app/.aegis.yaml"
chmod 0644 "$out/root/app/.aegis.yaml" "$out/root/etc/passwd" "$out/root/etc/group" \
  "$out/root/etc/nsswitch.conf" "$out/root/etc/ssl/certs/ca-certificates.crt"
