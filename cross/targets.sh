# Sourced by the scripts in cross/ and packaging/: what each supported target needs, and the
# steps those scripts share.
# shellcheck shell=bash
#
#   target_info TRIPLE   sets, for a Rust target triple:
#     DEB_ARCH       Debian architecture (arm64, armhf, amd64; empty for bare metal)
#     GNU_TRIPLE     Debian's GNU triple, the prefix of the cross tools (aarch64-linux-gnu-gcc …)
#     CROSS_PKGS     the Debian packages with that cross toolchain (empty: none needed)
#     QEMU           the qemu-user binary that runs the target's programs (empty: none)
#   as_root CMD…       runs CMD as root (directly when already root, else with sudo)
#   apt_install PKG…   installs the packages that are missing, quietly; no-op otherwise
#   binary_path TRIPLE [CARGO ARGS…]
#                      prints where `cargo build --target TRIPLE CARGO ARGS…` puts the
#                      `vitalbridge` binary (profile from --release/-r/--profile, dev by
#                      default; under $CARGO_TARGET_DIR when set)
#   strip_binary IN OUT  writes IN without its symbols to OUT, with the target's strip
#                      (after target_info; the build machine's strip where there is none)
#   stop_gateway_when PID SECONDS CHECK…
#                      the "run the gateway until …, then SIGTERM" of the smoke runs, below

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

binary_path() {
    local triple="$1" profile=dev prev="" arg
    shift
    for arg in "$@"; do
        case "$prev" in --profile) profile="$arg" ;; esac
        case "$arg" in
            --release | -r) profile=release ;;
            --profile=*) profile="${arg#--profile=}" ;;
        esac
        prev="$arg"
    done
    # cargo's folder per profile: dev and test share "debug", bench shares "release".
    case "$profile" in dev | test) profile=debug ;; bench) profile=release ;; esac
    echo "${CARGO_TARGET_DIR:-target}/$triple/$profile/vitalbridge"
}

strip_binary() {
    local tool="${GNU_TRIPLE:+$GNU_TRIPLE-}strip"
    command -v "$tool" >/dev/null || tool=strip
    "$tool" -o "$2" "$1"
}

# stop_gateway_when PID SECONDS CHECK…
# PID is a gateway the caller started in the background (or a program that execs it or
# passes SIGTERM on and exits with its status: chroot, setpriv, qemu-user). Waits until the
# command CHECK… succeeds, for at most SECONDS and only while PID runs. Then, if it did,
# sends SIGTERM and waits for the clean stop (SIGKILL after STOP_GRACE_S, default 60 s);
# if it did not, SIGKILL at once. Sets GATEWAY_REACHED (1 when CHECK succeeded, else empty)
# and GATEWAY_STATUS (PID's exit status), and returns 0 only when CHECK succeeded and PID
# exited 0 after the SIGTERM.
stop_gateway_when() {
    local pid="$1" deadline=$((SECONDS + $2)) grace
    shift 2
    GATEWAY_REACHED="" GATEWAY_STATUS=0
    while true; do
        if "$@"; then GATEWAY_REACHED=1; break; fi
        kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.2
    done
    if [ -n "$GATEWAY_REACHED" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        grace=$((SECONDS + ${STOP_GRACE_S:-60}))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$grace" ]; do sleep 0.1; done
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" || GATEWAY_STATUS=$?
    [ -n "$GATEWAY_REACHED" ] && [ "$GATEWAY_STATUS" -eq 0 ]
}
