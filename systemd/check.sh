#!/usr/bin/env bash
# Checks the hardened unit offline, as CI does:
#   - `systemd-analyze security --offline=yes`: the overall exposure score (0.0 best, 10.0
#     worst) must be at most MAX_EXPOSURE, for the unit alone, with the BLE drop-in, and with
#     the drop-in that loads an unsealed buffer key;
#   - `systemd-analyze verify`: no unknown or malformed settings, in the same three forms.
# The score is parsed from the "Overall exposure level" line, not trusted to an exit code.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
MAX_EXPOSURE=2.0
DROPINS=(ble.conf buffer-key-plain.conf)

command -v systemd-analyze >/dev/null || {
    # shellcheck source=cross/targets.sh
    source "$here/../cross/targets.sh"
    apt_install systemd
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# A drop-in is parsed after the unit, so the unit followed by the drop-in is the same unit.
variants=(unit)
mkdir -p "$work/unit"
cp vitalbridge.service "$work/unit/vitalbridge.service"
for d in "${DROPINS[@]}"; do
    variants+=("$d")
    mkdir -p "$work/$d"
    cat vitalbridge.service "$d" >"$work/$d/vitalbridge.service"
done
name_of() { if [ "$1" = unit ]; then echo "vitalbridge.service"; else echo "vitalbridge.service + $1"; fi; }

status=0
for v in "${variants[@]}"; do
    name="$(name_of "$v")"
    report="$(systemd-analyze security --offline=yes "$work/$v/vitalbridge.service" 2>&1)" || true
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
mkdir -p "$work/bin"
printf '#!/bin/sh\n' >"$work/bin/vitalbridge" && chmod +x "$work/bin/vitalbridge"
for v in "${variants[@]}"; do
    name="$(name_of "$v")"
    mkdir -p "$work/verify-$v"
    sed "s#/usr/bin/vitalbridge#$work/bin/vitalbridge#g" "$work/$v/vitalbridge.service" >"$work/verify-$v/vitalbridge.service"
    if out="$(systemd-analyze verify --man=no "$work/verify-$v/vitalbridge.service" 2>&1)" && [ -z "$out" ]; then
        echo "ok   $name: systemd-analyze verify"
    else
        echo "FAIL $name: systemd-analyze verify:" >&2
        echo "$out" >&2
        status=1
    fi
done
exit "$status"
