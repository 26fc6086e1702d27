//! The local engine: this machine, through netlink, tc, qemu-img, QEMU and
//! QMP. [`LocalHost`] is the first [`crate::provider::Provider`]; the
//! [`Host`] trait is its set of mechanisms, which its `Provider::execute`
//! calls for each op (nothing outside this module calls them except the
//! netns tests of the drivers).
//!
//! Invariants:
//! - Implementations refuse to change or remove an object that does not carry
//!   the ownership marker they were given.

pub mod local;

use std::path::{Path, PathBuf};

use crate::observed::Observed;
use crate::state::{State, StateDir};

pub use local::{LocalHost, StepOutcome};

use std::time::Duration;

use crate::lab::{CcActionSpec, DiskSpec, VmSpec};

/// The local engine's mechanisms, one per effect. Each method is idempotent
/// where it can be (creating what exists with our marker is a no-op).
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Refresh: what exists of this experiment on the machine.
    async fn observe(
        &self,
        experiment: &str,
        state: &State,
        sd: &StateDir,
    ) -> Result<Observed, HostError>;
    async fn ensure_bridge(
        &self,
        name: &str,
        marker: &str,
        host_address: Option<&str>,
    ) -> Result<(), HostError>;
    async fn ensure_tap(
        &self,
        name: &str,
        guest_mac: &str,
        marker: &str,
        bridge: &str,
    ) -> Result<(), HostError>;
    /// Remove a link, only if it carries `marker`.
    async fn delete_link(&self, name: &str, marker: &str) -> Result<(), HostError>;
    async fn add_mirror(&self, src: &str, dst: &str, direction: &str) -> Result<(), HostError>;
    async fn remove_mirror(&self, src: &str, dst: &str) -> Result<(), HostError>;
    async fn create_disk(&self, disk: &DiskSpec, path: &Path) -> Result<(), HostError>;
    async fn remove_file(&self, path: &Path) -> Result<(), HostError>;
    /// Start QEMU for a VM; its pid.
    async fn launch_vm(
        &self,
        experiment: &str,
        accel: crate::lab::Accel,
        vm: &VmSpec,
        disks: &[DiskSpec],
        sd: &StateDir,
    ) -> Result<u32, HostError>;
    /// Stop a VM (gracefully: agent sync, powerdown, then quit, then kill) and remove its runtime files and overlays.
    async fn stop_vm(
        &self,
        experiment: &str,
        vm: &str,
        pid: Option<u32>,
        graceful: bool,
        sd: &StateDir,
    ) -> Result<(), HostError>;
    /// Run one cc step through the VM's agent, exactly once per boot:
    /// `run_id` names this run; asked again with the same id, the agent
    /// answers with the outcome it had instead of running it again.
    async fn run_step(
        &self,
        experiment: &str,
        vm: &str,
        action: &CcActionSpec,
        timeout: Option<Duration>,
        run_id: &str,
    ) -> Result<StepOutcome, HostError>;
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Netlink(#[from] crate::drivers::netlink::NetlinkError),
    #[error(transparent)]
    Tc(#[from] crate::drivers::tc::TcError),
    #[error(transparent)]
    Qemu(#[from] crate::drivers::qemu::QemuError),
    #[error(transparent)]
    Qmp(#[from] crate::drivers::qmp::QmpError),
    #[error(transparent)]
    QemuImg(#[from] crate::drivers::qemu_img::QemuImgError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("bad runtime folder name '{name}': {why}")]
    BadName { name: String, why: String },
    #[error(
        "refusing the runtime folder {}: {why} (make it 0700 and yours, or set MEGAPLAN_RUNTIME_DIR)",
        path.display()
    )]
    UnsafeRuntimeDir { path: PathBuf, why: String },
    /// A keep disk's file is there with no record: the user's data.
    #[error(
        "disk '{disk}' is keep=#true and {} already exists: refusing to overwrite it (move it away to start empty, or restore the state that records it)",
        path.display()
    )]
    KeepDiskExists { disk: String, path: PathBuf },
    /// An interface the op needs has no name: the lab was not named by the
    /// local engine (`Provider::assign_names`) before planning.
    #[error("{what} has no interface name (the lab was planned without the local engine's names)")]
    Unnamed { what: String },
    /// A VM uses a disk of the experiment the op did not carry.
    #[error("unknown disk {0}")]
    UnknownDisk(String),
    /// The guest's agent failed or refused.
    #[error("{vm}: {source}")]
    Agent {
        vm: String,
        #[source]
        source: crate::agent::AgentError,
    },
    /// The agent answered a step with an error of its own.
    #[error("{vm}: {error}")]
    StepRefused { vm: String, error: String },
    #[error("{vm}: the agent answered the step with no outcome")]
    NoStepOutcome { vm: String },
    /// The guest's agent never reported in.
    #[error(transparent)]
    Boot(#[from] BootError),
}

/// A guest whose agent did not report in: why, and the end of its serial console.
#[derive(Debug, thiserror::Error)]
#[error("agent of {vm} {why}{serial_tail}")]
pub struct BootError {
    pub vm: String,
    pub why: BootFailure,
    /// "\nserial log PATH, last lines:\n  …" (see [`SERIAL_TAIL_LINES`]).
    pub serial_tail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootFailure {
    #[error("did not report in within {} (boot-timeout): {source}", duration_text(*wait))]
    Refused {
        wait: Duration,
        source: crate::agent::AgentError,
    },
    #[error("did not report in within {} (boot-timeout)", duration_text(*wait))]
    Timeout { wait: Duration },
    /// Its QEMU exited or its kernel panicked.
    #[error("will not report in: {0}")]
    Dead(String),
}

/// The base of all runtime folders: `/run/megaplan`, or `MEGAPLAN_RUNTIME_DIR`.
pub fn runtime_base() -> PathBuf {
    std::env::var_os("MEGAPLAN_RUNTIME_DIR")
        .map_or_else(|| PathBuf::from("/run/megaplan"), PathBuf::from)
}

/// Where a VM's runtime files live: `/run/megaplan/EXPERIMENT/VM/`
/// (`MEGAPLAN_RUNTIME_DIR` replaces `/run/megaplan`).
pub fn runtime_root(experiment: &str) -> PathBuf {
    runtime_base().join(experiment)
}

/// The lock file beside a VM's cc socket that serialises agent sessions.
pub const CC_LOCK_NAME: &str = "cc.lock";

pub fn runtime_dir(experiment: &str, vm: &str) -> PathBuf {
    runtime_root(experiment).join(vm)
}

/// Make (or check) `BASE/EXPERIMENT/VM/`, each level 0700 when made,
/// whatever the umask, never through a link; the base must belong to the
/// invoking user and be writable by nobody else (QEMU's sockets live there).
pub fn ensure_runtime_dir(experiment: &str, vm: &str) -> Result<PathBuf, HostError> {
    ensure_runtime_dir_in(&runtime_base(), experiment, vm)
}

fn ensure_runtime_dir_in(base: &Path, experiment: &str, vm: &str) -> Result<PathBuf, HostError> {
    use crate::safefs::Dir;
    for n in [experiment, vm] {
        if let Some(p) = crate::validate::name_problem(n) {
            return Err(HostError::BadName {
                name: n.to_string(),
                why: p.to_string(),
            });
        }
    }
    let dir = Dir::open(base, true)?.expect("created");
    if let Some(why) = dir.unsafe_because()? {
        return Err(HostError::UnsafeRuntimeDir {
            path: base.to_path_buf(),
            why: why.to_string(),
        });
    }
    let exp = dir.subdir(experiment, true)?.expect("created");
    let vmdir = exp.subdir(vm, true)?.expect("created");
    Ok(vmdir.path)
}

/// Make `path` and its missing parents 0700 (whatever the umask).
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    crate::safefs::Dir::open(path, true).map(drop)
}

/// Connect to a VM's guest agent through its cc socket and wait for its
/// hello: the one way every caller (steps, `cc exec`, `show`, graceful stop)
/// reaches a guest.
pub async fn connect_agent(
    experiment: &str,
    vm: &str,
    connect_wait: Duration,
    hello_wait: Duration,
) -> Result<crate::agent::AgentClient, crate::agent::AgentError> {
    let rt = runtime_dir(experiment, vm);
    let sock = rt.join(crate::drivers::runtime::CC_SOCKET_NAME);
    if !rt.is_dir() {
        // Not running: fail as a connection to a missing socket does.
        let client = crate::agent::AgentClient::connect_timeout(&sock, connect_wait).await?;
        client.wait_hello(hello_wait).await?;
        return Ok(client);
    }
    // One session at a time per guest (QEMU's socket serves one client).
    let lock = rt.join(CC_LOCK_NAME);
    crate::agent::AgentClient::connect_exclusive(&sock, &lock, connect_wait, hello_wait).await
}

/// [`connect_agent`] for a guest that may still be booting, watched on the
/// way: if its QEMU exits or its serial console shows a kernel panic, this
/// fails at once, naming the cause, instead of waiting out `hello_wait`.
pub async fn connect_agent_watched(
    experiment: &str,
    vm: &str,
    connect_wait: Duration,
    hello_wait: Duration,
) -> Result<crate::agent::AgentClient, HostError> {
    let rt = runtime_dir(experiment, vm);
    // The whole wait, connecting included, is bounded by `hello_wait`.
    let agent = tokio::time::timeout(
        hello_wait,
        connect_agent(experiment, vm, connect_wait, hello_wait),
    );
    let why = tokio::select! {
        r = agent => match r {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(source)) => BootFailure::Refused { wait: hello_wait, source },
            Err(_) => BootFailure::Timeout { wait: hello_wait },
        },
        why = watch_boot(&rt) => BootFailure::Dead(why),
    };
    Err(HostError::Boot(BootError {
        vm: vm.to_string(),
        why,
        serial_tail: serial_tail(
            &rt.join(crate::drivers::runtime::SERIAL_LOG_NAME),
            SERIAL_TAIL_LINES,
        ),
    }))
}

/// How many lines of a guest's serial console a boot failure shows.
pub const SERIAL_TAIL_LINES: usize = 10;

/// Where a failed guest's serial log is and its last `n` lines, for an
/// error message: "\nserial log PATH, last lines:\n  …" (or that it is
/// empty or unreadable). The log is the guest's: each line is shown with
/// control characters escaped, and at most the last 64 KiB are read.
fn serial_tail(link: &Path, n: usize) -> String {
    // The runtime folder's link to the log in the state folder (ours).
    let path = std::fs::read_link(link).unwrap_or_else(|_| link.to_path_buf());
    let shown = path.display();
    let bytes = match read_tail(&path, 64 << 10) {
        Ok(b) => b,
        Err(e) => return format!("\nserial log {shown}: cannot read it: {e}"),
    };
    let lines = last_lines(&bytes, n);
    if lines.is_empty() {
        return format!("\nserial log {shown}: empty (the guest printed nothing)");
    }
    let mut out = format!("\nserial log {shown}, last lines:");
    for l in lines {
        out.push_str("\n  ");
        out.push_str(&l);
    }
    out
}

/// Characters that would reorder or hide text on a terminal.
fn is_invisible(c: char) -> bool {
    matches!(c as u32, 0x2028 | 0x2029 | 0x200B..=0x200F | 0x202A..=0x202E | 0x2066..=0x2069 | 0xFEFF)
}

/// "5s", "2m", "1500ms": a wait as the experiment file would write it.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The last `max` bytes of a file.
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    read_from(path, len.saturating_sub(max))
}

/// The last `n` non-empty lines of console output, each with a trailing CR
/// dropped and other control characters escaped (`\u{1b}`).
fn last_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.chars()
                .map(|c| {
                    if c.is_control() || is_invisible(c) {
                        c.escape_unicode().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    let keep = lines.len().saturating_sub(n);
    lines.drain(..keep);
    lines
}

/// Resolves when the guest in runtime folder `rt` is beyond hope: its QEMU
/// is gone (a pidfd), or `serial.log` shows a kernel panic (looked at
/// every [`BOOT_WATCH_PERIOD`], read as it grows). Never resolves otherwise.
/// Its cost counts against megaplan's own CPU for every guest of an apply
/// (`benches/apply-scale.sh`: 250 ms polling of the pidfile, /proc and the
/// log cost ~12 ms per VM at N=16).
async fn watch_boot(rt: &Path) -> String {
    let log = rt.join(crate::drivers::runtime::SERIAL_LOG_NAME);
    let console = async {
        let mut read = 0u64;
        let mut scan = PanicScan::default();
        loop {
            tokio::time::sleep(BOOT_WATCH_PERIOD).await;
            // One stat while nothing is new; the bytes only when it grew.
            if std::fs::metadata(&log).map_or(true, |m| m.len() <= read) && !scan.partial {
                continue;
            }
            let new = read_from(&log, read).unwrap_or_default();
            read += new.len() as u64;
            if let Some(line) = scan.feed(&new) {
                let shown = std::fs::canonicalize(&log).unwrap_or(log.clone());
                return format!(
                    "the guest kernel panicked: {line} (serial log: {})",
                    shown.display()
                );
            }
        }
    };
    let qemu = async {
        loop {
            if let Some(pid) = crate::drivers::process::pid_in(rt) {
                crate::drivers::process::exited(pid).await;
                return format!("its QEMU (pid {pid}) exited");
            }
            tokio::time::sleep(BOOT_WATCH_PERIOD).await;
        }
    };
    tokio::select! {
        why = console => why,
        why = qemu => why,
    }
}

/// Finds the kernel's panic line in a console log fed in pieces as it grows.
#[derive(Default)]
struct PanicScan {
    /// The end of what was fed, so a line split between two pieces is found.
    tail: String,
    /// A panic line was seen before its end: the next feed reports it anyway.
    partial: bool,
}

impl PanicScan {
    const MARKER: &str = "Kernel panic - not syncing:";

    /// Feed the next piece of the log (empty if nothing new); the panic line
    /// once it is complete, or one feed after it was first seen unfinished.
    fn feed(&mut self, new: &[u8]) -> Option<String> {
        self.tail.push_str(&String::from_utf8_lossy(new));
        if let Some(at) = self.tail.find(Self::MARKER) {
            if !self.tail[at..].contains('\n') && !self.partial {
                self.partial = true;
                return None;
            }
            return self.tail[at..].lines().next().map(|l| l.trim().to_string());
        }
        // Keep enough for a marker cut in half, at a char boundary.
        let mut keep = self.tail.len().saturating_sub(Self::MARKER.len() + 200);
        while !self.tail.is_char_boundary(keep) {
            keep += 1;
        }
        self.tail.drain(..keep);
        None
    }
}

/// How often a booting guest's QEMU and serial log are looked at.
const BOOT_WATCH_PERIOD: Duration = Duration::from_secs(1);

/// The bytes of `path` from `offset` to its current end.
fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// A VM's serial log in the state folder (QEMU writes it; the runtime
/// folder's `serial.log` links to it).
pub fn serial_log(sd: &StateDir, vm: &str) -> PathBuf {
    sd.logs().join(format!("{vm}.serial.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in QEMU: `sleep` started through a link named `qemu-…`
    /// (`process_alive` checks the name), killed on drop.
    struct FakeQemu {
        child: std::process::Child,
        _exe_dir: tempfile::TempDir,
    }
    impl Drop for FakeQemu {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A runtime folder whose pidfile names a running stand-in QEMU, with
    /// `serial_log` as its console so far.
    fn booting_guest(serial_log: &str) -> (FakeQemu, tempfile::TempDir) {
        let exe_dir = tempfile::tempdir().unwrap();
        let exe = exe_dir.path().join("qemu-system-fake");
        std::os::unix::fs::symlink("/bin/sleep", &exe).unwrap();
        let child = std::process::Command::new(&exe).arg("600").spawn().unwrap();
        // Until the child has exec'd, /proc shows the forked test binary,
        // which `process_alive` rightly calls no QEMU: wait for the exec.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !crate::drivers::process::process_alive(child.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the stand-in QEMU (pid {}) never showed as exec'd",
                child.id()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let rt = rt_with_pid(child.id());
        std::fs::write(
            rt.path().join(crate::drivers::runtime::SERIAL_LOG_NAME),
            serial_log,
        )
        .unwrap();
        (
            FakeQemu {
                child,
                _exe_dir: exe_dir,
            },
            rt,
        )
    }

    fn rt_with_pid(pid: u32) -> tempfile::TempDir {
        let rt = tempfile::tempdir().unwrap();
        std::fs::write(
            rt.path().join(crate::drivers::runtime::PIDFILE_NAME),
            format!("{pid}\n"),
        )
        .unwrap();
        rt
    }

    #[test]
    fn the_serial_tail_is_the_last_lines_escaped() {
        let log =
            b"one\r\ntwo\r\n\r\nthree \x1b[1mbold\x1b[0m\ninit: \xff\xfe bytes\n\xe2\x80\xaertl\n";
        let lines = last_lines(log, 3);
        assert_eq!(
            lines,
            [
                "three \\u{1b}[1mbold\\u{1b}[0m",
                "init: \u{fffd}\u{fffd} bytes",
                "\\u{202e}rtl"
            ]
        );
        assert_eq!(last_lines(b"", 10), Vec::<String>::new());
        assert_eq!(last_lines(b"a\nb\n", 10), ["a", "b"]);
    }

    #[test]
    fn the_serial_tail_names_the_log_and_reads_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("A.serial.log");
        let mut text = "x".repeat(200 << 10);
        for i in 0..20 {
            text.push_str(&format!("\nline {i}"));
        }
        std::fs::write(&log, &text).unwrap();
        let link = dir.path().join("serial.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        let tail = serial_tail(&link, 2);
        assert_eq!(
            tail,
            format!(
                "\nserial log {}, last lines:\n  line 18\n  line 19",
                log.display()
            )
        );
        std::fs::write(&log, "").unwrap();
        assert!(serial_tail(&link, 2).ends_with(": empty (the guest printed nothing)"));
        assert_eq!(duration_text(Duration::from_secs(5)), "5s");
        assert_eq!(duration_text(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn runtime_folders_are_private_whatever_the_umask() {
        crate::safefs::run_with_umask_0("host::tests::runtime_folders_are_private_with_umask_0");
    }

    #[test]
    #[ignore = "run by runtime_folders_are_private_whatever_the_umask with umask 0"]
    fn runtime_folders_are_private_with_umask_0() {
        use std::os::unix::fs::PermissionsExt;
        crate::safefs::assert_umask_0();
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("run");
        let rt = ensure_runtime_dir_in(&base, "x", "A").unwrap();
        assert_eq!(rt, base.join("x/A"));
        for p in [&base, &base.join("x"), &rt] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        // A crafted name never leaves the base; a base others can write is refused.
        assert!(ensure_runtime_dir_in(&base, "x", "../../etc").is_err());
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_runtime_dir_in(&base, "x", "B")
            .unwrap_err()
            .to_string();
        assert!(err.contains("writable by other users"), "{err}");
        // A link planted as the experiment's folder is not followed.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), base.join("y")).unwrap();
        assert!(ensure_runtime_dir_in(&base, "y", "A").is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn panic_scan_finds_a_line_cut_anywhere() {
        let log = "[    0.07] ...trying to set up timer as ExtINT IRQ...\n[    0.07] Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug\n[    0.07] CPU: 0 PID: 0\n";
        let want =
            "Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug";
        for cut in 0..=log.len() {
            let mut scan = PanicScan::default();
            let first = scan.feed(&log.as_bytes()[..cut]);
            let got = first.or_else(|| scan.feed(&log.as_bytes()[cut..]));
            assert_eq!(got.as_deref(), Some(want), "cut at {cut}");
        }
    }

    #[test]
    fn panic_scan_waits_one_feed_for_the_end_of_the_line() {
        let mut scan = PanicScan::default();
        assert_eq!(
            scan.feed(b"boot\nKernel panic - not syncing: VFS: Unable"),
            None
        );
        // Nothing new: reported as it is.
        assert_eq!(
            scan.feed(b"").as_deref(),
            Some("Kernel panic - not syncing: VFS: Unable")
        );
        // A long healthy log is not kept whole, and never matches.
        let mut scan = PanicScan::default();
        for _ in 0..1000 {
            assert_eq!(
                scan.feed("[    1.0] Run /init as init process ✓\n".as_bytes()),
                None
            );
        }
        assert!(scan.tail.len() < 400);
    }

    #[tokio::test]
    async fn boot_watch_names_a_kernel_panic() {
        let (_qemu, rt) =
            booting_guest("[ 0.1] x\n[ 0.2] Kernel panic - not syncing: No working init found.\n");
        let why = watch_boot(rt.path()).await;
        assert!(
            why.starts_with("the guest kernel panicked: Kernel panic - not syncing: No working init found. (serial log: "),
            "{why}"
        );
    }

    #[tokio::test]
    async fn boot_watch_notices_that_qemu_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let rt = rt_with_pid(pid);
        let why = watch_boot(rt.path()).await;
        assert_eq!(why, format!("its QEMU (pid {pid}) exited"));
    }

    #[tokio::test]
    async fn boot_watch_waits_while_the_guest_boots() {
        let (_qemu, rt) = booting_guest("[    1.0] Run /init as init process\n");
        let r = tokio::time::timeout(BOOT_WATCH_PERIOD * 6, watch_boot(rt.path())).await;
        assert!(r.is_err(), "a healthy boot is not reported: {r:?}");
    }
}
