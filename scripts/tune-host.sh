#!/usr/bin/env bash
# Tunes this host for very many loopback WebSocket connections (ringpush + ringpush-loadgen).
#
# Idempotent: every setting is only ever raised (or the port range widened), never lowered,
# and a setting already good enough is left alone. Run as root; without root it prints what
# it would change. Prints what it changed, what was already fine, and what it cannot change.
#
#   scripts/tune-host.sh            # apply
#   scripts/tune-host.sh --dry-run  # only report
#
# Settings are applied with sysctl -w (not persisted across reboots); copy the lines it
# prints into /etc/sysctl.d/ to keep them.
set -uo pipefail

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
if [[ $EUID -ne 0 && $DRY_RUN -eq 0 ]]; then
    echo "tune-host: not root: reporting only (rerun as root to apply)"
    DRY_RUN=1
fi

# Targets: enough for two million loopback sockets (one million pairs) with room to spare.
NR_OPEN_MIN=2097152
FILE_MAX_MIN=4194304
SOMAXCONN_MIN=65535
SYN_BACKLOG_MIN=65535
PORT_LO_MAX=10000      # widen the ephemeral range down to at least this...
PORT_HI_MIN=65535      # ...and up to this
CONNTRACK_MIN=2097152

changed=()
fine=()
cannot=()

read_sysctl() { cat "/proc/sys/${1//.//}" 2>/dev/null; }

write_sysctl() {
    local key=$1 value=$2
    if [[ $DRY_RUN -eq 1 ]]; then
        changed+=("$key: would set to '$value' (now '$(read_sysctl "$key")')")
        return
    fi
    local before
    before=$(read_sysctl "$key")
    if err=$(sysctl -q -w "$key=$value" 2>&1); then
        changed+=("$key: '$before' -> '$(read_sysctl "$key")'   (sysctl.d: $key = $value)")
    else
        cannot+=("$key: cannot set to '$value' (still '$before'): ${err:-read-only here}")
    fi
}

# Raises an integer sysctl to at least $2.
raise() {
    local key=$1 min=$2 now
    now=$(read_sysctl "$key")
    if [[ -z "$now" ]]; then
        cannot+=("$key: not present on this kernel")
    elif (( now >= min )); then
        fine+=("$key = $now (>= $min)")
    else
        write_sysctl "$key" "$min"
    fi
}

raise fs.nr_open "$NR_OPEN_MIN"
raise fs.file-max "$FILE_MAX_MIN"
raise net.core.somaxconn "$SOMAXCONN_MIN"
raise net.ipv4.tcp_max_syn_backlog "$SYN_BACKLOG_MIN"

range=$(read_sysctl net.ipv4.ip_local_port_range)
read -r lo hi <<<"$range"
if [[ -z "${lo:-}" ]]; then
    cannot+=("net.ipv4.ip_local_port_range: not readable")
elif (( lo <= PORT_LO_MAX && hi >= PORT_HI_MIN )); then
    fine+=("net.ipv4.ip_local_port_range = $lo $hi ($((hi - lo + 1)) ports per source/destination pair)")
else
    new_lo=$(( lo < PORT_LO_MAX ? lo : PORT_LO_MAX ))
    new_hi=$(( hi > PORT_HI_MIN ? hi : PORT_HI_MIN ))
    write_sysctl net.ipv4.ip_local_port_range "$new_lo $new_hi"
fi

# Connection tracking, when loaded, tracks loopback connections too and drops new ones
# once its table is full.
if [[ -e /proc/sys/net/netfilter/nf_conntrack_max ]]; then
    raise net.netfilter.nf_conntrack_max "$CONNTRACK_MIN"
else
    fine+=("nf_conntrack not loaded (no connection-tracking limit)")
fi

# RLIMIT_NOFILE: a process limit, not a sysctl. Raising the hard limit needs
# CAP_SYS_RESOURCE; check whether this shell could.
soft=$(ulimit -Sn)
hard=$(ulimit -Hn)
nr_open=$(read_sysctl fs.nr_open)
if (( hard >= 1048576 )); then
    fine+=("RLIMIT_NOFILE hard = $hard (soft $soft; raise the soft limit with ulimit -n $hard)")
elif (ulimit -Hn "$nr_open") 2>/dev/null; then
    cannot+=("RLIMIT_NOFILE is $soft/$hard here; this shell may raise it (ulimit -n $nr_open) before starting the node, or set LimitNOFILE= / limits.conf for services")
else
    cannot+=("RLIMIT_NOFILE is $soft (soft) / $hard (hard) and cannot be raised here (no CAP_SYS_RESOURCE). ringpush and ringpush-loadgen work around it with one file table per thread: size --shards / --workers so each holds < $hard sockets (about N/$((hard - 1000))+1)")
fi

echo "tune-host: changed:"
if ((${#changed[@]})); then printf '  %s\n' "${changed[@]}"; else echo "  nothing"; fi
echo "tune-host: already fine:"
if ((${#fine[@]})); then printf '  %s\n' "${fine[@]}"; else echo "  nothing"; fi
echo "tune-host: cannot change:"
if ((${#cannot[@]})); then printf '  %s\n' "${cannot[@]}"; else echo "  nothing"; fi
mem_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
echo "tune-host: MemAvailable $((mem_kb / 1024)) MiB: about $((mem_kb / 10)) loopback connection pairs at ~10 KB of kernel memory each"
