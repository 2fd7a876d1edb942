#!/usr/bin/env bash
# Builds the tsoverlay managed plugin: `docker build` of the Dockerfile at the repository root,
# the image's filesystem exported into <dir>/rootfs, config.json (repository root) copied beside it,
# then `docker plugin create NAME <dir>` (and `docker plugin push NAME` with PUSH=1).
#
#   plugin/build.sh                                  # NAME tsoverlay:latest, base node:20-bookworm-slim
#   plugin/build.sh registry.example.com:5000/tsoverlay:0.1.0
#   PUSH=1 plugin/build.sh registry.example.com:5000/tsoverlay:0.1.0
#   BASE_IMAGE=tsoverlay-node-base:local plugin/build.sh      # CI: base made by plugin/local-base.sh
#
# Environment:
#   BASE_IMAGE    base image for both build stages (default node:20-bookworm-slim)
#   DOCKER        docker CLI (default `docker`); DOCKER_HOST picks the daemon as usual
#   BUILD_ARGS    extra `docker build` arguments, e.g. "--network host" on a daemon without
#                 a default bridge
#   PLUGIN_DIR    where to assemble config.json + rootfs/ (default plugin/build/<name>; kept)
#   PUSH=1        push the plugin after creating it
#   REPLACE=1     remove an existing plugin of the same name first (docker plugin rm -f)
set -euo pipefail

NAME=${1:-tsoverlay:latest}
case "${NAME##*/}" in *:*) ;; *) NAME="$NAME:latest" ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
DOCKER=${DOCKER:-docker}
BASE_IMAGE=${BASE_IMAGE:-node:20-bookworm-slim}
safe=$(printf '%s' "$NAME" | tr -c 'A-Za-z0-9_.-' '_')
PLUGIN_DIR=${PLUGIN_DIR:-$HERE/build/$safe}
IMAGE="tsoverlay-plugin-rootfs:$(printf '%s' "$safe" | tr 'A-Z' 'a-z' | cut -c1-100)"

say() { printf 'build.sh: %s\n' "$*" >&2; }

say "docker build (base $BASE_IMAGE) -> $IMAGE"
# shellcheck disable=SC2086  # BUILD_ARGS is a list of words on purpose
"$DOCKER" build ${BUILD_ARGS:-} --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"

say "exporting the image's filesystem into $PLUGIN_DIR/rootfs"
rm -rf "$PLUGIN_DIR"
mkdir -p "$PLUGIN_DIR/rootfs"
cid=$("$DOCKER" create "$IMAGE" true)
trap '"$DOCKER" rm -f "$cid" >/dev/null 2>&1 || true' EXIT
"$DOCKER" export "$cid" | tar -x --numeric-owner -C "$PLUGIN_DIR/rootfs"
"$DOCKER" rm -f "$cid" >/dev/null
trap - EXIT
cp "$ROOT/config.json" "$PLUGIN_DIR/config.json"
# Docker bind-mounts /run/docker/plugins and the mounts of config.json over these.
mkdir -p "$PLUGIN_DIR/rootfs/run/docker/plugins" "$PLUGIN_DIR/rootfs/host/run/tsoverlay/netns" \
  "$PLUGIN_DIR/rootfs/host/run/tsoverlay/inflight" "$PLUGIN_DIR/rootfs/var/lib/tsoverlay"

if [ "${REPLACE:-0}" = 1 ]; then "$DOCKER" plugin rm -f "$NAME" >/dev/null 2>&1 || true; fi
say "docker plugin create $NAME $PLUGIN_DIR"
"$DOCKER" plugin create "$NAME" "$PLUGIN_DIR" >/dev/null
if [ "${PUSH:-0}" = 1 ]; then
  say "docker plugin push $NAME"
  "$DOCKER" plugin push "$NAME"
fi
say "done: $NAME (disabled; install it elsewhere with: docker plugin install --grant-all-permissions $NAME)"
