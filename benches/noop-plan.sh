#!/usr/bin/env bash
# No-op plan (the refresh's cost) on a live experiment under TCG: N guests on
# LAN, max(1, N/4) monitors on mon each mirroring one LAN guest (the shape of
# benches/apply-scale.sh), applied once; then hyperfine times
# `megaplan plan FILE --detailed-exitcode` (must exit 0: nothing to change)
# for each given megaplan binary, inside the experiment's network namespace,
# the binaries' runs interleaved by hyperfine's order (one after another).
# Usage (root): benches/noop-plan.sh N [RUNS] [MEGAPLAN_BINARY...]
#   default binary: this tree's release build. Pass an older build (e.g.
#   `git worktree add /tmp/old REV && cargo build --release` there) to
#   compare before and after a change.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: benches/noop-plan.sh N [RUNS] [MEGAPLAN_BINARY...]}
runs=${2:-30}
shift $(($# < 2 ? $# : 2))
cargo build --release --locked --bins >/dev/null
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release
[ $# -eq 0 ] && set -- "$bin/megaplan"
work=$(mktemp -d /tmp/noop-plan.XXXXXX)
ns=mp-noop-$$
cleanup() {
    set +e
    ip netns exec "$ns" "$bin/megaplan" destroy "$work/lab.kdl" --auto-approve >/dev/null 2>&1
    ip netns del "$ns" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
kdir=$(bash scripts/guest-kernel.sh)
"$bin/megaplan" image build --out "$work/images" --kernel-dir "$kdir" --agent "$bin/megaplan-agent" >/dev/null
bash benches/scale-lab.sh "$n" noop "$work/images" >"$work/lab.kdl"
m=$(grep -c mirrors "$work/lab.kdl" || true)
ip netns add "$ns"
export MEGAPLAN_RUNTIME_DIR=$work/run NO_COLOR=1
ip netns exec "$ns" "$bin/megaplan" apply "$work/lab.kdl" --auto-approve >/dev/null 2>&1
echo "# $(date -Is) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $n guests, $m mirrors, all steps done"
cmds=()
for b in "$@"; do
    # Each must see the experiment as it is: a no-op plan exits 0.
    ip netns exec "$ns" "$b" plan "$work/lab.kdl" --detailed-exitcode >/dev/null
    cmds+=("$b plan $work/lab.kdl --detailed-exitcode")
done
ip netns exec "$ns" hyperfine -N --warmup 3 --runs "$runs" --style basic \
    --export-json "$work/times.json" "${cmds[@]}"
python3 - "$work/times.json" <<'PY'
import json, statistics, sys
for r in json.load(open(sys.argv[1]))["results"]:
    t = sorted(r["times"])
    p99 = t[min(len(t) - 1, int(0.99 * len(t)))]
    print(f"median {statistics.median(t) * 1e3:.1f} ms  p99 {p99 * 1e3:.1f} ms  {r['command'].split()[0]}")
PY
