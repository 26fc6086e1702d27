//! The planner: `plan(desired, prior_state, observed) -> Plan`, a pure function.
//!
//! Invariants:
//! - Touches no system: no files, no clock, no randomness. Same inputs, same plan.
//! - Every resource gets exactly one [`Change`] (no-ops included) with the
//!   reasons behind its action, so a reviewer never has to guess.
//! - A [`Plan`] is plain data: rendered as text, JSON or markdown by `render`,
//!   saved with `--out`, and walked by the executor through its `deps`.
//!
//! What replaces and what updates in place is decided per attribute by
//! [`crate::graph::forces_replacement`] (see docs/ARCHITECTURE.md), plus these
//! cascades: a replaced tap or disk replaces the VMs using it; a created or
//! replaced VM or tap replaces ("rewires") the mirrors touching it and reruns
//! the VM's cc steps.

pub mod reason;
pub mod render;

pub use reason::Reason;
use reason::{Link, Missing};

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::graph::{self, Resource, Spec, Target};
use crate::lab::Lab;
use crate::observed::{CcClient, Observed};
use crate::state::{Attrs, Kind, State, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    NoOp,
    Create,
    Update,
    /// Delete, then create.
    Replace,
    Delete,
}

impl Action {
    /// Terraform's action list for this action.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Action::NoOp => &["no-op"],
            Action::Create => &["create"],
            Action::Update => &["update"],
            Action::Replace => &["delete", "create"],
            Action::Delete => &["delete"],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub address: String,
    pub kind: Kind,
    /// What it is, typed: the executor acts on this, never on `address`.
    /// None for an orphan link (deleted by its recorded name) or a record of
    /// an old state that did not store it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    pub action: Action,
    /// The attributes recorded in the state (None when it has no record).
    pub before: Option<Attrs>,
    /// What it should be, typed, from the file (None for a delete): the
    /// executor builds its effect from this; [`Change::after`] derives the
    /// attributes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
    /// Why, the first being the main one: [`Reason::New`],
    /// [`Reason::AttributeChanged`], [`Reason::VmNotRunning`]...
    pub reasons: Vec<Reason>,
    /// Attributes whose change forces replacement.
    pub replace_paths: Vec<String>,
    /// Create order: what must exist first (from the file).
    pub deps: Vec<String>,
    /// Delete order: what this resource depended on when it was created (from the state).
    pub prior_deps: Vec<String>,
}

impl Change {
    /// The attributes it should have (`None` for a delete), derived from
    /// [`Change::spec`]: what the plan shows as `after` and the state records.
    pub fn after(&self) -> Option<Attrs> {
        self.spec.as_ref().map(Spec::attrs)
    }

    /// The main reason (the JSON plan's `action_reason`).
    pub fn reason(&self) -> Option<&Reason> {
        self.reasons.first()
    }

    /// A step that may exit non-zero (`allow-failure`) without failing.
    pub fn allows_failure(&self) -> bool {
        matches!(&self.spec, Some(Spec::Step(s)) if s.allow_failure)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Apply,
    Destroy,
    /// Destroy, `keep` disks included.
    DestroyAll,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub experiment: String,
    pub mode: Mode,
    /// The state the plan was made against (a saved plan is stale once it moves).
    pub lineage: Option<Uuid>,
    pub serial: u64,
    pub changes: Vec<Change>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub replace: usize,
    pub destroy: usize,
    pub steps: usize,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            if c.kind == Kind::Step {
                if matches!(c.action, Action::Create | Action::Replace) {
                    s.steps += 1;
                }
                continue;
            }
            match c.action {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Replace => s.replace += 1,
                Action::Delete => s.destroy += 1,
                Action::NoOp => {}
            }
        }
        s
    }
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::NoOp)
    }
    pub fn change(&self, address: &str) -> Option<&Change> {
        self.changes.iter().find(|c| c.address == address)
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn show_opt(v: Option<&Value>) -> String {
    v.map_or_else(|| "(none)".to_string(), show)
}

/// Plan an apply of `desired` (or, with `desired == None` and a destroy mode,
/// a destroy). `observed == None` plans from the state alone (`megaplan diff`).
pub fn plan(desired: Option<&Lab>, prior: &State, observed: Option<&Observed>, mode: Mode) -> Plan {
    plan_with(desired, prior, observed, mode, &Options::default())
}

/// What the user asked for beyond the file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `apply -replace ADDRESS`: replaced even if nothing changed.
    pub replace: BTreeSet<String>,
    /// Content digests of the lab's files, read before planning
    /// ([`crate::digest::of_lab`]).
    pub digests: crate::digest::Digests,
    /// The engine's replacement and computed-attribute rules
    /// ([`crate::provider::Provider::rules`]; the local engine's by default).
    pub rules: crate::provider::Rules,
}

/// The addresses of `opts.replace` that name nothing of the experiment
/// (neither in the file nor in the state): refused before anything changes.
pub fn unknown_replacements(desired: Option<&Lab>, prior: &State, opts: &Options) -> Vec<String> {
    if opts.replace.is_empty() {
        // The common case: no `-replace`, no resource list to build.
        return Vec::new();
    }
    let wanted: HashSet<String> = desired
        .map(graph::resources)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.address)
        .collect();
    opts.replace
        .iter()
        .filter(|a| !wanted.contains(*a) && !prior.resources.contains_key(*a))
        .cloned()
        .collect()
}

/// VMs tainted by a step that failed on them (non-zero exit, no
/// `allow-failure`): VM name -> the first such step's address.
fn tainted_vms(prior: &State) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (address, rec) in &prior.resources {
        if rec.kind != Kind::Step
            || rec.status != Status::Failed
            || rec.exit.is_none_or(|e| e == 0)
            || rec.attrs.contains_key("allow_failure")
        {
            continue;
        }
        if let Some(Target::Step { vm, .. }) = &rec.target {
            out.entry(vm.clone()).or_insert_with(|| address.clone());
        }
    }
    out
}

/// The VMs (by name) whose cc client refresh found absent although steps
/// the file still wants ran on their current boot (the step's generation is
/// the VM record's): their client checked in once and is gone. A VM still
/// booting has no step run on this boot, so it is not among them. Empty
/// without refresh or when no client is absent (megaplan's own engine
/// never reports one), so the common plan pays one scan of `obs.vms`.
fn cc_lost_vms(prior: &State, observed: Option<&Observed>, wanted: &[Resource]) -> HashSet<String> {
    let Some(obs) = observed else {
        return HashSet::new();
    };
    let absent: HashSet<&str> = obs
        .vms
        .values()
        .filter(|v| v.cc == CcClient::Absent)
        .map(|v| v.name.as_str())
        .collect();
    if absent.is_empty() {
        return HashSet::new();
    }
    let mut generation: HashMap<&str, Option<u64>> = HashMap::new();
    for rec in prior.resources.values() {
        if rec.kind == Kind::Vm
            && let Some(Target::Vm { name }) = &rec.target
            && absent.contains(name.as_str())
        {
            generation.insert(name.as_str(), rec.generation);
        }
    }
    let mut out = HashSet::new();
    for r in wanted {
        let Target::Step { vm, .. } = &r.target else {
            continue;
        };
        let (Some(vm_gen), Some(rec)) =
            (generation.get(vm.as_str()), prior.resources.get(&r.address))
        else {
            continue;
        };
        if rec.kind == Kind::Step
            && rec.status == Status::Ready
            && (rec.generation.is_none() || vm_gen.is_none() || rec.generation == *vm_gen)
        {
            out.insert(vm.clone());
        }
    }
    out
}

/// [`plan`], with the user's options.
pub fn plan_with(
    desired: Option<&Lab>,
    prior: &State,
    observed: Option<&Observed>,
    mode: Mode,
    opts: &Options,
) -> Plan {
    let experiment = desired.map_or_else(|| prior.experiment.clone(), |l| l.name.clone());
    let wanted: Vec<Resource> = match (mode, desired) {
        (Mode::Apply, Some(lab)) => graph::resources_with(lab, &opts.digests),
        _ => Vec::new(),
    };
    plan_resources(experiment, wanted, prior, observed, mode, opts)
}

/// [`plan_with`] for a lab the caller has no further use for (`megaplan
/// plan`): it is dropped as soon as its resources are listed, so the lab
/// and the plan are not both in memory at the peak (10^5 VMs).
pub fn plan_owned(
    desired: Lab,
    prior: &State,
    observed: Option<&Observed>,
    mode: Mode,
    opts: &Options,
) -> Plan {
    let wanted: Vec<Resource> = match mode {
        Mode::Apply => graph::resources_with(&desired, &opts.digests),
        _ => Vec::new(),
    };
    let experiment = desired.name.clone();
    drop(desired);
    plan_resources(experiment, wanted, prior, observed, mode, opts)
}

/// The plan from the resources the file wants (empty when destroying).
fn plan_resources(
    experiment: String,
    mut wanted: Vec<Resource>,
    prior: &State,
    observed: Option<&Observed>,
    mode: Mode,
    opts: &Options,
) -> Plan {
    let tainted = tainted_vms(prior);
    let cc_lost = cc_lost_vms(prior, observed, &wanted);
    let n = wanted.len();
    let mut changes: Vec<Change> = Vec::with_capacity(n);
    // Each change's address and target, moved out of its resource; they go
    // into the change once the maps below, which borrow them, are dropped.
    let mut addresses: Vec<String> = Vec::with_capacity(n);
    let mut targets: Vec<Target> = Vec::with_capacity(n);

    // The resources are consumed as the changes are made, and their buffer
    // shrinks as it empties: the two lists are never both whole (at 10^5
    // VMs each is ~150-200 MB).
    while !wanted.is_empty() {
        let take = wanted.len() - wanted.len() / 3;
        for r in wanted.drain(..take) {
            let c = change_for(&r, prior, observed, opts, &tainted, &cc_lost);
            let Resource {
                address,
                target,
                spec,
                deps,
                ..
            } = r;
            addresses.push(address);
            targets.push(target);
            changes.push(Change {
                // The desired spec and deps move into the change: no copies of 10^5 specs.
                spec: Some(spec),
                deps,
                ..c
            });
        }
        wanted.shrink_to_fit();
    }
    drop(wanted);

    // Per address: the index whose action counts (the last, as a map
    // insert in order would keep); the same set as "the file wants it".
    let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, a) in addresses.iter().enumerate() {
        index_of.insert(a.as_str(), i);
    }
    let mut actions: Vec<Action> = changes.iter().map(|c| c.action).collect();
    let action_of = |actions: &[Action], a: &str| index_of.get(a).map(|&j| actions[j]);

    // Target of each wanted address, first wins (as a linear `find` over `changes` would).
    let mut target_of: HashMap<&str, &Target> = HashMap::with_capacity(n);
    for (a, t) in addresses.iter().zip(&targets) {
        target_of.entry(a.as_str()).or_insert(t);
    }
    // Cascades, in dependency order (`wanted` was topologically sorted).
    for (i, c) in changes.iter_mut().enumerate() {
        if matches!(c.action, Action::Create | Action::Delete) {
            continue;
        }
        let mut why: Vec<Reason> = Vec::new();
        for d in &c.deps {
            let Some(da) = action_of(&actions, d) else {
                continue;
            };
            let recreated = matches!(da, Action::Create | Action::Replace);
            if !recreated {
                continue;
            }
            let dt = target_of.get(d.as_str()).copied();
            let text = match (c.kind, dt) {
                (Kind::Vm, Some(t @ Target::Tap { .. })) => {
                    Some(Reason::TapRecreated { nic: t.short() })
                }
                (Kind::Vm, Some(t @ Target::Disk { .. })) => {
                    Some(Reason::DiskRecreated { disk: t.short() })
                }
                (Kind::Mirror, Some(Target::Vm { .. })) => Some(Reason::MirrorRewired {
                    dependency: d.clone(),
                    tap: false,
                }),
                (Kind::Mirror, Some(Target::Tap { .. })) => Some(Reason::MirrorRewired {
                    dependency: d.clone(),
                    tap: true,
                }),
                (Kind::Step, Some(Target::Vm { .. })) if da == Action::Replace => {
                    Some(Reason::VmReplaced)
                }
                _ => None,
            };
            if let Some(t) = text {
                why.push(t);
            }
        }
        if !why.is_empty() {
            c.action = Action::Replace;
            for w in why {
                if !c.reasons.contains(&w) {
                    c.reasons.push(w);
                }
            }
            actions[index_of[addresses[i].as_str()]] = Action::Replace;
        }
    }

    // Steps on a VM whose generation moved on since they ran (restarted outside megaplan).
    // (The VM record's generation is bumped by each launch.)
    let vm_address: HashMap<&str, &str> = targets
        .iter()
        .zip(&addresses)
        .filter_map(|(t, a)| match t {
            Target::Vm { name } => Some((name.as_str(), a.as_str())),
            _ => None,
        })
        .collect();
    for ((c, target), address) in changes
        .iter_mut()
        .zip(&targets)
        .zip(&addresses)
        .filter(|((c, _), _)| c.kind == Kind::Step && c.action == Action::NoOp)
    {
        let Target::Step { vm, .. } = target else {
            continue;
        };
        let (Some(step), Some(vm)) = (
            prior.resources.get(address),
            vm_address
                .get(vm.as_str())
                .and_then(|a| prior.resources.get(*a)),
        ) else {
            continue;
        };
        if step.generation.is_some() && vm.generation.is_some() && step.generation != vm.generation
        {
            c.action = Action::Replace;
            c.reasons.push(Reason::VmRestarted);
        }
    }

    // Removed from the file (or everything, when destroying), in reverse order.
    let mut deletes: Vec<Change> = Vec::new();
    for (address, rec) in &prior.resources {
        if index_of.contains_key(address.as_str()) {
            continue;
        }
        let keep = rec.kind == Kind::Disk && rec.attrs.get("keep") == Some(&Value::Bool(true));
        let (action, reason) = match mode {
            Mode::Apply if keep => (Action::NoOp, Reason::Kept { removed: true }),
            Mode::Apply => (
                Action::Delete,
                Reason::NotInFile {
                    step: rec.kind == Kind::Step,
                },
            ),
            Mode::Destroy if keep => (Action::NoOp, Reason::Kept { removed: false }),
            Mode::Destroy | Mode::DestroyAll => (Action::Delete, Reason::Destroy),
        };
        // A record of an old state has no target: a VM's comes from the
        // runtime folder refresh found for it, if any (nothing else of it
        // can be running).
        let target = rec.target.clone().or_else(|| {
            observed
                .filter(|_| rec.kind == Kind::Vm)
                .and_then(|o| o.vms.get(address))
                .map(|v| Target::Vm {
                    name: v.name.clone(),
                })
        });
        deletes.push(Change {
            address: address.clone(),
            kind: rec.kind,
            target,
            action,
            before: Some(rec.attrs.clone()),
            spec: None,
            reasons: vec![reason],
            replace_paths: Vec::new(),
            deps: Vec::new(),
            prior_deps: rec.deps.clone(),
        });
    }
    // Orphans: our marker on the host, no record in the state.
    if let Some(obs) = observed {
        for (address, link) in &obs.links {
            if prior.resources.contains_key(address) || index_of.contains_key(address.as_str()) {
                continue;
            }
            let kind = if link.kind == crate::observed::ObservedKind::Bridge {
                Kind::Network
            } else {
                Kind::Tap
            };
            deletes.push(orphan(
                address,
                kind,
                None,
                [("name", Value::String(link.name.clone()))],
            ));
        }
        for (address, vm) in &obs.vms {
            if prior.resources.contains_key(address) || index_of.contains_key(address.as_str()) {
                continue;
            }
            let pid = vm.pid.map_or(Value::Null, Value::from);
            let target = Target::Vm {
                name: vm.name.clone(),
            };
            deletes.push(orphan(address, Kind::Vm, Some(target), [("pid", pid)]));
        }
    }
    drop((index_of, target_of, vm_address));
    for ((c, address), target) in changes.iter_mut().zip(addresses).zip(targets) {
        c.address = address;
        c.target = Some(target);
    }
    // Reverse dependency order: steps, mirrors, VMs, taps, disks, networks.
    deletes.sort_by(|a, b| b.kind.cmp(&a.kind).then_with(|| a.address.cmp(&b.address)));
    changes.extend(deletes);

    Plan {
        experiment,
        mode,
        lineage: (prior.serial > 0).then_some(prior.lineage),
        serial: prior.serial,
        changes,
    }
}

/// The change for one wanted resource, before cascades: its action and
/// reasons from the state and what refresh saw. Address, target, spec and
/// deps are left empty (the caller moves them in).
fn change_for(
    r: &Resource,
    prior: &State,
    observed: Option<&Observed>,
    opts: &Options,
    tainted: &HashMap<String, String>,
    cc_lost: &HashSet<String>,
) -> Change {
    let prior_rec = prior.resources.get(&r.address);
    let mut c = Change {
        address: String::new(),
        kind: r.kind,
        target: None,
        action: Action::NoOp,
        before: prior_rec.map(|p| p.attrs.clone()),
        spec: None,
        reasons: Vec::new(),
        replace_paths: Vec::new(),
        deps: Vec::new(),
        prior_deps: prior_rec.map(|p| p.deps.clone()).unwrap_or_default(),
    };
    match prior_rec {
        None => {
            c.action = Action::Create;
            c.reasons.push(Reason::New {
                step: r.kind == Kind::Step,
            });
            // Something of ours already there (a crash before the state was written)?
            if let Some(obs) = observed
                && (obs.links.contains_key(&r.address) || obs.vms.contains_key(&r.address))
            {
                c.action = Action::Replace;
                c.reasons = vec![Reason::FoundOnHost];
            }
        }
        Some(rec) => {
            let mut replace = false;
            let mut update = false;
            match rec.status {
                Status::Creating => {
                    replace = true;
                    c.reasons.push(Reason::CreationInterrupted);
                }
                Status::Failed => {
                    replace = true;
                    c.reasons.push(if r.kind == Kind::Step {
                        Reason::StepFailed
                    } else {
                        Reason::CreationFailed
                    });
                }
                Status::Ready => {}
            }
            // The desired attributes, derived for the comparison only.
            let after = r.spec.attrs();
            let keys: BTreeSet<&String> = rec.attrs.keys().chain(after.keys()).collect();
            for k in keys {
                let (b, a) = (rec.attrs.get(k), after.get(k));
                if b == a || (k == "hash" && r.kind == Kind::Step) {
                    continue;
                }
                // Known after apply: the engine chose it, the file does not say.
                if a.is_none() && opts.rules.is_computed(r.kind, k) {
                    continue;
                }
                // A digest counts only where both sides know it (a state
                // written before digests were recorded, an unreadable file).
                let digest_of = k.strip_suffix("_sha256");
                if digest_of.is_some() && (a.is_none() || b.is_none()) {
                    continue;
                }
                let text = if let Some(what) = digest_of {
                    Reason::ContentChanged {
                        what: what.to_string(),
                    }
                } else if r.kind == Kind::Step && k != "timeout_ms" && k != "allow_failure" {
                    Reason::StepChanged
                } else {
                    let values = match (b, a) {
                        (Some(Value::Array(_) | Value::Object(_)), _)
                        | (_, Some(Value::Array(_) | Value::Object(_))) => None,
                        _ => Some((show_opt(b), show_opt(a))),
                    };
                    Reason::AttributeChanged {
                        key: k.clone(),
                        values,
                    }
                };
                if !c.reasons.contains(&text) {
                    c.reasons.push(text);
                }
                if opts.rules.forces_replacement(r.kind, k) {
                    replace = true;
                    c.replace_paths.push(k.clone());
                } else {
                    update = true;
                }
            }
            if let Spec::Step(step) = &r.spec
                && rec.status == Status::Ready
                && let Some(exit) = rec.exit.filter(|&e| e != 0)
                && !step.allow_failure
            {
                replace = true;
                c.reasons.push(Reason::StepExited { exit });
            }
            if let Target::Vm { name } = &r.target
                && let Some(step) = tainted.get(name)
            {
                replace = true;
                c.reasons.push(Reason::Tainted { step: step.clone() });
            }
            if opts.replace.contains(&r.address) {
                replace = true;
                c.reasons.push(Reason::ReplaceRequested);
            }
            if let Some(obs) = observed
                && rec.status == Status::Ready
            {
                let (r2, u2, why) = live_check(r, obs, prior, cc_lost);
                replace |= r2;
                update |= u2;
                c.reasons.extend(why);
            }
            c.action = if replace {
                Action::Replace
            } else if update {
                Action::Update
            } else {
                Action::NoOp
            };
        }
    }
    c
}

fn orphan<const N: usize>(
    address: &str,
    kind: Kind,
    target: Option<Target>,
    attrs: [(&str, Value); N],
) -> Change {
    Change {
        address: address.to_string(),
        kind,
        target,
        action: Action::Delete,
        before: Some(
            attrs
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ),
        spec: None,
        reasons: vec![Reason::Orphan],
        replace_paths: Vec::new(),
        deps: Vec::new(),
        prior_deps: Vec::new(),
    }
}

/// Compare one resource with what refresh saw: (replace, update, reasons).
fn live_check(
    r: &Resource,
    obs: &Observed,
    prior: &State,
    cc_lost: &HashSet<String>,
) -> (bool, bool, Vec<Reason>) {
    let mut why = Vec::new();
    let (mut replace, mut update) = (false, false);
    let missing = |what| Reason::MissingOnHost { what };
    match &r.spec {
        Spec::Network(_) => match obs.links.get(&r.address) {
            None => {
                replace = true;
                why.push(missing(Missing::Bridge));
            }
            Some(l) if !l.up => {
                update = true;
                why.push(Reason::LinkDown { link: Link::Bridge });
            }
            Some(_) => {}
        },
        Spec::Tap(tap) => match obs.links.get(&r.address) {
            None => {
                replace = true;
                why.push(missing(Missing::Tap));
            }
            Some(l) => {
                if let Some(bridge) = &tap.bridge
                    && l.controller.as_ref() != Some(bridge)
                {
                    update = true;
                    why.push(Reason::NotOnBridge {
                        bridge: bridge.clone(),
                    });
                }
                if !l.up {
                    update = true;
                    why.push(Reason::LinkDown { link: Link::Tap });
                }
            }
        },
        Spec::Disk(_) => {
            if !obs.disks.contains(&r.address) {
                replace = true;
                why.push(missing(Missing::DiskFile));
            }
        }
        Spec::Vm(_) => match obs.vms.get(&r.address) {
            _ if let Some(u) = obs.unreachable.get(&r.address) => {
                replace = true;
                why.push(Reason::NodeUnreachable {
                    node: u.node.clone(),
                    error: u.error.clone(),
                });
            }
            None => {
                replace = true;
                why.push(Reason::VmNotRunning { status: None });
            }
            Some(v) if !v.alive => {
                replace = true;
                why.push(Reason::VmNotRunning { status: None });
            }
            Some(v) if !v.running() => {
                replace = true;
                why.push(Reason::VmNotRunning {
                    status: Some(v.status.clone().unwrap_or_else(|| "stopped".into())),
                });
            }
            Some(v) if v.cc == CcClient::Absent && cc_lost.contains(&v.name) => {
                replace = true;
                why.push(Reason::CcClientLost);
            }
            Some(_) => {}
        },
        Spec::Mirror(m) => {
            let (src, dst) = (m.source_tap.as_deref(), m.dest_tap.as_deref());
            let dir = m.direction.as_str();
            let want_in = dir != "egress";
            let want_out = dir != "ingress";
            // Compare with what the state says was wired, so a direction change is an update.
            let wired = prior
                .resources
                .get(&r.address)
                .and_then(|p| p.attrs.get("direction"))
                .and_then(Value::as_str)
                .unwrap_or(dir);
            let (had_in, had_out) = (wired != "egress", wired != "ingress");
            match obs.mirrors.iter().find(|o| match &o.address {
                Some(a) => *a == r.address,
                None => src == Some(o.source_tap.as_str()) && dst == Some(o.dest_tap.as_str()),
            }) {
                None => {
                    replace = true;
                    why.push(missing(Missing::Mirror));
                }
                Some(m)
                    if (m.ingress, m.egress) != (had_in, had_out)
                        && (m.ingress, m.egress) != (want_in, want_out) =>
                {
                    replace = true;
                    why.push(missing(Missing::MirrorPart));
                }
                Some(_) => {}
            }
        }
        Spec::Step(_) => {}
        Spec::Capture(_) => {
            if !obs.captures.contains_key(&r.address) {
                replace = true;
                why.push(missing(Missing::Recorder));
            }
        }
    }
    (replace, update, why)
}

#[cfg(test)]
pub(crate) mod tests;
