//! Boots the guest kernel (scripts/guest-kernel.sh) with a tiny busybox initramfs
//! through the QEMU driver, checks it over QMP, and stops it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use megaplan::drivers::process;
use megaplan::drivers::qemu::{self, QemuError, VmConfig};
use megaplan::drivers::qmp::{self, Qmp, StopOutcome};
use uuid::Uuid;

#[path = "common/netns.rs"]
mod netns;

const MARKER: &str = "megaplan-boot-marker: init is up";

/// Kills the QEMU process on drop, so that a failing test leaves nothing behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if process::process_alive(self.0) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn qemu_present() -> bool {
    let ok = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(qemu::QEMU_BINARY).is_file());
    ok || netns::skip(
        "qemu_boot",
        &format!("{} missing (scripts/setup-host.sh)", qemu::QEMU_BINARY),
    )
}

/// The guest kernel: scripts/guest-kernel.sh fetches it once, then just prints its dir.
fn guest_kernel() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-kernel.sh");
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/guest-kernel.sh");
    assert!(
        out.status.success(),
        "guest-kernel.sh failed: {}",
        out.status
    );
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let boot = dir.join("boot");
    std::fs::read_dir(&boot)
        .unwrap_or_else(|e| panic!("{}: {e}", boot.display()))
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("no boot/vmlinuz-* in the guest kernel dir")
}

/// A minimal cpio "newc" archive writer (uncompressed: the kernel takes it as is).
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Cpio {
            buf: Vec::new(),
            ino: 1,
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// The initramfs: busybox as /init's shell. With `acpi_modules` (evdev.ko and
/// button.ko from the guest kernel) it also runs busybox acpid, which powers the
/// guest off on the ACPI power button; the marker is printed once acpid listens.
fn build_initramfs(path: &Path, acpi_modules: Option<(PathBuf, PathBuf)>) {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let bb = "/bin/busybox";
    let mut init = format!("#!{bb} sh\n{bb} mount -t proc proc /proc\n");
    let mut c = Cpio::new();
    c.dir("dev");
    c.entry("dev/console", 0o020600, (5, 1), &[]);
    c.dir("proc");
    c.dir("bin");
    c.file("bin/busybox", 0o755, &busybox);
    if let Some((evdev, button)) = acpi_modules {
        c.file("evdev.ko", 0o644, &std::fs::read(evdev).unwrap());
        c.file("button.ko", 0o644, &std::fs::read(button).unwrap());
        c.dir("etc");
        c.dir("etc/acpi");
        c.dir("etc/acpi/PWRF");
        // busybox acpid runs CONFDIR/PWRF/00000080 on the power button.
        c.file(
            "etc/acpi/PWRF/00000080",
            0o755,
            format!("#!{bb} sh\n{bb} poweroff -f\n").as_bytes(),
        );
        init.push_str(&format!(
            "{bb} mount -t devtmpfs dev /dev\n\
             {bb} insmod /evdev.ko\n\
             {bb} insmod /button.ko\n\
             {bb} acpid -f -c /etc/acpi -l /dev/null &\n\
             while ! {bb} ls -l /proc/$!/fd 2>/dev/null | {bb} grep -q /dev/input/event; do {bb} sleep 0.1; done\n"
        ));
    }
    init.push_str(&format!(
        "{bb} echo \"{MARKER}\"\nwhile :; do {bb} sleep 3600; done\n"
    ));
    c.file("init", 0o755, init.as_bytes());
    std::fs::write(path, c.finish()).unwrap();
}

/// evdev.ko and button.ko of the guest kernel, if it has them as modules.
fn acpi_modules(kernel: &Path) -> Option<(PathBuf, PathBuf)> {
    let version = kernel.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let m = kernel
        .parent()?
        .parent()?
        .join("lib/modules")
        .join(version)
        .join("kernel/drivers");
    let evdev = m.join("input/evdev.ko");
    let button = m.join("acpi/button.ko");
    (evdev.is_file() && button.is_file()).then_some((evdev, button))
}

/// Launches, waits for the marker, checks QMP, stops with `grace`; returns how.
async fn boot_and_stop(acpi: bool, grace: Duration) -> StopOutcome {
    let kernel = guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let modules = if acpi {
        Some(acpi_modules(&kernel).expect("evdev.ko and button.ko in the guest kernel"))
    } else {
        None
    };
    build_initramfs(&initrd, modules);
    let cfg = config(dir.path(), kernel, initrd);
    eprintln!("accel: {}", cfg.accel);

    let started = Instant::now();
    let pid = qemu::launch(&cfg).await.expect("launch");
    let _guard = KillOnDrop(pid);
    eprintln!("QEMU pid {pid} started in {:?}", started.elapsed());
    assert!(process::process_alive(pid));
    assert!(cfg.qmp_socket().exists());
    assert!(cfg.cc_socket().exists());
    assert_eq!(
        std::fs::read_to_string(cfg.pidfile()).unwrap().trim(),
        pid.to_string()
    );

    // A second launch of the same VM is refused.
    match qemu::launch(&cfg).await {
        Err(QemuError::AlreadyRunning { pid: p, .. }) => assert_eq!(p, pid),
        other => panic!("second launch: {other:?}"),
    }

    // Wait (bounded) for the marker on the serial console.
    let serial = cfg.serial_log_path();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        if log.contains(MARKER) {
            break;
        }
        assert!(
            process::process_alive(pid),
            "QEMU exited; serial log:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "no marker after 180 s; serial log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("guest userspace after {:?}", started.elapsed());

    {
        let q = Qmp::connect(&cfg.qmp_socket()).await.expect("QMP connect");
        assert!(q.greeting()["version"]["qemu"]["major"].as_u64().is_some());
        let status = q.query_status().await.unwrap();
        assert!(status.running, "{status:?}");
        assert_eq!(status.status, "running");
        // One QMP client at a time: drop it before stop_vm connects.
    }

    let t = Instant::now();
    let outcome = qmp::stop_vm(&cfg.runtime_dir, pid, grace)
        .await
        .expect("stop_vm");
    eprintln!("stopped ({outcome:?}) in {:?}", t.elapsed());
    assert!(!process::process_alive(pid));
    assert!(!cfg.qmp_socket().exists());
    assert!(!cfg.cc_socket().exists());
    assert!(!cfg.pidfile().exists());
    assert!(serial.exists(), "the serial log stays");

    // Stopping again is a no-op.
    assert_eq!(
        qmp::stop_vm(&cfg.runtime_dir, pid, Duration::from_secs(1))
            .await
            .unwrap(),
        StopOutcome::AlreadyGone
    );
    outcome
}

/// The guest ignores the power button: QEMU exits on `quit` after the grace time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_query_and_quit() {
    if !qemu_present() {
        return;
    }
    let outcome = boot_and_stop(false, Duration::from_secs(1)).await;
    assert_eq!(outcome, StopOutcome::Quit);
}

/// The guest runs acpid: it powers off on `system_powerdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_query_and_powerdown() {
    if !qemu_present() {
        return;
    }
    let outcome = boot_and_stop(true, Duration::from_secs(60)).await;
    assert_eq!(outcome, StopOutcome::PoweredOff);
}

fn config(dir: &Path, kernel: PathBuf, initrd: PathBuf) -> VmConfig {
    let accel = qemu::detect_accel().expect("MEGAPLAN_ACCEL");
    // A comma in the runtime dir exercises QEMU's option escaping end to end.
    let mut cfg = VmConfig::new(
        "boot,test",
        Uuid::from_u128(0x4d65_6761_706c_616e_0000_0000_0000_0001),
        accel,
        dir.join("run,1"),
    );
    cfg.memory_mib = 256;
    cfg.kernel = Some(kernel);
    cfg.initrd = Some(initrd);
    cfg.append = Some("console=ttyS0 panic=-1 rdinit=/init".into());
    cfg.extra_args = vec!["-no-reboot".into()];
    cfg
}

#[tokio::test]
async fn launch_error_carries_stderr() {
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kernel");
    let cfg = config(dir.path(), missing, dir.path().join("no-such-initrd"));
    match qemu::launch(&cfg).await {
        Err(e @ QemuError::Failed { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no-such-kernel"), "{msg}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // Nothing is left running and no pidfile claims otherwise.
    assert!(!cfg.pidfile().exists());
}
