#!/usr/bin/env bash
# Baseline (a) for benches/apply-scale.sh: the same experiment as megaplan's
# (N guests, networks LAN and mon, M = max(1, N/4) monitors on mon each
# mirroring one LAN guest; N=1: one guest, no mirror) built by a plain script,
# one command after another: ip link/ip tuntap/tc/qemu-system-x86_64, then a
# tiny python client that, guest by guest in launch order, connects to the
# guest's cc.sock, waits for the agent's hello (or the `info {id:0}` answer to
# `refresh {id:0}`, as megaplan's client does), sends `exec "true"` and waits
# for its `exec_result`. Then the teardown: SIGTERM each QEMU and wait until it
# is gone, delete taps and bridges.
# There are no disks, so no qemu-img step (megaplan does none either).
#
# Usage (root, inside a fresh network namespace):
#   ip netns exec NS bash benches/shell-baseline.sh N WORKDIR IMAGES [MEM]
# Prints one line: running=S done=S teardown=S hello1=S cpu1=S
#   running  - wall time from start until the last QEMU has daemonized
#   done     - wall time from start until every guest answered exec "true"
#   teardown - wall time of the teardown
#   hello1 / cpu1 - for the first guest: wall seconds from its QEMU launch to
#              its hello, and its QEMU's utime+stime (/proc/PID/stat) then.
set -euo pipefail
n=$1
work=$2
images=$3
mem=${4:-128M}
m=$(( n / 4 )); [ "$m" -lt 1 ] && m=1; [ "$n" -lt 2 ] && m=0
mkdir -p "$work/run" "$work/logs"
names=()
for i in $(seq 1 "$m"); do names+=("m$i"); done
for i in $(seq 1 $((n - m))); do names+=("g$i"); done

t0=$EPOCHREALTIME
ip link add bsLAN type bridge
ip link set bsLAN up
ip link add bsmon type bridge
ip link set bsmon up
k=0
for v in "${names[@]}"; do
    k=$((k + 1))
    br=bsLAN; [ "${v:0:1}" = m ] && br=bsmon
    ip tuntap add dev "bt$v" mode tap
    ip link set "bt$v" address "$(printf '02:00:00:00:%02x:%02x' $((k / 256)) $((k % 256)))"
    ip link set "bt$v" master "$br"
    ip link set "bt$v" up
done
for i in $(seq 1 "$m"); do
    src=btg$i dst=btm$i
    tc qdisc add dev "$src" clsact
    tc filter add dev "$src" ingress prio 1 protocol all u32 match u32 0 0 \
        action mirred egress mirror dev "$dst" continue
    tc filter add dev "$src" egress prio 2 protocol all u32 match u32 0 0 \
        action mirred egress mirror dev "$dst" continue
done
k=0
launch=()
for v in "${names[@]}"; do
    k=$((k + 1))
    d=$work/run/$v
    mkdir -p "$d"
    launch+=("$EPOCHREALTIME")
    # The argv shape of megaplan's (src/drivers/qemu.rs `argv`), copied from ps.
    qemu-system-x86_64 -daemonize -pidfile "$d/qemu.pid" \
        -qmp "unix:$d/qmp.sock,server=on,wait=off" \
        -nodefaults -no-user-config -display none -name "guest=$v" \
        -uuid "$(printf '00000000-0000-4000-8000-%012d' "$k")" \
        -machine q35 -accel tcg -m "$mem" -smp 1 \
        -chardev "file,id=serial0,path=$work/logs/$v.serial.log" -serial chardev:serial0 \
        -kernel "$images/miniccc.kernel" -initrd "$images/miniccc.initrd" \
        -append "console=ttyS0 no_timer_check megaplan.hostname=$v" \
        -netdev "tap,id=n0,ifname=bt$v,script=no,downscript=no,vhost=off" \
        -device "virtio-net-pci,netdev=n0,mac=$(printf '02:00:00:00:%02x:%02x' $((k / 256)) $((k % 256)))" \
        -device virtio-serial-pci,id=vser0 \
        -chardev "socket,id=cc,path=$d/cc.sock,server=on,wait=off" \
        -device virtserialport,bus=vser0.0,chardev=cc,name=megaplan.cc
done
t_running=$EPOCHREALTIME
python3 - "$work/run" "${launch[0]}" "${names[@]}" >"$work/hello1" <<'PY'
import json, os, socket, struct, sys, time
run, launch0, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
tck = os.sysconf("SC_CLK_TCK")
def frame(s, obj):
    b = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(b)) + b)
def recv_exact(s, k):
    buf = b""
    while len(buf) < k:
        c = s.recv(k - len(buf))
        if not c:
            raise EOFError
        buf += c
    return buf
def read(s):
    (ln,) = struct.unpack(">I", recv_exact(s, 4))
    return json.loads(recv_exact(s, ln))
first = None
for v in names:
    s = socket.socket(socket.AF_UNIX)
    while True:
        try:
            s.connect(f"{run}/{v}/cc.sock"); break
        except OSError:
            time.sleep(0.01)
    s.settimeout(300)  # a guest that never says hello fails the run
    frame(s, {"type": "refresh", "id": 0})
    while True:
        f = read(s)
        if f.get("type") == "hello" or (f.get("type") == "info" and f.get("id") == 0):
            break
    if first is None:
        pid = int(open(f"{run}/{v}/qemu.pid").read())
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        first = (time.time() - launch0, (int(st[11]) + int(st[12])) / tck)
    frame(s, {"type": "exec", "id": 1, "command": {"shell": "true"}, "background": False})
    while True:
        f = read(s)
        if f.get("id") == 1:
            assert f.get("type") == "exec_result" and f["exit"].get("code") == 0, f
            break
    s.close()
print(f"hello1={first[0]:.3f} cpu1={first[1]:.3f}")
PY
t_done=$EPOCHREALTIME

t2=$EPOCHREALTIME
for v in "${names[@]}"; do
    pid=$(cat "$work/run/$v/qemu.pid")
    kill "$pid"
    # Gone, or a zombie waiting for init to reap it.
    while [ -e "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do
        sleep 0.01
    done
done
for v in "${names[@]}"; do ip link del "bt$v"; done
ip link del bsLAN
ip link del bsmon
rm -rf "$work/run"
t3=$EPOCHREALTIME
awk -v a="$t0" -v b="$t_running" -v c="$t_done" -v d="$t2" -v e="$t3" -v h="$(cat "$work/hello1")" \
    'BEGIN { printf "running=%.3f done=%.3f teardown=%.3f %s\n", b - a, c - a, e - d, h }'
