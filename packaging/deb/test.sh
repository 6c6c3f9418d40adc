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
# With systemd (not running: nothing is PID 1 in a chroot) for systemd-creds, which seals the
# buffer key where the package finds systemd running.
tarball="$work/rootfs-$suite-$DEB_ARCH-minbase-systemd.tar"
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
    debootstrap --variant=minbase --arch="$DEB_ARCH" --include=adduser,systemd "$suite" "$root" "$mirror" \
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
[ -n "$binary" ] || args=(--binary "$(binary_path "$target" --release)")
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
dpkg_in_root() {   # dpkg_in_root ARGS...: dpkg in the root, its output in $work/dpkg.log
    in_root dpkg "$@" </dev/null >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; exit 1; }
}
stat_is() { [ "$(in_root stat -c '%U:%G %a' "$1")" = "$2" ]; }   # names from the root's passwd
file_absent() { [ ! -e "$root$1" ] && [ ! -L "$root$1" ]; }
in_groups() { in_root id -nG vitalbridge | tr ' ' '\n' | grep -qx "$1"; }
installed_version() { [ "$(in_root dpkg-query -W -f='${Version} ${Status}' vitalbridge)" = "$1 install ok installed" ]; }
said() { grep -qF -- "$1" "$work/dpkg.log"; }   # the maintainer scripts said $1
enabled_link="/etc/systemd/system/multi-user.target.wants/vitalbridge.service"

# The buffer key (systemd/README.md, "The buffer key"): sealed where systemd runs, else a plain
# root-only file that a drop-in of the package loads under the same credential name.
key_id="vitalbridge-buffer.key"
sealed="/etc/credstore.encrypted/$key_id"
plain="/etc/credstore/$key_id"
dropin="/etc/systemd/system/vitalbridge.service.d/buffer-key-plain.conf"
dropin_source="/usr/share/vitalbridge/buffer-key-plain.conf"
creds="/run/credentials/vitalbridge.service"
is_hex_key() { grep -Eqx '[0-9a-f]{64}' "$root$1" && [ "$(wc -l <"$root$1")" = 1 ]; }
plain_key_in_use() { [ "$(readlink "$root$dropin")" = "$dropin_source" ]; }
sealed_decrypts_to_a_key() {
    in_root systemd-creds decrypt --name="$key_id" "$sealed" - 2>/dev/null | grep -Eqx '[0-9a-f]{64}'
}
no_plaintext_left() {   # the postinst's work files, and a plain key beside a sealed one
    ! compgen -G "$root/run/vitalbridge-buffer-key.*" && ! compgen -G "$root/etc/credstore/.vitalbridge-buffer-key.*" \
        && file_absent "$plain.new" && file_absent "$sealed.new"
}

# The credentials directory systemd 252 makes for the unit at each start, from the
# LoadCredential= and LoadCredentialEncrypted= lines of the installed unit and then of its
# drop-ins in /etc/systemd/system/vitalbridge.service.d (in name order; a later line for a
# credential replaces an earlier one). With a path, a missing or undecryptable file fails the
# start (return 1); a bare name is looked up in /etc/credstore and may be missing. Encrypted
# ones are decrypted as systemd does, checking the name sealed in. The directory is a ramfs
# (no ACLs): each copy owned by the service user, mode 0400, the directory 0500.
lay_out_credentials() {
    rm -rf "${root:?}$creds"
    install -d -m 0700 "$root$creds"
    local -A source=() encrypted=()
    local f line value id path
    for f in /usr/lib/systemd/system/vitalbridge.service \
        $(cd "$root" && ls etc/systemd/system/vitalbridge.service.d/*.conf 2>/dev/null | sed 's#^#/#' | sort); do
        while IFS= read -r line; do   # through the root: a drop-in may be a link into it
            case "$line" in
                LoadCredential=* | LoadCredentialEncrypted=*) value="${line#*=}" ;;
                *) continue ;;
            esac
            id="${value%%:*}"
            source[$id]="${value#*:}"
            encrypted[$id]=""
            [ "${line%%=*}" = LoadCredential ] || encrypted[$id]=yes
        done < <(in_root cat "$f")
    done
    for id in "${!source[@]}"; do
        path="${source[$id]}"
        if [ "${path:0:1}" != / ]; then
            path="/etc/credstore/$path"
            [ -e "$root$path" ] || continue
        fi
        if [ -n "${encrypted[$id]}" ]; then
            in_root systemd-creds decrypt --name="$id" "$path" "$creds/$id" 2>/dev/null || return 1
        else
            cp "$root$path" "$root$creds/$id" || return 1
        fi
    done
    find "$root$creds" -type f -exec chmod 0400 {} +
    in_root chown -R vitalbridge:root "$creds"
    chmod 0500 "$root$creds"
}
# A command as the unit runs it: the service user, its working directory, the credentials.
as_service() {
    chroot "$root" /usr/bin/env -i --chdir=/var/lib/vitalbridge PATH=/usr/bin:/bin CREDENTIALS_DIRECTORY="$creds" \
        setpriv --reuid=vitalbridge --regid=vitalbridge --init-groups "$@"
}

# The service user runs the gateway in the chroot for a moment, as the unit does
# (ExecStartPre=check-config, then run): it must be able to read the config and the buffer
# key, and to create or open the buffer in the state directory. No source is on out of the
# box, so it only opens the buffer and waits; SIGTERM must give a clean exit 0.
gateway_runs_as_service_user() {
    lay_out_credentials || return 1
    as_service /usr/bin/vitalbridge check-config -c /etc/vitalbridge/config.toml >"$work/run.log" 2>&1 || return 1
    # Not through a function: $! must be the gateway itself (chroot, env and setpriv exec it).
    chroot "$root" /usr/bin/env -i --chdir=/var/lib/vitalbridge PATH=/usr/bin:/bin CREDENTIALS_DIRECTORY="$creds" \
        setpriv --reuid=vitalbridge --regid=vitalbridge --init-groups \
        /usr/bin/vitalbridge run -c /etc/vitalbridge/config.toml >"$work/run.log" 2>&1 &
    STOP_GRACE_S=30 stop_gateway_when $! 10 grep -q "gateway running" "$work/run.log" \
        && [ -f "$root/var/lib/vitalbridge/buffer.db" ]
}
# With buffer.previous_key_files set: it starts, having sealed the buffer again.
gateway_rotates_the_key() { gateway_runs_as_service_user && grep -q "buffer key rotated" "$work/run.log"; }
# Without its key (no credential), the gateway refuses the buffer sealed with it and touches
# nothing: the first error systemd/README.md explains.
gateway_refuses_without_its_key() {
    lay_out_credentials || return 1
    chmod 0700 "$root$creds" && rm -f "$root$creds/$key_id" && chmod 0500 "$root$creds"
    local before after
    before="$(md5sum <"$root/var/lib/vitalbridge/buffer.db")"
    ! timeout 30 chroot "$root" /usr/bin/env -i --chdir=/var/lib/vitalbridge PATH=/usr/bin:/bin \
        CREDENTIALS_DIRECTORY="$creds" setpriv --reuid=vitalbridge --regid=vitalbridge --init-groups \
        /usr/bin/vitalbridge run -c /etc/vitalbridge/config.toml >"$work/run.log" 2>&1 \
        && grep -qF "buffer.key_file $creds/$key_id does not exist, but the buffer in /var/lib/vitalbridge is sealed" "$work/run.log" \
        && after="$(md5sum <"$root/var/lib/vitalbridge/buffer.db")" && [ "$before" = "$after" ]
}

# Run by hand with no credentials directory, check-config exits 2 naming the key and why.
check_config_says_key_file_is_a_credential() {
    local out rc=0
    out="$(in_root vitalbridge check-config -c /etc/vitalbridge/config.toml 2>&1)" || rc=$?
    [ "$rc" = 2 ] && grep -q 'buffer.key_file: .*names a systemd credential, but $CREDENTIALS_DIRECTORY is not set' <<<"$out"
}

echo "== install $old_version (systemd not running: a chroot, as when building an image)"
dpkg_in_root -i /tmp/old.deb
check "installed at $old_version" installed_version "$old_version"
check "/usr/bin/vitalbridge, root, 0755" stat_is /usr/bin/vitalbridge "root:root 755"
check "the unit in /usr/lib/systemd/system" stat_is /usr/lib/systemd/system/vitalbridge.service "root:root 644"
check "the unit is the one in systemd/" cmp systemd/vitalbridge.service "$root/usr/lib/systemd/system/vitalbridge.service"
check "the BLE drop-in in /usr/share/vitalbridge" stat_is /usr/share/vitalbridge/ble.conf "root:root 644"
check "the plain-key drop-in in /usr/share/vitalbridge, the one in systemd/" cmp systemd/buffer-key-plain.conf "$root$dropin_source"
check "/etc/vitalbridge/config.toml, 0644" stat_is /etc/vitalbridge/config.toml "root:root 644"
check "config.toml is a conffile" bash -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' vitalbridge | grep -q '/etc/vitalbridge/config.toml '"
check "the man page" stat_is /usr/share/man/man1/vitalbridge.1.gz "root:root 644"
check "the copyright file" test -s "$root/usr/share/doc/vitalbridge/copyright"
check "the systemd notes (the buffer key) as README.systemd.md" cmp systemd/README.md "$root/usr/share/doc/vitalbridge/README.systemd.md"
check "the README and the manual it links to (docs/)" bash -c \
    "cmp README.md '$root/usr/share/doc/vitalbridge/README.md' && diff -r docs '$root/usr/share/doc/vitalbridge/docs'"
check "system user vitalbridge (uid < 1000, no login, home /var/lib/vitalbridge)" bash -c \
    "chroot '$root' getent passwd vitalbridge | awk -F: '\$3 < 1000 && \$6 == \"/var/lib/vitalbridge\" && \$7 ~ /nologin|false/' | grep -q ."
check "vitalbridge is in group dialout" in_groups dialout
check "no bluetooth group yet, so not in it" bash -c "! chroot '$root' getent group bluetooth"
check "/var/lib/vitalbridge, vitalbridge, 0750" stat_is /var/lib/vitalbridge "vitalbridge:vitalbridge 750"
check "/etc/credstore, root, 0700" stat_is /etc/credstore "root:root 700"
check "/etc/credstore.encrypted, root, 0700" stat_is /etc/credstore.encrypted "root:root 700"
check "the buffer key: plain (systemd not running), $plain, root, 0600" stat_is "$plain" "root:root 600"
check "... 64 hex digits (vitalbridge buffer-key new)" is_hex_key "$plain"
check "... no sealed key" file_absent "$sealed"
check "... the drop-in loading it is linked" plain_key_in_use
check "... and the postinst said it is not sealed, and why" said "as a plain root-only file, $plain, NOT sealed: systemd is not running"
check "... and to back it up" said "back up the buffer key"
check "... no plaintext left behind" no_plaintext_left
check "the unit is enabled (multi-user.target.wants)" test -L "$root$enabled_link"
check "vitalbridge --version runs in the target root" bash -c "chroot '$root' vitalbridge --version | grep -q '^vitalbridge '"
check "the shipped config passes check-config (CREDENTIALS_DIRECTORY=/etc/credstore, as the README says)" \
    in_root CREDENTIALS_DIRECTORY=/etc/credstore vitalbridge check-config -c /etc/vitalbridge/config.toml
check "without CREDENTIALS_DIRECTORY, check-config says buffer.key_file names a credential" \
    check_config_says_key_file_is_a_credential
check "the service user runs the gateway with the key as a credential: buffer created, exit 0 on SIGTERM" \
    gateway_runs_as_service_user
check "without its key, the gateway refuses the sealed buffer and leaves it as it was" gateway_refuses_without_its_key
cp "$root$plain" "$work/key.before" 2>/dev/null || : >"$work/key.before"

echo "== edit the conffile, add a key and the bluetooth group, upgrade to $new_version"
sed -i 's/^capacity = 1000000$/capacity = 250000  # edited on site/' "$root/etc/vitalbridge/config.toml"
edited_sum="$(md5sum <"$root/etc/vitalbridge/config.toml")"
printf 'not a real key\n' >"$root/etc/credstore/vitalbridge.key"
chmod 600 "$root/etc/credstore/vitalbridge.key"
in_root groupadd --system bluetooth
dpkg_in_root -i /tmp/new.deb
check "upgraded to $new_version" installed_version "$new_version"
check "the edited conffile is kept" test "$(md5sum <"$root/etc/vitalbridge/config.toml")" = "$edited_sum"
check "no .dpkg-dist/.dpkg-new beside it" bash -c "! ls '$root'/etc/vitalbridge/config.toml.dpkg-*"
check "the edited config still passes check-config" \
    in_root CREDENTIALS_DIRECTORY=/etc/credstore vitalbridge check-config -c /etc/vitalbridge/config.toml
check "the buffer survived the upgrade" test -f "$root/var/lib/vitalbridge/buffer.db"
check "the buffer key is the same, byte for byte" cmp "$work/key.before" "$root$plain"
check "... root, 0600, still plain and loaded by the drop-in" bash -c \
    "[ \"\$(stat -c '%u:%g %a' '$root$plain')\" = '0:0 600' ] && [ ! -e '$root$sealed' ] && [ \"\$(readlink '$root$dropin')\" = '$dropin_source' ]"
check "... and the postinst said nothing about making one" bash -c "! grep -q 'created the buffer key' '$work/dpkg.log'"
check "the gateway opens the buffer sealed before the upgrade" gateway_runs_as_service_user
check "vitalbridge is now in group bluetooth too" in_groups bluetooth
check "the unit is still enabled" test -L "$root$enabled_link"

echo "== remove"
dpkg_in_root -r vitalbridge
check "the binary is gone" file_absent /usr/bin/vitalbridge
check "the unit is gone" file_absent /usr/lib/systemd/system/vitalbridge.service
check "the config is kept until purge" test -f "$root/etc/vitalbridge/config.toml"
check "the buffer is kept until purge" test -f "$root/var/lib/vitalbridge/buffer.db"
check "the buffer key is kept until purge, byte for byte" cmp "$work/key.before" "$root$plain"

echo "== purge"
dpkg_in_root -P vitalbridge
check "the package is gone from dpkg's database" bash -c "! chroot '$root' dpkg-query -W -f='\${Status}' vitalbridge 2>/dev/null | grep -q installed"
check "/etc/vitalbridge is gone" file_absent /etc/vitalbridge
check "/var/lib/vitalbridge (the buffer, patient data) is gone" file_absent /var/lib/vitalbridge
check "the private key /etc/credstore/vitalbridge.key is gone" file_absent /etc/credstore/vitalbridge.key
check "the buffer key is gone" file_absent "$plain"
check "... and purge said so, loudly" said "PURGE DELETED THE BUFFER KEY $plain"
check "the plain-key drop-in is gone, and its directory" file_absent "$(dirname "$dropin")"
check "the enable symlink is gone" file_absent "$enabled_link"
check "the system user stays (Debian policy)" in_root getent passwd vitalbridge

# From here on the root looks like a booted hub to the maintainer scripts (/run/systemd/system
# exists), while policy-rc.d keeps them from starting the service: there is no systemd to
# start it. systemd-creds is the real one; a chroot has no TPM2, so it seals with the host key
# (/var/lib/systemd/credential.secret, bound to /etc/machine-id).
mkdir -p "$root/run/systemd/system"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

echo "== install $new_version where systemd runs: the buffer key is sealed"
dpkg_in_root -i /tmp/new.deb
check "installed at $new_version" installed_version "$new_version"
check "the buffer key: sealed, $sealed, root, 0600" stat_is "$sealed" "root:root 600"
check "... a systemd credential, not the key in clear" bash -c "! grep -Eq '[0-9a-f]{64}' '$root$sealed'"
check "... that systemd-creds decrypts, by its name, to a key" sealed_decrypts_to_a_key
check "... no plain key, no drop-in" bash -c "[ ! -e '$root$plain' ] && [ ! -e '$root$dropin' ] && [ ! -L '$root$dropin' ]"
check "... no plaintext left behind" no_plaintext_left
check "... and the postinst said where it is" said "sealed with systemd-creds to this hub's host key (no usable TPM2 here): $sealed"
check "the service user runs the gateway with the decrypted key" gateway_runs_as_service_user
cp "$root$sealed" "$work/sealed.before" 2>/dev/null || : >"$work/sealed.before"
# An edited conffile from before the buffer key had no key_file; the postinst must say so.
sed -i '/^key_file = /d' "$root/etc/vitalbridge/config.toml"
dpkg_in_root -i /tmp/new.deb
check "reinstalled: the sealed key is the same, byte for byte" cmp "$work/sealed.before" "$root$sealed"
check "... still no plain key, no drop-in" bash -c "[ ! -e '$root$plain' ] && [ ! -L '$root$dropin' ]"
check "a config without [buffer] key_file: the postinst says the service will not start" \
    said "sets no [buffer] key_file, so the service will not start"
sed -i 's/^\(capacity = .*\)$/\1\nkey_file = "${CREDENTIALS_DIRECTORY}\/vitalbridge-buffer.key"/' "$root/etc/vitalbridge/config.toml"
check "the gateway opens its buffer with the same key" gateway_runs_as_service_user
# systemd/README.md, "Rotate it", as a technician types it (but for systemctl).
old_key="/etc/credstore/vitalbridge-buffer-old.key"
rotate_dropin="/etc/systemd/system/vitalbridge.service.d/rotate-buffer-key.conf"
in_root sh -c "umask 077 && systemd-creds decrypt $sealed $old_key" 2>/dev/null || true
in_root mkdir -p "$(dirname "$rotate_dropin")"
printf '[Service]\nLoadCredential=vitalbridge-buffer-old.key:%s\n' "$old_key" >"$root$rotate_dropin"
in_root sh -c "umask 077 && vitalbridge buffer-key new /run/vitalbridge-buffer.key && \
    systemd-creds encrypt --name=$key_id --with-key=auto --tpm2-pcrs= /run/vitalbridge-buffer.key $sealed && \
    shred -u /run/vitalbridge-buffer.key" >/dev/null 2>&1 || true
sed -i 's/^# previous_key_files = /previous_key_files = /' "$root/etc/vitalbridge/config.toml"
check "rotation: a new sealed key, the old one as a second credential" bash -c \
    "! chroot '$root' systemd-creds decrypt $sealed - 2>/dev/null | cmp -s - '$root$old_key' && [ \"\$(stat -c '%u:%g %a' '$root$old_key')\" = '0:0 600' ]"
check "... the gateway starts and seals the buffer again with the new key" gateway_rotates_the_key
sed -i 's/^previous_key_files = /# previous_key_files = /' "$root/etc/vitalbridge/config.toml"
rm -f "$root$rotate_dropin"
in_root shred -u "$old_key"
check "... and, the old key gone, opens it with the new key alone" gateway_runs_as_service_user
dpkg_in_root -P vitalbridge
check "purged: the sealed buffer key is gone" file_absent "$sealed"
check "... and purge said so, loudly" said "PURGE DELETED THE BUFFER KEY $sealed"

echo "== install $new_version where systemd runs but systemd-creds fails (no machine id)"
mv "$root/etc/machine-id" "$work/machine-id"
dpkg_in_root -i /tmp/new.deb
mv "$work/machine-id" "$root/etc/machine-id"
check "the buffer key: plain, root, 0600, loaded by the drop-in" bash -c \
    "[ \"\$(stat -c '%u:%g %a' '$root$plain')\" = '0:0 600' ] && [ \"\$(readlink '$root$dropin')\" = '$dropin_source' ]"
check "... no sealed key, no half-written one" bash -c "[ ! -e '$root$sealed' ] && [ ! -e '$root$sealed.new' ]"
check "... and the postinst said systemd-creds failed, with its reason" said "NOT sealed: systemd-creds encrypt failed: Failed"
check "the service user runs the gateway with the plain key" gateway_runs_as_service_user
cp "$root$plain" "$work/key.before" 2>/dev/null || : >"$work/key.before"
# systemd/README.md, "Seal a plain key", as a technician types it (but for systemctl).
check "sealing it by hand (README.systemd.md): it decrypts to the plain key" bash -c \
    "chroot '$root' sh -c 'umask 077 && systemd-creds encrypt --name=$key_id --with-key=auto --tpm2-pcrs= $plain $sealed' 2>/dev/null \
     && chroot '$root' systemd-creds decrypt $sealed - 2>/dev/null | cmp - '$work/key.before'"
check "... root, 0600" stat_is "$sealed" "root:root 600"
in_root rm "$dropin"
in_root shred -u "$plain"
check "the gateway opens the buffer with the sealed key" gateway_runs_as_service_user
dpkg_in_root -i /tmp/new.deb
check "reinstalled: the sealed key is kept, no plain key or drop-in comes back" bash -c \
    "chroot '$root' systemd-creds decrypt $sealed - 2>/dev/null | cmp - '$work/key.before' && [ ! -e '$root$plain' ] && [ ! -L '$root$dropin' ]"
dpkg_in_root -P vitalbridge
check "purged: no buffer key left" bash -c "[ ! -e '$root$sealed' ] && [ ! -e '$root$plain' ]"

echo "deb install/upgrade/purge: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
