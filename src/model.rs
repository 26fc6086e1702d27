//! The experiment model: what the user wrote, in either syntax, with a span on
//! every value.
//!
//! Invariants:
//! - Both front ends (`syntax::kdl`, `syntax::toml`) produce exactly this type;
//!   nothing downstream knows which syntax a file used.
//! - Values are kept as written (strings for sizes, MACs, UUIDs, durations...):
//!   `validate` parses them, so every semantic error is found in one place and
//!   points at the value's span.
//! - Names are not yet expanded: `vm "web[1-3]"` is one `Vm` here.
//! - Order is the order of the file; emitters (`convert`) keep it.
//! - Spans never take part in equality: `Sp<T>` compares its value, node
//!   structs every field but `span` (two files that say the same are equal).

use miette::SourceSpan;

/// A value and where it was written. Equality ignores the span.
#[derive(Clone, Debug)]
pub struct Sp<T> {
    pub value: T,
    pub span: SourceSpan,
}

impl<T> Sp<T> {
    pub fn new(value: T, span: impl Into<SourceSpan>) -> Self {
        Sp {
            value,
            span: span.into(),
        }
    }
    /// A value with no source position (built by code, not parsed).
    pub fn bare(value: T) -> Self {
        Sp {
            value,
            span: SourceSpan::from(0..0),
        }
    }
}

impl<T: PartialEq> PartialEq for Sp<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Sp<T> {}

impl<T> std::ops::Deref for Sp<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// One experiment file, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    /// Every `experiment` node (validation requires exactly one).
    pub experiments: Vec<ExperimentNode>,
    pub networks: Vec<Network>,
    pub disks: Vec<Disk>,
    pub vms: Vec<Vm>,
    pub captures: Vec<Capture>,
    pub checks: Vec<Check>,
}

impl Document {
    /// The first experiment node, if any.
    pub fn experiment(&self) -> Option<&ExperimentNode> {
        self.experiments.first()
    }
}

#[derive(Clone, Debug)]
pub struct ExperimentNode {
    pub name: Sp<String>,
    pub images: Option<Sp<String>>,
    /// "auto", "kvm" or "tcg" as written; validate checks it.
    pub accel: Option<Sp<String>>,
    /// Every VM's default `boot-timeout` (a duration as written).
    pub boot_timeout: Option<Sp<String>>,
    /// `provider "minimega" { ... }`: where the experiment is built.
    pub provider: Option<ProviderNode>,
    /// The whole node (for "second experiment node" errors).
    pub span: SourceSpan,
}

/// `provider "KIND" { base "DIR"; namespace "NAME" }` in `experiment`:
/// "local" (megaplan's own engine, the default) or "minimega" (a minimega
/// cluster reached through its command socket `BASE/minimega`).
#[derive(Clone, Debug)]
pub struct ProviderNode {
    pub kind: Sp<String>,
    /// minimega's `-base` folder.
    pub base: Option<Sp<String>>,
    /// The minimega namespace (default: the experiment's name).
    pub namespace: Option<Sp<String>>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct Network {
    pub name: Sp<String>,
    /// CIDR, e.g. "10.0.0.254/24".
    pub host_address: Option<Sp<String>>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct Disk {
    pub name: Sp<String>,
    /// "10G", "512M", "1024" (bytes)...
    pub size: Option<Sp<String>>,
    /// "qcow2" or "raw".
    pub format: Option<Sp<String>>,
    /// Only "ext4" is supported.
    pub filesystem: Option<Sp<String>>,
    pub keep: Option<Sp<bool>>,
    /// Base image path: the disk is a copy-on-write child of it.
    pub from: Option<Sp<String>>,
    pub inject: Vec<Inject>,
    pub span: SourceSpan,
}

/// Copy host file or folder `src` to `dst` inside the disk's filesystem.
#[derive(Clone, Debug)]
pub struct Inject {
    pub src: Sp<String>,
    pub dst: Sp<String>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct Vm {
    /// A name or a range such as "web[1-3]" / "web[01-10]".
    pub name: Sp<String>,
    pub uuid: Option<Sp<String>>,
    pub kernel: Option<Sp<String>>,
    pub initrd: Option<Sp<String>>,
    pub append: Option<Sp<String>>,
    /// "2048M", "1G"...
    pub memory: Option<Sp<String>>,
    pub vcpus: Option<Sp<i64>>,
    pub snapshot: Option<Sp<bool>>,
    /// How long the first step waits for the guest's agent ("60s").
    pub boot_timeout: Option<Sp<String>>,
    /// The minimega node the VM runs on (`vm config schedule`).
    pub host: Option<Sp<String>>,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<Nic>,
    pub mirrors: Vec<Mirror>,
    pub tags: Vec<Tag>,
    pub after: Vec<Sp<String>>,
    /// Extra QEMU arguments, one argv word each.
    pub qemu_args: Vec<Sp<String>>,
    pub cc: Vec<CcStep>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct VmDisk {
    /// A `disk` name of this file, or a path to an existing image.
    pub name: Sp<String>,
    /// Where the guest mounts it.
    pub mount: Option<Sp<String>>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct Nic {
    pub network: Sp<String>,
    pub mac: Option<Sp<String>>,
    /// QEMU device model, default "virtio-net-pci".
    pub driver: Option<Sp<String>>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MirrorSource {
    /// Mirror one nic of one VM (`mirrors "A" nic=0`).
    Vm(Sp<String>),
    /// Mirror every tap of a network (`mirrors network="LAN"`).
    Network(Sp<String>),
}

#[derive(Clone, Debug)]
pub struct Mirror {
    pub source: MirrorSource,
    /// Source nic index (VM form only), default 0.
    pub nic: Option<Sp<i64>>,
    /// This VM's nic that receives the copies, default 0.
    pub into: Option<Sp<i64>>,
    /// "both" (default), "ingress" or "egress", as written.
    pub direction: Option<Sp<String>>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tag {
    pub key: Sp<String>,
    pub value: Sp<String>,
}

/// A command: one string runs under the guest's `sh -c`; a list runs directly.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Shell(Sp<String>),
    Argv(Vec<Sp<String>>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum CcAction {
    Exec(Command),
    Background(Command),
    /// Host path to guest path.
    Send {
        src: Sp<String>,
        to: Sp<String>,
    },
    /// Guest path to host folder.
    Recv {
        src: Sp<String>,
        to: Sp<String>,
        /// `max-size`: the most the guest may send ("10M"; default 1 GiB).
        max_size: Option<Sp<String>>,
    },
}

impl CcAction {
    pub fn keyword(&self) -> &'static str {
        match self {
            CcAction::Exec(_) => "exec",
            CcAction::Background(_) => "background",
            CcAction::Send { .. } => "send",
            CcAction::Recv { .. } => "recv",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CcStep {
    pub action: CcAction,
    /// "30s", "5m", "1h30m"...
    pub timeout: Option<Sp<String>>,
    pub allow_failure: Option<Sp<bool>>,
    pub span: SourceSpan,
}

/// What a `capture` records.
#[derive(Clone, Debug, PartialEq)]
pub enum CaptureSource {
    /// One tap: `tap "monitor" nic=0`.
    Tap {
        vm: Sp<String>,
        nic: Option<Sp<i64>>,
    },
    /// Every member tap of a network: `network="LAN"`.
    Network(Sp<String>),
}

/// `capture NAME { tap "VM" nic=0 }` or `capture NAME network="LAN"`: the host
/// records frames into `.megaplan/EXP/captures/NAME.pcap`.
#[derive(Clone, Debug)]
pub struct Capture {
    pub name: Sp<String>,
    /// None when the node names no source (validate reports it).
    pub source: Option<CaptureSource>,
    pub span: SourceSpan,
}

/// `check NAME { ... }`: something that must hold once the lab is up.
/// Every field as written; validate decides which combinations make sense.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: Sp<String>,
    pub from: Option<Sp<String>>,
    pub ping: Option<Sp<String>>,
    pub exec: Option<Command>,
    /// "pass" (default) or "fail".
    pub expect: Option<Sp<String>>,
    pub exit: Option<Sp<i64>>,
    pub stdout_contains: Option<Sp<String>>,
    pub stdout_matches: Option<Sp<String>>,
    pub capture: Option<Sp<String>>,
    /// `match`: a pcap filter expression.
    pub filter: Option<Sp<String>>,
    pub at_least: Option<Sp<i64>>,
    pub at_most: Option<Sp<i64>>,
    pub none: Option<Sp<bool>>,
    pub timeout: Option<Sp<String>>,
    pub retry: Option<Sp<i64>>,
    pub after: Vec<Sp<String>>,
    pub span: SourceSpan,
}

impl Check {
    /// A check with this name and nothing else set.
    pub fn named(name: Sp<String>, span: SourceSpan) -> Self {
        Check {
            name,
            from: None,
            ping: None,
            exec: None,
            expect: None,
            exit: None,
            stdout_contains: None,
            stdout_matches: None,
            capture: None,
            filter: None,
            at_least: None,
            at_most: None,
            none: None,
            timeout: None,
            retry: None,
            after: Vec::new(),
            span,
        }
    }
}

/// `PartialEq` for a node struct comparing every field but `span`: where a
/// node was written is not part of what it says. The pattern names every
/// field, so a new field that is not compared does not compile.
macro_rules! eq_without_span {
    ($($t:ident { $($f:ident),* $(,)? })*) => {$(
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                let $t { $($f: _,)* span: _ } = self;
                true $(&& self.$f == other.$f)*
            }
        }
    )*};
}

eq_without_span! {
    ExperimentNode { name, images, accel, boot_timeout, provider }
    ProviderNode { kind, base, namespace }
    Network { name, host_address }
    Disk { name, size, format, filesystem, keep, from, inject }
    Inject { src, dst }
    Vm { name, uuid, kernel, initrd, append, memory, vcpus, snapshot, boot_timeout, host, disks, nics, mirrors, tags, after, qemu_args, cc }
    VmDisk { name, mount }
    Nic { network, mac, driver }
    Mirror { source, nic, into, direction }
    CcStep { action, timeout, allow_failure }
    Capture { name, source }
    Check { name, from, ping, exec, expect, exit, stdout_contains, stdout_matches, capture, filter, at_least, at_most, none, timeout, retry, after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, at: usize) -> Network {
        Network {
            name: Sp::new(name.to_string(), at..at + name.len()),
            host_address: None,
            span: (at..at + 20).into(),
        }
    }

    #[test]
    fn spans_do_not_take_part_in_equality() {
        assert_eq!(net("LAN", 0), net("LAN", 40));
        assert_ne!(net("LAN", 0), net("WAN", 0));
        let vm = |at: usize, memory: &str| {
            let (doc, _) = crate::syntax::parse(&crate::diag::SourceFile::new(
                "t.kdl",
                format!(
                    "{}vm \"a\" {{ memory \"{memory}\"; nic \"LAN\" }}",
                    " ".repeat(at)
                ),
            ));
            doc
        };
        assert_eq!(vm(0, "1G"), vm(7, "1G"));
        assert_ne!(vm(0, "1G"), vm(0, "2G"));
    }
}
