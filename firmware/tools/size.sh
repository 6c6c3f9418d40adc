#!/usr/bin/env bash
# What the firmware crate costs on a Cortex-M4F: builds the example device program
# (examples/device.rs: encoder, outbox, a 64-byte accumulator and decoder) for
# thumbv7em-none-eabihf, no_std, no allocator, and prints
#
#   - its sections (.text = code, .rodata = tables and constants, .bss/.data = RAM), and
#   - the stack frame of every function that reserves more than 64 bytes, read from each
#     function's prologue (push/vpush/sub sp); inlined callees count in their caller.
#
#   firmware/tools/size.sh [OPT-LEVEL]     # OPT-LEVEL: 3 (the release profile, default), s or z
#
# Run from anywhere; builds into $CARGO_TARGET_DIR (or target/). Needs llvm-size and
# llvm-objdump (Debian's `llvm`), or binutils' `size` for the sections alone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
opt="${1:-3}"
target=thumbv7em-none-eabihf
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

CARGO_PROFILE_RELEASE_OPT_LEVEL="$opt" cargo build --locked --quiet -p vitalbridge-firmware \
    --no-default-features --target "$target" --release --example device
bin="${CARGO_TARGET_DIR:-target}/$target/release/examples/device"

echo "examples/device for $target, opt-level $opt"
if command -v llvm-size >/dev/null; then
    llvm-size -A "$bin" | awk '$1 ~ /^\.(text|rodata|data|bss)$/ {printf "  %-8s %6d bytes\n", $1, $2}'
else
    size -A "$bin" | awk '$1 ~ /^\.(text|rodata|data|bss)$/ {printf "  %-8s %6d bytes\n", $1, $2}'
fi

command -v llvm-objdump >/dev/null || exit 0
echo "stack frames over 64 bytes (prologue: pushes + sub sp):"
llvm-objdump -d --no-show-raw-insn --demangle "$bin" | awk '
    function flush() { if (fn != "" && frame > 64) printf "  %6d  %s\n", frame, fn }
    /^[0-9a-f]+ <.*>:$/ { flush(); fn = substr($0, index($0, "<") + 1); sub(/>:$/, "", fn);
                          frame = 0; n = 0; next }
    fn == "" || ++n > 8 { next }
    /\tpush(\.w)?\t/ { regs = $0; sub(/.*\{/, "", regs); sub(/\}.*/, "", regs);
                       frame += 4 * split(regs, r, ","); next }
    /\tvpush\t/ { regs = $0; sub(/.*\{/, "", regs); sub(/\}.*/, "", regs);
                  if (split(regs, m, "-") == 2) { gsub(/[^0-9]/, "", m[1]); gsub(/[^0-9]/, "", m[2]);
                                                  frame += 8 * (m[2] - m[1] + 1) }
                  else frame += 8 * split(regs, r, ","); next }
    /\tsub(\.w|w)?\tsp, (sp, )?#/ { v = $0; sub(/.*#/, "", v); frame += v + 0; next }
    END { flush() }
' | sort -rn
