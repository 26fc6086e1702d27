//! Command errors, in the manner of jj's `cli/src/command_error.rs`: every
//! failure a command returns is a [`CommandError`] with a [`ErrorKind`],
//! the error itself (typed, kept as its source) and the hints for it.
//!
//! Invariants:
//! - The exit code is decided here, from the kind alone
//!   ([`ErrorKind::exit_code`]); docs/cli.md has the table.
//! - Hints are chosen from the error's type (a `From` impl per module
//!   error, matching on its variants), never by looking at its text.
//! - Failures that start in the CLI itself are variants of [`Problem`],
//!   not strings.

use std::path::PathBuf;

/// What kind of failure it is; decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command, its arguments or its input (the experiment file, a
    /// saved plan, the state folder) is wrong: fix it and run again.
    User,
    /// This machine or the environment lacks what the command needs (root,
    /// QEMU, /dev/net/tun, /dev/kvm, a valid `MEGAPLAN_ACCEL`, a busybox).
    Config,
    /// Another megaplan holds the experiment: its lock, or its name claimed
    /// by another state folder. Waiting (or another `--state-dir`) helps.
    Conflict,
    /// The state or the host moved on since a saved plan was made: plan again.
    Drift,
    /// An operation on the host or in a guest failed (refresh, apply, a
    /// console, a disk read); what was done is recorded.
    Host,
    /// A bug in megaplan (it could not start its runtime, render a page).
    Internal,
}

/// The exit codes, all in one place (docs/cli.md, "Exit codes").
pub mod exit {
    /// Success, or a plan with no changes.
    pub const SUCCESS: u8 = 0;
    /// A user or host error (see [`super::ErrorKind`]); also a validation
    /// failure, a cancelled confirmation, and `cc exec` when a guest's
    /// command failed.
    pub const FAILURE: u8 = 1;
    /// `plan --detailed-exitcode` when there are changes (Terraform's
    /// convention; clap also exits 2 on a usage error).
    pub const CHANGES: u8 = 2;
    /// [`super::ErrorKind::Conflict`].
    pub const CONFLICT: u8 = 3;
    /// [`super::ErrorKind::Drift`].
    pub const DRIFT: u8 = 4;
    /// [`super::ErrorKind::Config`].
    pub const CONFIG: u8 = 5;
    /// [`super::ErrorKind::Internal`] (sysexits' EX_SOFTWARE).
    pub const INTERNAL: u8 = 70;
}

impl ErrorKind {
    /// The process's exit code for a failure of this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::User | ErrorKind::Host => exit::FAILURE,
            ErrorKind::Conflict => exit::CONFLICT,
            ErrorKind::Drift => exit::DRIFT,
            ErrorKind::Config => exit::CONFIG,
            ErrorKind::Internal => exit::INTERNAL,
        }
    }
}

impl ErrorKind {
    /// How much a failure of this kind outweighs others when one command
    /// failed several ways (a failed apply): a broken machine or megaplan
    /// before a conflict or drift, those before an operation that failed.
    fn severity(self) -> u8 {
        match self {
            ErrorKind::Internal => 5,
            ErrorKind::Config => 4,
            ErrorKind::Conflict => 3,
            ErrorKind::Drift => 2,
            ErrorKind::User => 1,
            ErrorKind::Host => 0,
        }
    }
}

/// The most severe of several errors (the first among equals).
pub fn most_severe(errors: impl IntoIterator<Item = CommandError>) -> Option<CommandError> {
    errors.into_iter().fold(None, |worst, e| match worst {
        Some(w) if w.kind.severity() >= e.kind.severity() => Some(w),
        _ => Some(e),
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed command: its kind, the error, and what the user can do.
#[derive(Debug)]
pub struct CommandError {
    pub kind: ErrorKind,
    pub error: BoxError,
    pub hints: Vec<String>,
}

/// The older name, kept for the commands outside this module.
pub type CliError = CommandError;

impl CommandError {
    pub fn with_kind(kind: ErrorKind, error: impl Into<BoxError>) -> Self {
        CommandError {
            kind,
            error: error.into(),
            hints: Vec::new(),
        }
    }

    pub fn internal(error: impl Into<BoxError>) -> Self {
        Self::with_kind(ErrorKind::Internal, error)
    }

    /// Add a hint (shown after the error, in order).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    fn hinted(mut self, hint: Option<impl Into<String>>) -> Self {
        self.hints.extend(hint.map(Into::into));
        self
    }

    /// The first hint.
    pub fn hint(&self) -> Option<&str> {
        self.hints.first().map(String::as_str)
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// What `main` prints: `error: ...` and a `hint: ...` line per hint.
    pub fn render(&self) -> String {
        let mut s = format!("error: {}\n", self.error);
        for h in &self.hints {
            s.push_str(&format!("hint: {h}\n"));
        }
        s
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Failures that start in the CLI itself (arguments, confirmation, saved
/// plans, preflight), each with the kind and hint its variant calls for.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{var}={value:?} is not an accelerator")]
    BadAccelEnv { var: &'static str, value: String },
    #[error("refusing to {what} without confirmation: stdin is not a terminal")]
    NoTerminal { what: String },
    #[error("cannot read the answer: {0}")]
    Answer(#[source] std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the man page: {0}")]
    Man(#[source] std::io::Error),
    #[error("-replace cannot change a saved plan")]
    ReplaceSaved,
    #[error("{} is not a plan megaplan made: {why}", plan.display())]
    NotAPlan { plan: PathBuf, why: String },
    #[error("the saved plan {} is stale: {why}", plan.display())]
    Stale {
        plan: PathBuf,
        file: PathBuf,
        why: String,
    },
    #[error("the host changed since the plan {} was made:\n  - {}", plan.display(), drift.join("\n  - "))]
    HostChanged {
        plan: PathBuf,
        file: PathBuf,
        drift: Vec<String>,
    },
    #[error("cannot replace {}: no such resource in {} or its state", addresses.join(", "), file.display())]
    UnknownReplacement {
        addresses: Vec<String>,
        file: PathBuf,
    },
    #[error("refresh failed: {0}")]
    Refresh(#[source] crate::provider::ProviderError),
    /// The provider's clean-up after a destroy failed (minimega: clearing
    /// the namespace).
    #[error("cleaning up after the destroy ({provider}): {source}")]
    AfterDestroy {
        provider: &'static str,
        #[source]
        source: crate::provider::ProviderError,
    },
    #[error("{0}")]
    Host(#[from] crate::host::HostError),
    #[error("unknown column '{0}'")]
    UnknownColumn(String),
    #[error("there is no VM '{vm}' in {}", file.display())]
    NoSuchVm {
        vm: String,
        file: PathBuf,
        names: Vec<String>,
    },
    #[error("there is no disk '{disk}' in {}", file.display())]
    NoSuchDisk {
        disk: String,
        file: PathBuf,
        names: Vec<String>,
    },
    #[error("VM '{vm}' uses disk '{disk}' and is running")]
    DiskInUse { vm: String, disk: String },
    #[error("{what} does not exist")]
    NoDiskImage { what: String },
    #[error("extract failed: {0}")]
    Extract(#[source] crate::provider::ProviderError),
    #[error("{0}")]
    BadFilter(String),
    #[error("'{0}' is not a duration")]
    BadDuration(String),
    #[error("'{0}' is not a size between 1 byte and 448K")]
    BadMaxOutput(String),
    #[error("no VM matches the filter")]
    NoMatch,
    #[error("cannot {what}: {source}")]
    Action {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {why}", path.display())]
    NotAScript { path: PathBuf, why: String },
    #[error("cannot write {}: not a file name", path.display())]
    NotAFileName { path: PathBuf },
    #[error("{flag} '{}': {why}", value.escape_default())]
    BadName {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("-o {} is the script itself", out.display())]
    OutputIsInput { out: PathBuf },
    #[error("-o {} and --to {to}: megaplan reads a file by its extension", out.display())]
    ExtensionMismatch { out: PathBuf, to: &'static str },
    #[error("--qemu {}: not an absolute path", path.display())]
    RelativeQemu { path: PathBuf },
    #[error("--stage {}: {source}", dir.display())]
    Stage {
        dir: PathBuf,
        #[source]
        source: crate::minimega::disks::FilesError,
    },
    #[error("there is no capture '{}' in {}", crate::diag::escape(name), file.display())]
    NoSuchCapture {
        name: String,
        file: PathBuf,
        names: Vec<String>,
    },
}

impl From<Problem> for CommandError {
    fn from(p: Problem) -> Self {
        use ErrorKind::*;
        let (kind, hint): (ErrorKind, Option<String>) = match &p {
            Problem::BadAccelEnv { var, .. } => (
                Config,
                Some(format!("set {var} to auto, kvm or tcg, or unset it")),
            ),
            Problem::NoTerminal { .. } => (User, Some("pass --auto-approve".into())),
            Problem::Answer(_) => (User, None),
            Problem::Runtime(_) | Problem::Man(_) => (Internal, None),
            Problem::Write { .. } => (User, None),
            Problem::ReplaceSaved => (
                User,
                Some(
                    "make a new plan with the replacement: megaplan apply FILE -replace ADDRESS"
                        .into(),
                ),
            ),
            Problem::NotAPlan { plan, .. } => (
                User,
                Some(format!(
                    "make a new one: megaplan plan FILE --out {}",
                    plan.display()
                )),
            ),
            Problem::Stale { plan, file, .. } | Problem::HostChanged { plan, file, .. } => (
                Drift,
                Some(format!(
                    "make a new one: megaplan plan {} --out {}",
                    file.display(),
                    plan.display()
                )),
            ),
            Problem::UnknownReplacement { file, .. } => (
                User,
                Some(format!(
                    "the addresses are listed by `megaplan graph {}`",
                    file.display()
                )),
            ),
            Problem::Refresh(_)
            | Problem::AfterDestroy { .. }
            | Problem::Host(_)
            | Problem::Extract(_) => (Host, None),
            Problem::UnknownColumn(_) => (
                User,
                Some(format!("columns: {}", crate::show::ALL_COLUMNS.join(","))),
            ),
            Problem::NoSuchVm { names, .. } => (User, Some(format!("VMs: {}", names.join(", ")))),
            Problem::NoSuchDisk { names, .. } => {
                (User, Some(format!("disks: {}", names.join(", "))))
            }
            Problem::DiskInUse { .. } => (
                User,
                Some(
                    "destroy the experiment first (the disk survives destroy when keep=#true)"
                        .into(),
                ),
            ),
            Problem::NoDiskImage { .. } => (User, Some("apply the experiment first".into())),
            Problem::BadFilter(_) | Problem::NoMatch => (
                User,
                Some("filters: name=VM, uuid=UUID, tag:KEY=VALUE".into()),
            ),
            Problem::BadDuration(_) => (User, Some("write 30s, 5m or 500ms".into())),
            Problem::BadMaxOutput(_) => (User, Some("write --max-output 256K".into())),
            Problem::Action { .. } => (Host, None),
            Problem::Read { .. } | Problem::NotAFileName { .. } | Problem::OutputIsInput { .. } => {
                (User, None)
            }
            Problem::NotAScript { .. } => (
                User,
                Some("a minimega script is a text file of commands".into()),
            ),
            Problem::BadName { .. } => (User, None),
            Problem::ExtensionMismatch { .. } => (
                User,
                Some("name the output .toml for TOML, anything else for KDL".into()),
            ),
            Problem::RelativeQemu { .. } => (
                User,
                Some("minimega reads a relative qemu path as a file in its files folder".into()),
            ),
            Problem::Stage { .. } => (
                User,
                Some(
                    "give an existing folder: minimega's -filepath on the node that reads the script"
                        .into(),
                ),
            ),
            Problem::NoSuchCapture { names, .. } => (
                User,
                Some(if names.is_empty() {
                    "the file defines no capture".to_string()
                } else {
                    format!("captures: {}", names.join(", "))
                }),
            ),
        };
        CommandError::with_kind(kind, p).hinted(hint)
    }
}

impl From<crate::provider::ProviderError> for CommandError {
    fn from(e: crate::provider::ProviderError) -> Self {
        use crate::provider::ProviderError as E;
        let (kind, hint): (ErrorKind, Option<String>) = match &e {
            E::Preflight {
                missing,
                not_root,
                only_files,
            } => (
                ErrorKind::Config,
                Some(
                    if *not_root && missing.len() == 1 {
                        "run it as root: sudo megaplan ..."
                    } else if *not_root {
                        "run it as root (sudo megaplan ...), and install what else is listed"
                    } else if *only_files {
                        "create the files listed (or fix their paths in the experiment file), then run the command again"
                    } else {
                        "install what is listed, then run the command again"
                    }
                    .into(),
                ),
            ),
            E::State(_) => {
                let E::State(inner) = e else { unreachable!() };
                return inner.into();
            }
            E::MissingBootFile { path } => (
                ErrorKind::Config,
                Some(format!(
                    "build it with `megaplan image build --out {}`",
                    path.parent()
                        .map_or(".".into(), |d| d.display().to_string())
                )),
            ),
            E::NoKvm => (
                ErrorKind::Config,
                Some("run with --accel tcg (or accel \"auto\"), or load the kvm module".into()),
            ),
            E::KeepDiskExists { .. } => (ErrorKind::User, None),
            E::Unsupported { .. } => (ErrorKind::User, None),
            E::Unnamed { .. } => (
                ErrorKind::User,
                Some("the state folder or the saved plan is damaged: make a new plan (megaplan plan FILE)".into()),
            ),
            E::NameCollision(_) => (
                ErrorKind::User,
                Some("rename one of them: their derived interface names collide".into()),
            ),
            E::Minimega(m) => {
                use crate::minimega::provider::MinimegaError as M;
                match m {
                    M::Client(
                        crate::minimega::client::ClientError::Connect { .. }
                        | crate::minimega::client::ClientError::NotSocket { .. },
                    ) => (
                        ErrorKind::Config,
                        Some("start minimega (or pass --minimega-base DIR naming its -base)".into()),
                    ),
                    M::Unsupported { .. } => (ErrorKind::User, None),
                    M::Cc(crate::minimega::cc::CcError::FilesDir { .. }) => (
                        ErrorKind::Config,
                        Some("run megaplan on minimega's head node, as a user who may write in minimega's files folder (its -filepath)".into()),
                    ),
                    M::Cc(crate::minimega::cc::CcError::BadPath { .. })
                    | M::Cc(crate::minimega::cc::CcError::TooLarge { .. }) => {
                        (ErrorKind::User, None)
                    }
                    _ => (ErrorKind::Host, None),
                }
            }
            E::Host(_)
            | E::Agent { .. }
            | E::Boot(_)
            | E::NotOurs { .. }
            | E::Missing { .. }
            | E::Injected(_)
            | E::Capture(_) => (ErrorKind::Host, None),
        };
        CommandError::with_kind(kind, e).hinted(hint)
    }
}

impl From<crate::minimega::recorded::EngineError> for CommandError {
    fn from(e: crate::minimega::recorded::EngineError) -> Self {
        let hint = e.hint();
        CommandError::with_kind(ErrorKind::User, e).with_hint(hint)
    }
}

impl From<crate::apply::ApplyError> for CommandError {
    fn from(e: crate::apply::ApplyError) -> Self {
        use crate::apply::ApplyError as E;
        match e {
            E::Provider(p) => p.into(),
            E::State(s) => s.into(),
            E::Op(_) => CommandError::with_kind(ErrorKind::User, e).with_hint(
                "the state folder or the saved plan is damaged: make a new plan (megaplan plan FILE)",
            ),
            E::StepFailed { .. } | E::Incomplete { .. } => CommandError::with_kind(ErrorKind::Host, e),
            E::StepTimedOut { .. } => CommandError::with_kind(ErrorKind::Host, e).with_hint(
                "raise the step's timeout in the experiment file if it needs longer",
            ),
            E::NotRecorded { .. } => CommandError::with_kind(ErrorKind::Host, e).with_hint(
                "free space in, or fix the permissions of, the state folder, then apply again",
            ),
        }
    }
}

impl From<crate::capture::CaptureError> for CommandError {
    fn from(e: crate::capture::CaptureError) -> Self {
        use crate::capture::CaptureError as E;
        let kind = match &e {
            E::State(_) => {
                let E::State(inner) = e else { unreachable!() };
                return inner.into();
            }
            E::NoInterface(_) | E::Os { .. } | E::File(_) | E::Start { .. } | E::Unnamed { .. } => {
                ErrorKind::Host
            }
            E::Format(_) | E::BadName(_) | E::Usage(_) => ErrorKind::User,
        };
        CommandError::with_kind(kind, e)
    }
}

impl From<crate::check::report::ReportError> for CommandError {
    fn from(e: crate::check::report::ReportError) -> Self {
        use crate::check::report::ReportError as E;
        match e {
            E::State(s) => s.into(),
            E::Write { .. } => CommandError::with_kind(ErrorKind::Host, e),
            E::Bad { .. } => CommandError::with_kind(ErrorKind::User, e)
                .with_hint("run `megaplan check FILE` again to write a new report"),
        }
    }
}

impl From<crate::state::StateError> for CommandError {
    fn from(e: crate::state::StateError) -> Self {
        use crate::state::StateError as E;
        let kind = match &e {
            E::Locked { .. } => ErrorKind::Conflict,
            E::Read { .. } | E::Write { .. } => ErrorKind::Host,
            _ => ErrorKind::User,
        };
        let hint = e.hint();
        CommandError::with_kind(kind, e).hinted(hint)
    }
}

impl From<crate::owners::OwnerError> for CommandError {
    fn from(e: crate::owners::OwnerError) -> Self {
        use crate::owners::OwnerError as E;
        let kind = match &e {
            E::Taken { .. } => ErrorKind::Conflict,
            E::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                ErrorKind::Config
            }
            E::Io { .. } => ErrorKind::Host,
            E::Unsafe { .. } | E::Corrupt { .. } => ErrorKind::User,
        };
        let hint = e.hint();
        CommandError::with_kind(kind, e).hinted(hint)
    }
}

impl From<crate::diag::ReadError> for CommandError {
    fn from(e: crate::diag::ReadError) -> Self {
        let hint = e.hint();
        CommandError::with_kind(ErrorKind::User, e).hinted(hint)
    }
}

impl From<crate::host::HostError> for CommandError {
    fn from(e: crate::host::HostError) -> Self {
        Problem::Host(e).into()
    }
}

impl From<crate::serve::ServeError> for CommandError {
    fn from(e: crate::serve::ServeError) -> Self {
        use crate::serve::ServeError as E;
        let (kind, hint) = match &e {
            E::TokenNeeded(_) | E::EmptyToken => (
                ErrorKind::User,
                Some("bind to 127.0.0.1, or pass --token / --token-file"),
            ),
            E::ActionsNeedToken => (
                ErrorKind::User,
                Some(
                    "pass --token-file FILE: the page then needs ?token=... and every action carries it",
                ),
            ),
            E::TokenFile { .. } | E::TokenFileTooLarge(_) => (
                ErrorKind::User,
                Some("the token file holds one line: the token"),
            ),
            E::Bind { .. } => (
                ErrorKind::Config,
                Some("another program may listen there: pick another --listen port"),
            ),
            E::Io(_) => (ErrorKind::Host, None),
        };
        CommandError::with_kind(kind, e).hinted(hint)
    }
}

impl From<crate::console::ConsoleError> for CommandError {
    fn from(e: crate::console::ConsoleError) -> Self {
        CommandError::with_kind(ErrorKind::Host, e)
    }
}

impl From<crate::image::ImageError> for CommandError {
    fn from(e: crate::image::ImageError) -> Self {
        use crate::image::ImageError as E;
        let (kind, hint) = match &e {
            E::Kernel(_) => (
                ErrorKind::Config,
                Some(
                    "scripts/guest-kernel.sh fetches a guest kernel: pass its output as --kernel-dir",
                ),
            ),
            E::BusyboxNotFound(_) => (ErrorKind::Config, Some("apt-get install busybox-static")),
            E::AgentNotFound(_) | E::MissingLibraries { .. } | E::Spawn { .. } => {
                (ErrorKind::Config, None)
            }
            E::Invalid(_) | E::MissingModule { .. } => (ErrorKind::User, None),
            E::Io { .. } | E::Command { .. } => (ErrorKind::Host, None),
        };
        CommandError::with_kind(kind, ImageBuildFailed(e)).hinted(hint)
    }
}

/// `image build failed: ...`, keeping the image error as the source.
#[derive(Debug, thiserror::Error)]
#[error("image build failed: {0}")]
pub struct ImageBuildFailed(#[source] pub crate::image::ImageError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_exit_code() {
        let codes: Vec<u8> = [
            ErrorKind::User,
            ErrorKind::Host,
            ErrorKind::Conflict,
            ErrorKind::Drift,
            ErrorKind::Config,
            ErrorKind::Internal,
        ]
        .iter()
        .map(|k| k.exit_code())
        .collect();
        assert_eq!(codes, [1, 1, 3, 4, 5, 70]);
        // None collides with success or with `--detailed-exitcode`'s 2.
        assert!(!codes.contains(&exit::SUCCESS) && !codes.contains(&exit::CHANGES));
    }

    #[test]
    fn a_held_lock_is_a_conflict_with_its_hint() {
        let e: CommandError = crate::state::StateError::Locked {
            experiment: "x".into(),
            pid: "42".into(),
            command: "megaplan apply x.kdl".into(),
        }
        .into();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(e.exit_code(), 3);
        assert!(e.hint().unwrap().contains("wait for it to finish"));
        assert!(e.to_string().contains("locked by pid 42"));
    }

    #[test]
    fn another_state_folder_owning_the_name_is_a_conflict() {
        let e: CommandError = crate::owners::OwnerError::Taken {
            experiment: "x".into(),
            owner: "/a".into(),
            uid: 0,
            ours: "/b".into(),
        }
        .into();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.hint().unwrap().contains("--state-dir /a"));
        let denied: CommandError = crate::owners::OwnerError::Io {
            path: "/var/lib/megaplan/owners".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        }
        .into();
        assert_eq!(denied.kind, ErrorKind::Config);
    }

    #[test]
    fn a_stale_saved_plan_is_drift_naming_how_to_plan_again() {
        let e: CommandError = Problem::Stale {
            plan: "p.json".into(),
            file: "x.kdl".into(),
            why: "the state moved on".into(),
        }
        .into();
        assert_eq!(e.kind, ErrorKind::Drift);
        assert_eq!(e.exit_code(), 4);
        assert_eq!(
            e.render(),
            "error: the saved plan p.json is stale: the state moved on\n\
             hint: make a new one: megaplan plan x.kdl --out p.json\n"
        );
    }

    #[test]
    fn the_hint_comes_from_the_variant_not_the_text() {
        // A kernel error whose text says "busybox" gets the kernel hint;
        // the busybox hint belongs to the busybox variant.
        let k: CommandError = crate::image::ImageError::Kernel("no busybox here".into()).into();
        assert!(k.hint().unwrap().contains("guest-kernel.sh"), "{k:?}");
        let b: CommandError =
            crate::image::ImageError::BusyboxNotFound("/bin/busybox".into()).into();
        assert_eq!(b.hint(), Some("apt-get install busybox-static"));
        assert_eq!(b.kind, ErrorKind::Config);
        let missing: CommandError = crate::provider::ProviderError::Preflight {
            missing: vec!["root".into()],
            not_root: true,
            only_files: false,
        }
        .into();
        assert_eq!(missing.kind, ErrorKind::Config);
        assert_eq!(missing.hint(), Some("run it as root: sudo megaplan ..."));
    }

    #[test]
    fn the_source_is_kept() {
        let e: CommandError = Problem::Refresh(crate::provider::ProviderError::Host(
            crate::host::HostError::Io(std::io::Error::other("netlink went away")),
        ))
        .into();
        assert_eq!(e.kind, ErrorKind::Host);
        assert!(e.error.source().is_some());
        assert_eq!(e.to_string(), "refresh failed: netlink went away");
    }

    #[test]
    fn a_failed_apply_takes_its_kind_and_hint_from_the_worst_typed_error() {
        use crate::apply::ApplyError;
        let step = ApplyError::StepFailed {
            address: "vm.A.cc[0]".into(),
            exit: 3,
            stderr: "boom".into(),
        };
        let preflight = ApplyError::Provider(crate::provider::ProviderError::Preflight {
            missing: vec!["root".into()],
            not_root: true,
            only_files: false,
        });
        let worst = most_severe([step.into(), preflight.into()]).unwrap();
        assert_eq!(worst.kind, ErrorKind::Config);
        assert_eq!(worst.exit_code(), exit::CONFIG);
        assert_eq!(worst.hint(), Some("run it as root: sudo megaplan ..."));
        let locked = ApplyError::State(crate::state::StateError::Locked {
            experiment: "x".into(),
            pid: "42".into(),
            command: "megaplan apply x.kdl".into(),
        });
        let only: CommandError = locked.into();
        assert_eq!(only.exit_code(), exit::CONFLICT);
        let timed_out = CommandError::from(ApplyError::StepTimedOut {
            address: "vm.A.cc[0]".into(),
            after: std::time::Duration::from_secs(30),
        });
        assert_eq!(timed_out.kind, ErrorKind::Host);
        assert!(
            timed_out.hint().unwrap().contains("timeout"),
            "{timed_out:?}"
        );
        assert_eq!(timed_out.to_string(), "vm.A.cc[0] timed out after 30s");
        assert!(most_severe(std::iter::empty()).is_none());
    }

    #[test]
    fn module_errors_that_were_strings_keep_their_kind_and_type() {
        // A capture file error is a host failure with its source kept; a
        // bad capture name is the user's.
        let file: CommandError =
            crate::capture::CaptureError::File(std::io::Error::other("disk full")).into();
        assert_eq!(file.kind, ErrorKind::Host);
        assert!(file.error.source().is_some());
        let name: CommandError = crate::capture::CaptureError::BadName("../x".into()).into();
        assert_eq!(name.kind, ErrorKind::User);
        // A lock held while saving a check report stays a conflict.
        let locked: CommandError =
            crate::check::report::ReportError::State(crate::state::StateError::Locked {
                experiment: "x".into(),
                pid: "7".into(),
                command: "megaplan apply x.kdl".into(),
            })
            .into();
        assert_eq!(locked.exit_code(), exit::CONFLICT);
        // The CLI's own refusals carry their hint from the variant.
        let q: CommandError = Problem::RelativeQemu {
            path: "qemu".into(),
        }
        .into();
        assert_eq!(q.to_string(), "--qemu qemu: not an absolute path");
        assert!(q.hint().unwrap().contains("files folder"));
        let none: CommandError = Problem::NoSuchCapture {
            name: "c".into(),
            file: "x.kdl".into(),
            names: vec![],
        }
        .into();
        assert_eq!(none.hint(), Some("the file defines no capture"));
        let big: CommandError = Problem::NotAScript {
            path: "s.mm".into(),
            why: "larger than 16 MiB".into(),
        }
        .into();
        assert_eq!(
            big.render(),
            "error: cannot read s.mm: larger than 16 MiB\n\
             hint: a minimega script is a text file of commands\n"
        );
    }
}
