#!/usr/bin/env bash
# Install the Debian packages the test-suite needs, without leaving daemons behind.
#  - postfix: smtp-sink / smtp-source / smtpd (real SMTP peers). Installed with
#    "No configuration" and a policy-rc.d that forbids starting services, so no
#    Postfix master ends up holding port 25.
#  - sasl2-bin, libsasl2-modules: Cyrus SASL for the Postfix smtpd AUTH fixture.
#  - mariadb-server: the MySQL backend of the ledger (started by tests/setup/start-mariadb.sh).
#  - openssl, iproute2, procps: certificates, network namespaces, process tools.
set -euo pipefail
packages=(postfix sasl2-bin libsasl2-modules mariadb-server mariadb-client openssl iproute2 procps psmisc)
packages+=(${MAILPACER_EXTRA_DEBS:-})

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string mailpacer.test" | debconf-set-selections
    # Forbid service starts during the install (PID 1 may not be systemd here).
    policy=/usr/sbin/policy-rc.d
    had_policy=0; [[ -e $policy ]] && had_policy=1
    if ((!had_policy)); then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A Postfix master daemon must never hold port 25 on a test machine.
if command -v postfix >/dev/null && postfix status >/dev/null 2>&1; then
    echo "stopping the Postfix master daemon left running by the package" >&2
    postfix stop >/dev/null 2>&1 || true
fi
for tool in smtp-sink smtp-source; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { echo "missing $tool after install" >&2; exit 1; }
done
