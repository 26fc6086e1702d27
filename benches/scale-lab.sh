#!/usr/bin/env bash
# Prints the experiment benches/apply-scale.sh and benches/noop-plan.sh run:
# N guests under TCG (1 vCPU, MEM each), networks LAN and mon, M = max(1, N/4)
# monitors m1..mM on mon, monitor i mirroring guest gi, the other N-M guests
# g* on LAN, every VM with one step `cc { exec "true" }`. N=1 is one guest and
# no mirror (a VM cannot mirror itself).
# Usage: benches/scale-lab.sh N EXPERIMENT IMAGES [MEM]   (MEM default 128M)
set -euo pipefail
n=$1 name=$2 images=$3 mem=${4:-128M}
m=$((n / 4)); [ "$m" -lt 1 ] && m=1; [ "$n" -lt 2 ] && m=0
echo "experiment \"$name\" { images \"$images\"; accel \"tcg\"; }"
echo 'network "LAN"'
echo 'network "mon"'
for i in $(seq 1 "$m"); do
    echo "vm \"m$i\" { kernel \"\$images/miniccc.kernel\"; initrd \"\$images/miniccc.initrd\"; memory \"$mem\"; nic \"mon\"; mirrors \"g$i\"; cc { exec \"true\"; }; }"
done
for i in $(seq 1 $((n - m))); do
    echo "vm \"g$i\" { kernel \"\$images/miniccc.kernel\"; initrd \"\$images/miniccc.initrd\"; memory \"$mem\"; nic \"LAN\"; cc { exec \"true\"; }; }"
done
