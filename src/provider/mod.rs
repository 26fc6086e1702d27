//! The provider boundary: what an engine (this host's own, minimega, an
//! in-memory one for tests) is asked by the planner, the executor and the CLI.
//!
//! Invariants:
//! - Everything an engine decides is asked of it here, not hard-coded: which
//!   attribute changes force a replacement and which attributes it computes
//!   ([`Rules`], handed to the pure planner through `plan::Options`), what
//!   exists ([`Provider::refresh`], typed observations keyed by address), how
//!   an effect is carried out ([`Provider::execute`] of an [`Op`]), how a
//!   guest is reached ([`Provider::guest`]), where its files live (the
//!   layout methods, [`Provider::disk_present`]), what it needs before
//!   anything changes ([`Provider::preflight`] of a [`Requirements`]),
//!   what accelerator a run gets ([`Provider::resolve_accel`]), what
//!   bounds its layout puts on a lab ([`Provider::check_lab`]) and where a
//!   capture's file is ([`Provider::capture_file`]).
//! - An [`Op`] is a plain value: it carries the spec values it needs; no
//!   `Lab`, no address to re-parse, crosses the seam in an op (the minimega
//!   engine still holds a clone of the lab for refresh and steps:
//!   docs/ARCHITECTURE.md says where and why).
//! - A provider refuses to change or remove an object that does not carry
//!   the ownership marker the op names.

pub mod memory;
pub mod names;
pub mod needs;
pub mod ops;
pub mod recorded;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{Command, ExecResult, Hello, Transfer};
use crate::lab::Lab;
use crate::observed::Observed;
use crate::state::{Kind, State, StateDir};

pub use crate::drivers::qemu::Accel;
pub use crate::host::StepOutcome;
pub use needs::{LabProblem, Requirements};
pub use ops::{Op, OpOutcome, Outcome};

/// What an engine decides about attributes, as plain data the pure planner
/// receives (`plan::Options::rules`); the planner never owns a provider.
#[derive(Clone, Copy)]
pub struct Rules {
    /// Does a change of this attribute on a resource of this kind need a
    /// new object (replace) rather than an update in place?
    pub replaces: fn(Kind, &str) -> bool,
    /// Is this attribute computed by the engine (known after apply)? The
    /// planner does not diff a computed attribute the desired side leaves
    /// out; the op outcome returns its value and the recorder stores it.
    pub computed: fn(Kind, &str) -> bool,
}

impl Rules {
    /// The local engine's rules (`graph::forces_replacement`; it computes
    /// nothing: tap and bridge names are planned identities).
    pub const LOCAL: Rules = Rules {
        replaces: crate::graph::forces_replacement,
        computed: |_, _| false,
    };

    pub fn forces_replacement(&self, kind: Kind, key: &str) -> bool {
        (self.replaces)(kind, key)
    }

    pub fn is_computed(&self, kind: Kind, key: &str) -> bool {
        (self.computed)(kind, key)
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::LOCAL
    }
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rules { .. }")
    }
}

/// How long to wait for a guest: to connect, then for its agent's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestWait {
    pub connect: Duration,
    pub hello: Duration,
}

/// A guest reached through its engine's agent: what `cc exec`, `show` and
/// steps do with it.
#[allow(async_fn_in_trait)]
pub trait Guest {
    /// Run a command; at most `max_output` bytes of each stream kept.
    async fn exec(
        &self,
        command: Command,
        timeout: Option<Duration>,
        max_output: Option<u64>,
    ) -> Result<ExecResult, ProviderError>;
    /// Start a command in the background; its pid in the guest.
    async fn background(&self, command: Command) -> Result<u32, ProviderError>;
    /// Copy a host file into the guest.
    async fn send(&self, src: &Path, to: &str) -> Result<Transfer, ProviderError>;
    /// Copy a guest file into the host folder `to` (at most `max_size` bytes).
    async fn recv(
        &self,
        src: &str,
        to: &Path,
        idle_timeout: Duration,
        max_size: u64,
    ) -> Result<Transfer, ProviderError>;
    /// The guest's current description (hostname, interfaces, addresses).
    async fn info(&self, timeout: Duration) -> Result<Hello, ProviderError>;
}

/// An engine megaplan drives. Methods taking a [`StateDir`] act for that
/// experiment's state folder; the engine decides what, if anything, it keeps
/// there (the local engine keeps disks, overlays, logs and step outputs).
#[allow(async_fn_in_trait)]
pub trait Provider {
    /// How this engine reaches a guest.
    type Guest: Guest;

    /// A short name for messages ("local", "minimega", "memory").
    fn name(&self) -> &'static str;

    /// Replacement and computed-attribute rules, for `plan::Options`.
    fn rules(&self) -> Rules {
        Rules::LOCAL
    }

    /// Fill in the names this engine chooses for the lab's objects (each
    /// network's `bridge`, each nic's `tap`), after validation and before
    /// planning. An engine that names an object only when it creates it
    /// leaves the name unset and marks it computed in its [`Rules`] (known
    /// after apply). megaplan's own identities (UUIDs, MACs) are the lab's,
    /// not the engine's: validation fills and checks them.
    fn assign_names(&self, lab: &mut Lab) -> Result<(), ProviderError>;

    /// What changing things needs, checked before anything changes (tools,
    /// privileges, and the files in `needs`: the lab's boot files, files its
    /// steps and disks read, empty for a destroy):
    /// `Err(ProviderError::Preflight)` names every missing piece.
    async fn preflight(&self, needs: &Requirements) -> Result<(), ProviderError>;

    /// The accelerator this run's VMs get for the one asked (`auto`, `kvm`
    /// or `tcg`): the engine decides what `auto` means and whether `kvm`
    /// can be had (the local engine opens /dev/kvm; `ProviderError::NoKvm`
    /// when asked for kvm that does not open). Default: an engine that runs
    /// no QEMU here takes what is asked, and `auto` is TCG.
    fn resolve_accel(&self, asked: crate::lab::Accel) -> Result<Accel, ProviderError> {
        Ok(match asked {
            crate::lab::Accel::Kvm => Accel::Kvm,
            crate::lab::Accel::Tcg | crate::lab::Accel::Auto => Accel::Tcg,
        })
    }

    /// The bounds this engine's layout puts on a lab validation accepted
    /// (the local engine: a VM's socket paths fit `sun_path`), each located
    /// by address. Pure, and asked before the engine is connected (`megaplan
    /// validate` reaches no engine): an associated function.
    fn check_lab(_lab: &Lab) -> Vec<LabProblem>
    where
        Self: Sized,
    {
        Vec::new()
    }

    /// Refresh: what exists of this experiment, keyed by address.
    async fn refresh(
        &self,
        experiment: &str,
        state: &State,
        sd: &StateDir,
    ) -> Result<Observed, ProviderError>;

    /// Carry out one operation. Idempotent where it can be: creating what
    /// exists with the op's marker is a no-op.
    async fn execute(&self, sd: &StateDir, op: &Op) -> Result<OpOutcome, ProviderError>;

    /// Remove what interrupted operations left (the executor holds the
    /// experiment's lock when it calls this); what was removed.
    fn sweep(&self, sd: &StateDir) -> Vec<PathBuf>;

    /// Reach a VM's guest agent.
    async fn guest(
        &self,
        experiment: &str,
        vm: &str,
        wait: GuestWait,
    ) -> Result<Self::Guest, ProviderError>;

    // The layout: where this engine keeps a VM's files.

    /// Record a step's outcome where `cc responses` reads it: by default
    /// the state folder's step results (both real engines keep them there).
    fn store_step_output(
        &self,
        sd: &StateDir,
        vm: &str,
        index: usize,
        out: &StepOutcome,
    ) -> Result<(), ProviderError> {
        Ok(sd.write_step_result(vm, index, out.exit, &out.stdout, &out.stderr, out.timed_out)?)
    }

    /// The VM's serial console log on this machine, if the engine keeps one here.
    fn serial_log(&self, sd: &StateDir, vm: &str) -> Option<PathBuf>;

    /// The socket of the VM's serial console on this machine, if any.
    fn console_socket(&self, experiment: &str, vm: &str) -> Option<PathBuf>;

    /// The file of a disk of this experiment on this machine (`file` a name
    /// the state recorded, checked), if the engine keeps disks here.
    fn disk_file(&self, sd: &StateDir, file: &str) -> Result<PathBuf, ProviderError>;

    /// Whether a disk file named `file` (a name from the file, checked) is
    /// here as a plain file, never through a link: what `adopt` asks of a
    /// lost state's unrecorded disks. Default: the engine keeps none here.
    fn disk_present(&self, _sd: &StateDir, _file: &str) -> bool {
        false
    }

    // What the CLI, `cc` and `serve` read or do through the provider (the
    // only door; tests/tidy.rs). The defaults are an engine that keeps
    // none of it on this machine.

    /// A step's outcome as [`Provider::store_step_output`] recorded it.
    fn step_output(&self, _sd: &StateDir, _vm: &str, _index: usize) -> Option<StoredStep> {
        None
    }

    /// The last `max` bytes of the VM's serial console (lossy UTF-8).
    fn serial_tail(&self, _sd: &StateDir, _vm: &str, _max: u64) -> String {
        String::new()
    }

    /// Copy `guest_path` of a disk (`file` a name the state recorded) into
    /// the host folder `to` (created if missing); no VM may be using it.
    async fn extract_disk(
        &self,
        _sd: &StateDir,
        _disk: &crate::lab::DiskSpec,
        _guest_path: &str,
        _to: &Path,
    ) -> Result<crate::drivers::qemu_img::ExtractReport, ProviderError> {
        Err(ProviderError::Unsupported {
            provider: self.name(),
            what: "extract a disk here".into(),
        })
    }

    /// The file of capture `capture` (a capture of the lab) in the state
    /// folder, `captures/NAME.pcap`, brought up to date: what `capture path`
    /// prints and capture checks read. The local engine's recorder writes
    /// it there itself; minimega fetches it from the VM's node first.
    async fn capture_file(
        &self,
        _sd: &StateDir,
        _capture: &crate::lab::CaptureSpec,
    ) -> Result<PathBuf, ProviderError> {
        Err(ProviderError::Unsupported {
            provider: self.name(),
            what: "record captures".into(),
        })
    }

    /// After a destroy ran (successfully or not): forget what the engine
    /// keeps for the experiment between runs. `nothing_left` says the state
    /// records nothing any more (keep disks stay recorded); `all` that it
    /// was `destroy --all`, after which the capture files in the state
    /// folder go too ([`remove_captures`]; a plain destroy keeps them). The
    /// local engine removes the experiment's runtime folder if it is empty;
    /// minimega clears the namespace once nothing is left in it. The default
    /// keeps nothing, so does nothing.
    fn after_destroy(
        &self,
        _sd: &StateDir,
        _experiment: &str,
        _nothing_left: bool,
        _all: bool,
    ) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Whether the executor hands this engine the tasks of `kind` in
    /// `phase` that are ready together as one [`Provider::execute_batch`]
    /// (one effect against the parallelism cap). Default: no, each task's
    /// ops go through [`Provider::execute`].
    fn batches(&self, _kind: Kind, _phase: ops::Phase) -> bool {
        false
    }

    /// Carry out several tasks at once: `tasks[i]` is one task's ops, in
    /// order. The answer has, per task, each op's result in order, ending
    /// at its first error or its first `LeftAlone`. Default: each task's
    /// ops through [`Provider::execute`], one task after the other.
    async fn execute_batch(
        &self,
        sd: &StateDir,
        tasks: &[Vec<Op>],
    ) -> Vec<Vec<Result<OpOutcome, ProviderError>>> {
        let mut out = Vec::with_capacity(tasks.len());
        for ops in tasks {
            out.push(execute_in_order(self, sd, ops).await);
        }
        out
    }
}

/// One task's ops through [`Provider::execute`], in order, up to the
/// first error or `LeftAlone` (what [`Provider::execute_batch`] answers
/// per task).
pub async fn execute_in_order<P: Provider + ?Sized>(
    p: &P,
    sd: &StateDir,
    ops: &[Op],
) -> Vec<Result<OpOutcome, ProviderError>> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let r = p.execute(sd, op).await;
        let stop = !matches!(&r, Ok(o) if !matches!(o.outcome, Outcome::LeftAlone(_)));
        out.push(r);
        if stop {
            break;
        }
    }
    out
}

/// What `after_destroy` does with the state folder's capture files for
/// an engine that keeps them there (both real engines): after `destroy
/// --all` they go, a plain destroy keeps them.
pub fn remove_captures(sd: &StateDir, all: bool) -> Result<(), ProviderError> {
    if all {
        crate::capture::remove_files(sd)?;
    }
    Ok(())
}

/// A recorded step outcome: its exit (as written), stdout and stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredStep {
    pub exit: Option<String>,
    pub stdout: String,
    pub stderr: String,
    /// The timeout it ran past, when it timed out (None for a record
    /// written before megaplan kept this).
    pub timed_out: Option<std::time::Duration>,
}

/// Why an engine could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The machine refused or failed (netlink, tc, qemu-img, QEMU, QMP, files).
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// The guest's agent failed or refused.
    #[error("{vm}: {source}")]
    Agent {
        vm: String,
        #[source]
        source: crate::agent::AgentError,
    },
    /// The guest's agent never reported in: why, and what its console said.
    #[error("{0}")]
    Boot(#[from] crate::host::BootError),
    /// The state folder refused (a link, a bad name, a failed write).
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Something changing the machine needs is missing.
    #[error("cannot change the host; missing:\n  - {}", missing.join("\n  - "))]
    Preflight {
        missing: Vec<String>,
        /// Some of what is missing needs root.
        not_root: bool,
        /// Only files the lab reads are missing (no tools).
        only_files: bool,
    },
    /// The accelerator asked for is kvm, and this machine's /dev/kvm does not open.
    #[error("the accelerator is kvm, but /dev/kvm does not open")]
    NoKvm,
    /// A boot file of a VM is not there.
    #[error("{} does not exist (build one with `megaplan image build`)", path.display())]
    MissingBootFile { path: PathBuf },
    /// A keep disk's file is there with no record: the user's data.
    #[error(
        "disk '{disk}' is keep=#true and {} already exists: refusing to overwrite it (move it away to start empty, or restore the state that records it)",
        path.display()
    )]
    KeepDiskExists { disk: String, path: PathBuf },
    /// The object exists but does not carry our marker: left alone.
    #[error("{what} exists but is not ours")]
    NotOurs { what: String },
    /// What the op acts on is not there (a strict engine refuses).
    #[error("{what} does not exist")]
    Missing { what: String },
    /// This engine cannot do that.
    #[error("the {provider} provider cannot {what}")]
    Unsupported {
        provider: &'static str,
        what: String,
    },
    /// A minimega cluster refused or failed (its command socket, a node's error).
    #[error(transparent)]
    Minimega(#[from] crate::minimega::provider::MinimegaError),
    /// Two objects of the lab would share an interface name.
    #[error(transparent)]
    NameCollision(#[from] names::NameCollision),
    /// A failure injected by a test engine.
    #[error("injected failure of {0}")]
    Injected(String),
    /// A capture's recorder could not start or stop.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// An op names no interface where this engine does not choose one
    /// itself (see [`ops::named`]).
    #[error(
        "{address}: the plan or state names no {what}, and this engine does not choose one (a damaged saved plan or state?)"
    )]
    Unnamed { address: String, what: &'static str },
}

impl ProviderError {
    /// The object was there but not ours: a delete drops its record and
    /// leaves the object.
    pub fn not_ours(&self) -> Option<String> {
        use crate::drivers::netlink::NetlinkError;
        match self {
            ProviderError::NotOurs { what } => Some(what.clone()),
            ProviderError::Host(crate::host::HostError::Netlink(NetlinkError::NotOurs {
                name,
                ..
            })) => Some(format!("interface {name}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_files_go_only_after_destroy_all() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: t.path().join("state"),
            experiment: "x".into(),
        };
        // No state folder yet: nothing to remove, and no error.
        remove_captures(&sd, true).unwrap();
        let dir = sd.root.join(crate::capture::CAPTURES_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.pcap"), b"pcap").unwrap();
        remove_captures(&sd, false).unwrap();
        assert!(dir.join("a.pcap").is_file(), "a plain destroy keeps them");
        remove_captures(&sd, true).unwrap();
        assert!(!dir.join("a.pcap").exists(), "destroy --all removes them");
    }
}
