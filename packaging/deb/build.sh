#!/usr/bin/env bash
# Builds the Debian package of the gateway for one architecture, with dpkg-deb (no debhelper,
# no cargo-deb: nothing to compile, and cross-building works the same as native).
#
#   packaging/deb/build.sh aarch64-unknown-linux-gnu     # → target/deb/vitalbridge_<version>_arm64.deb
#   packaging/deb/build.sh armv7-unknown-linux-gnueabihf # → …_armhf.deb
#   packaging/deb/build.sh x86_64-unknown-linux-gnu      # → …_amd64.deb
#
# Options (before any cargo arguments):
#   --version V    the package version (default: the workspace version, Debian revision 1)
#   --binary PATH  package this already-built binary instead of building one
#   --out DIR      where the .deb goes (default: target/deb)
#   --pgo          build the binary with profile-guided optimisation (cross/pgo.sh: an
#                  instrumented build, a training run, the build again; on x86_64 about 4 MiB
#                  less memory and 10 % less CPU at steady rates, docs/benchmark.md)
# Other arguments go to cross/build.sh (cross/pgo.sh) and so to cargo (e.g. `--features ble`).
#
# The package (see docs/install.md):
#   /usr/bin/vitalbridge                          stripped binary
#   /usr/lib/systemd/system/vitalbridge.service   systemd/vitalbridge.service
#   /usr/share/vitalbridge/ble.conf               drop-in for the BLE source (systemd/ble.conf)
#   /usr/share/vitalbridge/buffer-key-plain.conf  drop-in for an unsealed buffer key (systemd/)
#   /etc/vitalbridge/config.toml                  conffile (packaging/deb/config.toml)
#   /usr/share/man/man1/vitalbridge.1.gz          gateway/man/vitalbridge.1
#   /usr/share/doc/vitalbridge/{copyright,README.md}
#   /usr/share/doc/vitalbridge/docs/*.md          docs/ (the manual the README links to)
#   /usr/share/doc/vitalbridge/README.systemd.md  systemd/README.md (the unit, the buffer key)
# and maintainer scripts that create the system user (in dialout, and bluetooth where that
# group exists), /var/lib/vitalbridge, /etc/credstore and the buffer key, and enable the unit.
set -euo pipefail
umask 022
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
# shellcheck source=cross/targets.sh
source "$root/cross/targets.sh"

[ $# -ge 1 ] || { sed -n '2,29p' "$0" >&2; exit 2; }
target="$1"; shift
target_info "$target"
[ -n "$DEB_ARCH" ] || { echo "no Debian architecture for $target" >&2; exit 2; }

workspace_version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
version="${workspace_version}-1"
binary=""
out="target/deb"
builder=cross/build.sh
while [ $# -gt 0 ]; do
    case "$1" in
        --version) version="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --pgo) builder=cross/pgo.sh; shift ;;
        *) break ;;
    esac
done

if [ -z "$binary" ]; then
    # cross/build.sh and cross/pgo.sh print only the binary's path on stdout, as this script
    # the .deb's.
    binary="$(bash "$builder" "$target" "$@")"
fi
[ -x "$binary" ] || { echo "no binary at $binary" >&2; exit 1; }

stage="$out/stage-$DEB_ARCH-$version"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
    "$stage/usr/share/vitalbridge" "$stage/etc/vitalbridge" \
    "$stage/usr/share/man/man1" "$stage/usr/share/doc/vitalbridge/docs"

strip_binary "$binary" "$stage/usr/bin/vitalbridge"
chmod 0755 "$stage/usr/bin/vitalbridge"
install -m 0644 systemd/vitalbridge.service "$stage/usr/lib/systemd/system/"
install -m 0644 systemd/ble.conf systemd/buffer-key-plain.conf "$stage/usr/share/vitalbridge/"
install -m 0644 packaging/deb/config.toml "$stage/etc/vitalbridge/config.toml"
gzip -9n -c gateway/man/vitalbridge.1 >"$stage/usr/share/man/man1/vitalbridge.1.gz"
install -m 0644 packaging/deb/copyright README.md "$stage/usr/share/doc/vitalbridge/"
install -m 0644 docs/*.md "$stage/usr/share/doc/vitalbridge/docs/"
install -m 0644 systemd/README.md "$stage/usr/share/doc/vitalbridge/README.systemd.md"

# Depends: from the shared libraries the binary needs (readelf works for every architecture).
# An unknown library fails the build: map it here and say why it is needed.
needed="$(readelf -dW "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
glibc="$(readelf -VW "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
depends=()
for lib in $needed; do
    case "$lib" in
        libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) dep="libc6 (>= $glibc)" ;;
        libgcc_s.so.1) dep="libgcc-s1" ;;
        libdbus-1.so.3) dep="libdbus-1-3" ;;   # BLE source without libdbus-sys/vendored
        libudev.so.1) dep="libudev1" ;;
        *) echo "packaging/deb/build.sh: $binary needs $lib; add its Debian package to the table" >&2
           exit 1 ;;
    esac
    printf '%s\n' "${depends[@]}" | grep -qxF "$dep" || depends+=("$dep")
done
depends_line="$(IFS=,; echo "${depends[*]}" | sed 's/,/, /g')"

installed_size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$DEB_ARCH/" \
    -e "s/@INSTALLED_SIZE@/$installed_size/" -e "s/@DEPENDS@/$depends_line/" \
    packaging/deb/control >"$stage/DEBIAN/control"
install -m 0644 packaging/deb/conffiles "$stage/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$stage/DEBIAN/"
(cd "$stage" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"

deb="$out/vitalbridge_${version}_${DEB_ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "$deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Version\|Architecture\|Depends\|Installed-Size\):/  \1:/p' >&2
