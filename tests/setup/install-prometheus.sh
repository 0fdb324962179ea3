#!/usr/bin/env bash
# Install Debian's Prometheus server and promtool for tests/observability, idempotently and
# without leaving a daemon behind: a policy-rc.d forbids service starts during the install
# (only when none exists already; ours is removed afterwards), and a prometheus daemon the
# package may have started anyway is stopped. The tests start private servers on loopback.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/bin/$1 ]]; }
if have prometheus && have promtool; then
    exit 0
fi
echo "installing Debian package: prometheus (server + promtool)" >&2
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Never leave the packaged service running (PID 1 may be systemd on some machines).
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
for tool in prometheus promtool; do
    have "$tool" || { echo "missing $tool after install" >&2; exit 1; }
done
