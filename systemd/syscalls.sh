#!/usr/bin/env bash
# Runs the gateway under strace and checks that every system call it makes is allowed by the
# unit's SystemCallFilter= lines: the sandbox must not break the program it sandboxes.
#
#   bash systemd/syscalls.sh BINARY
#
# The scenario: `check-config`, then `run` with the simulator (readings through the SQLite
# buffer to NDJSON files) and an MQTT source whose broker refuses connections (sockets,
# connect, retries), the notify socket and the watchdog, until SIGTERM and a clean exit.
# Run as root, it runs the gateway (and strace) as user nobody, as the service runs
# unprivileged: some libraries act differently for root (SQLite fchown()s new journal files
# to the database's owner when it is root).
# The allow list is the unit's allow groups minus its deny groups, expanded with
# `systemd-analyze syscall-filter`. Code paths this scenario does not reach (TLS handshakes
# make no system calls of their own; and the serial and BLE sources, which this scenario does not run) are not covered.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -eq 1 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
unit="$here/vitalbridge.service"
# shellcheck source=cross/targets.sh
source "$here/../cross/targets.sh"
command -v strace >/dev/null || apt_install strace

# Names in a syscall-filter group, groups expanded recursively.
expand() {
    local item
    for item in "$@"; do
        if [[ "$item" == @* ]]; then
            # shellcheck disable=SC2046
            expand $(systemd-analyze syscall-filter "$item" | sed -n '2,$p' | grep -v '^ *#' | awk 'NF { print $1 }')
        else
            echo "$item"
        fi
    done
}
allow=()
deny=()
while IFS= read -r line; do
    value="${line#SystemCallFilter=}"
    if [[ "$value" == ~* ]]; then
        read -r -a words <<<"${value#\~}"; deny+=("${words[@]}")
    else
        read -r -a words <<<"$value"; allow+=("${words[@]}")
    fi
done < <(grep '^SystemCallFilter=' "$unit")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
as_user=()
if [ "$(id -u)" = 0 ]; then
    as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    chown 65534:65534 "$work"
fi
expand "${allow[@]}" | sort -u >"$work/allow"
expand "${deny[@]}" | sort -u >"$work/deny"
comm -23 "$work/allow" "$work/deny" >"$work/allowed"

cat >"$work/config.toml" <<EOF
[gateway]
id = "syscall-check"
data_dir = "$work/data"
[buffer]
key_file = "$work/buffer.key"
[sources.sim]
devices = 5
interval_ms = 20
max_readings = 200
# The plain demo: every reading bound and sent (no held or refused scenario readings).
scenarios = false
[sources.mqtt]
url = "mqtt://127.0.0.1:9"
EOF

# The notify socket systemd would provide, and a watchdog that pings every 100 ms.
python3 - "$work/notify" <<'EOF' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)  # the gateway runs as another user
s.settimeout(120)
try:
    while s.recv(4096):
        pass
except OSError:
    pass
EOF
listener=$!
for _ in $(seq 50); do [ -S "$work/notify" ] && break; sleep 0.1; done

"${as_user[@]}" strace -f -qq -o "$work/trace.check" "$bin" check-config -c "$work/config.toml" >/dev/null
NOTIFY_SOCKET="$work/notify" WATCHDOG_USEC=200000 "${as_user[@]}" \
    strace -f -qq -o "$work/trace.run" "$bin" run -c "$work/config.toml" 2>"$work/run.log" &
tracer=$!
observations() { cat "$work"/data/out/Observation-*.ndjson 2>/dev/null | wc -l; }
for _ in $(seq 600); do
    [ "$(observations)" -ge 200 ] && break
    kill -0 "$tracer" 2>/dev/null || break
    sleep 0.1
done
sleep 1 # a few watchdog pings and MQTT reconnect attempts
# The gateway is strace's child (setpriv execs strace in place).
gateway="$(pgrep -f -n "^$bin run -c $work/config.toml")"
kill -TERM "$gateway"
status=0
wait "$tracer" || status=$?
kill "$listener" 2>/dev/null || true
if [ "$status" -ne 0 ] || [ "$(observations)" -lt 200 ]; then
    echo "FAIL: the scenario did not run to a clean exit (exit $status, $(observations) Observations)" >&2
    tail -20 "$work/run.log" >&2
    exit 1
fi

cat "$work"/trace.* | sed -n 's/^[0-9]\+ \+\([a-z0-9_]\+\)(.*/\1/p' | sort -u >"$work/used"
denied="$(comm -23 "$work/used" "$work/allowed")"
if [ -n "$denied" ]; then
    echo "FAIL: the gateway makes system calls the unit's SystemCallFilter= denies:" >&2
    echo "$denied" | sed 's/^/  /' >&2
    exit 1
fi
echo "ok   $(wc -l <"$work/used") distinct system calls made by the gateway, all allowed by SystemCallFilter= ($(wc -l <"$work/allowed") allowed)"
