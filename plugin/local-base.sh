#!/usr/bin/env bash
# Makes a stand-in for the official node:20 image out of THIS machine's node and npm, for
# machines that reach no container registry (CI): a rootfs with /usr/local/bin/node, the
# shared libraries it links (ldd), npm under /usr/local/lib/node_modules, a static busybox as
# /bin/sh & co., and the machine's CA bundle; then `docker import`s it.
#
#   plugin/local-base.sh [TAG]          # default TAG: tsoverlay-node-base:local
#   BASE_IMAGE=tsoverlay-node-base:local plugin/build.sh
#
# Environment: DOCKER (CLI, default `docker`; DOCKER_HOST picks the daemon), NODE (default
# `command -v node`), BUSYBOX (a statically linked busybox, default /bin/busybox).
set -euo pipefail

TAG=${1:-tsoverlay-node-base:local}
DOCKER=${DOCKER:-docker}
NODE=${NODE:-$(command -v node)}
BUSYBOX=${BUSYBOX:-/bin/busybox}
NODE=$(readlink -f "$NODE")
NPM_DIR=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")

[ -x "$NODE" ] || { echo "local-base: no node binary" >&2; exit 1; }
[ -f "$NPM_DIR/package.json" ] || { echo "local-base: npm not found (looked in $NPM_DIR)" >&2; exit 1; }
if ! "$BUSYBOX" true 2>/dev/null || ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "local-base: $BUSYBOX must be a statically linked busybox (apt-get install busybox-static)" >&2
  exit 1
fi
major=$("$NODE" -p 'process.versions.node.split(".")[0]')
[ "$major" = 20 ] || echo "local-base: warning: node $("$NODE" --version) stands in for node:20" >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/tsoverlay-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/local/bin,usr/local/lib/node_modules,etc/ssl/certs,root,proc,sys,dev,run,var/tmp}
install -d -m 1777 "$root/tmp"

install -m 0755 "$NODE" "$root/usr/local/bin/node"
cp -a "$NPM_DIR" "$root/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"

# The dynamic loader and every library node links, at the same paths as here.
for lib in $(ldd "$NODE" | grep -oE '/[^ ]+' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# Debian keeps /lib, /lib64 as links into /usr; make the loader path resolvable either way.
for d in lib lib64; do
  if [ -L "/$d" ] && [ ! -e "$root/$d" ]; then ln -s "$(readlink "/$d")" "$root/$d"; fi
done

install -m 0755 "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] && continue
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
ln -sf /bin/env "$root/usr/bin/env"

printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"; fi

tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
"$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["node"]' \
  --message "node $("$NODE" --version) from $(hostname) standing in for node:20" \
  "$work/rootfs.tar" "$TAG" >/dev/null
echo "$TAG"
