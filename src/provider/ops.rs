//! Effects as data: what the executor asks a provider to do, as plain
//! values, and the pure function that turns a planned change into them.
//!
//! Invariants:
//! - [`for_change`] is pure: no file, process, socket or clock. The same
//!   change, phase, lab and record give the same ops.
//! - An op carries every value its engine needs (names, markers, specs);
//!   it names its resource's address for messages only: no provider parses it.
//! - Names in an op come from a change's typed [`Target`] (checked: a state
//!   file or a saved plan is untrusted), its typed spec or its typed record,
//!   never from an address.
//! - A create is built from the change's typed spec (`Change::spec`); a
//!   create with no spec, or with a spec of another kind, is an [`OpError`]
//!   (a damaged saved plan), never a default.
//! - A delete (and a mirror's update, which removes the recorded mirror)
//!   reads the record only through its typed, checked view
//!   ([`super::recorded`]): a field of the wrong type or a bad interface or
//!   file name is an [`OpError`] naming the address and the field.
//! - One create still reads the lab, by the typed target's name: a VM
//!   launch. The engines launch from the lab's `VmSpec` (its name, cc steps,
//!   colocation and disk sources) and the specs of the disks it uses, none
//!   of which `graph::VmSpec` holds, and drivers/qemu.rs takes the lab's
//!   type. Everything else is built from the spec and the target alone.

use std::time::Duration;

use serde::Serialize;

use crate::graph::{Spec, Target};
use crate::identity;
use crate::lab::{Accel, CaptureSpec, CcActionSpec, Direction, DiskSource, DiskSpec, Lab, VmSpec};
use crate::plan::{Action, Change};
use crate::state::{Attrs, Kind, Record};

use super::recorded::{
    self, RecordedDisk, RecordedMirror, RecordedNetwork, RecordedTap, RecordedVm,
};
use super::{ProviderError, StepOutcome};

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
    /// `bridge` is `None` when the engine names its own (known after apply).
    CreateNetwork {
        address: String,
        name: String,
        bridge: Option<String>,
        host_address: Option<String>,
        marker: String,
    },
    /// Remove a network's bridge, only if it carries `marker` (`None`: the
    /// record names none, as for an engine that names its own).
    DeleteNetwork {
        address: String,
        bridge: Option<String>,
        /// The host's interface on the network as the record names it
        /// (checked), for an engine that made one of its own.
        host_tap: Option<String>,
        marker: String,
    },
    /// A VM nic's tap with our marker, enslaved to `bridge` (the names are
    /// `None` when the engine chooses them).
    CreateTap {
        address: String,
        vm: String,
        nic: usize,
        name: Option<String>,
        /// The guest's MAC (the tap takes a MAC derived from it).
        mac: String,
        bridge: Option<String>,
        marker: String,
    },
    /// Remove a tap, only if it carries `marker` (`None`: the record names none).
    DeleteTap {
        address: String,
        name: Option<String>,
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
    /// the engine's (`None` when it chose none before apply); `source` and
    /// `dest` are the nics, from the change's typed target.
    AddMirror {
        address: String,
        source_tap: Option<String>,
        dest_tap: Option<String>,
        source: Option<NicRef>,
        dest: Option<NicRef>,
        direction: Direction,
    },
    /// Remove the mirror of `source_tap` to `dest_tap` (the nics as in
    /// [`Op::AddMirror`]; `None` for a record with no target).
    RemoveMirror {
        address: String,
        source_tap: Option<String>,
        dest_tap: Option<String>,
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
    #[error("{address}: a {kind} to create carries no spec (a damaged saved plan?)")]
    NoSpec { address: String, kind: &'static str },
    #[error("{address}: a {kind} to create carries the spec of a {spec} (a damaged saved plan?)")]
    WrongSpec {
        address: String,
        kind: &'static str,
        spec: &'static str,
    },
    #[error("{address}: its recorded {field}: {why} (a damaged state or saved plan?)")]
    BadRecord {
        address: String,
        field: String,
        why: String,
    },
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

/// The interface name an op carries, for an engine that names its
/// interfaces before apply (the local one): `None` there is a damaged plan
/// or state, refused, never turned into "".
pub fn named<'a>(
    address: &str,
    what: &'static str,
    name: &'a Option<String>,
) -> Result<&'a str, ProviderError> {
    name.as_deref().ok_or_else(|| ProviderError::Unnamed {
        address: address.to_string(),
        what,
    })
}

/// The typed, checked view of `c`'s record (an empty one when it has none).
fn recorded<T: serde::de::DeserializeOwned>(c: &Change) -> Result<T, OpError> {
    let empty = Attrs::new();
    recorded::decode(c.before.as_ref().unwrap_or(&empty)).map_err(|e| OpError::BadRecord {
        address: c.address.clone(),
        field: e.field.unwrap_or_else(|| "attributes".into()),
        why: e.why,
    })
}

/// The ops that carry out `phase` of change `c`. Pure.
pub fn for_change(c: &Change, phase: Phase, cx: &Context<'_>) -> Result<Effects, OpError> {
    // The typed identity, checked: a state file or a saved plan is untrusted.
    if let Some(t) = &c.target {
        t.check().map_err(|why| OpError::BadTarget {
            address: c.address.clone(),
            why,
        })?;
    }
    match phase {
        Phase::Create => create(c, cx),
        Phase::Delete => delete(c, cx),
    }
}

fn no_target(c: &Change) -> OpError {
    OpError::NoTarget {
        address: c.address.clone(),
        kind: c.kind.as_str(),
    }
}

/// A create (or update) phase: from the change's typed spec.
fn create(c: &Change, cx: &Context<'_>) -> Result<Effects, OpError> {
    let address = c.address.clone();
    let marker = identity::marker(cx.experiment, &c.address);
    let spec = c.spec.as_ref().ok_or_else(|| OpError::NoSpec {
        address: c.address.clone(),
        kind: c.kind.as_str(),
    })?;
    if spec.kind() != c.kind {
        return Err(OpError::WrongSpec {
            address,
            kind: c.kind.as_str(),
            spec: spec.kind().as_str(),
        });
    }
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
    let ops = match spec {
        Spec::Network(n) => {
            let Some(Target::Network { name }) = &c.target else {
                return Err(no_target(c));
            };
            vec![Op::CreateNetwork {
                address,
                name: name.clone(),
                bridge: n.bridge.clone(),
                host_address: n.host_address.clone(),
                marker,
            }]
        }
        Spec::Tap(t) => {
            let Some(Target::Tap { vm, nic }) = &c.target else {
                return Err(no_target(c));
            };
            vec![Op::CreateTap {
                address,
                vm: vm.clone(),
                nic: *nic,
                name: t.name.clone(),
                mac: t.mac.clone(),
                bridge: t.bridge.clone(),
                marker,
            }]
        }
        Spec::Disk(d) => {
            let Some(Target::Disk { name }) = &c.target else {
                return Err(no_target(c));
            };
            if &d.disk.name != name {
                return Err(OpError::BadTarget {
                    address,
                    why: format!("its spec is of disk {:?}", d.disk.name),
                });
            }
            if c.action == Action::Update {
                // Only `keep` changed: the record says so, the image stays.
                vec![]
            } else {
                vec![Op::CreateDisk {
                    address,
                    spec: d.disk.clone(),
                }]
            }
        }
        Spec::Vm(_) => {
            if c.action == Action::Update {
                // Tags or `after` changed: the same QEMU runs on.
                return Ok(Effects::default());
            }
            let Some(Target::Vm { name }) = &c.target else {
                return Err(no_target(c));
            };
            // The engines launch from the lab's VM (see the invariants).
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
        Spec::Mirror(m) => {
            if !matches!(c.target, Some(Target::Mirror { .. })) {
                return Err(no_target(c));
            }
            let (source, dest) = mirror_ends(&c.target);
            let mut ops = Vec::new();
            if c.action == Action::Update {
                // The direction changed: the recorded mirror goes first.
                let was: RecordedMirror = recorded(c)?;
                ops.push(Op::RemoveMirror {
                    address: address.clone(),
                    source_tap: was.source_tap.map(String::from),
                    dest_tap: was.dest_tap.map(String::from),
                    source: source.clone(),
                    dest: dest.clone(),
                });
            }
            ops.push(Op::AddMirror {
                address,
                source_tap: m.source_tap.clone(),
                dest_tap: m.dest_tap.clone(),
                source,
                dest,
                direction: m.direction,
            });
            ops
        }
        Spec::Step(step) => {
            let Some(Target::Step { vm, index }) = &c.target else {
                return Err(no_target(c));
            };
            let run_id =
                cx.record
                    .and_then(|p| p.run_id.clone())
                    .ok_or_else(|| OpError::NoRunId {
                        address: c.address.clone(),
                    })?;
            vec![Op::RunStep {
                address,
                experiment: cx.experiment.to_string(),
                vm: vm.clone(),
                index: *index,
                action: step.action.clone(),
                timeout: step.timeout_ms.map(Duration::from_millis),
                run_id,
            }]
        }
        Spec::Capture(k) => {
            let Some(Target::Capture { name }) = &c.target else {
                return Err(no_target(c));
            };
            let spec = CaptureSpec {
                name: name.clone(),
                address: c.address.clone(),
                taps: k.taps.clone(),
                network: k.network.clone(),
            };
            if spec.file_name() != k.file {
                return Err(OpError::BadTarget {
                    address,
                    why: format!("its spec records into {:?}", k.file),
                });
            }
            vec![Op::StartCapture {
                address,
                experiment: cx.experiment.to_string(),
                spec,
                append: c.action != Action::Create,
            }]
        }
    };
    Ok(ops.into())
}

/// A delete phase: from the typed, checked view of the change's record.
fn delete(c: &Change, cx: &Context<'_>) -> Result<Effects, OpError> {
    let address = c.address.clone();
    let marker = identity::marker(cx.experiment, &c.address);
    let ops = match c.kind {
        Kind::Network => {
            let r: RecordedNetwork = recorded(c)?;
            vec![Op::DeleteNetwork {
                address,
                bridge: r.bridge().map(String::from),
                host_tap: r.host_tap.map(String::from),
                marker,
            }]
        }
        Kind::Tap => {
            let r: RecordedTap = recorded(c)?;
            vec![Op::DeleteTap {
                address,
                name: r.name.map(String::from),
                marker,
            }]
        }
        Kind::Disk => {
            let r: RecordedDisk = recorded(c)?;
            vec![Op::RemoveDisk {
                address,
                file: r.file.into(),
            }]
        }
        Kind::Vm => {
            let Some(Target::Vm { name }) = &c.target else {
                // An old state's record with no runtime folder found by
                // refresh: no QEMU of it can be running.
                return Ok(Effects {
                    ops: vec![],
                    left_alone: Some("no runtime folder of this VM was found".into()),
                });
            };
            let r: RecordedVm = recorded(c)?;
            // Persistent disks want a clean shutdown; snapshot-only VMs can just stop.
            vec![Op::StopVm {
                address,
                experiment: cx.experiment.to_string(),
                name: name.clone(),
                pid: cx.record.and_then(|r| r.pid),
                graceful: r.snapshot == Some(false),
            }]
        }
        Kind::Mirror => {
            let (source, dest) = mirror_ends(&c.target);
            let r: RecordedMirror = recorded(c)?;
            vec![Op::RemoveMirror {
                address,
                source_tap: r.source_tap.map(String::from),
                dest_tap: r.dest_tap.map(String::from),
                source,
                dest,
            }]
        }
        // A step has nothing to delete.
        Kind::Step => vec![],
        Kind::Capture => {
            let Some(Target::Capture { name }) = &c.target else {
                return Err(no_target(c));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Mode, Plan};
    use crate::state::State;
    use serde_json::{Value, json};

    const LAB: &str = r#"
experiment "exp" { images "/img" }
network "LAN" { host-address "10.9.0.254/24"; }
network "mon"
disk "data" size="1M" format="raw"
vm "A" {
    kernel "/img/k"
    nic "LAN"
    disk "data" mount="/data"
    cc { exec "ip link set eth0 up" timeout="30s"; }
}
vm "monitor" { kernel "/img/k"; nic "mon"; mirrors "A" direction="ingress"; }
capture "lan" network="LAN"
"#;

    fn planned() -> (Lab, Plan) {
        let lab = crate::plan::tests::lab(LAB);
        let p = crate::plan::plan(Some(&lab), &State::new("exp"), None, Mode::Apply);
        (lab, p)
    }

    fn cx<'a>(lab: Option<&'a Lab>, record: Option<&'a Record>) -> Context<'a> {
        Context {
            experiment: "exp",
            lab,
            record,
        }
    }

    fn change<'a>(p: &'a Plan, address: &str) -> &'a Change {
        p.changes
            .iter()
            .find(|c| c.address == address)
            .unwrap_or_else(|| panic!("no change {address}"))
    }

    fn create(c: &Change, cx: &Context<'_>) -> Vec<Op> {
        for_change(c, Phase::Create, cx).unwrap().ops
    }

    /// A recorded resource's delete, as the planner makes it from a record.
    fn deleting(address: &str, kind: Kind, target: Option<Target>, before: Value) -> Change {
        Change {
            address: address.into(),
            kind,
            target,
            action: Action::Delete,
            before: Some(serde_json::from_value(before).unwrap()),
            spec: None,
            reasons: vec![],
            replace_paths: vec![],
            deps: vec![],
            prior_deps: vec![],
        }
    }

    fn delete(c: &Change) -> Result<Vec<Op>, OpError> {
        for_change(c, Phase::Delete, &cx(None, None)).map(|e| e.ops)
    }

    #[test]
    fn a_create_is_built_from_its_spec() {
        let (lab, p) = planned();
        let marker = |a: &str| identity::marker("exp", a);
        let bridge = |a: &str| Some(identity::bridge_name("exp", a));
        let tap = |a: &str| Some(identity::tap_name("exp", a));
        let net = change(&p, "network.LAN");
        assert_eq!(
            create(net, &cx(None, None)),
            [Op::CreateNetwork {
                address: "network.LAN".into(),
                name: "LAN".into(),
                bridge: bridge("network.LAN"),
                host_address: Some("10.9.0.254/24".into()),
                marker: marker("network.LAN"),
            }]
        );
        let nic = change(&p, "vm.A.nic[0]");
        let Some(Spec::Tap(t)) = &nic.spec else {
            panic!("{nic:?}")
        };
        assert_eq!(
            create(nic, &cx(None, None)),
            [Op::CreateTap {
                address: "vm.A.nic[0]".into(),
                vm: "A".into(),
                nic: 0,
                name: tap("vm.A.nic[0]"),
                mac: t.mac.clone(),
                bridge: bridge("network.LAN"),
                marker: marker("vm.A.nic[0]"),
            }]
        );
        // A disk and a step need no lab: their specs hold what runs.
        let disk = change(&p, "disk.data");
        assert_eq!(
            create(disk, &cx(None, None)),
            [Op::CreateDisk {
                address: "disk.data".into(),
                spec: lab.disk("data").unwrap().clone(),
            }]
        );
        let step = change(&p, "vm.A.cc[0]");
        let mut rec = Record::new(Kind::Step, step.after().unwrap());
        rec.run_id = Some("r1".into());
        assert_eq!(
            create(step, &cx(None, Some(&rec))),
            [Op::RunStep {
                address: "vm.A.cc[0]".into(),
                experiment: "exp".into(),
                vm: "A".into(),
                index: 0,
                action: lab.vm("A").unwrap().cc[0].action.clone(),
                timeout: Some(Duration::from_secs(30)),
                run_id: "r1".into(),
            }]
        );
        let mirror = change(&p, "mirror.A[0]->monitor[0]");
        let end = |vm: &str| {
            Some(NicRef {
                vm: vm.into(),
                nic: 0,
            })
        };
        assert_eq!(
            create(mirror, &cx(None, None)),
            [Op::AddMirror {
                address: "mirror.A[0]->monitor[0]".into(),
                source_tap: tap("vm.A.nic[0]"),
                dest_tap: tap("vm.monitor.nic[0]"),
                source: end("A"),
                dest: end("monitor"),
                direction: Direction::Ingress,
            }]
        );
        // What the op carries is the spec's, not the lab's.
        let mut changed = disk.clone();
        let Some(Spec::Disk(d)) = &mut changed.spec else {
            unreachable!()
        };
        d.disk.size_bytes = Some(2 << 20);
        let [Op::CreateDisk { spec, .. }] = &create(&changed, &cx(Some(&lab), None))[..] else {
            panic!()
        };
        assert_eq!(spec.size_bytes, Some(2 << 20));
        // A VM launch reads the lab by the target's name.
        let vm = change(&p, "vm.A");
        assert!(matches!(
            for_change(vm, Phase::Create, &cx(None, None)),
            Err(OpError::NoLab { .. })
        ));
        let ops = create(vm, &cx(Some(&lab), None));
        assert!(
            matches!(&ops[..], [Op::StopVm { graceful: false, .. }, Op::LaunchVm { vm, disks, .. }]
                if vm.name == "A" && disks == std::slice::from_ref(lab.disk("data").unwrap())),
            "{ops:?}"
        );
        let capture = change(&p, "capture.lan");
        assert_eq!(
            create(capture, &cx(None, None)),
            [Op::StartCapture {
                address: "capture.lan".into(),
                experiment: "exp".into(),
                spec: lab.captures[0].clone(),
                append: false,
            }]
        );
    }

    #[test]
    fn a_mirror_update_removes_the_recorded_mirror() {
        let (_, p) = planned();
        let mut m = change(&p, "mirror.A[0]->monitor[0]").clone();
        m.action = Action::Update;
        m.before = Some(
            serde_json::from_value(
                json!({"source_tap": "old-s", "dest_tap": "old-d", "direction": "both"}),
            )
            .unwrap(),
        );
        let ops = create(&m, &cx(None, None));
        assert!(
            matches!(&ops[..], [Op::RemoveMirror { source_tap: Some(s), dest_tap: Some(d), .. }, Op::AddMirror { direction: Direction::Ingress, .. }]
                if s == "old-s" && d == "old-d"),
            "{ops:?}"
        );
        m.before = Some(serde_json::from_value(json!({"source_tap": ["x"]})).unwrap());
        assert!(matches!(
            for_change(&m, Phase::Create, &cx(None, None)),
            Err(OpError::BadRecord { field, .. }) if field == "source_tap"
        ));
    }

    #[test]
    fn a_delete_is_built_from_its_record() {
        let net = Some(Target::Network { name: "LAN".into() });
        let c = deleting(
            "network.LAN",
            Kind::Network,
            net.clone(),
            json!({"bridge": "mpb1", "host_address": "10.0.0.1/24"}),
        );
        let marker = identity::marker("exp", "network.LAN");
        assert_eq!(
            delete(&c).unwrap(),
            [Op::DeleteNetwork {
                address: "network.LAN".into(),
                bridge: Some("mpb1".into()),
                host_tap: None,
                marker: marker.clone(),
            }]
        );
        // An engine's host interface travels as recorded, checked.
        let minimega = deleting(
            "network.LAN",
            Kind::Network,
            net.clone(),
            json!({"host_address": "10.0.0.1/24", "host_tap": "mpb0123456789ab"}),
        );
        assert!(matches!(
            &delete(&minimega).unwrap()[..],
            [Op::DeleteNetwork { bridge: None, host_tap: Some(t), .. }] if t == "mpb0123456789ab"
        ));
        let hostile = deleting(
            "network.LAN",
            Kind::Network,
            net.clone(),
            json!({"host_tap": "../../etc"}),
        );
        assert!(matches!(
            delete(&hostile),
            Err(OpError::BadRecord { field, .. }) if field == "host_tap"
        ));
        // An orphan link's record names the link; an engine that names its
        // own bridges records none (and says so: `None`, not "").
        let orphan = deleting("network.LAN", Kind::Network, None, json!({"name": "mpb2"}));
        assert!(
            matches!(&delete(&orphan).unwrap()[..], [Op::DeleteNetwork { bridge: Some(b), .. }] if b == "mpb2")
        );
        let unnamed = deleting("network.LAN", Kind::Network, net, json!({}));
        assert!(matches!(
            &delete(&unnamed).unwrap()[..],
            [Op::DeleteNetwork { bridge: None, .. }]
        ));

        let tap = Some(Target::Tap {
            vm: "A".into(),
            nic: 0,
        });
        let c = deleting(
            "vm.A.nic[0]",
            Kind::Tap,
            tap,
            json!({"name": "mpt1", "mac": "52:54:00:00:00:01"}),
        );
        assert!(
            matches!(&delete(&c).unwrap()[..], [Op::DeleteTap { name: Some(n), .. }] if n == "mpt1")
        );

        let disk = Some(Target::Disk {
            name: "data".into(),
        });
        let c = deleting(
            "disk.data",
            Kind::Disk,
            disk,
            json!({"file": "data.raw", "keep": false}),
        );
        assert_eq!(
            delete(&c).unwrap(),
            [Op::RemoveDisk {
                address: "disk.data".into(),
                file: "data.raw".into(),
            }]
        );

        let vm = Some(Target::Vm { name: "A".into() });
        for (snapshot, graceful) in [(json!(false), true), (json!(true), false)] {
            let c = deleting("vm.A", Kind::Vm, vm.clone(), json!({"snapshot": snapshot}));
            assert!(
                matches!(&delete(&c).unwrap()[..], [Op::StopVm { graceful: g, .. }] if *g == graceful)
            );
        }
        // An orphan VM's record holds only its pid: it stops without waiting.
        let c = deleting("vm.A", Kind::Vm, vm, json!({"pid": 4242}));
        assert!(matches!(
            &delete(&c).unwrap()[..],
            [Op::StopVm {
                graceful: false,
                ..
            }]
        ));

        let mirror = Some(Target::Mirror {
            src_vm: "A".into(),
            src_nic: 0,
            dst_vm: "monitor".into(),
            dst_nic: 0,
        });
        let c = deleting(
            "mirror.A[0]->monitor[0]",
            Kind::Mirror,
            mirror,
            json!({"source_tap": "mpt1", "dest_tap": "mpt2", "direction": "both"}),
        );
        assert!(matches!(&delete(&c).unwrap()[..],
            [Op::RemoveMirror { source_tap: Some(s), dest_tap: Some(d), source: Some(_), dest: Some(_), .. }]
            if s == "mpt1" && d == "mpt2"));
    }

    #[test]
    fn a_bad_record_is_refused_with_its_address_and_field() {
        let bad = |c: Change, field: &str| match delete(&c) {
            Err(e @ OpError::BadRecord { .. }) => {
                let OpError::BadRecord {
                    address, field: f, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(
                    (address.as_str(), f.as_str()),
                    (c.address.as_str(), field),
                    "{e}"
                );
                e.to_string()
            }
            other => panic!("{}: {other:?}", c.address),
        };
        let tap = || {
            Some(Target::Tap {
                vm: "A".into(),
                nic: 0,
            })
        };
        let e = bad(
            deleting("vm.A.nic[0]", Kind::Tap, tap(), json!({"name": "../../x"})),
            "name",
        );
        assert!(
            e.starts_with("vm.A.nic[0]: its recorded name: '../../x': not a valid interface name"),
            "{e}"
        );
        bad(
            deleting(
                "vm.A.nic[0]",
                Kind::Tap,
                tap(),
                json!({"name": "a-name-longer-than-15"}),
            ),
            "name",
        );
        bad(
            deleting("vm.A.nic[0]", Kind::Tap, tap(), json!({"name": 12})),
            "name",
        );
        let net = Some(Target::Network { name: "LAN".into() });
        bad(
            deleting(
                "network.LAN",
                Kind::Network,
                net.clone(),
                json!({"bridge": "br 0"}),
            ),
            "bridge",
        );
        bad(
            deleting("network.LAN", Kind::Network, None, json!({"name": ""})),
            "name",
        );
        let disk = || {
            Some(Target::Disk {
                name: "data".into(),
            })
        };
        let e = bad(
            deleting("disk.data", Kind::Disk, disk(), json!({"file": 1})),
            "file",
        );
        assert!(
            e.contains("invalid type: integer `1`, expected a string"),
            "{e}"
        );
        bad(
            deleting(
                "disk.data",
                Kind::Disk,
                disk(),
                json!({"file": "../state.json"}),
            ),
            "file",
        );
        bad(
            deleting("disk.data", Kind::Disk, disk(), json!({"keep": true})),
            "file",
        );
        let vm = Some(Target::Vm { name: "A".into() });
        bad(
            deleting("vm.A", Kind::Vm, vm, json!({"snapshot": "false"})),
            "snapshot",
        );
        let m = Some(Target::Mirror {
            src_vm: "A".into(),
            src_nic: 0,
            dst_vm: "B".into(),
            dst_nic: 0,
        });
        bad(
            deleting(
                "mirror.A[0]->B[0]",
                Kind::Mirror,
                m,
                json!({"source_tap": "ok", "dest_tap": {"x": 1}}),
            ),
            "dest_tap",
        );
    }

    #[test]
    fn a_create_without_its_spec_is_refused() {
        let (lab, p) = planned();
        // A saved plan whose change lost its spec reads back, and is refused.
        let mut json = serde_json::to_value(&p).unwrap();
        for c in json["changes"].as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("spec");
        }
        let damaged: Plan = serde_json::from_value(json).unwrap();
        let mut rec = Record::new(Kind::Step, Attrs::new());
        rec.run_id = Some("r1".into());
        for c in &damaged.changes {
            let e = for_change(c, Phase::Create, &cx(Some(&lab), Some(&rec))).unwrap_err();
            assert_eq!(
                e,
                OpError::NoSpec {
                    address: c.address.clone(),
                    kind: c.kind.as_str(),
                }
            );
        }
        // A spec of another kind is as damaged.
        let mut c = change(&p, "network.LAN").clone();
        c.spec = change(&p, "disk.data").spec.clone();
        let e = for_change(&c, Phase::Create, &cx(Some(&lab), None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.LAN: a network to create carries the spec of a disk (a damaged saved plan?)"
        );
        // So is a create with no identity, or a disk spec of another disk.
        let mut c = change(&p, "vm.A.nic[0]").clone();
        c.target = None;
        assert!(matches!(
            for_change(&c, Phase::Create, &cx(Some(&lab), None)),
            Err(OpError::NoTarget { .. })
        ));
        let mut c = change(&p, "disk.data").clone();
        c.target = Some(Target::Disk {
            name: "other".into(),
        });
        assert!(matches!(
            for_change(&c, Phase::Create, &cx(Some(&lab), None)),
            Err(OpError::BadTarget { .. })
        ));
    }
}
