#!/usr/bin/env bash
# cc exec round trip on idle guests under TCG: p50 and p99 of
#  (a) the agent round trip alone (host client -> guest -> host), in-process;
#  (b) the whole `megaplan cc exec FILE --filter name=vm1 -- true` command.
# With N=16 guests (b) also runs against all of them at once.
# Usage (root): benches/cc-exec.sh [N_GUESTS] [SAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1}
samples=${2:-200}
cargo build --release --locked --bins --examples >/dev/null
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release
work=$(mktemp -d)
ns=mp-bench-$$
cleanup() {
    ip netns exec "$ns" "$bin/megaplan" destroy "$work/bench.kdl" --auto-approve >/dev/null 2>&1 || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
kdir=$(bash scripts/guest-kernel.sh)
"$bin/megaplan" image build --out "$work/images" --kernel-dir "$kdir" --agent "$bin/megaplan-agent" >/dev/null
cat >"$work/bench.kdl" <<KDL
experiment "ccbench" { images "$work/images"; accel "tcg"; }
network "LAN"
vm "vm[1-$n]" {
    kernel "\$images/miniccc.kernel"
    initrd "\$images/miniccc.initrd"
    memory "128M"
    nic "LAN"
    cc { exec "true" }
}
KDL
ip netns add "$ns"
export MEGAPLAN_RUNTIME_DIR=$work/run
ip netns exec "$ns" "$bin/megaplan" apply "$work/bench.kdl" --auto-approve >/dev/null 2>&1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $n guest(s), TCG"
echo "(a) agent round trip, in-process (exec \"true\"), $samples samples:"
"$bin/examples/cc_rtt" "$work/run/ccbench/vm1/cc.sock" "$samples"
echo "(b) megaplan cc exec --filter name=vm1 -- true, $samples runs:"
pct() { sort -n | awk '{a[NR]=$1} END {printf "p50 %.1f ms, p99 %.1f ms, n=%d\n", a[int(NR*0.5)+ (NR%2)], a[int(NR*0.99)+(NR*0.99>int(NR*0.99))], NR}'; }
for _ in $(seq "$samples"); do
    s=$(date +%s%N)
    ip netns exec "$ns" "$bin/megaplan" cc exec "$work/bench.kdl" --filter name=vm1 -- true >/dev/null
    e=$(date +%s%N)
    echo "scale=3; ($e - $s) / 1000000" | bc
done | pct
if [ "$n" -gt 1 ]; then
    echo "(c) megaplan cc exec -- true on all $n guests at once, $((samples / 4)) runs:"
    for _ in $(seq $((samples / 4))); do
        s=$(date +%s%N)
        ip netns exec "$ns" "$bin/megaplan" cc exec "$work/bench.kdl" -- true >/dev/null
        e=$(date +%s%N)
        echo "scale=3; ($e - $s) / 1000000" | bc
    done | pct
fi
