#!/usr/bin/env python3
"""Does booting fewer TCG guests at once finish sooner? (docs/PERFORMANCE.md)

Boots N guests of the cc image (128 MB, TCG, megaplan's QEMU argv without a
nic) with at most K booting at once (launched, no agent hello yet), and
prints the wall time until every agent said hello and the QEMU CPU seconds
each guest had used by its hello. EXTRA (env) is appended to the kernel
command line. Kills its QEMUs and removes its folder at the end.

Usage (root): python3 benches/boot-concurrency.py N K IMAGES
  IMAGES: a folder from `megaplan image build --out IMAGES ...`
"""
import json, os, socket, struct, subprocess, sys, tempfile, threading, time
N, K, img = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
work = tempfile.mkdtemp(prefix="wave.")
tck = os.sysconf("SC_CLK_TCK")
sem = threading.Semaphore(K)
cpus, pids = [], []
# QEMU CPU seconds at hello and pids, appended from the boot threads.
def frame(s, obj):
    b = json.dumps(obj).encode(); s.sendall(struct.pack(">I", len(b)) + b)
def rx(s, k):
    buf = b""
    while len(buf) < k:
        c = s.recv(k - len(buf))
        if not c: raise EOFError
        buf += c
    return buf
def guest(i):
    with sem:
        d = f"{work}/{i}"; os.makedirs(d)
        subprocess.run(["qemu-system-x86_64", "-daemonize", "-pidfile", f"{d}/qemu.pid",
            "-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35", "-accel", "tcg",
            "-m", "128M", "-smp", "1", "-chardev", f"file,id=serial0,path={d}/serial.log", "-serial", "chardev:serial0",
            "-kernel", f"{img}/miniccc.kernel", "-initrd", f"{img}/miniccc.initrd",
            "-append", f"console=ttyS0 megaplan.hostname=w{i} " + os.environ.get("EXTRA", ""),
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=cc,path={d}/cc.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=cc,name=megaplan.cc"], check=True)
        pid = int(open(f"{d}/qemu.pid").read()); pids.append(pid)
        s = socket.socket(socket.AF_UNIX); s.connect(f"{d}/cc.sock"); s.settimeout(300)
        frame(s, {"type": "refresh", "id": 0})
        while True:
            (ln,) = struct.unpack(">I", rx(s, 4)); f = json.loads(rx(s, ln))
            if f.get("type") == "hello" or (f.get("type") == "info" and f.get("id") == 0): break
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cpus.append((int(st[11]) + int(st[12])) / tck)
        s.close()
t0 = time.time()
ts = [threading.Thread(target=guest, args=(i,)) for i in range(N)]
try:
    for t in ts: t.start()
    for t in ts: t.join()
    total = time.time() - t0
finally:
    for p in pids: os.kill(p, 9)
    import shutil; shutil.rmtree(work, ignore_errors=True)
if len(cpus) != N:
    sys.exit(f"only {len(cpus)} of {N} guests said hello")
print(f"N={N} K={K} all hello {total:.2f} s, QEMU CPU per guest at hello mean {sum(cpus)/len(cpus):.2f} s (min {min(cpus):.2f} max {max(cpus):.2f})")
