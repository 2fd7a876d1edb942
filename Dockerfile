# The tsoverlay managed-plugin rootfs. plugin/build.sh turns this image into a Docker plugin
# (config.json, at the repository root, + rootfs/) and runs `docker plugin create`.
#
#   docker build -t tsoverlay-rootfs .                            # official node:20 base
#   docker build --build-arg BASE_IMAGE=my/node:20 -t tsoverlay-rootfs .
#
# BASE_IMAGE must provide node 20 and npm at /usr/local/bin (as the official images do) and a
# POSIX shell. Works with the classic builder and BuildKit.
ARG BASE_IMAGE=node:20-bookworm-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npx tsc -p tsconfig.build.json

FROM ${BASE_IMAGE}
ENV NODE_ENV=production
WORKDIR /opt/tsoverlay
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error \
 && (npm cache clean --force >/dev/null 2>&1 || true) && rm -rf /root/.npm /tmp/*
COPY --from=build /src/dist/src ./dist/src
# The native parts (netlink's and koffi's prebuilt binaries) must load in this rootfs.
RUN node -e "require('netlink'); require('koffi').load('libc.so.6'); require('./dist/src/dataplane/index')" \
 && node dist/src/cli/main.js version
# Node flags: see src/node-flags.ts (the same in config.json and the systemd unit).
ENTRYPOINT ["/usr/local/bin/node", "--max-semi-space-size=1", "--interrupt-budget=675840", "/opt/tsoverlay/dist/src/cli/main.js", "serve"]
