#!/usr/bin/env bash
# Debian packages the tuner's end-to-end tests need on the controller:
# systemd-nspawn (systemd-container), debootstrap, zstd (rootfs cache), ssh,
# iproute2. --no-install-recommends keeps libnss-mymachines out (it would edit
# nsswitch.conf); a policy-rc.d forbids service starts during the install.
# Idempotent: apt is only touched when something is missing.
set -euo pipefail
packages=(systemd-container debootstrap zstd openssh-client iproute2 procps)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0

echo "installing Debian packages for the test host: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
