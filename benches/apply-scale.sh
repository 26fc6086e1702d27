#!/usr/bin/env bash
# Whole-run apply/destroy at scale under TCG (docs/PERFORMANCE.md, "Apply and
# destroy at scale").
#
# For each N: N guests (MEM each, default 128M: 64M does not boot this
# kernel+initrd and 80M can panic out of memory, see docs), networks LAN and mon, M = max(1, N/4) monitors m1..mM
# on mon, monitor i mirroring guest gi on LAN (N=1: one guest, no mirror: a VM
# cannot mirror itself), every guest with one cc step `exec "true"`.
# Per run, each in its own network namespace and state/runtime folder:
#  megaplan: `apply --auto-approve` with stderr (the executor's progress lines)
#    timestamped as they arrive, so we get the wall time to the last
#    `vm.X: created` line ("all running") and to exit ("all steps done"); then
#    `plan --detailed-exitcode` three times (no-op: must exit 0); then
#    `destroy --auto-approve`; then a check that nothing is left.
#  shell: benches/shell-baseline.sh (ip/tc/qemu one after another, a python
#    client waiting for each agent's hello and running `exec "true"`).
# The limit: max(hello1, N * cpu1 / cores), with hello1 and cpu1 (one guest's
# wall time and QEMU CPU seconds from launch to its agent's hello) the medians
# of the shell baseline's N=1 runs.
# Usage (root): benches/apply-scale.sh [N...]   (default 1 4 8 16 32)
# Env: RUNS (default 3), RUNS32 (runs for N >= 32, default RUNS), MEM (128M),
# PARALLELISM (passed as apply/destroy --parallelism; default: megaplan's, 10).
# Raw results: one line per run in $OUT (default /tmp/apply-scale.results).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] && set -- 1 4 8 16 32
runs=${RUNS:-3}
runs32=${RUNS32:-$runs}
mem=${MEM:-128M}
par=()
[ -n "${PARALLELISM:-}" ] && par=(--parallelism "$PARALLELISM")
out=${OUT:-/tmp/apply-scale.results}
cores=$(nproc)
cargo build --release --locked --bins >/dev/null
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release
work=$(mktemp -d /tmp/apply-scale.XXXXXX)
nss=()
cleanup() {
    set +e
    for ns in "${nss[@]}"; do
        [ -e "/run/netns/$ns" ] || continue
        d=$work/$ns
        [ -f "$d/lab.kdl" ] && MEGAPLAN_RUNTIME_DIR=$d/run \
            ip netns exec "$ns" "$bin/megaplan" destroy "$d/lab.kdl" --auto-approve >/dev/null 2>&1
        ip netns del "$ns" 2>/dev/null
    done
    # QEMUs of this bench only: their pidfiles, then anything naming $work.
    for f in "$work"/*/run/*/*/qemu.pid "$work"/*/run/*/qemu.pid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
    done
    for p in $(pgrep -f "qemu-system-x86_64 .*$work/"); do kill -9 "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
kdir=$(bash scripts/guest-kernel.sh)
"$bin/megaplan" image build --out "$work/images" --kernel-dir "$kdir" --agent "$bin/megaplan-agent" >/dev/null

gen() { bash benches/scale-lab.sh "$1" apscale "$work/images" "$mem"; }
# Timestamp each line as it arrives (bash's $EPOCHREALTIME: no fork per line).
tsread() { while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

megaplan_run() { # N RUN
    local n=$1 r=$2 ns=mp-aps-$$-m$1-$2 d t0 t s
    d=$work/$ns; nss+=("$ns"); mkdir -p "$d"
    gen "$n" >"$d/lab.kdl"
    ip netns add "$ns"
    export MEGAPLAN_RUNTIME_DIR=$d/run NO_COLOR=1
    t0=$EPOCHREALTIME
    ip netns exec "$ns" /usr/bin/time -f "%U %S" -o "$d/cpu" \
        "$bin/megaplan" apply "$d/lab.kdl" --auto-approve "${par[@]}" 2>&1 >"$d/out" | tsread >"$d/log" || true
    local done_s; done_s=$(since "$t0")
    local running first last
    running=$(awk -v a="$t0" '$2 ~ /^vm\.[^.]*:$/ && $3 == "created" { t = $1 } END { printf "%.3f", t - a }' "$d/log")
    first=$(awk -v a="$t0" '$2 ~ /^vm\.[^.]*:$/ && $3 == "creating…" { printf "%.3f", $1 - a; exit }' "$d/log")
    last=$(awk -v a="$t0" '$3 == "ran" { t = $1 } END { printf "%.3f", t - a }' "$d/log")
    if ! grep -q '^Done:' "$d/out"; then
        # Keep the guests' serial logs: the work folder goes with the trap.
        mkdir -p "$out.failed/$ns"
        for f in "$d"/run/*/*/serial.log; do cp "$f" "$out.failed/$ns/$(basename "$(dirname "$f")").serial.log"; done 2>/dev/null
        echo "apply failed (serial logs in $out.failed/$ns):"; cat "$d/out" "$d/log"; exit 1
    fi
    local plans=() rc
    for _ in 1 2 3; do
        t=$EPOCHREALTIME
        rc=0; ip netns exec "$ns" "$bin/megaplan" plan "$d/lab.kdl" --detailed-exitcode >"$d/plan.out" 2>&1 || rc=$?
        plans+=("$(since "$t")")
        [ "$rc" -eq 0 ] || { echo "no-op plan exited $rc:"; cat "$d/plan.out"; exit 1; }
    done
    t=$EPOCHREALTIME
    ip netns exec "$ns" "$bin/megaplan" destroy "$d/lab.kdl" --auto-approve "${par[@]}" >"$d/destroy.out" 2>&1
    local destroy_s; destroy_s=$(since "$t")
    if ip netns exec "$ns" ip -d -o link show | grep -q 'megaplan:' \
        || pgrep -f "qemu-system-x86_64 .*$d/" >/dev/null; then
        echo "destroy left something behind in $ns"; exit 1
    fi
    ip netns del "$ns"
    s=$(sed -n 's/^Done: //p' "$d/out")
    local own; own=$(sed -n "s/.*megaplan's own CPU \([0-9.]*\)s\.\$/\1/p" "$d/out")
    local plan_s; plan_s=$(printf '%s\n' "${plans[@]}" | median)
    echo "mp n=$n run=$r running=$running done=$done_s first_vm=$first last_step=$last plan=$plan_s destroy=$destroy_s cpu=$(awk '{ print $1 + $2 }' "$d/cpu") own=${own:--1} summary=[$s]" | tee -a "$out"
}

shell_run() { # N RUN
    local n=$1 r=$2 ns=mp-aps-$$-s$1-$2 d
    d=$work/$ns; nss+=("$ns"); mkdir -p "$d"
    ip netns add "$ns"
    local res; res=$(ip netns exec "$ns" bash benches/shell-baseline.sh "$n" "$d" "$work/images" "$mem")
    ip netns del "$ns"
    echo "sh n=$n run=$r $res" | tee -a "$out"
}

echo "# $(date -Is) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg), MEM=$mem PARALLELISM=${PARALLELISM:-default}" | tee -a "$out"
start_line=$(wc -l <"$out")
cal=1
for n in "$@"; do [ "$n" = 1 ] && cal=0; done
if [ $cal = 1 ]; then for r in $(seq "$runs"); do shell_run 1 "$r"; done; fi
for n in "$@"; do
    k=$runs; [ "$n" -ge 32 ] && k=$runs32
    for r in $(seq "$k"); do
        megaplan_run "$n" "$r"
        shell_run "$n" "$r"
    done
    echo "# load after N=$n: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
done

# Medians per N.
tail -n +"$((start_line + 1))" "$out" | awk -v cores="$cores" '
function med(key,   n, i, j, t, v) {
    n = split(vals[key], v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    if (n == 0) return -1
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
$1 == "mp" || $1 == "sh" {
    for (i = 2; i <= NF; i++) if (split($i, kv, "=") == 2) f[kv[1]] = kv[2]
    n = f["n"]; seen[n] = 1
    if ($1 == "mp") {
        for (k in f) if (k != "n" && k != "run" && k != "summary") vals["mp," n "," k] = vals["mp," n "," k] " " f[k]
    } else {
        vals["sh," n ",done"] = vals["sh," n ",done"] " " f["done"]
        vals["sh," n ",running"] = vals["sh," n ",running"] " " f["running"]
        vals["sh," n ",teardown"] = vals["sh," n ",teardown"] " " f["teardown"]
        if (n == 1) { vals["h1"] = vals["h1"] " " f["hello1"]; vals["c1"] = vals["c1"] " " f["cpu1"] }
    }
    delete f
}
END {
    h1 = med("h1"); c1 = med("c1")
    printf "one guest to hello: %.2f s wall, %.2f s QEMU CPU (medians of the N=1 shell runs); %d cores\n", h1, c1, cores
    printf "%4s | %9s | %9s | %9s | %9s | %7s | %9s | %8s | %9s | %9s | %9s | %7s | %7s\n", "N", "mp run", "mp done", "sh run", "sh done", "limit", "done/lim", "destroy", "sh tdown", "noop plan", "mpCPU/VM", "own/VM", "ovh/VM"
    for (n = 1; n <= 1024; n++) if ((n in seen) && (("mp," n ",done") in vals)) {
        lim = n * c1 / cores; if (lim < h1) lim = h1
        d = med("mp," n ",done")
        printf "%4d | %9.2f | %9.2f | %9.2f | %9.2f | %7.2f | %9.2f | %8.3f | %9.3f | %9.3f | %9.4f | %7.4f | %7.4f\n", n,
            med("mp," n ",running"), d, med("sh," n ",running"), med("sh," n ",done"), lim,
            d / lim, med("mp," n ",destroy"), med("sh," n ",teardown"), med("mp," n ",plan"), med("mp," n ",cpu") / n, med("mp," n ",own") / n,
            (d - med("mp," n ",last_step") + med("mp," n ",first_vm")) / n
    }
}'
