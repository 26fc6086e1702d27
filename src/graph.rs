//! The resource graph: every object an experiment needs, with its stable
//! address, its attributes and what it depends on.
//!
//! Invariants:
//! - [`resources`] lists resources in a deterministic, dependency-respecting
//!   order (networks, disks, taps, VMs, mirrors, cc steps): each resource comes
//!   after everything in its `deps`.
//! - Attributes are what decides update or replacement; [`forces_replacement`]
//!   says which ones cannot change in place. The planner compares these maps
//!   and the state stores them, so both speak the same keys.

use std::collections::HashMap;
use std::fmt::Write;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::digest::Digests;
use crate::lab::{CcActionSpec, DiskSource, Lab};
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
    pub attrs: Attrs,
    /// Addresses that must exist before this one.
    pub deps: Vec<String>,
}

fn attrs(v: Value) -> Attrs {
    match v {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => unreachable!("attrs are built from json! objects"),
    }
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
    let digest = |p: &Option<std::path::PathBuf>| p.as_ref().and_then(|p| digests.get(p)).cloned();
    let mut out = Vec::new();
    for n in &lab.networks {
        out.push(Resource {
            address: n.address.clone(),
            kind: Kind::Network,
            target: Target::Network {
                name: n.name.clone(),
            },
            attrs: attrs(json!({ "bridge": n.bridge, "host_address": n.host_address })),
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
            attrs: attrs(json!({
                "file": d.file_name(),
                "format": d.format.as_str(),
                "size": d.size_bytes.map(fmt_bytes),
                "from": d.from.as_ref().map(|p| p.display().to_string()),
                "filesystem": d.filesystem,
                "inject": (!d.inject.is_empty()).then(|| d.inject.iter().map(|(s, t)| format!("{} -> {t}", s.display())).collect::<Vec<_>>()),
                "keep": d.keep,
                "from_sha256": digest(&d.from),
            })),
            deps: vec![],
        });
    }
    for vm in &lab.vms {
        for nic in &vm.nics {
            let bridge = lab.network(&nic.network).map(|n| n.bridge.clone());
            out.push(Resource {
                address: nic.address.clone(),
                kind: Kind::Tap,
                target: Target::Tap {
                    vm: vm.name.clone(),
                    nic: nic.index,
                },
                attrs: attrs(json!({ "name": nic.tap, "mac": nic.mac, "network": nic.network, "bridge": bridge })),
                deps: vec![format!("network.{}", nic.network)],
            });
        }
    }
    for vm in &lab.vms {
        let mut deps: Vec<String> = vm.nics.iter().map(|n| n.address.clone()).collect();
        let disks: Vec<String> = vm
            .disks
            .iter()
            .map(|d| {
                let name = match &d.source {
                    DiskSource::Named(n) => {
                        deps.push(format!("disk.{n}"));
                        n.clone()
                    }
                    DiskSource::Path(p) => p.display().to_string(),
                };
                match &d.mount {
                    Some(m) => format!("{name} mount={m}"),
                    None => name,
                }
            })
            .collect();
        // One digest per disk given by path, in order (None if unreadable).
        let disk_digests: Vec<Option<&String>> = vm
            .disks
            .iter()
            .filter_map(|d| match &d.source {
                DiskSource::Path(p) => Some(digests.get(p)),
                DiskSource::Named(_) => None,
            })
            .collect();
        let disks_sha256 = (!disk_digests.is_empty() && disk_digests.iter().all(Option::is_some))
            .then_some(disk_digests);
        let nics: Vec<Value> = vm
            .nics
            .iter()
            .map(
                |n| json!({ "network": n.network, "tap": n.tap, "mac": n.mac, "driver": n.driver }),
            )
            .collect();
        out.push(Resource {
            address: vm.address.clone(),
            kind: Kind::Vm,
            target: Target::Vm {
                name: vm.name.clone(),
            },
            attrs: attrs(json!({
                "uuid": vm.uuid.to_string(),
                "kernel": vm.kernel.as_ref().map(|p| p.display().to_string()),
                "initrd": vm.initrd.as_ref().map(|p| p.display().to_string()),
                "append": vm.append,
                "memory": fmt_mib(vm.memory_mib),
                "vcpus": vm.vcpus,
                "snapshot": vm.snapshot,
                "disks": (!disks.is_empty()).then_some(disks),
                "nics": nics,
                "qemu_args": (!vm.qemu_args.is_empty()).then_some(&vm.qemu_args),
                "tags": (!vm.tags.is_empty()).then_some(&vm.tags),
                "after": (!vm.after.is_empty()).then_some(&vm.after),
                "kernel_sha256": digest(&vm.kernel),
                "initrd_sha256": digest(&vm.initrd),
                "disks_sha256": disks_sha256,
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
            attrs: attrs(json!({
                "source_tap": s.tap,
                "dest_tap": d.tap,
                "direction": m.direction.as_str(),
                "network": m.network,
            })),
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
            attrs: attrs(json!({
                "file": c.file_name(),
                "taps": c.taps.iter().map(|t| t.tap.clone()).collect::<Vec<_>>(),
                "network": c.network,
            })),
            deps,
        });
        capture_addresses.push(c.address.clone());
    }
    // The last step of each VM, for `after`.
    let last_step: HashMap<&str, String> = lab
        .vms
        .iter()
        .map(|v| {
            (
                v.name.as_str(),
                v.cc.last()
                    .map_or_else(|| v.address.clone(), |s| s.address.clone()),
            )
        })
        .collect();
    for vm in &lab.vms {
        for step in &vm.cc {
            let mut deps = vec![vm.address.clone()];
            if step.index > 0 {
                deps.push(vm.cc[step.index - 1].address.clone());
            } else {
                deps.extend(vm.after.iter().map(|a| last_step[a.as_str()].clone()));
                deps.extend(capture_addresses.iter().cloned());
            }
            let (kind, cmd) = match &step.action {
                CcActionSpec::Exec(c) => ("exec", c.to_string()),
                CcActionSpec::Background(c) => ("background", c.to_string()),
                CcActionSpec::Send { src, to } => ("send", format!("{} to={to}", src.display())),
                CcActionSpec::Recv { src, to, .. } => {
                    ("recv", format!("{src} to={}", to.display()))
                }
            };
            out.push(Resource {
                address: step.address.clone(),
                kind: Kind::Step,
                target: Target::Step {
                    vm: vm.name.clone(),
                    index: step.index,
                },
                attrs: attrs(json!({
                    kind: cmd,
                    "timeout_ms": step.timeout_ms,
                    "allow_failure": step.allow_failure.then_some(true),
                    "hash": step.hash,
                })),
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
