#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust: set-up, lint, tests, builds.
# Each section is independent after set-up; add yours as its own section (or script).
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

# Big files do not belong in the repository (a 294 KB heap-profiler dump once slipped in):
# every tracked file must stay under 256 KiB, except the lock files.
section "repository: no tracked file over 256 KiB (Cargo.lock files excepted)"
max_bytes=$((256 * 1024))
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    too_big=()
    while IFS= read -r -d '' entry; do
        size="${entry%% *}" path="${entry#* }"
        case "$path" in
            Cargo.lock | */Cargo.lock) continue ;;   # the allow-list
        esac
        if [ "$size" -gt "$max_bytes" ]; then too_big+=("$path ($size bytes)"); fi
    done < <(git ls-files -z | xargs -0 -r stat --printf '%s %n\0' 2>/dev/null)
    if [ "${#too_big[@]}" -gt 0 ]; then
        printf 'tracked files over %s bytes (remove them, or add them to the allow-list in tests/run.sh):\n' \
            "$max_bytes" >&2
        printf '  %s\n' "${too_big[@]}" >&2
        exit 1
    fi
else
    echo "not a git checkout: skipped" >&2
fi

bash tests/setup.sh

section "format"
cargo fmt --all -- --check
section "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
section "fuzz targets: type-check and lint on stable (running them needs nightly, see gateway/fuzz/README.md)"
for fuzz in gateway/fuzz firmware/fuzz; do
    (cd "$fuzz" && cargo fmt -- --check \
        && CARGO_TARGET_DIR="$PWD/../../target" cargo clippy --locked -- -D warnings)
done
section "firmware for Cortex-M (no_std)"
bash cross/build.sh thumbv7em-none-eabihf --profile dev
section "tests"
cargo test --workspace --locked

section "cross: the gateway for aarch64, its library tests and the binary under qemu-user"
bash cross/test.sh aarch64-unknown-linux-gnu
section "cross: the gateway for armv7 (32-bit hubs), its library tests and the binary under qemu-user"
bash cross/test.sh armv7-unknown-linux-gnueabihf
section "profile-guided build (cross/pgo.sh, aarch64): its steps, on a debug build and a short training"
# The release build with the full training is packaging/deb/build.sh TARGET --pgo (twice the
# release build's compile time); here every step runs, for an ARM target, so under qemu-user:
# the instrumented build, the benchmark as its training, the check that the profile counted
# the pipeline, the build with the profile. Without debug info: 6.5 minutes instead of 11.
PGO_BENCH_PROFILE=dev PGO_READINGS=2000 PGO_STEADY_SECONDS=2 PGO_HL7_MESSAGES=500 \
    bash cross/pgo.sh aarch64-unknown-linux-gnu --profile dev --config profile.dev.debug=0 >/dev/null
section "systemd unit: security exposure, verify, and every system call the gateway makes is allowed"
bash systemd/check.sh
bash systemd/syscalls.sh target/debug/vitalbridge
section "Debian package (amd64): install, upgrade, remove, purge in a minimal Debian root"
# Packages the binary the tests above built (a release build would double CI's compile
# time; packaging/deb/build.sh builds release packages, see docs/install.md).
bash packaging/deb/test.sh --binary target/debug/vitalbridge
