#!/bin/bash
# Runs the real systemd-networkd in the current network namespace, configured by nothing but
# the files in CONFIG_DIR, until WANT links are configured (at most 20 s), then stops it and
# prints its log. Run it through `ip netns exec NS`: that gives it a private mount namespace
# (slave to the host's), so the tmpfs mounts below are seen by networkd only.
# Usage: run-networkd.sh CONFIG_DIR WANT
set -eu
config=$1 want=$2

mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/network /run/systemd/netif
cp -r "$config"/. /run/systemd/network/
chown systemd-network: /run/systemd/netif
for dir in /etc/systemd/network /usr/lib/systemd/network; do
  if [ -d "$dir" ]; then mount -t tmpfs tmpfs "$dir"; fi
done
# No udev serves this namespace; a read-only /sys tells networkd not to wait for it.
mount -o remount,ro /sys

log=$(mktemp)
SYSTEMD_LOG_LEVEL=info SYSTEMD_LOG_TARGET=console /lib/systemd/systemd-networkd 2>"$log" &
pid=$!
for _ in $(seq 1 200); do
  configured=$(grep -l '^ADMIN_STATE=configured' /run/systemd/netif/links/* 2>/dev/null | wc -l)
  [ "$configured" -ge "$want" ] && break
  sleep 0.1
done
kill "$pid"
wait "$pid" || true
cat "$log"
rm -f "$log"
echo "configured links: $configured"
