#!/usr/bin/env bash
# Installs what the encryption tests need to boot Debian's own kernel under qemu: the CI
# machines' kernel has no ESP/AES-GCM, Debian 12's linux-image-amd64 has them as modules.
# Idempotent; run as root. The kernel lands in /boot (nothing boots from it on the CI host).
#
# udev is pinned to the version of the systemd already installed: linux-image pulls in
# initramfs-tools → udev, and an unpinned udev drags systemd (the running init) to a newer
# version.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  echo "provision-qemu: must run as root" >&2
  exit 1
fi

have() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }

if have qemu-system-x86 && have linux-image-amd64 && ls /boot/vmlinuz-* >/dev/null 2>&1; then
  echo "provision-qemu: qemu-system-x86 and linux-image-amd64 already installed"
  exit 0
fi

APT=(apt-get -qq -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt-get -qq -o DPkg::Lock::Timeout=600 update

pkgs=(qemu-system-x86 linux-image-amd64)
sysd=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
if [ -n "$sysd" ] && ! have udev; then
  if apt-cache madison udev | awk '{print $3}' | grep -qxF "$sysd"; then
    pkgs+=("udev=$sysd")
  else
    echo "provision-qemu: udev $sysd (the installed systemd's version) is not in the archive; apt may upgrade systemd" >&2
  fi
fi
"${APT[@]}" install --no-install-recommends "${pkgs[@]}" </dev/null
ls /boot/vmlinuz-* >/dev/null
echo "provision-qemu: installed ${pkgs[*]}"
