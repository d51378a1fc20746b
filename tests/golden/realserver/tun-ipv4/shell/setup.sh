#!/bin/bash
# Real-server setup for realserver: tun (IPv4).
# Rendered by lvsctl 0.1.0 from golden.yaml.
# Render it again rather than editing it.
#
# What this host needs:
#   - module ipip loaded (tunl0 exists)
#   - net.ipv4.conf.all.rp_filter = 0
#   - net.ipv4.conf.default.rp_filter = 0
#   - net.ipv4.conf.tunl0.rp_filter = 0
#   - net.ipv4.conf.all.arp_ignore = 1
#   - net.ipv4.conf.all.arp_announce = 2
#   - net.ipv4.conf.ens3.arp_ignore = 1
#   - net.ipv4.conf.ens3.arp_announce = 2
#   - 192.0.2.10/32 on tunl0
#   - tunl0 up
#
# Usage: setup.sh up|down|status
#   up      apply the settings above; running it again changes nothing
#   down    undo exactly what up changed (recorded in the state file), nothing else
#   status  print each setting as ok or missing; exit 1 if any is missing
# LVSCTL_STATE_DIR (default /run/lvsctl) holds the record of what up changed.
set -eu
export LC_ALL=C

state_dir=${LVSCTL_STATE_DIR:-/run/lvsctl}
state=$state_dir/realserver-realserver.state

say() { printf 'setup.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }
record() { mkdir -p -- "$state_dir"; printf '%s\n' "$*" >>"$state"; }

link_exists() { ip link show dev "$1" >/dev/null 2>&1; }
link_is_up() { ip -o link show dev "$1" 2>/dev/null | grep -q '[<,]UP[,>]'; }
has_addr() { # DEVICE ADDRESS/PREFIX
  ip -o addr show dev "$1" 2>/dev/null | awk -v want="$2" '$4 == want { found = 1 } END { exit !found }'
}
# The gateway of the default route the kernel uses (lowest metric) for -4 or -6.
best_gateway() {
  ip -o "$1" route show default table main | awk '
    { metric = 0; gw = "-"
      for (i = 1; i < NF; i++) { if ($i == "metric") metric = $(i + 1); if ($i == "via") gw = $(i + 1) }
      print metric, gw }' | sort -n | head -n 1 | cut -d ' ' -f 2
}

ensure_module() { # MODULE DEVICE: loading the module creates the fallback device
  if ! link_exists "$2"; then
    modprobe "$1"
    record module "$1"
    link_exists "$2" || die "$1 is loaded but $2 did not appear"
    say "loaded $1"
  fi
}
ensure_sysctl() { # PATH VALUE (PATH under /proc/sys)
  [ -e "/proc/sys/$1" ] || die "no /proc/sys/$1 (is the interface name right? render with --interface)"
  old=$(cat "/proc/sys/$1")
  if [ "$old" != "$2" ]; then
    printf '%s\n' "$2" >"/proc/sys/$1"
    record sysctl "$1" "$old"
    say "set $1 = $2 (was $old)"
  fi
}
ensure_addr() { # DEVICE ADDRESS/PREFIX [OPTIONS]
  device=$1 cidr=$2
  shift 2
  if ! has_addr "$device" "$cidr"; then
    ip addr add "$cidr" dev "$device" "$@"
    record addr "$device" "$cidr"
    say "added $cidr on $device"
  fi
}
ensure_up() { # DEVICE
  if ! link_is_up "$1"; then
    ip link set dev "$1" up
    record up "$1"
    say "brought $1 up"
  fi
}
ensure_default() { # -4|-6 GATEWAY METRIC
  if [ "$(best_gateway "$1")" != "$2" ]; then
    # Keep the default route of the same metric that replace overwrites, for down.
    ip -o "$1" route show default table main | awk -v metric="$3" '
      { m = 0; via = ""; dev = ""
        for (i = 1; i < NF; i++) { if ($i == "metric") m = $(i + 1); if ($i == "via") via = $(i + 1); if ($i == "dev") dev = $(i + 1) }
        if (m == metric && via != "") print via, dev }' | while read -r via dev; do
      record oldroute "$1" "$via" "$dev" "$3"
    done
    ip "$1" route replace default via "$2" metric "$3"
    record route "$1" "$2" "$3"
    say "default route via $2"
  fi
}

check() { # LABEL COMMAND...: one status line
  label=$1
  shift
  if "$@"; then echo "ok       $label"; else echo "missing  $label"; missing=1; fi
}
sysctl_is() { [ -e "/proc/sys/$1" ] && [ "$(cat "/proc/sys/$1")" = "$2" ]; }
default_is() { [ "$(best_gateway "$1")" = "$2" ]; }

up() {
  # Checked before anything changes: the ARP settings name this interface.
  link_exists ens3 || die 'no interface ens3 here: render again with --interface NAME (the outward interface)'
  ensure_module ipip tunl0
  ensure_sysctl net/ipv4/conf/all/rp_filter 0
  ensure_sysctl net/ipv4/conf/default/rp_filter 0
  ensure_sysctl net/ipv4/conf/tunl0/rp_filter 0
  ensure_sysctl net/ipv4/conf/all/arp_ignore 1
  ensure_sysctl net/ipv4/conf/all/arp_announce 2
  ensure_sysctl net/ipv4/conf/ens3/arp_ignore 1
  ensure_sysctl net/ipv4/conf/ens3/arp_announce 2
  ensure_addr tunl0 192.0.2.10/32
  ensure_up tunl0
}

down() {
  if [ ! -f "$state" ]; then
    say "nothing to undo ($state does not exist)"
    return 0
  fi
  # Newest change first; recorded values are single words (numbers, names, addresses).
  # (An array, not `< <(tac ...)`: process substitution needs /dev/fd, which minimal
  # systems may lack.)
  mapfile -t records <"$state"
  for ((i = ${#records[@]} - 1; i >= 0; i--)); do
    read -r kind a b c d <<<"${records[i]}"
    case $kind in
      sysctl)
        if [ -e "/proc/sys/$a" ]; then printf '%s\n' "$b" >"/proc/sys/$a"; say "restored $a = $b"; fi ;;
      addr)
        if has_addr "$a" "$b"; then ip addr del "$b" dev "$a"; say "removed $b from $a"; fi ;;
      up)
        if link_exists "$a"; then ip link set dev "$a" down; say "brought $a down"; fi ;;
      module)
        # Unloading would remove the device from every namespace, other users' too.
        say "left module $a loaded (modprobe -r $a removes it from every namespace)" ;;
      route)
        if ip "$a" route del default via "$b" metric "$c" 2>/dev/null; then say "removed default route via $b"; fi ;;
      oldroute)
        ip "$a" route replace default via "$b" dev "$c" metric "$d"
        say "restored default route via $b" ;;
      *) die "$state: unknown record '$kind'" ;;
    esac
  done
  rm -f -- "$state"
}

status() {
  missing=0
  check 'module ipip loaded (tunl0 exists)' link_exists tunl0
  check 'net.ipv4.conf.all.rp_filter = 0' sysctl_is net/ipv4/conf/all/rp_filter 0
  check 'net.ipv4.conf.default.rp_filter = 0' sysctl_is net/ipv4/conf/default/rp_filter 0
  check 'net.ipv4.conf.tunl0.rp_filter = 0' sysctl_is net/ipv4/conf/tunl0/rp_filter 0
  check 'net.ipv4.conf.all.arp_ignore = 1' sysctl_is net/ipv4/conf/all/arp_ignore 1
  check 'net.ipv4.conf.all.arp_announce = 2' sysctl_is net/ipv4/conf/all/arp_announce 2
  check 'net.ipv4.conf.ens3.arp_ignore = 1' sysctl_is net/ipv4/conf/ens3/arp_ignore 1
  check 'net.ipv4.conf.ens3.arp_announce = 2' sysctl_is net/ipv4/conf/ens3/arp_announce 2
  check '192.0.2.10/32 on tunl0' has_addr tunl0 192.0.2.10/32
  check 'tunl0 up' link_is_up tunl0
  return "$missing"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
