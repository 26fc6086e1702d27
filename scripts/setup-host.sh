#!/usr/bin/env bash
# Install what megaplan needs on the host: QEMU (system + qemu-img), e2fsprogs
# (mkfs.ext4 -d, debugfs), busybox-static (guest initrd), tcpdump, iproute2,
# cpio, gzip; chromium (headless, for tests/serve_browser.rs); libpcap-dev
# (megaplan links libpcap for the pcap filters of capture checks).
#
# Idempotent: when every package is installed and every tool is on PATH it
# returns at once without touching apt. Run as root on Debian 12 (or Ubuntu).
#
# Debian 12 pitfall: the machine may come with qemu-utils 10 (from a newer
# suite), which conflicts with bookworm's qemu-system-x86 7.2. On bookworm we
# therefore pin qemu-utils and qemu-block-extra to bookworm and allow the
# downgrade. On other distributions the plain package names are used.
set -euo pipefail

log() { printf 'setup-host: %s\n' "$*" >&2; }

if [[ ${EUID:-$(id -u)} -ne 0 ]]; then
    log "must run as root"
    exit 1
fi

# package -> a command that must exist when it is usable ("-" = none)
declare -A TOOL=(
    [qemu-system-x86]=qemu-system-x86_64
    [qemu-utils]=qemu-img
    [qemu-block-extra]=-
    [busybox-static]=busybox
    [e2fsprogs]=mkfs.ext4
    [tcpdump]=tcpdump
    [iproute2]=ip
    [cpio]=cpio
    [gzip]=gzip
    [chromium]=chromium
    [libpcap-dev]=-
)
PACKAGES=(qemu-system-x86 qemu-utils qemu-block-extra busybox-static e2fsprogs tcpdump iproute2 cpio gzip chromium libpcap-dev)

# /usr/sbin and /sbin are not always on a non-login root PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

installed() { # dpkg says "install ok installed"
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

missing=()
for p in "${PACKAGES[@]}"; do
    t=${TOOL[$p]}
    if ! installed "$p" || { [[ $t != - ]] && ! command -v "$t" >/dev/null 2>&1; }; then
        missing+=("$p")
    fi
done

# qemu-img must be able to work with the installed qemu-system (same major).
version_major() { "$1" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1; }
if ((${#missing[@]} == 0)); then
    qi=$(version_major qemu-img)
    qs=$(version_major qemu-system-x86_64)
    if [[ -n $qi && -n $qs && $qi != "$qs" ]]; then
        log "qemu-img $qi does not match qemu-system-x86_64 $qs"
        missing+=(qemu-utils qemu-block-extra)
    fi
fi

if ((${#missing[@]} == 0)); then
    log "all present: ${PACKAGES[*]}"
    exit 0
fi
log "missing or unusable: ${missing[*]}"

codename=""
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update

base=(busybox-static e2fsprogs tcpdump iproute2 cpio gzip chromium libpcap-dev)
if [[ $codename == bookworm ]]; then
    qemu=(qemu-system-x86 qemu-utils/bookworm qemu-block-extra/bookworm)
else
    qemu=(qemu-system-x86 qemu-utils qemu-block-extra)
fi

apt-get install -y --allow-downgrades --no-install-recommends "${qemu[@]}" "${base[@]}"

for p in "${PACKAGES[@]}"; do
    t=${TOOL[$p]}
    if [[ $t != - ]] && ! command -v "$t" >/dev/null 2>&1; then
        log "after install, $t (from $p) is still missing"
        exit 1
    fi
done
log "done"
