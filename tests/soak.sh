#!/usr/bin/env bash
# The fault tests for longer than CI runs them (docs/testing-faults.md):
#   - the chaos soak (tests/tests/chaos.rs) for SOAK_SECONDS (default 1800), rounds of
#     kill -9, broker restarts, upstream faults and a disk-full episode in random order;
#   - the power-loss test (tests/tests/powerloss.rs) with POWERLOSS_CUTS power cuts
#     (default 500).
# SOAK_SEED replays the chaos soak's order and timing (it is printed at the start and in
# any failure). Needs root and /dev/fuse, like the tests themselves. Run as
#   SOAK_SECONDS=3600 bash tests/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export SOAK_SECONDS="${SOAK_SECONDS:-1800}"
export POWERLOSS_CUTS="${POWERLOSS_CUTS:-500}"
export SOAK_SEED="${SOAK_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
echo "soak: chaos for ${SOAK_SECONDS} s (seed ${SOAK_SEED}), then ${POWERLOSS_CUTS} power cuts"

# What tests/setup.sh installs (run it first on a fresh machine).
if ! /usr/bin/python3 -c 'import pyfuse3' 2>/dev/null || [ ! -x /usr/sbin/mosquitto ]; then
    echo "soak: python3-pyfuse3 or mosquitto missing: run bash tests/setup.sh first" >&2
    exit 2
fi
# The tests run the gateway binary next to them: build it first (cargo test -p does not).
cargo build -p vitalbridge --bin vitalbridge
cargo test -p vitalbridge-tests --test chaos -- --nocapture
cargo test -p vitalbridge-tests --test powerloss -- --nocapture power_cuts
