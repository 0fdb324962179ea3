#!/bin/bash
# Boot a fresh test host: Debian + systemd as PID 1 in systemd-nspawn, own
# network namespace, reachable over ssh at $TESTHOST_NET.2 from the host.
# Always starts from a pristine copy of the cached rootfs (an existing
# instance of the same name is torn down first).
# Writes an Ansible inventory to $TESTHOST_STATE/<name>/inventory.ini and
# prints its path on stdout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
th_need_root
th_check_name

# from here on, the test /24 must never be routed off the machine
th_guard_route_add
"$TH_HERE/down.sh" >/dev/null
cache=$("$TH_HERE/build-rootfs.sh")

t0=$(th_now)
mkdir -p "$TH_INST/rootfs"
zstd -q -dc "$cache" |
  tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$TH_INST/rootfs" -xf -
t_extract=$(th_since "$t0")
root="$TH_INST/rootfs"

# ---- per-instance identity ---------------------------------------------------
[ -s "$TH_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C testhost -f "$TH_KEY"
install -d -m 700 "$root/root/.ssh"
install -m 600 "$TH_KEY.pub" "$root/root/.ssh/authorized_keys"
tr -d '-' </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
echo "$TESTHOST_NAME" >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  "$TESTHOST_NAME" >"$root/etc/hosts"
ssh-keygen -A -f "$root" >/dev/null

# Baseline the roles have to move away from (see lib.sh)
if [ -n "$TESTHOST_BASELINE_SYSCTL" ]; then
  printf '# testhost baseline (not part of a stock Debian)\n%s\n' "$TESTHOST_BASELINE_SYSCTL" \
    >"$root/usr/lib/sysctl.d/10-testhost-baseline.conf"
fi

# Static address on the guest end (host0). A default route via the host end
# makes facts such as ansible_default_ipv4 look like a real host; it is only
# added while the host does not forward IPv4, so nothing can leave the VM.
gateway=
if [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 0 ]; then
  gateway="Gateway=$TH_HOST_IP"
else
  th_log "host has ip_forward=1: no default route in the guest"
fi
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/10-host0.network" <<EOF
[Match]
Name=host0

[Network]
Address=$TH_GUEST_IP/24
$gateway
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF

# ---- boot -------------------------------------------------------------------
# with no veth yet, the guest address must be unroutable from the host
! ip route get "$TH_GUEST_IP" >/dev/null 2>&1 ||
  th_die "guard route for $TESTHOST_NET.0/24 not effective (another route to it exists?)"
rm -f "$TH_INST/stop"
t1=$(th_now)
setsid "$TH_HERE/launch.sh" </dev/null >>"$TH_INST/launcher.log" 2>&1 &
echo $! >"$TH_INST/launcher.pid"

deadline=$(( $(date +%s) + TESTHOST_BOOT_TIMEOUT ))
# cheap TCP poll first: an ssh connect issued before the guest has its
# address sits in ARP resolution for seconds
until timeout 0.5 bash -c "exec 3<>/dev/tcp/$TH_GUEST_IP/22" 2>/dev/null && th_ssh true 2>/dev/null; do
  if [ "$(date +%s)" -ge $deadline ] || ! kill -0 "$(cat "$TH_INST/launcher.pid")" 2>/dev/null; then
    tail -n 30 "$TH_INST/console.log" >&2 || true
    "$TH_HERE/down.sh" >/dev/null || true
    th_die "container did not come up (see above)"
  fi
  sleep 0.2
done
t_ssh=$(th_since "$t1")
state=$(th_ssh 'timeout 60 systemctl is-system-running --wait' 2>/dev/null || true)
t_running=$(th_since "$t1")
if [ "$state" != running ]; then
  th_log "system state: '$state'; failed units:"
  th_ssh 'systemctl --failed --no-legend --plain' >&2 || true
fi

cat >"$TH_INST/inventory.ini" <<EOF
[testhosts]
$TESTHOST_NAME ansible_host=$TH_GUEST_IP

[senders:children]
testhosts

[testhosts:vars]
ansible_user=root
ansible_ssh_private_key_file=$TH_KEY
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
ansible_python_interpreter=/usr/bin/python3
EOF

th_log "up: extract ${t_extract}s, boot->ssh ${t_ssh}s, boot->'$state' ${t_running}s, rootfs $(du -sh "$root" | cut -f1)"
printf '%s\n' "$TH_INST/inventory.ini"
