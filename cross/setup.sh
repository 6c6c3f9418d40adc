#!/usr/bin/env bash
# Installs what building for TARGET needs, idempotently (a no-op when everything is there).
#
#   cross/setup.sh TARGET [--qemu] [CARGO FEATURE ARGS…]
#
# - the Rust standard library for TARGET (`rustup target add`);
# - Debian's cross toolchain for it (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf);
# - with --qemu, qemu-user, to run the target's binaries (cargo's runner, .cargo/config.toml);
# - the target's C libraries for the -sys crates in the dependency graph that link a system
#   library, for the features given (`--features X`, `--all-features`, `--no-default-features`;
#   other arguments are ignored). See SYS_LIBS below: today none is in the graph (SQLite is
#   bundled by libsqlite3-sys, ring builds its C with the cross gcc); the BLE source's
#   libdbus-sys is one unless its `vendored` feature is on.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
# shellcheck source=cross/targets.sh
source "$here/targets.sh"

[ $# -ge 1 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
target="$1"; shift
target_info "$target"

want_qemu=""
features=()
while [ $# -gt 0 ]; do
    case "$1" in
        --qemu) want_qemu=1 ;;
        --features|-F) features+=("--features" "${2:-}"); shift ;;
        --features=*|--all-features|--no-default-features) features+=("$1") ;;
    esac
    shift || true
done

packages=()
[ -n "$CROSS_PKGS" ] && read -r -a packages <<<"$CROSS_PKGS"
[ -n "$want_qemu" ] && [ -n "$QEMU" ] && packages+=(qemu-user)
apt_install "${packages[@]}"
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

# -sys crates that link a system C library, as "crate vendored-feature debian-dev-package".
# A crate whose vendored feature ("-" for none) is on builds its C from source with the cross
# gcc and needs nothing here. Otherwise the target's -dev package is installed as a Debian
# multiarch package (`dpkg --add-architecture`), and pkg-config finds it through the
# PKG_CONFIG_LIBDIR_<target> setting in .cargo/config.toml.
SYS_LIBS=(
    "libdbus-sys vendored libdbus-1-dev"   # BLE (btleplug → dbus): D-Bus client library
    "libudev-sys - libudev-dev"            # serial port enumeration, if a crate asks for it
)

# The first line of `cargo tree -i CRATE -e features` is the crate itself; the lines that
# follow include `CRATE feature "NAME"` for every feature enabled on it. A crate that is not
# in the graph for these features makes cargo fail with "did not match any packages": that
# prints nothing. Any other failure (a stale Cargo.lock with --locked, an unknown feature, no
# network for a missing crate) stops the set-up with cargo's own message.
in_graph() {
    local err status=0 tree
    err="$(mktemp)"
    tree="$(cargo tree --locked -q -p vitalbridge --target "$target" "${features[@]}" \
        -e normal,build,features -i "$1" 2>"$err")" || status=$?
    if [ "$status" -ne 0 ] && ! grep -q "did not match any packages" "$err"; then
        echo "setup: \`cargo tree -i $1\` failed (exit $status):" >&2
        cat "$err" >&2
        rm -f "$err"
        return 1
    fi
    rm -f "$err"
    printf '%s\n' "$tree"
}

if [ "$target" != thumbv7em-none-eabihf ]; then
    for entry in "${SYS_LIBS[@]}"; do
        read -r crate vendored devpkg <<<"$entry"
        tree="$(in_graph "$crate")"
        [ -n "$tree" ] || continue
        if [ "$vendored" != - ] && grep -q "$crate feature \"$vendored\"" <<<"$tree"; then
            echo "setup: $crate builds its C library from source (feature \"$vendored\")" >&2
            continue
        fi
        if [ "$DEB_ARCH" != "$(dpkg --print-architecture)" ]; then
            if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
                echo "setup: adding Debian architecture $DEB_ARCH for $devpkg:$DEB_ARCH" >&2
                as_root dpkg --add-architecture "$DEB_ARCH"
                _apt_updated=""
            fi
            apt_install "$devpkg:$DEB_ARCH"
        else
            apt_install "$devpkg" pkg-config
        fi
        echo "setup: $crate links the target's system library from $devpkg:$DEB_ARCH" >&2
    done
fi
