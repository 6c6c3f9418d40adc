#!/usr/bin/env bash
# Installs, upgrades, removes and purges the Debian package inside a throwaway Debian root
# (debootstrap --variant=minbase, then chroot), checking what lands where at each step.
#
#   packaging/deb/test.sh [--binary PATH] [--target TRIPLE]
#
# Builds two packages from one binary: an "old" one (version 0.0.0~test-1) and the current
# one, so the upgrade path is real dpkg behaviour (maintainer scripts with a previous version,
# conffile handling). --binary packages an already-built binary (CI passes the one its test
# build made, to stay inside its time budget); without it the release binary is built.
# --target defaults to this machine's (x86_64-unknown-linux-gnu): the chroot runs the binary.
#
# Needs root (chroot) and debootstrap. The minimal root is built once and kept as a tarball
# under target/deb-test/ (inside the clone, like every other cache); each run unpacks a fresh
# copy. Nothing is mounted: maintainer scripts and the gateway run without /proc.
set -euo pipefail
umask 022
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
# shellcheck source=cross/targets.sh
source "$repo/cross/targets.sh"

binary=""
target="x86_64-unknown-linux-gnu"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --target) target="$2"; shift 2 ;;
        *) sed -n '2,16p' "$0" >&2; exit 2 ;;
    esac
done
target_info "$target"
[ "$(id -u)" = 0 ] || { echo "packaging/deb/test.sh needs root (chroot)" >&2; exit 2; }
apt_install debootstrap

work="$repo/target/deb-test"
mkdir -p "$work"
. /etc/os-release
suite="${VERSION_CODENAME:-bookworm}"
mirror="${VB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tarball="$work/rootfs-$suite-$DEB_ARCH-minbase.tar"
root="$work/root"

cleanup_root() {
    # No process may outlive the test inside the root.
    local p m
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -KILL "${p#/proc/}" 2>/dev/null
    done
    # Nothing is mounted by this script; an interrupted debootstrap may have left /proc or /sys.
    for m in $(findmnt -rn -o TARGET | grep -F "$root" | sort -r || true); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$root"
}

if [ ! -f "$tarball" ]; then
    echo "== building a minimal $suite root (once; kept as $tarball)"
    cleanup_root
    debootstrap --variant=minbase --arch="$DEB_ARCH" --include=adduser "$suite" "$root" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*_Packages
    tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
fi
cleanup_root
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
trap cleanup_root EXIT

echo "== packages"
old_version="0.0.0~test-1"
args=()
[ -n "$binary" ] && args=(--binary "$binary")
old_deb="$(bash packaging/deb/build.sh "$target" --version "$old_version" --out "$work" "${args[@]}")"
[ -n "$binary" ] || args=(--binary "target/$target/release/vitalbridge")
new_deb="$(bash packaging/deb/build.sh "$target" --out "$work" "${args[@]}")"
new_version="$(dpkg-deb -f "$new_deb" Version)"
cp "$old_deb" "$root/tmp/old.deb"
cp "$new_deb" "$root/tmp/new.deb"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
passed=0
failed=0
check() {
    local what="$1"; shift
    if "$@" >/dev/null 2>&1; then
        passed=$((passed + 1)); echo "  ok    $what"
    else
        failed=$((failed + 1)); echo "  FAIL  $what"
    fi
}
stat_is() { [ "$(in_root stat -c '%U:%G %a' "$1")" = "$2" ]; }   # names from the root's passwd
file_absent() { [ ! -e "$root$1" ] && [ ! -L "$root$1" ]; }
in_groups() { in_root id -nG vitalbridge | tr ' ' '\n' | grep -qx "$1"; }
installed_version() { [ "$(in_root dpkg-query -W -f='${Version} ${Status}' vitalbridge)" = "$1 install ok installed" ]; }
enabled_link="/etc/systemd/system/multi-user.target.wants/vitalbridge.service"

# The service user runs the gateway in the chroot for a moment: it must be able to read the
# config and to create the buffer in the state directory. No source is on out of the box, so
# it only opens the buffer and waits; SIGTERM must give a clean exit 0.
gateway_runs_as_service_user() {
    # Not through in_root: $! must be the gateway itself (chroot, env and setpriv exec it).
    chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin \
        setpriv --reuid=vitalbridge --regid=vitalbridge --init-groups \
        /usr/bin/vitalbridge run -c /etc/vitalbridge/config.toml >"$work/run.log" 2>&1 &
    local pid=$! i
    for i in $(seq 1 100); do
        grep -q "gateway running" "$work/run.log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" && grep -q "gateway running" "$work/run.log" \
        && [ -f "$root/var/lib/vitalbridge/buffer.db" ]
}

echo "== install $old_version"
in_root dpkg -i /tmp/old.deb </dev/null >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; exit 1; }
check "installed at $old_version" installed_version "$old_version"
check "/usr/bin/vitalbridge, root, 0755" stat_is /usr/bin/vitalbridge "root:root 755"
check "the unit in /usr/lib/systemd/system" stat_is /usr/lib/systemd/system/vitalbridge.service "root:root 644"
check "the unit is the one in systemd/" cmp systemd/vitalbridge.service "$root/usr/lib/systemd/system/vitalbridge.service"
check "the BLE drop-in in /usr/share/vitalbridge" stat_is /usr/share/vitalbridge/ble.conf "root:root 644"
check "/etc/vitalbridge/config.toml, 0644" stat_is /etc/vitalbridge/config.toml "root:root 644"
check "config.toml is a conffile" bash -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' vitalbridge | grep -q '/etc/vitalbridge/config.toml '"
check "the man page" stat_is /usr/share/man/man1/vitalbridge.1.gz "root:root 644"
check "the copyright file" test -s "$root/usr/share/doc/vitalbridge/copyright"
check "system user vitalbridge (uid < 1000, no login, home /var/lib/vitalbridge)" bash -c \
    "chroot '$root' getent passwd vitalbridge | awk -F: '\$3 < 1000 && \$6 == \"/var/lib/vitalbridge\" && \$7 ~ /nologin|false/' | grep -q ."
check "vitalbridge is in group dialout" in_groups dialout
check "no bluetooth group yet, so not in it" bash -c "! chroot '$root' getent group bluetooth"
check "/var/lib/vitalbridge, vitalbridge, 0750" stat_is /var/lib/vitalbridge "vitalbridge:vitalbridge 750"
check "/etc/credstore, root, 0700" stat_is /etc/credstore "root:root 700"
check "the unit is enabled (multi-user.target.wants)" test -L "$root$enabled_link"
check "vitalbridge --version runs in the target root" bash -c "chroot '$root' vitalbridge --version | grep -q '^vitalbridge '"
check "the shipped config passes check-config" in_root vitalbridge check-config -c /etc/vitalbridge/config.toml
check "the service user runs the gateway: reads the config, writes the buffer, exits 0 on SIGTERM" \
    gateway_runs_as_service_user

echo "== edit the conffile, add a key and the bluetooth group, upgrade to $new_version"
sed -i 's/^capacity = 1000000$/capacity = 250000  # edited on site/' "$root/etc/vitalbridge/config.toml"
edited_sum="$(md5sum <"$root/etc/vitalbridge/config.toml")"
printf 'not a real key\n' >"$root/etc/credstore/vitalbridge.key"
chmod 600 "$root/etc/credstore/vitalbridge.key"
in_root groupadd --system bluetooth
in_root dpkg -i /tmp/new.deb </dev/null >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; exit 1; }
check "upgraded to $new_version" installed_version "$new_version"
check "the edited conffile is kept" test "$(md5sum <"$root/etc/vitalbridge/config.toml")" = "$edited_sum"
check "no .dpkg-dist/.dpkg-new beside it" bash -c "! ls '$root'/etc/vitalbridge/config.toml.dpkg-*"
check "the edited config still passes check-config" in_root vitalbridge check-config -c /etc/vitalbridge/config.toml
check "the buffer survived the upgrade" test -f "$root/var/lib/vitalbridge/buffer.db"
check "vitalbridge is now in group bluetooth too" in_groups bluetooth
check "the unit is still enabled" test -L "$root$enabled_link"

echo "== remove"
in_root dpkg -r vitalbridge </dev/null >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; exit 1; }
check "the binary is gone" file_absent /usr/bin/vitalbridge
check "the unit is gone" file_absent /usr/lib/systemd/system/vitalbridge.service
check "the config is kept until purge" test -f "$root/etc/vitalbridge/config.toml"
check "the buffer is kept until purge" test -f "$root/var/lib/vitalbridge/buffer.db"

echo "== purge"
in_root dpkg -P vitalbridge </dev/null >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; exit 1; }
check "the package is gone from dpkg's database" bash -c "! chroot '$root' dpkg-query -W -f='\${Status}' vitalbridge 2>/dev/null | grep -q installed"
check "/etc/vitalbridge is gone" file_absent /etc/vitalbridge
check "/var/lib/vitalbridge (the buffer, patient data) is gone" file_absent /var/lib/vitalbridge
check "the private key /etc/credstore/vitalbridge.key is gone" file_absent /etc/credstore/vitalbridge.key
check "the enable symlink is gone" file_absent "$enabled_link"
check "the system user stays (Debian policy)" in_root getent passwd vitalbridge

echo "deb install/upgrade/purge: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
