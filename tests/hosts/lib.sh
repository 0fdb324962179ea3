# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts sourcing this
# Common settings and helpers for the nspawn test host scripts.
# Sourced by build-rootfs.sh, up.sh, launch.sh and down.sh. Adapted from the
# team's shared nspawn test-host notes; this copy is the project's own.
#
# Environment knobs (all optional):
#   TESTHOST_NAME     machine name, [a-z0-9-], max 11 chars     (default: mptuner)
#   TESTHOST_NET      first three octets of a private /24 used  (default: 10.231.7)
#                     only on the veth pair: host end .1, container .2
#   TESTHOST_STATE    per-instance state (rootfs copy, keys, logs, venv)
#                                                               (default: /tmp/mailpacer-testhost)
#   TESTHOST_CACHE    where the rootfs tarball cache lives      (default: /var/cache/mailpacer-testhost,
#                     survives between runs on the same machine)
#                     point this at a CI cache directory to skip debootstrap
#   TESTHOST_SUITE    Debian suite to debootstrap               (default: bookworm)
#   TESTHOST_EXTRA_PACKAGES  comma list baked into the image (the container has
#                     no internet, so anything the roles apt-install must be here)
#   TESTHOST_MIRROR   override the mirror URL (default: read from the host's apt sources)
#   TESTHOST_BOOT_TIMEOUT  seconds to wait for ssh + systemd   (default: 90)
#   TESTHOST_BASELINE_SYSCTL  sysctl.d lines installed in the guest's vendor dir
#                     (/usr/lib/sysctl.d/10-testhost-baseline.conf) so the guest
#                     starts from a value the roles must change. This kernel
#                     already defaults to bbr, so without it a "bbr" check
#                     proves nothing. Only netns-local keys make sense here.
#                                   (default: net.ipv4.tcp_congestion_control = reno)

TESTHOST_NAME=${TESTHOST_NAME:-mptuner}
TESTHOST_NET=${TESTHOST_NET:-10.231.7}
TESTHOST_STATE=${TESTHOST_STATE:-/tmp/mailpacer-testhost}
TESTHOST_CACHE=${TESTHOST_CACHE:-/var/cache/mailpacer-testhost}
TESTHOST_SUITE=${TESTHOST_SUITE:-bookworm}
TESTHOST_EXTRA_PACKAGES=${TESTHOST_EXTRA_PACKAGES:-}
TESTHOST_BOOT_TIMEOUT=${TESTHOST_BOOT_TIMEOUT:-90}
TESTHOST_BASELINE_SYSCTL=${TESTHOST_BASELINE_SYSCTL-net.ipv4.tcp_congestion_control = reno}

# Packages baked into the image. python3 + python3-apt for Ansible modules,
# iproute2/procps for tc/sysctl/ss, python3-venv for the service's venv.
TESTHOST_INCLUDE="systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,python3,python3-apt,python3-venv,iproute2,procps,sudo,ca-certificates,curl,less"
# bump when the image customisation below changes (invalidates the cache)
TESTHOST_BUILD_REV=3

TH_HOST_IP="${TESTHOST_NET}.1"
TH_GUEST_IP="${TESTHOST_NET}.2"
TH_VETH="ve-${TESTHOST_NAME}"                 # host end, created by nspawn --network-veth
TH_INST="${TESTHOST_STATE}/${TESTHOST_NAME}"   # instance dir
TH_KEY="${TESTHOST_STATE}/id_ed25519"          # controller -> container ssh key
TH_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

th_log() { printf '[testhost %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
th_die() { th_log "ERROR: $*"; exit 1; }
th_now() { date +%s.%N; }
th_since() { awk -v a="$1" -v b="$(th_now)" 'BEGIN{printf "%.1f", b-a}'; }

th_need_root() { [ "$(id -u)" = 0 ] || th_die "must run as root"; }

th_check_name() {
  [[ $TESTHOST_NAME =~ ^[a-z0-9][a-z0-9-]{0,10}$ ]] ||
    th_die "TESTHOST_NAME must match [a-z0-9][a-z0-9-]{0,10} (veth name limit)"
  [[ $TESTHOST_NET =~ ^(10|192\.168|172\.(1[6-9]|2[0-9]|3[01]))(\.[0-9]{1,3}){1,2}$ ]] ||
    th_die "TESTHOST_NET must be three octets of a private range, e.g. 10.199.77"
}

# Print the first "deb" URI of the host's apt configuration that serves
# $1 (a suite). Never written to disk: callers keep it in a variable.
th_apt_mirror() {
  local suite=$1
  if [ -n "${TESTHOST_MIRROR:-}" ]; then printf '%s\n' "$TESTHOST_MIRROR"; return; fi
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      awk -v s="$suite" '
        BEGIN { RS = ""; FS = "\n" }
        {
          uris = ""; suites = ""; types = ""; en = "yes"
          for (i = 1; i <= NF; i++) {
            l = $i
            if (l ~ /^[ \t]*#/) continue
            if (l ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", l);    uris = l }
            if (l ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", l);  suites = l }
            if (l ~ /^Types:/)   { sub(/^Types:[ \t]*/, "", l);   types = l }
            if (l ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", l); en = l }
          }
          if (en == "no" || types !~ /(^|[ \t])deb([ \t]|$)/) next
          n = split(suites, a, /[ \t]+/)
          for (j = 1; j <= n; j++) if (a[j] == s) { split(uris, u, /[ \t]+/); print u[1]; exit }
        }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -r "$f" ] || continue
      awk -v s="$suite" '
        $1 == "deb" {
          i = 2
          if ($2 ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
          if ($(i + 1) == s) { print $i; exit }
        }' "$f"
    done
  } | head -n1
}

# Host tools (nspawn, debootstrap, zstd, ssh): see install-deps.sh.
th_ensure_host_tools() {
  bash "$TH_HERE/install-deps.sh"
}

th_cache_key() {
  printf '%s\n' "$TESTHOST_SUITE" "$TESTHOST_INCLUDE" "$TESTHOST_EXTRA_PACKAGES" "$TESTHOST_BUILD_REV" |
    sha256sum | cut -c1-12
}
th_cache_file() { printf '%s/rootfs-%s-%s.tar.zst\n' "$TESTHOST_CACHE" "$TESTHOST_SUITE" "$(th_cache_key)"; }

# true if $1 is a live pid whose command line contains $2
th_pid_is() {
  local pid=$1 pat=$2
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pat"
}

# wait up to $2 seconds (0.1 s steps) for pid $1 to go away
th_wait_gone() {
  local pid=$1 n=$(( $2 * 10 ))
  while [ $n -gt 0 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; n=$((n - 1)); done
  ! kill -0 "$pid" 2>/dev/null
}

# Guard route: while the veth does not exist (before boot, during a guest
# reboot, after teardown) packets for the test /24 would otherwise follow the
# host's default route off the machine. An "unreachable" route with a high
# metric catches them; the veth's connected route (metric 0) wins while up.
TH_GUARD_METRIC=4242
th_guard_route_add() {
  ip route replace unreachable "${TESTHOST_NET}.0/24" metric "$TH_GUARD_METRIC"
}
th_guard_route_del() {
  ip route del unreachable "${TESTHOST_NET}.0/24" metric "$TH_GUARD_METRIC" 2>/dev/null || true
}

TH_SSH_OPTS=(-i "$TH_KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
             -o LogLevel=ERROR -o ConnectTimeout=5 -o BatchMode=yes)
# shellcheck disable=SC2029  # remote commands are meant to expand remotely
th_ssh() { ssh "${TH_SSH_OPTS[@]}" "root@${TH_GUEST_IP}" "$@"; }
