#!/usr/bin/env bash
# Build minimega 3.0.1 for the minimega mesh tests (tests/minimega_mesh.rs).
#
# Installs the build and run prerequisites when missing (golang-go,
# libpcap-dev, openvswitch-switch; `apt-get update` only when installing),
# extracts minimega's release tarball (with its vendored Go modules) into a
# cache folder, writes internal/version/version.go (minimega's build script
# normally generates it from git) and builds, offline,
#   bin/minimega  (the daemon)
#   bin/miniccc   (the guest agent, static)
# Prints the bin folder on stdout (the tests take it as MEGAPLAN_MINIMEGA_BIN).
#
# Tarball: $MEGAPLAN_MINIMEGA_TGZ, default ../shared/minimega/minimega-3.0.1.tgz
# beside the repository. Folder: $MEGAPLAN_MINIMEGA_DIR, default
# /var/cache/megaplan/minimega-3.0.1.
# Idempotent: a complete build of the same tarball (marked by .complete, which
# holds the tarball's sha256) is reused as is, without touching apt.
#
# Debian's openvswitch-switch starts the system's own OVS when it is
# installed. The tests never use it (each node runs a private ovsdb-server and
# ovs-vswitchd), so an install by this script keeps it from starting and
# leaves it stopped and disabled.
set -euo pipefail

log() { printf 'minimega: %s\n' "$*" >&2; }

root=$(cd "$(dirname "$0")/.." && pwd)
tgz=${MEGAPLAN_MINIMEGA_TGZ:-$root/../shared/minimega/minimega-3.0.1.tgz}
dir=${MEGAPLAN_MINIMEGA_DIR:-/var/cache/megaplan/minimega-3.0.1}
version=3.0.1
revision=c42095c0

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ ! -f $tgz ]]; then
    log "no minimega tarball at $tgz (set MEGAPLAN_MINIMEGA_TGZ)"
    exit 1
fi

installed() { # dpkg says "install ok installed"
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# package -> a file that must exist when it is usable
declare -A NEED=(
    [golang-go]=/usr/bin/go
    [libpcap-dev]=/usr/include/pcap.h
    [openvswitch-switch]=/usr/sbin/ovs-vswitchd
)
missing=()
for p in golang-go libpcap-dev openvswitch-switch; do
    if ! installed "$p" || [[ ! -e ${NEED[$p]} ]]; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ ${EUID:-$(id -u)} -ne 0 ]]; then
        log "missing ${missing[*]}; run as root to install them"
        exit 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep maintainer scripts from starting services (the system's OVS) while
    # installing, unless the machine already has its own policy.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy && ! -L $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        made_policy=1
    fi
    remove_policy() { if ((made_policy)); then rm -f "$policy"; fi; }
    trap remove_policy EXIT
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
    remove_policy
    trap - EXIT
    for p in "${missing[@]}"; do
        [[ $p == openvswitch-switch ]] || continue
        # Stopped and disabled, whichever init system this is.
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now openvswitch-switch.service ovs-vswitchd.service \
                ovsdb-server.service >&2 2>/dev/null || true
        else
            if [[ -x /etc/init.d/openvswitch-switch ]]; then
                /etc/init.d/openvswitch-switch stop >&2 || true
            fi
            update-rc.d openvswitch-switch disable >&2 2>/dev/null || true
        fi
    done
fi

sum=$(sha256sum "$tgz" | cut -d' ' -f1)
if [[ -f $dir/.complete && "$(cat "$dir/.complete")" == "$sum" &&
    -x $dir/bin/minimega && -x $dir/bin/miniccc ]]; then
    echo "$dir/bin"
    exit 0
fi

parent=$(dirname "$dir")
mkdir -p "$parent"
work=$(mktemp -d "$parent/.minimega-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "extracting $tgz"
tar --no-same-owner --no-same-permissions -xzf "$tgz" -C "$work"
src=$work/minimega-$version
if [[ ! -d $src/cmd/minimega || -L $src ]]; then
    log "$tgz has no minimega-$version/cmd/minimega"
    exit 1
fi

mkdir -p "$src/internal/version"
cat >"$src/internal/version/version.go" <<EOF
package version

var (
	Version  = "$version"
	Revision = "$revision"
	Date     = "$(date -u +%F)"
)
EOF

log "building minimega and miniccc (offline, vendored modules)"
(
    cd "$src"
    export GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local
    export GOCACHE=$work/gocache GOPATH=$work/gopath
    go build -o bin/minimega ./cmd/minimega
    CGO_ENABLED=0 go build -o bin/miniccc ./cmd/miniccc
) >&2

rm -rf "$work/gocache" "$work/gopath"
echo "$sum" >"$src/.complete"
rm -rf "$dir"
mv "$src" "$dir"
log "built $dir/bin"
echo "$dir/bin"
