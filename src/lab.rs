//! The lab: the resolved, desired experiment that `validate` produces from a
//! [`crate::model::Document`] and that the planner compares with live state.
//!
//! Invariants:
//! - Everything is expanded and checked: VM ranges are individual VMs, network
//!   mirrors are one mirror per source tap, paths are absolute (`$images` and
//!   relative paths resolved against the experiment file), sizes are bytes,
//!   durations are milliseconds, megaplan's own identities (UUID, MAC) are
//!   filled in. The names an engine chooses (a network's bridge, a nic's tap)
//!   are the provider's: `None` after validation, filled in by
//!   `Provider::assign_names` before planning (the local engine names them
//!   all; minimega chooses its own when it creates them: known after apply).
//! - Every name is safe to use in an interface alias, a file name and a QEMU
//!   argument (`validate` refuses the rest).
//! - No spans: a lab is plain data, serialisable, and the planner needs no source.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Both,
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lab {
    pub name: String,
    /// The experiment file.
    pub file: PathBuf,
    pub images: Option<PathBuf>,
    pub accel: Accel,
    pub networks: Vec<NetworkSpec>,
    pub disks: Vec<DiskSpec>,
    pub vms: Vec<VmSpec>,
    pub mirrors: Vec<MirrorSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<CaptureSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSpec>,
    /// Where the experiment is built (`provider` in `experiment`).
    #[serde(default, skip_serializing_if = "ProviderSpec::is_local")]
    pub provider: ProviderSpec,
    /// Who chose `provider` (the file, a flag, the state's record).
    #[serde(skip)]
    pub provider_origin: crate::minimega::recorded::Origin,
}

/// The engine that builds the experiment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderSpec {
    /// megaplan's own engine on this machine.
    #[default]
    Local,
    /// A minimega cluster: its command socket is `BASE/minimega`; the
    /// experiment is one minimega namespace.
    Minimega { base: PathBuf, namespace: String },
}

impl ProviderSpec {
    pub fn is_local(&self) -> bool {
        *self == ProviderSpec::Local
    }
}

impl Lab {
    pub fn vm(&self, name: &str) -> Option<&VmSpec> {
        self.vms.iter().find(|v| v.name == name)
    }
    pub fn network(&self, name: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.name == name)
    }
    pub fn disk(&self, name: &str) -> Option<&DiskSpec> {
        self.disks.iter().find(|d| d.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// `network.NAME`
    pub address: String,
    /// The bridge's interface name, if the engine names it before creating
    /// it (`Provider::assign_names`).
    pub bridge: Option<String>,
    pub host_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub name: String,
    /// `disk.NAME`
    pub address: String,
    pub size_bytes: Option<u64>,
    pub format: DiskFormat,
    /// Only "ext4".
    pub filesystem: Option<String>,
    pub keep: bool,
    pub from: Option<PathBuf>,
    /// (host source, path inside the filesystem)
    pub inject: Vec<(PathBuf, String)>,
}

impl DiskSpec {
    /// The file name of the disk inside the state folder's `disks/`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.format.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DiskSource {
    /// A `disk` of this experiment.
    Named(String),
    /// An existing image file.
    Path(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmDiskSpec {
    pub source: DiskSource,
    pub mount: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NicSpec {
    pub index: usize,
    /// `vm.NAME.nic[i]`
    pub address: String,
    pub network: String,
    /// The tap's interface name, if the engine names it before creating it
    /// (`Provider::assign_names`).
    pub tap: Option<String>,
    pub mac: String,
    pub driver: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandSpec {
    Shell(String),
    Argv(Vec<String>),
}

impl std::fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandSpec::Shell(s) => f.write_str(s),
            CommandSpec::Argv(a) => write!(f, "{a:?}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CcActionSpec {
    Exec(CommandSpec),
    Background(CommandSpec),
    Send {
        src: PathBuf,
        to: String,
    },
    Recv {
        src: String,
        to: PathBuf,
        /// Bytes the guest may send at most (`max-size`, default 1 GiB).
        #[serde(
            default = "default_max_recv",
            skip_serializing_if = "is_default_max_recv"
        )]
        max_size: u64,
    },
}

fn default_max_recv() -> u64 {
    crate::agent::client::DEFAULT_MAX_RECV
}

fn is_default_max_recv(n: &u64) -> bool {
    *n == crate::agent::client::DEFAULT_MAX_RECV
}

impl std::fmt::Display for CcActionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CcActionSpec::Exec(c) => write!(f, "exec {c}"),
            CcActionSpec::Background(c) => write!(f, "background {c}"),
            CcActionSpec::Send { src, to } => write!(f, "send {} to={to}", src.display()),
            CcActionSpec::Recv { src, to, max_size } => {
                write!(f, "recv {src} to={}", to.display())?;
                if !is_default_max_recv(max_size) {
                    write!(f, " max-size={max_size}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CcSpec {
    pub index: usize,
    /// `vm.NAME.cc[i]`
    pub address: String,
    pub action: CcActionSpec,
    pub timeout_ms: Option<u64>,
    pub allow_failure: bool,
    /// SHA-256 (hex, 16 digits) of the step's content: a changed hash reruns it.
    pub hash: String,
}

/// The wait for a guest's agent when neither the VM nor the experiment sets `boot-timeout`.
pub const DEFAULT_BOOT_TIMEOUT_MS: u64 = 120_000;

fn default_boot_timeout_ms() -> u64 {
    DEFAULT_BOOT_TIMEOUT_MS
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    /// `vm.NAME`
    pub address: String,
    pub uuid: Uuid,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub snapshot: bool,
    /// How long a step waits for the guest's agent to report in.
    #[serde(default = "default_boot_timeout_ms")]
    pub boot_timeout_ms: u64,
    pub disks: Vec<VmDiskSpec>,
    pub nics: Vec<NicSpec>,
    pub tags: BTreeMap<String, String>,
    pub after: Vec<String>,
    pub qemu_args: Vec<String>,
    pub cc: Vec<CcSpec>,
    /// The minimega node it runs on (`host`, or its mirror partner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Placed by minimega's scheduler next to this VM (`vm config
    /// colocate`): set when a mirror ties it to a VM and neither has a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colocate: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorSpec {
    /// `mirror.SRC[i]->DST[j]`
    pub address: String,
    pub source_vm: String,
    pub source_nic: usize,
    pub dest_vm: String,
    pub dest_nic: usize,
    pub direction: Direction,
    /// Set when this mirror comes from `mirrors network=NAME`.
    pub network: Option<String>,
}

impl MirrorSpec {
    pub fn address_of(src: &str, nic: usize, dst: &str, into: usize) -> String {
        format!("mirror.{src}[{nic}]->{dst}[{into}]")
    }
}

/// One tap a capture records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureTap {
    pub vm: String,
    pub nic: usize,
    /// The tap's interface name (`NicSpec::tap`, when the engine names it).
    pub tap: Option<String>,
}

/// `capture NAME`: the host records the frames of these taps into
/// `.megaplan/EXP/captures/NAME.pcap` (src/capture/).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureSpec {
    pub name: String,
    /// `capture.NAME`
    pub address: String,
    pub taps: Vec<CaptureTap>,
    /// Set when the capture records a network's member taps.
    pub network: Option<String>,
}

impl CaptureSpec {
    /// The file name inside the state folder's `captures/`.
    pub fn file_name(&self) -> String {
        format!("{}.pcap", self.name)
    }
}

/// What a check looks at (src/check/).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum CheckKind {
    /// `ping "ADDR"` from the `from` VM: passes when an echo comes back.
    Ping { target: String },
    /// `exec "CMD"` in the `from` VM, with what its result must be.
    Exec {
        command: CommandSpec,
        /// The exit code wanted (0 unless `exit` says otherwise).
        exit: i64,
        stdout_contains: Option<String>,
        stdout_matches: Option<String>,
    },
    /// `capture "NAME"; match "FILTER"`: the frames of a capture file.
    Capture {
        capture: String,
        /// A pcap filter expression ("" matches every frame).
        filter: String,
        at_least: Option<u64>,
        at_most: Option<u64>,
    },
}

/// `check NAME { ... }`: never changes the host and is not state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub name: String,
    /// The VM that pings or runs the command.
    pub from: Option<String>,
    pub kind: CheckKind,
    /// `expect "fail"`: the check passes when what it tests does not hold.
    pub expect_fail: bool,
    /// The longest one attempt may take.
    pub timeout_ms: u64,
    /// Attempts after the first, until the expectation holds.
    pub retry: u32,
    /// VMs (whose steps it follows) and earlier checks it runs after.
    pub after: Vec<String>,
}

/// A check's `timeout` when it sets none.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 30_000;
