#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it.
# Installs what the tests need first (idempotent), then runs every test.
# Tests that need root (network namespaces, QEMU) run when this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${EUID:-$(id -u)} -eq 0 ]]; then
    bash scripts/setup-host.sh
    MEGAPLAN_GUEST_KERNEL_DIR=${MEGAPLAN_GUEST_KERNEL_DIR:-/var/cache/megaplan/guest-kernel}
    export MEGAPLAN_GUEST_KERNEL_DIR
    bash scripts/guest-kernel.sh >/dev/null
    # minimega and Open vSwitch for tests/minimega_mesh.rs (a two-node mesh).
    MEGAPLAN_MINIMEGA_BIN=$(bash scripts/minimega.sh)
    export MEGAPLAN_MINIMEGA_BIN
fi
export MEGAPLAN_ACCEL=${MEGAPLAN_ACCEL:-tcg}
cargo test --locked --no-fail-fast
