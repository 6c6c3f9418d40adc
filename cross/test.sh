#!/usr/bin/env bash
# Proves the gateway built for an ARM Linux target works, not just links: runs its library
# tests and then the binary itself under qemu-user.
#
#   cross/test.sh aarch64-unknown-linux-gnu     [CARGO ARGS…]   # what CI runs
#   cross/test.sh armv7-unknown-linux-gnueabihf [CARGO ARGS…]
#
# 1. `cargo test -p vitalbridge --lib --target TARGET`: every unit and property test of the
#    library, executed by qemu (the runner in .cargo/config.toml).
# 2. The `vitalbridge` binary under qemu: --version, check-config, then the simulator → SQLite
#    buffer (WAL, synchronous=FULL, flock) → FHIR NDJSON pipeline for a fixed number of
#    readings, a SIGTERM, a clean exit 0, every reading written once, and an empty queue.
# CARGO ARGS (e.g. `--features ble`) go to both cargo commands.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
# shellcheck source=cross/targets.sh
source "$here/targets.sh"

[ $# -ge 1 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
target="$1"; shift
target_info "$target"
[ -n "$QEMU" ] || { echo "cross/test.sh: $target is not an emulated Linux target" >&2; exit 2; }

bash "$here/setup.sh" "$target" --qemu "$@"

echo "== $target: library tests under $QEMU"
cargo test --locked -p vitalbridge --lib --target "$target" "$@"

echo "== $target: the vitalbridge binary under $QEMU"
cargo build --locked -p vitalbridge --bin vitalbridge --target "$target" "$@"
bin="$(binary_path "$target" "$@")"
run() { "$QEMU" -L "/usr/$GNU_TRIPLE" "$bin" "$@"; }

mkdir -p "${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d "$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/cross-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT
readings=300
cat >"$work/config.toml" <<EOF
[gateway]
id = "cross-smoke"
data_dir = "$work/data"
[sources.sim]
devices = 5
interval_ms = 10
max_readings = $readings
# The plain demo: every reading bound and sent (no held or refused scenario readings).
scenarios = false
[buffer]
key_file = "$work/buffer.key"
EOF

run --version
run check-config -c "$work/config.toml"

observations() { cat "$work"/data/out/Observation-*.ndjson 2>/dev/null | wc -l; }
all_written() { [ "$(observations)" -ge "$readings" ]; }
"$QEMU" -L "/usr/$GNU_TRIPLE" "$bin" run -c "$work/config.toml" 2>"$work/gateway.log" &
# $! is qemu itself: it passes SIGTERM on to the gateway and exits with its status.
if ! stop_gateway_when $! 180 all_written; then
    if [ -z "$GATEWAY_REACHED" ]; then
        echo "FAIL: $(observations) of $readings Observations written" >&2
    else
        echo "FAIL: the gateway exited $GATEWAY_STATUS after SIGTERM" >&2
    fi
    tail -20 "$work/gateway.log" >&2
    exit 1
fi
written="$(observations)"
distinct="$(cat "$work"/data/out/Observation-*.ndjson | grep -o '"identifier":\[{[^]]*\]' | sort -u | wc -l)"
stats="$(run queue stats -c "$work/config.toml")"
echo "$stats" | sed 's/^/  /'
if [ "$written" -ne "$readings" ] || [ "$distinct" -ne "$readings" ] \
    || ! grep -qx 'pending: 0' <<<"$stats"; then
    echo "FAIL: wrote $written Observations ($distinct distinct identifiers) for $readings readings" >&2
    exit 1
fi
echo "ok: $target binary ran the pipeline under $QEMU: $readings readings in, $written Observations out, exit 0 on SIGTERM"
