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
    /// Run one cc step through the VM's agent.
    async fn run_step(
        &self,
        experiment: &str,
        vm: &str,
        action: &CcActionSpec,
        timeout: Option<Duration>,
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

/// Paths of disk files recorded in the state.
pub fn disk_path(sd: &StateDir, file: &str) -> PathBuf {
    sd.disks().join(file)
}
