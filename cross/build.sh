#!/usr/bin/env bash
# Builds Vitalbridge for one target with Debian's cross compilers (no Docker, no `cross`).
#
#   cross/build.sh aarch64-unknown-linux-gnu      [CARGO ARGS…]   # the gateway, 64-bit ARM (Pi 3/4/5, arm64 boxes)
#   cross/build.sh armv7-unknown-linux-gnueabihf  [CARGO ARGS…]   # the gateway, 32-bit ARM (armhf)
#   cross/build.sh x86_64-unknown-linux-gnu       [CARGO ARGS…]   # the gateway, amd64 (native)
#   cross/build.sh thumbv7em-none-eabihf          [CARGO ARGS…]   # the firmware crate, Cortex-M4F/M7 (no_std)
#
# CARGO ARGS are passed to `cargo build` (e.g. `--features ble`, `--profile dev`); the default
# is `--release`. Installs what the target needs first (cross/setup.sh: apt packages, the Rust
# target, and the target's C libraries for any -sys crate the chosen features pull in); the
# linker, C compiler and pkg-config settings per target are in .cargo/config.toml. Prints the
# binary's path on stdout (the only thing there) and its size as built and stripped on stderr
# (the stripped copy is written next to it as `vitalbridge.stripped`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
# shellcheck source=cross/targets.sh
source "$here/targets.sh"

[ $# -ge 1 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
target="$1"; shift
target_info "$target"

bash "$here/setup.sh" "$target" "$@"

profile_args=(--release)
for a in "$@"; do
    case "$a" in --release|-r|--profile|--profile=*) profile_args=() ;; esac
done

if [ "$target" = thumbv7em-none-eabihf ]; then
    cargo build --locked -p vitalbridge-firmware --no-default-features --target "$target" \
        --examples "${profile_args[@]}" "$@"
    echo "built the firmware crate for $target (${CARGO_TARGET_DIR:-target}/$target/)" >&2
    exit 0
fi

cargo build --locked -p vitalbridge --bin vitalbridge --target "$target" "${profile_args[@]}" "$@"
bin="$(binary_path "$target" "${profile_args[@]}" "$@")"
strip_binary "$bin" "$bin.stripped"
echo "$bin"
printf '  %s bytes as built, %s bytes stripped (%s)\n' \
    "$(stat -c %s "$bin")" "$(stat -c %s "$bin.stripped")" "$bin.stripped" >&2
