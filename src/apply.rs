//! The executor: walks a plan's graph and carries it out through a [`Host`].
//!
//! Invariants:
//! - Only the executor changes the machine (through [`Host`]) and the state.
//! - A record is saved as `Creating` before an effect starts and `Ready` after
//!   it succeeds (or `Failed`); a delete removes its record after the effect.
//!   The state file is written after every step, so a crash or kill at any
//!   point leaves a state the next plan converges from.
//! - Independent operations run at once: host effects up to `parallelism`,
//!   cc steps (which mostly wait for guests) without a bound, effects first;
//!   a failure skips what depends on it, lets the rest finish, and every
//!   error is reported.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;

use crate::drivers::netlink::NetlinkError;
use crate::graph::Target;
use crate::host::{Host, HostError};
use crate::identity;
use crate::lab::Lab;
use crate::plan::{Action, Change, Plan};
use crate::state::{Kind, Record, State, StateDir, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Phase {
    Delete,
    Create,
}

#[derive(Clone, Debug)]
struct Op {
    phase: Phase,
    change: usize,
}

/// How an apply went.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<String>,
    pub errors: Vec<(String, String)>,
    pub skipped: Vec<String>,
    /// Wall time per kind and phase, for the summary.
    pub timings: BTreeMap<String, Duration>,
    pub total: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.skipped.is_empty()
    }
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{} done",
            crate::diag::plural(self.done.len(), "operation")
        );
        if !self.errors.is_empty() {
            let _ = write!(s, ", {} failed", self.errors.len());
        }
        if !self.skipped.is_empty() {
            let _ = write!(s, ", {} skipped", self.skipped.len());
        }
        let _ = write!(s, " in {:.2}s", self.total.as_secs_f64());
        let phases: Vec<String> = self
            .timings
            .iter()
            .map(|(k, d)| format!("{k} {:.2}s", d.as_secs_f64()))
            .collect();
        if !phases.is_empty() {
            let _ = write!(s, " ({})", phases.join(", "));
        }
        s
    }
}

pub struct Executor<'a, H: Host> {
    pub host: &'a H,
    pub lab: Option<&'a Lab>,
    pub sd: &'a StateDir,
    pub experiment: String,
    pub parallelism: usize,
    /// Called with one line per event ("vm.A: created in 1.20s").
    pub progress: &'a (dyn Fn(&str) + Sync),
}

fn s(attrs: &Option<crate::state::Attrs>, key: &str) -> String {
    attrs
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl<H: Host> Executor<'_, H> {
    /// A disk file in the state folder, for a validated plain name only (state::StateDir::disk_file).
    fn disk_file(&self, file: &str) -> Result<PathBuf, HostError> {
        self.sd
            .disk_file(file)
            .map_err(|e| HostError::Other(e.to_string()))
    }

    /// Carry out `plan`, updating and saving `state` after every step.
    pub async fn run(&self, plan: &Plan, state: &mut State) -> Report {
        let started = Instant::now();
        let mut report = Report::default();
        // We hold the lock: any temporary of a disk creation is a leftover.
        for p in self.host.sweep_temporaries(self.sd) {
            (self.progress)(&format!(
                "removed {} (left by an interrupted disk creation)",
                p.display()
            ));
        }
        // Operations and their ordering edges.
        let mut ops: Vec<Op> = Vec::new();
        let mut op_of: HashMap<(usize, Phase), usize> = HashMap::new();
        for (i, c) in plan.changes.iter().enumerate() {
            let phases: &[Phase] = match c.action {
                Action::NoOp => &[],
                Action::Create | Action::Update => &[Phase::Create],
                Action::Delete => &[Phase::Delete],
                // A step has nothing to delete; its record (and the id of a
                // run whose outcome is unknown) must survive until it reruns.
                Action::Replace if c.kind == Kind::Step => &[Phase::Create],
                Action::Replace => &[Phase::Delete, Phase::Create],
            };
            for &p in phases {
                op_of.insert((i, p), ops.len());
                ops.push(Op {
                    phase: p,
                    change: i,
                });
            }
        }
        let index: HashMap<&str, usize> = plan
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.address.as_str(), i))
            .collect();
        let orphans: Vec<usize> = (0..plan.changes.len())
            .filter(|&i| is_orphan(&plan.changes[i]))
            .collect();
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
        for (o, op) in ops.iter().enumerate() {
            let c = &plan.changes[op.change];
            match op.phase {
                Phase::Create => {
                    if let Some(&d) = op_of.get(&(op.change, Phase::Delete)) {
                        deps[o].push(d);
                    }
                    for dep in &c.deps {
                        if let Some(&ci) = index.get(dep.as_str())
                            && let Some(&d) = op_of.get(&(ci, Phase::Create))
                        {
                            deps[o].push(d);
                        }
                    }
                }
                Phase::Delete => {
                    // Delete this before what it depended on: so `dep`'s delete waits for ours.
                    for dep in effective_prior_deps(c, plan, &orphans) {
                        if let Some(&ci) = index.get(dep.as_str())
                            && let Some(&d) = op_of.get(&(ci, Phase::Delete))
                        {
                            deps[d].push(o);
                        }
                    }
                }
            }
        }
        let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
        for (o, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(o);
            }
        }
        let mut ready: Vec<usize> = (0..ops.len()).filter(|&o| waiting[o] == 0).collect();
        ready.reverse();
        let mut failed = vec![false; ops.len()];
        let mut running = FuturesUnordered::new();
        let mut effects_running = 0usize;
        let mut finished = 0;
        while finished < ops.len() {
            // Host effects are bounded by `parallelism`. cc steps are not: they
            // mostly wait for a guest to boot, and counting them would hold
            // back the launch of the other VMs. Effects go first.
            loop {
                let is_step = |o: &usize| plan.changes[ops[*o].change].kind == Kind::Step;
                let pick = if effects_running < self.parallelism.max(1) {
                    ready.iter().rposition(|o| !is_step(o))
                } else {
                    None
                }
                .or_else(|| ready.iter().rposition(is_step));
                let Some(i) = pick else { break };
                let o = ready.remove(i);
                let op = ops[o].clone();
                if !is_step(&o) {
                    effects_running += 1;
                }
                let c = &plan.changes[op.change];
                // The generation of the VM a step runs on, found by its typed name.
                let vm_gen = match (&c.target, self.lab) {
                    (Some(Target::Step { vm, .. }), Some(lab)) => lab
                        .vm(vm)
                        .and_then(|v| state.resources.get(&v.address))
                        .and_then(|r| r.generation),
                    _ => None,
                };
                // Record intent before the effect.
                if op.phase == Phase::Create {
                    let was = state.resources.get(&c.address).cloned();
                    let mut rec = was
                        .clone()
                        .unwrap_or_else(|| Record::new(c.kind, Default::default()));
                    if c.action != Action::Update {
                        rec.status = Status::Creating;
                    }
                    rec.attrs = c.after().unwrap_or_default();
                    rec.deps = c.deps.clone();
                    rec.target = c.target.clone();
                    if c.kind == Kind::Step {
                        rec.run_id = Some(step_run_id(c, was.as_ref(), vm_gen, state.serial));
                        rec.generation = vm_gen;
                    }
                    state.resources.insert(c.address.clone(), rec);
                    if let Err(e) = self.sd.save(state) {
                        (self.progress)(&format!("warning: cannot save the state: {e}"));
                    }
                }
                let prior = state.resources.get(&c.address).cloned();
                (self.progress)(&format!("{}: {}…", c.address, verb(c, op.phase)));
                crash_point("BEFORE", &c.address);
                running.push(async move {
                    let t = Instant::now();
                    let r = self.effect(c, op.phase, prior.as_ref(), vm_gen).await;
                    (o, r, t.elapsed())
                });
            }
            let Some((o, result, took)) = running.next().await else {
                break;
            };
            crash_point("AFTER", &plan.changes[ops[o].change].address);
            finished += 1;
            let op = &ops[o];
            let c = &plan.changes[op.change];
            if c.kind != Kind::Step {
                effects_running -= 1;
            }
            let key = format!(
                "{} {}",
                c.kind.as_str(),
                if op.phase == Phase::Create {
                    "create"
                } else {
                    "delete"
                }
            );
            *report.timings.entry(key).or_default() += took;
            match result {
                Ok(outcome) => {
                    let failure = outcome.failure(c);
                    let note = match &outcome {
                        Outcome::LeftAlone(why) => format!(" (record dropped; left alone: {why})"),
                        Outcome::Step { replayed: true, .. } => {
                            " (not run again: the agent had already run it in this boot; its outcome is recorded)".to_string()
                        }
                        _ => String::new(),
                    };
                    self.record(state, c, op.phase, outcome);
                    if let Some(e) = failure {
                        failed[o] = true;
                        (self.progress)(&format!("{}: FAILED: {e}", c.address));
                        report.errors.push((c.address.clone(), e));
                    } else {
                        (self.progress)(&format!(
                            "{}: {} in {:.2}s{note}",
                            c.address,
                            done_verb(c, op.phase),
                            took.as_secs_f64()
                        ));
                        report.done.push(c.address.clone());
                    }
                }
                Err(e) => {
                    failed[o] = true;
                    if let Some(r) = state.resources.get_mut(&c.address) {
                        r.status = Status::Failed;
                    }
                    (self.progress)(&format!("{}: FAILED: {e}", c.address));
                    report.errors.push((c.address.clone(), e.to_string()));
                }
            }
            if let Err(e) = self.sd.save(state) {
                report.errors.push(("state".into(), e.to_string()));
            }
            // Release dependents; skip the ones downstream of a failure.
            let mut stack = vec![o];
            while let Some(x) = stack.pop() {
                for &d in &dependents[x] {
                    if failed[x] {
                        if !failed[d] {
                            failed[d] = true;
                            finished += 1;
                            let cd = &plan.changes[ops[d].change];
                            (self.progress)(&format!(
                                "{}: skipped (a dependency failed)",
                                cd.address
                            ));
                            report.skipped.push(cd.address.clone());
                            stack.push(d);
                        }
                    } else {
                        waiting[d] -= 1;
                        if waiting[d] == 0 && !failed[d] {
                            ready.push(d);
                        }
                    }
                }
            }
        }
        report.total = started.elapsed();
        report
    }

    fn record(&self, state: &mut State, c: &Change, phase: Phase, outcome: Outcome) {
        match phase {
            Phase::Delete => {
                state.resources.remove(&c.address);
            }
            Phase::Create => {
                let prev_gen = state.resources.get(&c.address).and_then(|r| r.generation);
                let rec = state
                    .resources
                    .entry(c.address.clone())
                    .or_insert_with(|| Record::new(c.kind, Default::default()));
                rec.status = Status::Ready;
                match outcome {
                    Outcome::Vm { pid } => {
                        rec.pid = Some(pid);
                        // An update in place is the same QEMU: the same boot.
                        rec.generation = if c.action == Action::Update {
                            prev_gen
                        } else {
                            Some(prev_gen.unwrap_or(0) + 1)
                        };
                    }
                    Outcome::Step { exit, vm_gen, .. } => {
                        rec.exit = Some(exit);
                        rec.generation = vm_gen;
                        if exit != 0 && !c.allows_failure() {
                            rec.status = Status::Failed;
                        }
                    }
                    Outcome::Done | Outcome::LeftAlone(_) => {}
                }
            }
        }
    }

    async fn effect(
        &self,
        c: &Change,
        phase: Phase,
        prior: Option<&Record>,
        vm_gen: Option<u64>,
    ) -> Result<Outcome, HostError> {
        let exp = &self.experiment;
        let marker = identity::marker(exp, &c.address);
        let before = &c.before;
        let after = &c.after();
        // The typed identity, checked: a state file or a saved plan is untrusted.
        if let Some(t) = &c.target {
            t.check().map_err(HostError::Other)?;
        }
        let lab = || {
            self.lab
                .ok_or_else(|| HostError::Other("no experiment to create from".into()))
        };
        match (c.kind, phase) {
            (Kind::Network, Phase::Create) => {
                let ha = after
                    .as_ref()
                    .and_then(|a| a.get("host_address"))
                    .and_then(Value::as_str);
                self.host
                    .ensure_bridge(&s(after, "bridge"), &marker, ha)
                    .await?;
            }
            (Kind::Network | Kind::Tap, Phase::Delete) => {
                let name = match c.kind {
                    Kind::Network if before.as_ref().is_some_and(|b| b.contains_key("bridge")) => {
                        s(before, "bridge")
                    }
                    _ => s(before, "name"),
                };
                match self.host.delete_link(&name, &marker).await {
                    Ok(()) => {}
                    // Someone else's interface holds the name (we were refused
                    // when creating ours, or ours was replaced): nothing of ours
                    // is there. Its record goes; the interface stays.
                    Err(HostError::Netlink(NetlinkError::NotOurs { name, .. })) => {
                        return Ok(Outcome::LeftAlone(format!(
                            "interface {name} exists but is not ours"
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            (Kind::Tap, Phase::Create) => {
                self.host
                    .ensure_tap(
                        &s(after, "name"),
                        &s(after, "mac"),
                        &marker,
                        &s(after, "bridge"),
                    )
                    .await?;
            }
            (Kind::Disk, Phase::Create) => {
                let Some(Target::Disk { name }) = &c.target else {
                    return Err(bad_target(c));
                };
                let spec = lab()?
                    .disk(name)
                    .ok_or_else(|| HostError::Other(format!("no disk {name}")))?;
                if c.action != Action::Update {
                    self.host
                        .create_disk(spec, &self.disk_file(&spec.file_name())?)
                        .await?;
                }
            }
            (Kind::Disk, Phase::Delete) => {
                self.host
                    .remove_file(&self.disk_file(&s(before, "file"))?)
                    .await?;
            }
            (Kind::Vm, Phase::Create) => {
                if c.action == Action::Update {
                    return Ok(Outcome::Vm {
                        pid: prior.and_then(|p| p.pid).unwrap_or_default(),
                    });
                }
                let Some(Target::Vm { name }) = &c.target else {
                    return Err(bad_target(c));
                };
                let lab = lab()?;
                let vm = lab
                    .vm(name)
                    .ok_or_else(|| HostError::Other(format!("no VM {name}")))?;
                for p in vm.kernel.iter().chain(vm.initrd.iter()) {
                    if !p.exists() {
                        return Err(HostError::Other(format!(
                            "{} does not exist (build one with `megaplan image build`)",
                            p.display()
                        )));
                    }
                }
                // Leftovers of an interrupted launch go first.
                self.host.stop_vm(exp, name, None, false, self.sd).await?;
                let pid = self.host.launch_vm(lab, vm, self.sd).await?;
                return Ok(Outcome::Vm { pid });
            }
            (Kind::Vm, Phase::Delete) => {
                let Some(Target::Vm { name }) = &c.target else {
                    // An old state's record with no runtime folder found by
                    // refresh: no QEMU of it can be running.
                    return Ok(Outcome::LeftAlone(
                        "no runtime folder of this VM was found".into(),
                    ));
                };
                // Persistent disks want a clean shutdown; snapshot-only VMs can just stop.
                let graceful =
                    before.as_ref().and_then(|b| b.get("snapshot")) == Some(&Value::Bool(false));
                self.host
                    .stop_vm(exp, name, prior.and_then(|p| p.pid), graceful, self.sd)
                    .await?;
            }
            (Kind::Mirror, Phase::Create) => {
                if c.action == Action::Update {
                    self.host
                        .remove_mirror(&s(before, "source_tap"), &s(before, "dest_tap"))
                        .await?;
                }
                self.host
                    .add_mirror(
                        &s(after, "source_tap"),
                        &s(after, "dest_tap"),
                        &s(after, "direction"),
                    )
                    .await?;
            }
            (Kind::Mirror, Phase::Delete) => {
                self.host
                    .remove_mirror(&s(before, "source_tap"), &s(before, "dest_tap"))
                    .await?;
            }
            (Kind::Step, Phase::Create) => {
                let Some(Target::Step { vm: vm_name, index }) = &c.target else {
                    return Err(bad_target(c));
                };
                let vm = lab()?
                    .vm(vm_name)
                    .ok_or_else(|| HostError::Other(format!("no VM {vm_name}")))?;
                let step = vm
                    .cc
                    .get(*index)
                    .ok_or_else(|| HostError::Other(format!("VM {vm_name} has no step {index}")))?;
                let run_id = prior
                    .and_then(|p| p.run_id.clone())
                    .ok_or_else(|| HostError::Other(format!("{} has no run id", c.address)))?;
                let out = self
                    .host
                    .run_step(
                        exp,
                        vm_name,
                        &step.action,
                        step.timeout_ms.map(Duration::from_millis),
                        &run_id,
                    )
                    .await?;
                self.sd
                    .write_step_result(vm_name, *index, out.exit, &out.stdout, &out.stderr)
                    .map_err(|e| HostError::Other(e.to_string()))?;
                return Ok(Outcome::Step {
                    exit: out.exit,
                    vm_gen,
                    stderr: out.stderr,
                    replayed: out.replayed,
                    timed_out: out.timed_out,
                });
            }
            (Kind::Step, Phase::Delete) => {}
        }
        Ok(Outcome::Done)
    }
}

/// The id of a step's run: a new one (address, content hash, VM generation
/// and the state's serial, so every deliberate rerun differs), or, when the
/// last run's outcome is unknown (interrupted: `Creating`, or failed before
/// an exit code came back) on the same boot, that run's id again, so the
/// agent answers with its outcome instead of running it twice.
fn step_run_id(c: &Change, was: Option<&Record>, vm_gen: Option<u64>, serial: u64) -> String {
    if let Some(p) = was
        && let Some(id) = &p.run_id
        && p.generation == vm_gen
        && (p.status == Status::Creating || (p.status == Status::Failed && p.exit.is_none()))
    {
        return id.clone();
    }
    let hash = match &c.spec {
        Some(crate::graph::Spec::Step(s)) => s.hash.as_str(),
        _ => "",
    };
    format!(
        "{} {hash} g{} s{serial}",
        c.address,
        vm_gen.unwrap_or_default()
    )
}

fn bad_target(c: &Change) -> HostError {
    HostError::Other(format!(
        "{} carries no {} identity (a damaged state or saved plan?)",
        c.address,
        c.kind.as_str()
    ))
}

enum Outcome {
    Done,
    /// The record goes, the object stays (it was never ours): why.
    LeftAlone(String),
    Vm {
        pid: u32,
    },
    Step {
        exit: i32,
        vm_gen: Option<u64>,
        stderr: String,
        /// Recovered from the agent, which had run it before an interruption.
        replayed: bool,
        /// The step's timeout, when the guest killed it for running longer.
        timed_out: Option<Duration>,
    },
}

impl Outcome {
    /// A step that exited non-zero without `allow-failure` is a failure
    /// (recorded with its exit code: it taints its VM).
    fn failure(&self, c: &Change) -> Option<String> {
        match self {
            Outcome::Step {
                exit,
                stderr,
                timed_out,
                ..
            } if *exit != 0 && !c.allows_failure() => Some(match timed_out {
                Some(t) => format!("{} {}", c.address, crate::cc::timed_out_after(*t)),
                None => format!("{} exited {exit}: {}", c.address, stderr.trim()),
            }),
            _ => None,
        }
    }
}

/// Fault injection for the crash tests: `MEGAPLAN_TEST_CRASH_BEFORE=ADDRESS`
/// kills this process with SIGKILL once ADDRESS is recorded as being created,
/// before its effect; `MEGAPLAN_TEST_CRASH_AFTER=ADDRESS` once the effect is
/// done, before the state records it. Unset, it costs one env lookup per step.
fn crash_point(when: &str, address: &str) {
    if std::env::var(format!("MEGAPLAN_TEST_CRASH_{when}")).is_ok_and(|a| a == address) {
        // SAFETY: raising a signal on ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// What a deleted resource depended on. Orphans have no record: each waits
/// for the orphans of the kinds that depend on its kind (an orphan VM goes
/// before the orphan taps and bridges), never for a name guessed from an address.
fn effective_prior_deps(c: &Change, plan: &Plan, orphans: &[usize]) -> Vec<String> {
    if !c.prior_deps.is_empty() || !is_orphan(c) {
        return c.prior_deps.clone();
    }
    orphans
        .iter()
        .map(|&i| &plan.changes[i])
        .filter(|x| x.kind < c.kind)
        .map(|x| x.address.clone())
        .collect()
}

fn is_orphan(c: &Change) -> bool {
    c.action == Action::Delete && c.prior_deps.is_empty() && c.spec.is_none() && c.deps.is_empty()
}

fn verb(c: &Change, p: Phase) -> &'static str {
    match (c.kind, p, c.action) {
        (Kind::Step, Phase::Create, _) => "running",
        (_, Phase::Delete, _) => "destroying",
        (_, _, Action::Update) => "updating",
        _ => "creating",
    }
}

fn done_verb(c: &Change, p: Phase) -> &'static str {
    match (c.kind, p, c.action) {
        (Kind::Step, Phase::Create, _) => "ran",
        (_, Phase::Delete, _) => "destroyed",
        (_, _, Action::Update) => "updated",
        _ => "created",
    }
}

#[cfg(test)]
mod tests;
