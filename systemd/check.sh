#!/usr/bin/env bash
# Checks the hardened unit offline, as CI does:
#   - `systemd-analyze security --offline=yes`: the overall exposure score (0.0 best, 10.0
#     worst) must be at most MAX_EXPOSURE, for the unit alone and with the BLE drop-in;
#   - `systemd-analyze verify`: no unknown or malformed settings.
# The score is parsed from the "Overall exposure level" line, not trusted to an exit code.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
MAX_EXPOSURE=2.0

command -v systemd-analyze >/dev/null || {
    # shellcheck source=cross/targets.sh
    source "$here/../cross/targets.sh"
    apt_install systemd
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# A drop-in is parsed after the unit, so the unit followed by the drop-in is the same unit.
cp vitalbridge.service "$work/vitalbridge.service"
mkdir -p "$work/ble"
cat vitalbridge.service ble.conf >"$work/ble/vitalbridge.service"

status=0
for unit in "$work/vitalbridge.service" "$work/ble/vitalbridge.service"; do
    name="vitalbridge.service"
    [ "$unit" = "$work/ble/vitalbridge.service" ] && name="vitalbridge.service + ble.conf"
    report="$(systemd-analyze security --offline=yes "$unit" 2>&1)" || true
    score="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' <<<"$report")"
    if [ -z "$score" ]; then
        echo "FAIL $name: no exposure score in systemd-analyze's output:" >&2
        echo "$report" >&2
        status=1
    elif awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
        echo "FAIL $name: exposure $score > $MAX_EXPOSURE; what is exposed:" >&2
        grep '✗' <<<"$report" >&2 || true
        status=1
    else
        echo "ok   $name: exposure $score (at most $MAX_EXPOSURE)"
    fi
done

# verify wants the binaries of Exec*= lines to exist: point them at a stand-in.
mkdir -p "$work/verify"
printf '#!/bin/sh\n' >"$work/verify/vitalbridge" && chmod +x "$work/verify/vitalbridge"
sed "s#/usr/bin/vitalbridge#$work/verify/vitalbridge#g" vitalbridge.service >"$work/verify/vitalbridge.service"
if out="$(systemd-analyze verify --man=no "$work/verify/vitalbridge.service" 2>&1)" && [ -z "$out" ]; then
    echo "ok   vitalbridge.service: systemd-analyze verify"
else
    echo "FAIL vitalbridge.service: systemd-analyze verify:" >&2
    echo "$out" >&2
    status=1
fi
exit "$status"
