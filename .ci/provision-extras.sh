#!/usr/bin/env bash
# Provides what the engine matrix and the Consul/compose tests need beside Debian 12's own
# packages, without touching the system's packages or apt state:
#   - Docker 28.5.2 (docker.io, docker-cli, containerd, tini-static) and docker-compose 2.40, suite sid
#   - Consul 1.8.7, suite bullseye
# Each .deb is fetched with a private apt configuration (own sources list, lists and cache
# under the cache folder) from the mirror this machine's apt already uses, and unpacked with
# `dpkg -x`. The result lives outside the clone (TSO_EXTRAS_CACHE, default
# /var/cache/tsoverlay-ci) and is reused when present, so repeated CI runs download nothing.
# It writes $CACHE/env (sourced by .ci/run) naming the folders the test harness uses.
set -euo pipefail

CACHE=${TSO_EXTRAS_CACHE:-/var/cache/tsoverlay-ci}
# Upstream versions the tests are written against; the Debian revision may vary.
DOCKER_VERSION=${TSO_DOCKER28_VERSION:-28.5.2}
COMPOSE_VERSION=${TSO_COMPOSE_VERSION:-2.40}
CONSUL_VERSION=${TSO_CONSUL_VERSION:-1.8.7}

say() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"

# The mirror (and its keyring) come from the machine's own apt configuration, so the
# repository never names a mirror host.
mirror_line() {
  local uri="" keyring=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    # First stanza whose URIs do not end in -security.
    uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /-security\/?$/) {print $i; exit}}' \
      /etc/apt/sources.list.d/debian.sources)
    keyring=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {if ($i !~ /-security\/?$/) {print $i; exit}}}' \
      /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  [ -n "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  printf 'deb [signed-by=%s] %s %%s main\n' "$keyring" "$uri"
}

# apt_private SUITE ARGS...: apt-get with a sources list naming only SUITE, and its own lists
# and cache, so the system's apt state is left alone.
apt_private() {
  local suite=$1; shift
  local d="$CACHE/apt/$suite"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  # shellcheck disable=SC2059
  printf "$(mirror_line)" "$suite" >"$d/sources.list"
  apt-get -q -o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" \
    -o APT::Get::List-Cleanup=false -o Debug::NoLocking=true -o APT::Sandbox::User=root "$@"
}

# fetch SUITE DEST PKG=UPSTREAM_PREFIX...: download each package at the candidate version,
# refusing one whose upstream version does not start with the pinned prefix (an empty
# prefix takes what the suite has: containerd and tini follow the engine's packaging), and unpack all
# into DEST. Prints what it installed.
fetch() {
  local suite=$1 dest=$2; shift 2
  local work="$CACHE/debs/$suite"
  mkdir -p "$work"
  say "apt update ($suite)"
  apt_private "$suite" update -qq </dev/null >/dev/null
  local spec pkg want ver
  local pins=()
  for spec in "$@"; do
    pkg=${spec%%=*}; want=${spec#*=}
    ver=$(apt-cache -o Dir::Etc::sourcelist="$CACHE/apt/$suite/sources.list" -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$CACHE/apt/$suite/lists" -o Dir::Cache="$CACHE/apt/$suite/cache" \
        show --no-all-versions "$pkg" 2>/dev/null | awk '/^Version:/ && !v {v = $2} END {print v}')
    [ -n "$ver" ] || die "$pkg is not in suite $suite of the mirror"
    # Upstream part: drop an epoch, then compare the prefix.
    case "${ver#*:}" in
      "$want"*) ;;
      *) die "$pkg in $suite is $ver, not $want.x (set TSO_*_VERSION or update the tests)";;
    esac
    pins+=("$pkg=$ver")
  done
  (cd "$work" && rm -f ./*.deb && apt_private "$suite" download -qq "${pins[@]}" </dev/null >/dev/null)
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  local deb
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$dest.tmp"; done
  printf '%s\n' "${pins[@]}" >"$dest.tmp/VERSIONS"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  say "unpacked into $dest: ${pins[*]}"
}

# --- Docker 28 and compose ----------------------------------------------------------------
D28="$CACHE/docker-$DOCKER_VERSION"
if [ ! -f "$D28/.complete" ]; then
  fetch sid "$D28" docker.io="$DOCKER_VERSION" docker-cli="$DOCKER_VERSION" containerd= tini-static= \
    docker-compose="$COMPOSE_VERSION"
  # One folder to put first on PATH: dockerd finds its containerd, shim and docker-init there.
  mkdir -p "$D28/bin" "$D28/cli-plugins"
  for f in dockerd docker docker-proxy containerd containerd-shim-runc-v2 ctr; do
    src=""
    for dir in usr/sbin usr/bin usr/libexec/docker; do
      if [ -x "$D28/$dir/$f" ]; then src="$D28/$dir/$f"; break; fi
    done
    [ -n "$src" ] || { [ "$f" = ctr ] || [ "$f" = docker-proxy ] && continue; die "no $f in the unpacked Docker $DOCKER_VERSION"; }
    ln -sfn "$src" "$D28/bin/$f"
  done
  tini=""
  for cand in usr/bin/tini-static; do
    if [ -x "$D28/$cand" ]; then tini="$D28/$cand"; break; fi
  done
  [ -n "$tini" ] || die "no tini-static in the unpacked packages (sid's dynamic tini needs a newer glibc)"
  ln -sfn "$tini" "$D28/bin/docker-init"
  # sid's runc needs a newer glibc than Debian 12 has; the system's runc serves both engines.
  ln -sfn /usr/sbin/runc "$D28/bin/runc"
  compose=""
  for cand in usr/libexec/docker/cli-plugins/docker-compose usr/lib/docker/cli-plugins/docker-compose usr/bin/docker-compose; do
    if [ -x "$D28/$cand" ]; then compose="$D28/$cand"; break; fi
  done
  [ -n "$compose" ] || die "no docker-compose in the unpacked packages"
  ln -sfn "$compose" "$D28/cli-plugins/docker-compose"
  ln -sfn "$compose" "$D28/bin/docker-compose"
  "$D28/bin/dockerd" --version >/dev/null || die "the unpacked dockerd does not run"
  touch "$D28/.complete"
else
  say "Docker $DOCKER_VERSION already in $D28"
fi

# --- Consul -------------------------------------------------------------------------------
CON="$CACHE/consul-$CONSUL_VERSION"
if [ ! -f "$CON/.complete" ]; then
  fetch bullseye "$CON" consul="$CONSUL_VERSION"
  mkdir -p "$CON/bin"
  ln -sfn "$CON/usr/bin/consul" "$CON/bin/consul"
  "$CON/bin/consul" version >/dev/null || die "the unpacked consul does not run"
  touch "$CON/.complete"
else
  say "Consul $CONSUL_VERSION already in $CON"
fi

cat >"$CACHE/env.tmp" <<ENV
TSO_DOCKER28_DIR=$D28/bin
TSO_DOCKER28_CLI_PLUGINS=$D28/cli-plugins
TSO_CONSUL_BIN=$CON/bin/consul
ENV
mv "$CACHE/env.tmp" "$CACHE/env"

say "installed:"
sed 's/^/  /' "$D28/VERSIONS" "$CON/VERSIONS"
"$D28/bin/dockerd" --version | sed 's/^/  /'
"$D28/bin/docker" --version | sed 's/^/  /'
"$D28/cli-plugins/docker-compose" version | sed 's/^/  /'
"$CON/bin/consul" version | sed -n '1s/^/  /p'  # not head: consul dies of SIGPIPE under pipefail
