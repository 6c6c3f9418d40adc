#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust: set-up, lint, tests, builds.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== firmware for Cortex-M (no_std)"
cargo build -p vitalbridge-firmware --no-default-features --target thumbv7em-none-eabihf --examples --locked
echo "== tests"
cargo test --workspace --locked
