#!/usr/bin/env bash
# "Plan at scale": wall time and peak RSS of `megaplan validate` and
# `megaplan plan` (text and `--json`) on generated experiments of 1k, 10k and 100k VMs, with an
# empty state and nothing running on the host. Run as root (plan refreshes
# from the live host over netlink). Figures go to docs/PERFORMANCE.md.
#
#   benches/plan-scale.sh [N...]        (default: 1000 10000 100000)
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)

if [ ! -x /usr/bin/time ]; then
    apt-get install -y time >/dev/null
fi
cargo build --release --bin megaplan --example gen_lab
bin="$CARGO_TARGET_DIR/release/megaplan"
gen="$CARGO_TARGET_DIR/release/examples/gen_lab"

work=$(mktemp -d /tmp/plan-scale.XXXXXX)
trap 'rm -rf "$work"' EXIT

# One measured run: prints "SECONDS MAX_RSS_MB".
measure() {
    local log="$work/time.log"
    /usr/bin/time -v "$@" >/dev/null 2>"$log" || { cat "$log" >&2; return 1; }
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i] }
        /Maximum resident set size/ { rss = $2 / 1024 }
        END { printf "%.2f %.0f\n", s, rss }' "$log"
}

printf '%-8s %-9s %10s %12s\n' VMs command wall_s peak_rss_MB
for n in "${sizes[@]}"; do
    file="$work/lab$n.kdl"
    "$gen" "$n" >"$file"
    read -r s m < <(measure "$bin" validate "$file")
    printf '%-8s %-9s %10s %12s\n' "$n" validate "$s" "$m"
    rm -rf "$work/state"
    read -r s m < <(measure "$bin" plan "$file" --state-dir "$work/state")
    printf '%-8s %-9s %10s %12s\n' "$n" plan "$s" "$m"
    rm -rf "$work/state"
    read -r s m < <(measure "$bin" plan "$file" --state-dir "$work/state" --json)
    printf '%-8s %-9s %10s %12s\n' "$n" plan-json "$s" "$m"
done
