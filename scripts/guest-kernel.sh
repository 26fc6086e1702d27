#!/usr/bin/env bash
# Fetch the guest kernel: the package that linux-image-cloud-amd64 depends on
# (e.g. linux-image-6.1.0-NN-cloud-amd64), unpacked with dpkg -x into a cache
# directory. Prints that directory on stdout; it contains boot/vmlinuz-* and
# lib/modules/<version>/ (the image builder takes both from there).
#
# Directory: $MEGAPLAN_GUEST_KERNEL_DIR, default /var/cache/megaplan/guest-kernel.
# Idempotent: a complete unpack (marked by .complete) is reused as is.
# MEGAPLAN_GUEST_KERNEL_META names another meta package (default
# linux-image-cloud-amd64, Debian; there is no such package on Ubuntu).
# Needs apt-get/apt-cache/dpkg; root only for the default directory.
set -euo pipefail

log() { printf 'guest-kernel: %s\n' "$*" >&2; }

dir=${MEGAPLAN_GUEST_KERNEL_DIR:-/var/cache/megaplan/guest-kernel}
meta=${MEGAPLAN_GUEST_KERNEL_META:-linux-image-cloud-amd64}

if [[ -f $dir/.complete ]] && compgen -G "$dir/boot/vmlinuz-*" >/dev/null; then
    echo "$dir"
    exit 0
fi

resolve() {
    apt-cache depends "$meta" 2>/dev/null |
        sed -n 's/^ *Depends: *\(linux-image-[^ ]*\).*/\1/p' | head -n1
}
pkg=$(resolve || true)
if [[ -z $pkg ]]; then
    log "apt-cache knows no $meta; running apt-get update"
    apt-get update >&2
    pkg=$(resolve || true)
fi
if [[ -z $pkg ]]; then
    log "cannot resolve the dependency of $meta"
    exit 1
fi
log "kernel package: $pkg"

mkdir -p "$dir"
work=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

# apt-get download writes into the current directory; as root it drops to
# the _apt user, which must be able to write there.
chmod 0777 "$work"
(cd "$work" && apt-get download "$pkg" >&2)
deb=$(compgen -G "$work/${pkg}_*.deb" | head -n1 || true)
if [[ -z $deb ]]; then
    log "apt-get download $pkg produced no .deb"
    exit 1
fi

mkdir "$work/root"
dpkg -x "$deb" "$work/root"
if ! compgen -G "$work/root/boot/vmlinuz-*" >/dev/null; then
    log "$deb contains no boot/vmlinuz-*"
    exit 1
fi

# Replace the old contents (if any) with the new unpack.
find "$dir" -mindepth 1 -maxdepth 1 ! -name "$(basename "$work")" -exec rm -rf {} +
mv "$work/root"/* "$dir"/
# Debian ships the kernel mode 0600; let non-root users (tests, builders) read it.
chmod a+r "$dir"/boot/* 2>/dev/null || true
echo "$pkg" >"$dir/.package"
touch "$dir/.complete"
echo "$dir"
