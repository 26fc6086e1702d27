//! Effects as data: what the executor asks a provider to do, as plain
//! values, and the pure function that turns a planned change into them.
//!
//! Invariants:
//! - [`for_change`] is pure: no file, process, socket or clock. The same
//!   change, phase, lab and record give the same ops.
//! - An op carries every value its engine needs (names, markers, specs);
//!   it names its resource's address for messages only: no provider parses it.
//! - Names in an op come from a change's typed [`Target`] (checked: a state
//!   file or a saved plan is untrusted) or from the lab, never from an address.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::graph::Target;
use crate::identity;
use crate::lab::{Accel, CaptureSpec, CcActionSpec, Direction, DiskSource, DiskSpec, Lab, VmSpec};
use crate::plan::{Action, Change};
use crate::state::{Attrs, Kind, Record};

use super::StepOutcome;

/// Half of a change: a replacement is a delete, then a create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Delete,
    Create,
}

/// A VM's nic, by VM name and index: how an engine that names its own taps
/// finds the ends of a mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NicRef {
    pub vm: String,
    pub nic: usize,
}

/// The ends of a mirror its typed target names: (source, destination).
fn mirror_ends(target: &Option<Target>) -> (Option<NicRef>, Option<NicRef>) {
    match target {
        Some(Target::Mirror {
            src_vm,
            src_nic,
            dst_vm,
            dst_nic,
        }) => (
            Some(NicRef {
                vm: src_vm.clone(),
                nic: *src_nic,
            }),
            Some(NicRef {
                vm: dst_vm.clone(),
                nic: *dst_nic,
            }),
        ),
        _ => (None, None),
    }
}

/// One thing a provider does. Each is idempotent where it can be.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// A network's bridge with our marker, up, isolated, with the host's address.
    CreateNetwork {
        address: String,
        name: String,
        bridge: String,
        host_address: Option<String>,
        marker: String,
    },
    /// Remove a network's bridge, only if it carries `marker`.
    DeleteNetwork {
        address: String,
        bridge: String,
        marker: String,
    },
    /// A VM nic's tap with our marker, enslaved to `bridge`.
    CreateTap {
        address: String,
        vm: String,
        nic: usize,
        name: String,
        /// The guest's MAC (the tap takes a MAC derived from it).
        mac: String,
        bridge: String,
        marker: String,
    },
    /// Remove a tap, only if it carries `marker`.
    DeleteTap {
        address: String,
        name: String,
        marker: String,
    },
    /// A disk image, as its spec says.
    CreateDisk { address: String, spec: DiskSpec },
    /// Remove a disk's image: `file` as the state recorded it (the
    /// provider checks it is a plain name of its own layout).
    RemoveDisk { address: String, file: String },
    /// Stop a VM (gracefully: agent sync, powerdown, then quit, then kill)
    /// and remove its runtime files and overlays. `pid` is the state's
    /// (untrusted: used only if that process is this VM's).
    StopVm {
        address: String,
        experiment: String,
        name: String,
        pid: Option<u32>,
        graceful: bool,
    },
    /// Start a VM: its spec, the accelerator resolved for this run, and the
    /// specs of the experiment's disks it uses.
    LaunchVm {
        address: String,
        experiment: String,
        accel: Accel,
        vm: Box<VmSpec>,
        disks: Vec<DiskSpec>,
    },
    /// Mirror `source_tap`'s traffic to `dest_tap`. The tap names are
    /// the engine's (empty when it chose none before apply); `source` and
    /// `dest` are the nics, from the change's typed target.
    AddMirror {
        address: String,
        source_tap: String,
        dest_tap: String,
        source: Option<NicRef>,
        dest: Option<NicRef>,
        direction: Direction,
    },
    /// Remove the mirror of `source_tap` to `dest_tap` (the nics as in
    /// [`Op::AddMirror`]; `None` for a record with no target).
    RemoveMirror {
        address: String,
        source_tap: String,
        dest_tap: String,
        source: Option<NicRef>,
        dest: Option<NicRef>,
    },
    /// Start the recorder of a capture (a no-op when it runs already): when
    /// this returns, every tap of it is being recorded.
    StartCapture {
        address: String,
        experiment: String,
        spec: CaptureSpec,
        /// A restart (the recorder died, its taps changed) appends to the
        /// file; a new capture starts it empty.
        append: bool,
    },
    /// Stop a capture's recorder; its file is kept.
    StopCapture {
        address: String,
        experiment: String,
        name: String,
    },
    /// Run one cc step through the VM's agent, exactly once per boot:
    /// `run_id` names this run; asked again with the same id, the agent
    /// answers with the outcome it had instead of running it again.
    RunStep {
        address: String,
        experiment: String,
        vm: String,
        index: usize,
        action: CcActionSpec,
        timeout: Option<Duration>,
        run_id: String,
    },
}

impl Op {
    /// The address of the resource this op acts for (messages only).
    pub fn address(&self) -> &str {
        match self {
            Op::CreateNetwork { address, .. }
            | Op::DeleteNetwork { address, .. }
            | Op::CreateTap { address, .. }
            | Op::DeleteTap { address, .. }
            | Op::CreateDisk { address, .. }
            | Op::RemoveDisk { address, .. }
            | Op::StopVm { address, .. }
            | Op::LaunchVm { address, .. }
            | Op::AddMirror { address, .. }
            | Op::RemoveMirror { address, .. }
            | Op::RunStep { address, .. }
            | Op::StartCapture { address, .. }
            | Op::StopCapture { address, .. } => address,
        }
    }

    /// A delete of an object that may be someone else's: refused as "not
    /// ours", its record goes and the object stays.
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Op::DeleteNetwork { .. }
                | Op::DeleteTap { .. }
                | Op::RemoveDisk { .. }
                | Op::StopVm { .. }
                | Op::RemoveMirror { .. }
                | Op::StopCapture { .. }
        )
    }
}

/// What an op did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done,
    /// Nothing was changed: the object is not ours (why).
    LeftAlone(String),
    /// A VM was started: its engine's process id.
    Launched {
        pid: u32,
    },
    /// A step ran (or its outcome was recovered).
    Step(StepOutcome),
}

/// An op's outcome and the attributes the engine chose (known after
/// apply), which the recorder stores in the record's attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct OpOutcome {
    pub outcome: Outcome,
    pub computed: Attrs,
}

impl OpOutcome {
    pub fn done() -> Self {
        Outcome::Done.into()
    }
}

impl From<Outcome> for OpOutcome {
    fn from(outcome: Outcome) -> Self {
        OpOutcome {
            outcome,
            computed: Attrs::new(),
        }
    }
}

/// The ops of one phase of a change, in order, or why nothing is done.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Effects {
    pub ops: Vec<Op>,
    /// Nothing to do and the record goes: why (a VM with no known name).
    pub left_alone: Option<String>,
}

impl From<Vec<Op>> for Effects {
    fn from(ops: Vec<Op>) -> Self {
        Effects {
            ops,
            left_alone: None,
        }
    }
}

/// Why a change cannot become ops: a planning problem, not an engine's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("{address} carries no {kind} identity (a damaged state or saved plan?)")]
    NoTarget { address: String, kind: &'static str },
    #[error("{address}: {why}")]
    BadTarget { address: String, why: String },
    #[error("{address}: no experiment to create from")]
    NoLab { address: String },
    #[error("{address}: the experiment has no {what} {name}")]
    NotInLab {
        address: String,
        what: &'static str,
        name: String,
    },
    #[error("{address} has no run id")]
    NoRunId { address: String },
}

/// What [`for_change`] reads besides the change.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub experiment: &'a str,
    /// The desired experiment (None for a destroy).
    pub lab: Option<&'a Lab>,
    /// The change's record as the executor saved it before the effect
    /// (a step's run id is chosen then).
    pub record: Option<&'a Record>,
}

fn s(attrs: &Option<Attrs>, key: &str) -> String {
    attrs
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn direction(d: &str) -> Direction {
    match d {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => Direction::Both,
    }
}

/// The ops that carry out `phase` of change `c`. Pure.
pub fn for_change(c: &Change, phase: Phase, cx: &Context<'_>) -> Result<Effects, OpError> {
    let address = c.address.clone();
    let marker = identity::marker(cx.experiment, &c.address);
    let after = c.after();
    let (before, after) = (&c.before, &after);
    // The typed identity, checked: a state file or a saved plan is untrusted.
    if let Some(t) = &c.target {
        t.check().map_err(|why| OpError::BadTarget {
            address: address.clone(),
            why,
        })?;
    }
    let no_target = || OpError::NoTarget {
        address: c.address.clone(),
        kind: c.kind.as_str(),
    };
    let lab = || {
        cx.lab.ok_or_else(|| OpError::NoLab {
            address: c.address.clone(),
        })
    };
    let not_in_lab = |what, name: &str| OpError::NotInLab {
        address: c.address.clone(),
        what,
        name: name.to_string(),
    };
    let ops = match (c.kind, phase) {
        (Kind::Network, Phase::Create) => {
            let name = match &c.target {
                Some(Target::Network { name }) => name.clone(),
                _ => String::new(),
            };
            vec![Op::CreateNetwork {
                address,
                name,
                bridge: s(after, "bridge"),
                host_address: after
                    .as_ref()
                    .and_then(|a| a.get("host_address"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                marker,
            }]
        }
        (Kind::Network, Phase::Delete) => {
            // An orphan's record is the link refresh saw: its `name`.
            let bridge = if before.as_ref().is_some_and(|b| b.contains_key("bridge")) {
                s(before, "bridge")
            } else {
                s(before, "name")
            };
            vec![Op::DeleteNetwork {
                address,
                bridge,
                marker,
            }]
        }
        (Kind::Tap, Phase::Create) => {
            let (vm, nic) = match &c.target {
                Some(Target::Tap { vm, nic }) => (vm.clone(), *nic),
                _ => (String::new(), 0),
            };
            vec![Op::CreateTap {
                address,
                vm,
                nic,
                name: s(after, "name"),
                mac: s(after, "mac"),
                bridge: s(after, "bridge"),
                marker,
            }]
        }
        (Kind::Tap, Phase::Delete) => vec![Op::DeleteTap {
            address,
            name: s(before, "name"),
            marker,
        }],
        (Kind::Disk, Phase::Create) => {
            let Some(Target::Disk { name }) = &c.target else {
                return Err(no_target());
            };
            let spec = lab()?.disk(name).ok_or_else(|| not_in_lab("disk", name))?;
            if c.action == Action::Update {
                // Only `keep` changed: the record says so, the image stays.
                vec![]
            } else {
                vec![Op::CreateDisk {
                    address,
                    spec: spec.clone(),
                }]
            }
        }
        (Kind::Disk, Phase::Delete) => vec![Op::RemoveDisk {
            address,
            file: s(before, "file"),
        }],
        (Kind::Vm, Phase::Create) => {
            if c.action == Action::Update {
                // Tags or `after` changed: the same QEMU runs on.
                return Ok(Effects::default());
            }
            let Some(Target::Vm { name }) = &c.target else {
                return Err(no_target());
            };
            let lab = lab()?;
            let vm = lab.vm(name).ok_or_else(|| not_in_lab("VM", name))?;
            let disks = vm
                .disks
                .iter()
                .filter_map(|d| match &d.source {
                    DiskSource::Named(n) => Some(n),
                    DiskSource::Path(_) => None,
                })
                .map(|n| lab.disk(n).cloned().ok_or_else(|| not_in_lab("disk", n)))
                .collect::<Result<Vec<_>, _>>()?;
            vec![
                // Leftovers of an interrupted launch go first.
                Op::StopVm {
                    address: address.clone(),
                    experiment: cx.experiment.to_string(),
                    name: name.clone(),
                    pid: None,
                    graceful: false,
                },
                Op::LaunchVm {
                    address,
                    experiment: cx.experiment.to_string(),
                    accel: lab.accel,
                    vm: Box::new(vm.clone()),
                    disks,
                },
            ]
        }
        (Kind::Vm, Phase::Delete) => {
            let Some(Target::Vm { name }) = &c.target else {
                // An old state's record with no runtime folder found by
                // refresh: no QEMU of it can be running.
                return Ok(Effects {
                    ops: vec![],
                    left_alone: Some("no runtime folder of this VM was found".into()),
                });
            };
            // Persistent disks want a clean shutdown; snapshot-only VMs can just stop.
            let graceful =
                before.as_ref().and_then(|b| b.get("snapshot")) == Some(&Value::Bool(false));
            vec![Op::StopVm {
                address,
                experiment: cx.experiment.to_string(),
                name: name.clone(),
                pid: cx.record.and_then(|r| r.pid),
                graceful,
            }]
        }
        (Kind::Mirror, Phase::Create) => {
            let (source, dest) = mirror_ends(&c.target);
            let mut ops = Vec::new();
            if c.action == Action::Update {
                ops.push(Op::RemoveMirror {
                    address: address.clone(),
                    source_tap: s(before, "source_tap"),
                    dest_tap: s(before, "dest_tap"),
                    source: source.clone(),
                    dest: dest.clone(),
                });
            }
            ops.push(Op::AddMirror {
                address,
                source_tap: s(after, "source_tap"),
                dest_tap: s(after, "dest_tap"),
                source,
                dest,
                direction: direction(&s(after, "direction")),
            });
            ops
        }
        (Kind::Mirror, Phase::Delete) => {
            let (source, dest) = mirror_ends(&c.target);
            vec![Op::RemoveMirror {
                address,
                source_tap: s(before, "source_tap"),
                dest_tap: s(before, "dest_tap"),
                source,
                dest,
            }]
        }
        (Kind::Step, Phase::Create) => {
            let Some(Target::Step { vm: vm_name, index }) = &c.target else {
                return Err(no_target());
            };
            let vm = lab()?
                .vm(vm_name)
                .ok_or_else(|| not_in_lab("VM", vm_name))?;
            let step = vm
                .cc
                .get(*index)
                .ok_or_else(|| not_in_lab("step", &c.address))?;
            let run_id =
                cx.record
                    .and_then(|p| p.run_id.clone())
                    .ok_or_else(|| OpError::NoRunId {
                        address: c.address.clone(),
                    })?;
            vec![Op::RunStep {
                address,
                experiment: cx.experiment.to_string(),
                vm: vm_name.clone(),
                index: *index,
                action: step.action.clone(),
                timeout: step.timeout_ms.map(Duration::from_millis),
                run_id,
            }]
        }
        // A step has nothing to delete.
        (Kind::Step, Phase::Delete) => vec![],
        (Kind::Capture, Phase::Create) => {
            let Some(Target::Capture { name }) = &c.target else {
                return Err(no_target());
            };
            let spec = lab()?
                .captures
                .iter()
                .find(|k| &k.name == name)
                .ok_or_else(|| not_in_lab("capture", name))?;
            vec![Op::StartCapture {
                address,
                experiment: cx.experiment.to_string(),
                spec: spec.clone(),
                append: c.action != Action::Create,
            }]
        }
        (Kind::Capture, Phase::Delete) => {
            let Some(Target::Capture { name }) = &c.target else {
                return Err(no_target());
            };
            vec![Op::StopCapture {
                address,
                experiment: cx.experiment.to_string(),
                name: name.clone(),
            }]
        }
    };
    Ok(ops.into())
}
