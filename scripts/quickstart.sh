#!/usr/bin/env bash
# Quick start, command 1: on a fresh Debian 12 / Ubuntu machine, as root, set
# up what megaplan needs and run the seed experiment end to end: minimega's
# "Tap mirroring" article (examples/tap-mirror.kdl). A and B get addresses on
# LAN through cc, A pings B, the monitor on its own network sees that traffic
# through the tap mirror, `show` prints the VMs, and destroy leaves nothing;
# then `megaplan test` applies it again, runs its checks (A reaches B, the
# monitor's capture holds A's ICMP, B cannot reach the monitor) and prints
# the markdown summary.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${EUID:-$(id -u)} -ne 0 ]]; then
    echo "quickstart: run as root (bridges, taps and QEMU need it)" >&2
    exit 1
fi
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing what is missing (QEMU, qemu-img, e2fsprogs, busybox-static, tcpdump)"
bash scripts/setup-host.sh
kernel_dir=$(bash scripts/guest-kernel.sh)

step "building megaplan"
cargo build --release --locked --bins
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release
mp=$bin/megaplan

step "installing bash completions and the man pages (made from the CLI definition)"
install -d /usr/share/bash-completion/completions /usr/local/share/man/man1
$mp completions bash > /usr/share/bash-completion/completions/megaplan
$mp man --out-dir /usr/local/share/man/man1    # megaplan.1, megaplan-apply.1, ...

seed=examples/tap-mirror.kdl
step "building the cc-enabled guest image into examples/images"
$mp image build --out examples/images --kernel-dir "$kernel_dir" \
    --agent "$bin/megaplan-agent" --include /usr/bin/tcpdump

cleanup() { $mp destroy "$seed" --auto-approve >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "megaplan validate $seed"
$mp validate "$seed"

step "megaplan plan $seed"
$mp plan "$seed"

step "megaplan apply $seed"
$mp apply "$seed" --auto-approve

step "the monitor listens on its eth0 while A pings B"
$mp cc exec "$seed" --filter name=monitor -- ip link set eth0 up
$mp cc exec "$seed" --filter name=monitor -- timeout 20 tcpdump -l -n -c 4 -i eth0 icmp >/tmp/megaplan-monitor.txt 2>&1 &
listener=$!
$mp cc exec "$seed" --filter name=A -- ping -c 6 10.0.0.2
wait "$listener" || true
echo "-- what the monitor saw:"
cat /tmp/megaplan-monitor.txt
grep -q "10.0.0.1 > 10.0.0.2: ICMP echo request" /tmp/megaplan-monitor.txt \
    && echo "OK: the monitor saw A's pings to B through the tap mirror"

step "megaplan show $seed --columns name,tap,ip,state"
$mp show "$seed" --columns name,tap,ip,state

step "megaplan plan $seed --detailed-exitcode (nothing to do)"
$mp plan "$seed" --detailed-exitcode

step "megaplan destroy $seed"
$mp destroy "$seed" --auto-approve

step "megaplan test $seed (apply, run its checks, report, destroy)"
summary=/tmp/megaplan-test-summary.md
$mp test "$seed" --junit /tmp/megaplan-test-junit.xml --markdown "$summary"
echo "-- the markdown summary (for a pull-request comment):"
cat "$summary"
trap - EXIT
