//! The resource graph: every object an experiment needs, with its stable
//! address, its attributes and what it depends on.
//!
//! Invariants:
//! - [`resources`] lists resources in a deterministic, dependency-respecting
//!   order (networks, disks, taps, VMs, mirrors, cc steps): each resource comes
//!   after everything in its `deps`.
//! - Each resource carries a typed [`Spec`] built here from the lab; its
//!   attribute map is derived from it by one function per kind
//!   ([`Spec::attrs`]), never the other way round.
//! - Attributes are what decides update or replacement; [`forces_replacement`]
//!   says which ones cannot change in place. The planner compares these maps
//!   and the state stores them, so both speak the same keys.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::PathBuf;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::digest::Digests;
use crate::lab::{CcActionSpec, Direction, DiskFormat, DiskSource, Lab, NicSpec};
use crate::state::{Attrs, Kind};

/// What a resource is, as typed data: built here from the lab (never
/// recovered from an address string), carried by the plan's changes and
/// stored in the state's records, and what the executor acts on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Target {
    Network {
        name: String,
    },
    Disk {
        name: String,
    },
    Tap {
        vm: String,
        nic: usize,
    },
    Vm {
        name: String,
    },
    Mirror {
        src_vm: String,
        src_nic: usize,
        dst_vm: String,
        dst_nic: usize,
    },
    Step {
        vm: String,
        index: usize,
    },
    Capture {
        name: String,
    },
}

impl Target {
    /// The VM this resource belongs to (a VM, its taps and its steps).
    pub fn vm(&self) -> Option<&str> {
        match self {
            Target::Vm { name } => Some(name),
            Target::Tap { vm, .. } | Target::Step { vm, .. } => Some(vm),
            _ => None,
        }
    }

    /// Every name in it is one `validate` would accept: a target read back
    /// from a state file or a saved plan names a folder only if it passes.
    pub fn check(&self) -> Result<(), String> {
        let names: Vec<&str> = match self {
            Target::Network { name }
            | Target::Disk { name }
            | Target::Vm { name }
            | Target::Capture { name } => {
                vec![name]
            }
            Target::Tap { vm, .. } | Target::Step { vm, .. } => vec![vm],
            Target::Mirror { src_vm, dst_vm, .. } => vec![src_vm, dst_vm],
        };
        for n in names {
            if let Some(why) = crate::validate::name_problem(n) {
                return Err(format!("bad name {:?} in a recorded target: {why}", n));
            }
        }
        Ok(())
    }

    /// How a plan line names it beside its owner: `nic[0]`, a disk's name.
    pub fn short(&self) -> String {
        match self {
            Target::Network { name }
            | Target::Disk { name }
            | Target::Vm { name }
            | Target::Capture { name } => name.clone(),
            Target::Tap { nic, .. } => format!("nic[{nic}]"),
            Target::Step { index, .. } => format!("cc[{index}]"),
            Target::Mirror {
                src_vm,
                src_nic,
                dst_vm,
                dst_nic,
            } => format!("{src_vm}[{src_nic}]->{dst_vm}[{dst_nic}]"),
        }
    }
}

/// One object the experiment wants.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub address: String,
    pub kind: Kind,
    pub target: Target,
    /// What it should be; its attributes are [`Spec::attrs`].
    pub spec: Spec,
    /// Addresses that must exist before this one.
    pub deps: Vec<String>,
}

impl Resource {
    /// Its attribute map, derived from the spec (what the state records).
    pub fn attrs(&self) -> Attrs {
        self.spec.attrs()
    }
}

/// What a resource should be, as typed data, one variant per kind: built
/// here from the lab, carried by each plan change (`plan::Change::spec`),
/// and what the executor builds its operations from. Its attribute map
/// ([`Spec::attrs`], one function per kind) is derived from it for diffing,
/// rendering and the state's records; the spec holds no identity of its own
/// (that is the [`Target`]) and no address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Spec {
    Network(NetworkSpec),
    Disk(Box<DiskSpec>),
    Tap(TapSpec),
    Vm(Box<VmSpec>),
    Mirror(MirrorSpec),
    Step(StepSpec),
    Capture(CaptureSpec),
}

/// A capture's recorder: the taps it records and its file's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSpec {
    pub file: String,
    /// The nics it records, each with its tap's interface name if the
    /// engine named it before apply (the `taps` attribute lists those names).
    pub taps: Vec<crate::lab::CaptureTap>,
    pub network: Option<String>,
}

/// A network: its bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The bridge's interface name, if the engine names it before apply.
    pub bridge: Option<String>,
    /// `IP/PREFIX` given to the bridge, if any.
    pub host_address: Option<String>,
}

/// A disk of the experiment (the lab's, as the host creates it) and the
/// digest of the image it starts from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub disk: crate::lab::DiskSpec,
    /// SHA-256 of `disk.from`'s content, when it was read.
    pub from_sha256: Option<String>,
}

/// A VM's tap: a persistent tun/tap on its network's bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapSpec {
    /// The tap's interface name, if the engine names it before apply.
    pub name: Option<String>,
    /// The guest's MAC on it.
    pub mac: String,
    /// The network it joins (by name) and that network's bridge.
    pub network: String,
    pub bridge: Option<String>,
}

/// How a VM uses a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmDisk {
    /// A `disk` of the experiment: its name, its file in the state folder's
    /// `disks/` and its format.
    Named {
        name: String,
        file: String,
        format: DiskFormat,
        mount: Option<String>,
    },
    /// An existing image file.
    Path {
        path: PathBuf,
        mount: Option<String>,
    },
}

impl VmDisk {
    pub fn mount(&self) -> Option<&str> {
        match self {
            VmDisk::Named { mount, .. } | VmDisk::Path { mount, .. } => mount.as_deref(),
        }
    }
}

/// A VM: what QEMU is launched with, and the digests of the files it boots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub uuid: Uuid,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub snapshot: bool,
    /// How long a step waits for the guest's agent (not an attribute).
    pub boot_timeout_ms: u64,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<NicSpec>,
    pub qemu_args: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub after: Vec<String>,
    /// The minimega node it runs on (`host`, or its mirror partner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub kernel_sha256: Option<String>,
    pub initrd_sha256: Option<String>,
    /// One digest per disk given by path, in order; `None` unless every one was read.
    pub disks_sha256: Option<Vec<String>>,
}

/// A mirror: tc mirred from one tap to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorSpec {
    /// The taps' interface names, if the engine names them before apply.
    pub source_tap: Option<String>,
    pub dest_tap: Option<String>,
    pub direction: Direction,
    /// Set when it comes from `mirrors network=NAME`.
    pub network: Option<String>,
}

/// A cc step: what runs in the guest (its VM and index are the [`Target`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub action: CcActionSpec,
    pub timeout_ms: Option<u64>,
    pub allow_failure: bool,
    /// SHA-256 (hex, 16 digits) of the step's content.
    pub hash: String,
}

impl Spec {
    /// The kind of resource this is a spec of.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Network(_) => Kind::Network,
            Spec::Disk(_) => Kind::Disk,
            Spec::Tap(_) => Kind::Tap,
            Spec::Vm(_) => Kind::Vm,
            Spec::Mirror(_) => Kind::Mirror,
            Spec::Step(_) => Kind::Step,
            Spec::Capture(_) => Kind::Capture,
        }
    }

    /// The attribute map: what the planner compares with a record, what the
    /// plan shows as `after` and what the state stores. Absent values have no
    /// key; the keys are the state format's (docs/plan-json.md).
    pub fn attrs(&self) -> Attrs {
        match self {
            Spec::Network(n) => network_attrs(n),
            Spec::Disk(d) => disk_attrs(d),
            Spec::Tap(t) => tap_attrs(t),
            Spec::Vm(v) => vm_attrs(v),
            Spec::Mirror(m) => mirror_attrs(m),
            Spec::Step(s) => step_attrs(s),
            Spec::Capture(c) => AttrsBuilder::new()
                .set("file", c.file.as_str())
                .set(
                    "taps",
                    strings(c.taps.iter().filter_map(|t| t.tap.as_ref())),
                )
                .opt("network", c.network.as_deref())
                .done(),
        }
    }
}

/// Collects `(key, value)` pairs into an attribute map, leaving out absent values.
struct AttrsBuilder(Attrs);

impl AttrsBuilder {
    fn new() -> Self {
        AttrsBuilder(Attrs::new())
    }
    fn set(&mut self, key: &str, v: impl Into<Value>) -> &mut Self {
        self.0.insert(key.to_string(), v.into());
        self
    }
    fn opt(&mut self, key: &str, v: Option<impl Into<Value>>) -> &mut Self {
        if let Some(v) = v {
            self.set(key, v);
        }
        self
    }
    fn done(&mut self) -> Attrs {
        std::mem::take(&mut self.0)
    }
}

fn strings<'a>(v: impl IntoIterator<Item = &'a String>) -> Value {
    Value::Array(v.into_iter().map(|s| Value::String(s.clone())).collect())
}

fn path_string(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn network_attrs(n: &NetworkSpec) -> Attrs {
    AttrsBuilder::new()
        .opt("bridge", n.bridge.as_deref())
        .opt("host_address", n.host_address.as_deref())
        .done()
}

fn disk_attrs(d: &DiskSpec) -> Attrs {
    let disk = &d.disk;
    AttrsBuilder::new()
        .set("file", disk.file_name())
        .set("format", disk.format.as_str())
        .opt("size", disk.size_bytes.map(fmt_bytes))
        .opt("from", disk.from.as_deref().map(path_string))
        .opt("filesystem", disk.filesystem.as_deref())
        .opt(
            "inject",
            (!disk.inject.is_empty()).then(|| {
                Value::Array(
                    disk.inject
                        .iter()
                        .map(|(s, t)| Value::String(format!("{} -> {t}", s.display())))
                        .collect(),
                )
            }),
        )
        .set("keep", disk.keep)
        .opt("from_sha256", d.from_sha256.as_deref())
        .done()
}

fn tap_attrs(t: &TapSpec) -> Attrs {
    AttrsBuilder::new()
        .opt("name", t.name.as_deref())
        .set("mac", t.mac.as_str())
        .set("network", t.network.as_str())
        .opt("bridge", t.bridge.as_deref())
        .done()
}

fn vm_attrs(v: &VmSpec) -> Attrs {
    let disks = (!v.disks.is_empty()).then(|| {
        Value::Array(
            v.disks
                .iter()
                .map(|d| {
                    let name = match d {
                        VmDisk::Named { name, .. } => name.clone(),
                        VmDisk::Path { path, .. } => path_string(path),
                    };
                    Value::String(match d.mount() {
                        Some(m) => format!("{name} mount={m}"),
                        None => name,
                    })
                })
                .collect(),
        )
    });
    let nics = Value::Array(
        v.nics
            .iter()
            .map(|n| {
                let mut m = serde_json::Map::with_capacity(4);
                m.insert("network".into(), n.network.as_str().into());
                if let Some(tap) = &n.tap {
                    m.insert("tap".into(), tap.as_str().into());
                }
                m.insert("mac".into(), n.mac.as_str().into());
                m.insert("driver".into(), n.driver.as_str().into());
                Value::Object(m)
            })
            .collect(),
    );
    let tags = (!v.tags.is_empty()).then(|| {
        Value::Object(
            v.tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    });
    AttrsBuilder::new()
        .set("uuid", v.uuid.to_string())
        .opt("kernel", v.kernel.as_deref().map(path_string))
        .opt("initrd", v.initrd.as_deref().map(path_string))
        .opt("append", v.append.as_deref())
        .set("memory", fmt_mib(v.memory_mib))
        .set("vcpus", v.vcpus)
        .set("snapshot", v.snapshot)
        .opt("disks", disks)
        .set("nics", nics)
        .opt(
            "qemu_args",
            (!v.qemu_args.is_empty()).then(|| strings(&v.qemu_args)),
        )
        .opt("tags", tags)
        .opt("after", (!v.after.is_empty()).then(|| strings(&v.after)))
        .opt("host", v.host.as_deref())
        .opt("kernel_sha256", v.kernel_sha256.as_deref())
        .opt("initrd_sha256", v.initrd_sha256.as_deref())
        .opt("disks_sha256", v.disks_sha256.as_ref().map(strings))
        .done()
}

fn mirror_attrs(m: &MirrorSpec) -> Attrs {
    AttrsBuilder::new()
        .opt("source_tap", m.source_tap.as_deref())
        .opt("dest_tap", m.dest_tap.as_deref())
        .set("direction", m.direction.as_str())
        .opt("network", m.network.as_deref())
        .done()
}

/// A step's action as its attribute: (`exec`|`background`|`send`|`recv`, text).
pub fn step_action_attr(action: &CcActionSpec) -> (&'static str, String) {
    match action {
        CcActionSpec::Exec(c) => ("exec", c.to_string()),
        CcActionSpec::Background(c) => ("background", c.to_string()),
        CcActionSpec::Send { src, to } => ("send", format!("{} to={to}", src.display())),
        CcActionSpec::Recv { src, to, .. } => ("recv", format!("{src} to={}", to.display())),
    }
}

fn step_attrs(s: &StepSpec) -> Attrs {
    let (kind, cmd) = step_action_attr(&s.action);
    AttrsBuilder::new()
        .set(kind, cmd)
        .opt("timeout_ms", s.timeout_ms)
        .opt("allow_failure", s.allow_failure.then_some(true))
        .set("hash", s.hash.as_str())
        .done()
}

/// Does a change of `key` on a resource of `kind` need a new object?
pub fn forces_replacement(kind: Kind, key: &str) -> bool {
    match kind {
        Kind::Network => key != "host_address",
        Kind::Disk => key != "keep",
        Kind::Tap => matches!(key, "name" | "mac"),
        Kind::Vm => !matches!(key, "tags" | "after"),
        Kind::Mirror => matches!(key, "source_tap" | "dest_tap"),
        Kind::Step => true,
        // A recorder records what it was started on: any change restarts it
        // (the file is appended to, not replaced).
        Kind::Capture => true,
    }
}

/// Memory in the unit users write it in.
pub fn fmt_mib(mib: u64) -> String {
    if mib.is_multiple_of(1024) && mib >= 1024 {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}

fn fmt_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (size, unit) in UNITS {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

/// Every resource of the lab, in dependency order.
pub fn resources(lab: &Lab) -> Vec<Resource> {
    resources_with(lab, &Digests::default())
}

/// [`resources`], with the content digests of the lab's files as attributes
/// (`kernel_sha256`, `initrd_sha256`, `disks_sha256`, disk `from_sha256`):
/// a file rebuilt at the same path changes them.
pub fn resources_with(lab: &Lab, digests: &Digests) -> Vec<Resource> {
    let digest = |p: &Option<PathBuf>| p.as_ref().and_then(|p| digests.get(p)).cloned();
    let taps: usize = lab.vms.iter().map(|v| v.nics.len()).sum();
    let steps: usize = lab.vms.iter().map(|v| v.cc.len()).sum();
    let mut out = Vec::with_capacity(
        lab.networks.len() + lab.disks.len() + taps + lab.vms.len() + lab.mirrors.len() + steps,
    );
    for n in &lab.networks {
        out.push(Resource {
            address: n.address.clone(),
            kind: Kind::Network,
            target: Target::Network {
                name: n.name.clone(),
            },
            spec: Spec::Network(NetworkSpec {
                bridge: n.bridge.clone(),
                host_address: n.host_address.clone(),
            }),
            deps: vec![],
        });
    }
    for d in &lab.disks {
        out.push(Resource {
            address: d.address.clone(),
            kind: Kind::Disk,
            target: Target::Disk {
                name: d.name.clone(),
            },
            spec: Spec::Disk(Box::new(DiskSpec {
                disk: d.clone(),
                from_sha256: digest(&d.from),
            })),
            deps: vec![],
        });
    }
    // By name, first wins (as `Lab::network` and `Lab::disk` would).
    let mut network_by_name: HashMap<&str, &crate::lab::NetworkSpec> =
        HashMap::with_capacity(lab.networks.len());
    for n in &lab.networks {
        network_by_name.entry(n.name.as_str()).or_insert(n);
    }
    let mut disk_by_name: HashMap<&str, &crate::lab::DiskSpec> =
        HashMap::with_capacity(lab.disks.len());
    for d in &lab.disks {
        disk_by_name.entry(d.name.as_str()).or_insert(d);
    }
    for vm in &lab.vms {
        for nic in &vm.nics {
            let bridge = network_by_name
                .get(nic.network.as_str())
                .and_then(|n| n.bridge.clone());
            out.push(Resource {
                address: nic.address.clone(),
                kind: Kind::Tap,
                target: Target::Tap {
                    vm: vm.name.clone(),
                    nic: nic.index,
                },
                spec: Spec::Tap(TapSpec {
                    name: nic.tap.clone(),
                    mac: nic.mac.clone(),
                    network: nic.network.clone(),
                    bridge,
                }),
                deps: vec![format!("network.{}", nic.network)],
            });
        }
    }
    for vm in &lab.vms {
        let mut deps: Vec<String> = vm.nics.iter().map(|n| n.address.clone()).collect();
        let disks: Vec<VmDisk> = vm
            .disks
            .iter()
            .map(|d| match &d.source {
                DiskSource::Named(n) => {
                    deps.push(format!("disk.{n}"));
                    let disk = disk_by_name.get(n.as_str());
                    VmDisk::Named {
                        name: n.clone(),
                        file: disk.map_or_else(String::new, |d| d.file_name()),
                        format: disk.map_or(DiskFormat::Qcow2, |d| d.format),
                        mount: d.mount.clone(),
                    }
                }
                DiskSource::Path(p) => VmDisk::Path {
                    path: p.clone(),
                    mount: d.mount.clone(),
                },
            })
            .collect();
        // One digest per disk given by path, in order (all or nothing).
        let disks_sha256: Option<Vec<String>> = vm
            .disks
            .iter()
            .filter_map(|d| match &d.source {
                DiskSource::Path(p) => Some(digests.get(p).cloned()),
                DiskSource::Named(_) => None,
            })
            .collect::<Option<Vec<String>>>()
            .filter(|v| !v.is_empty());
        out.push(Resource {
            address: vm.address.clone(),
            kind: Kind::Vm,
            target: Target::Vm {
                name: vm.name.clone(),
            },
            spec: Spec::Vm(Box::new(VmSpec {
                uuid: vm.uuid,
                kernel: vm.kernel.clone(),
                initrd: vm.initrd.clone(),
                append: vm.append.clone(),
                memory_mib: vm.memory_mib,
                vcpus: vm.vcpus,
                snapshot: vm.snapshot,
                boot_timeout_ms: vm.boot_timeout_ms,
                disks,
                nics: vm.nics.clone(),
                qemu_args: vm.qemu_args.clone(),
                tags: vm.tags.clone(),
                after: vm.after.clone(),
                host: vm.host.clone(),
                kernel_sha256: digest(&vm.kernel),
                initrd_sha256: digest(&vm.initrd),
                disks_sha256,
            })),
            deps,
        });
    }
    // By name, first wins (as `Lab::vm` would), without a linear scan per mirror.
    let mut vm_by_name: HashMap<&str, &crate::lab::VmSpec> = HashMap::with_capacity(lab.vms.len());
    for v in &lab.vms {
        vm_by_name.entry(v.name.as_str()).or_insert(v);
    }
    for m in &lab.mirrors {
        let src = *vm_by_name
            .get(m.source_vm.as_str())
            .expect("validated mirror source");
        let dst = *vm_by_name
            .get(m.dest_vm.as_str())
            .expect("validated mirror destination");
        let (s, d) = (&src.nics[m.source_nic], &dst.nics[m.dest_nic]);
        out.push(Resource {
            address: m.address.clone(),
            kind: Kind::Mirror,
            target: Target::Mirror {
                src_vm: m.source_vm.clone(),
                src_nic: m.source_nic,
                dst_vm: m.dest_vm.clone(),
                dst_nic: m.dest_nic,
            },
            spec: Spec::Mirror(MirrorSpec {
                source_tap: s.tap.clone(),
                dest_tap: d.tap.clone(),
                direction: m.direction,
                network: m.network.clone(),
            }),
            deps: vec![
                s.address.clone(),
                d.address.clone(),
                src.address.clone(),
                dst.address.clone(),
            ],
        });
    }
    // Captures: recorders on taps, started before any cc step runs, so a
    // capture holds every frame the steps cause.
    let mut capture_addresses = Vec::with_capacity(lab.captures.len());
    for c in &lab.captures {
        let deps = c
            .taps
            .iter()
            .map(|t| {
                vm_by_name
                    .get(t.vm.as_str())
                    .and_then(|v| v.nics.get(t.nic))
                    .map_or_else(
                        || format!("vm.{}.nic[{}]", t.vm, t.nic),
                        |n| n.address.clone(),
                    )
            })
            .collect();
        out.push(Resource {
            address: c.address.clone(),
            kind: Kind::Capture,
            target: Target::Capture {
                name: c.name.clone(),
            },
            spec: Spec::Capture(CaptureSpec {
                file: c.file_name(),
                taps: c.taps.clone(),
                network: c.network.clone(),
            }),
            deps,
        });
        capture_addresses.push(c.address.clone());
    }
    // The last step of each VM, for `after`.
    let last_step: HashMap<&str, &str> = lab
        .vms
        .iter()
        .map(|v| {
            (
                v.name.as_str(),
                v.cc.last()
                    .map_or(v.address.as_str(), |s| s.address.as_str()),
            )
        })
        .collect();
    for vm in &lab.vms {
        for step in &vm.cc {
            let mut deps = vec![vm.address.clone()];
            if step.index > 0 {
                deps.push(vm.cc[step.index - 1].address.clone());
            } else {
                deps.extend(vm.after.iter().map(|a| last_step[a.as_str()].to_string()));
                deps.extend(capture_addresses.iter().cloned());
            }
            out.push(Resource {
                address: step.address.clone(),
                kind: Kind::Step,
                target: Target::Step {
                    vm: vm.name.clone(),
                    index: step.index,
                },
                spec: Spec::Step(StepSpec {
                    action: step.action.clone(),
                    timeout_ms: step.timeout_ms,
                    allow_failure: step.allow_failure,
                    hash: step.hash.clone(),
                }),
                deps,
            });
        }
    }
    out
}

/// The dependency graph over addresses; an edge runs from a dependency to its dependent.
pub struct ResourceGraph {
    pub graph: DiGraph<String, ()>,
    pub index: HashMap<String, NodeIndex>,
}

pub fn build(resources: &[Resource]) -> ResourceGraph {
    let mut graph = DiGraph::new();
    let mut index = HashMap::new();
    for r in resources {
        index.insert(r.address.clone(), graph.add_node(r.address.clone()));
    }
    for r in resources {
        for d in &r.deps {
            if let (Some(&a), Some(&b)) = (index.get(d), index.get(&r.address)) {
                graph.add_edge(a, b, ());
            }
        }
    }
    ResourceGraph { graph, index }
}

/// The graph as DOT, in the stable order of [`resources`].
pub fn to_dot(lab: &Lab) -> String {
    let res = resources(lab);
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", lab.name.escape_default());
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  node [fontname=\"monospace\"];");
    for r in &res {
        let shape = match r.kind {
            Kind::Network => "ellipse",
            Kind::Disk => "cylinder",
            Kind::Tap => "cds",
            Kind::Vm => "box3d",
            Kind::Mirror => "diamond",
            Kind::Step => "note",
            Kind::Capture => "tab",
        };
        let _ = writeln!(out, "  \"{}\" [shape={shape}];", r.address.escape_default());
    }
    for r in &res {
        for d in &r.deps {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\";",
                d.escape_default(),
                r.address.escape_default()
            );
        }
    }
    out.push_str("}\n");
    out
}
