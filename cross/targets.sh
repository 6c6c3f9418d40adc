# Sourced by the scripts in cross/ and packaging/: what each supported target needs.
# shellcheck shell=bash
#
#   target_info TRIPLE   sets, for a Rust target triple:
#     DEB_ARCH       Debian architecture (arm64, armhf, amd64; empty for bare metal)
#     GNU_TRIPLE     Debian's GNU triple, the prefix of the cross tools (aarch64-linux-gnu-gcc …)
#     CROSS_PKGS     the Debian packages with that cross toolchain (empty: none needed)
#     QEMU           the qemu-user binary that runs the target's programs (empty: none)
#   as_root CMD…       runs CMD as root (directly when already root, else with sudo)
#   apt_install PKG…   installs the packages that are missing, quietly; no-op otherwise

target_info() {
    case "$1" in
        aarch64-unknown-linux-gnu)
            DEB_ARCH=arm64 GNU_TRIPLE=aarch64-linux-gnu
            CROSS_PKGS="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" QEMU=qemu-aarch64 ;;
        armv7-unknown-linux-gnueabihf)
            DEB_ARCH=armhf GNU_TRIPLE=arm-linux-gnueabihf
            CROSS_PKGS="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" QEMU=qemu-arm ;;
        x86_64-unknown-linux-gnu)
            DEB_ARCH=amd64 GNU_TRIPLE=x86_64-linux-gnu CROSS_PKGS="" QEMU="" ;;
        thumbv7em-none-eabihf)
            DEB_ARCH="" GNU_TRIPLE="" CROSS_PKGS="" QEMU="" ;;
        *)
            echo "unknown target '$1'; supported: aarch64-unknown-linux-gnu," \
                "armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-gnu, thumbv7em-none-eabihf" >&2
            return 2 ;;
    esac
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt-get update runs at most once per script run, and only when something is missing.
_apt_updated=""
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "apt: installing ${missing[*]}" >&2
    if [ -z "$_apt_updated" ]; then
        as_root apt-get update -qq
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
