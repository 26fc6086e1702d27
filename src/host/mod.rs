//! The host: the one seam between megaplan and a machine. Refresh reads it;
//! the executor changes it; nothing else touches the system.
//!
//! Invariants:
//! - Every effect on the machine goes through [`Host`]; a remote host (SSH,
//!   several hosts) is another implementation of the same trait.
//! - Implementations refuse to change or remove an object that does not carry
//!   the ownership marker they were given.

pub mod local;

use std::path::{Path, PathBuf};

use crate::observed::Observed;
use crate::state::{State, StateDir};

pub use local::{LocalHost, StepOutcome};

use std::time::Duration;

use crate::lab::{CcActionSpec, DiskSpec, Lab, VmSpec};

/// Everything megaplan does to a machine. Each method is idempotent where it
/// can be (creating what exists with our marker is a no-op).
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
    async fn launch_vm(&self, lab: &Lab, vm: &VmSpec, sd: &StateDir) -> Result<u32, HostError>;
    /// Stop a VM (gracefully: agent sync, powerdown, then quit, then kill) and remove its runtime files and overlays.
    async fn stop_vm(
        &self,
        experiment: &str,
        vm: &str,
        pid: Option<u32>,
        graceful: bool,
        sd: &StateDir,
    ) -> Result<(), HostError>;
    /// Remove what killed disk creations left in the state's `disks/`
    /// (see [`local::sweep_disk_temporaries`]); what was removed.
    fn sweep_temporaries(&self, sd: &StateDir) -> Vec<PathBuf> {
        local::sweep_disk_temporaries(sd)
    }
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
    #[error("{0}")]
    Other(String),
}

/// Where a VM's runtime files live: `/run/megaplan/EXPERIMENT/VM/`
/// (`MEGAPLAN_RUNTIME_DIR` replaces `/run/megaplan`).
pub fn runtime_root(experiment: &str) -> PathBuf {
    let base = std::env::var_os("MEGAPLAN_RUNTIME_DIR")
        .map_or_else(|| PathBuf::from("/run/megaplan"), PathBuf::from);
    base.join(experiment)
}

pub fn runtime_dir(experiment: &str, vm: &str) -> PathBuf {
    runtime_root(experiment).join(vm)
}

/// Read the live state of an experiment from this machine (sync wrapper for the CLI).
pub fn refresh(experiment: &str, state: &State, sd: &StateDir) -> Result<Observed, HostError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let host = LocalHost::connect()?;
        host.observe(experiment, state, sd).await
    })
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
    let sock = runtime_dir(experiment, vm).join(crate::drivers::qemu::CC_SOCKET_NAME);
    let client = crate::agent::AgentClient::connect_timeout(&sock, connect_wait).await?;
    client.wait_hello(hello_wait).await?;
    Ok(client)
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
    let agent = connect_agent(experiment, vm, connect_wait, hello_wait);
    tokio::select! {
        r = agent => r.map_err(|e| HostError::Other(format!("agent of {vm} did not report in: {e}"))),
        why = watch_boot(&rt) => Err(HostError::Other(format!("agent of {vm} will not report in: {why}"))),
    }
}

/// Resolves when the guest in runtime folder `rt` is beyond hope: its QEMU
/// is gone (a pidfd), or `serial.log` shows a kernel panic (looked at
/// every [`BOOT_WATCH_PERIOD`], read as it grows). Never resolves otherwise.
/// Its cost counts against megaplan's own CPU for every guest of an apply
/// (`benches/apply-scale.sh`: 250 ms polling of the pidfile, /proc and the
/// log cost ~12 ms per VM at N=16).
async fn watch_boot(rt: &Path) -> String {
    let log = rt.join(crate::drivers::qemu::SERIAL_LOG_NAME);
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
            if let Some(pid) = crate::drivers::qemu::pid_in(rt) {
                crate::drivers::qmp::exited(pid).await;
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

/// Paths of disk files recorded in the state.
pub fn disk_path(sd: &StateDir, file: &str) -> PathBuf {
    sd.disks().join(file)
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
        let rt = rt_with_pid(child.id());
        std::fs::write(
            rt.path().join(crate::drivers::qemu::SERIAL_LOG_NAME),
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
            rt.path().join(crate::drivers::qemu::PIDFILE_NAME),
            format!("{pid}\n"),
        )
        .unwrap();
        rt
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
