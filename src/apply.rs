//! The executor: walks a plan's graph and carries it out through a [`Provider`].
//!
//! Invariants:
//! - Only the executor changes the machine (through [`Provider`]) and the state.
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
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;

use crate::graph::Target;
use crate::lab::Lab;
use crate::plan::{Action, Change, Plan};
use crate::provider::ops::{self, OpError, Phase};
use crate::provider::{Provider, ProviderError};
use crate::state::{Attrs, Kind, Record, State, StateDir, Status};

/// Why one operation of an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The change could not become ops (a damaged state or saved plan).
    #[error(transparent)]
    Op(#[from] OpError),
    /// The engine failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
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

pub struct Executor<'a, P: Provider> {
    pub provider: &'a P,
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

impl<P: Provider> Executor<'_, P> {
    /// Carry out `plan`, updating and saving `state` after every step.
    pub async fn run(&self, plan: &Plan, state: &mut State) -> Report {
        let started = Instant::now();
        let mut report = Report::default();
        // We hold the lock: any temporary of a disk creation is a leftover.
        for p in self.provider.sweep(self.sd) {
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
                    rec.attrs = c.after.clone().unwrap_or_default();
                    // An update in place keeps what the engine computed at create.
                    if c.action == Action::Update
                        && let Some(w) = &was
                    {
                        let rules = self.provider.rules();
                        for (k, v) in &w.attrs {
                            if rules.is_computed(c.kind, k) && !rec.attrs.contains_key(k) {
                                rec.attrs.insert(k.clone(), v.clone());
                            }
                        }
                    }
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
                    let failure = outcome.outcome.failure(c);
                    let note = match &outcome.outcome {
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

    fn record(&self, state: &mut State, c: &Change, phase: Phase, outcome: Done) {
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
                rec.attrs.extend(outcome.computed);
                match outcome.outcome {
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
                        if exit != 0
                            && c.after
                                .as_ref()
                                .is_none_or(|a| !a.contains_key("allow_failure"))
                        {
                            rec.status = Status::Failed;
                        }
                    }
                    Outcome::Done | Outcome::LeftAlone(_) => {}
                }
            }
        }
    }

    /// Carry out one phase of a change: its ops, in order, through the provider.
    async fn effect(
        &self,
        c: &Change,
        phase: Phase,
        prior: Option<&Record>,
        vm_gen: Option<u64>,
    ) -> Result<Done, ApplyError> {
        let cx = ops::Context {
            experiment: &self.experiment,
            lab: self.lab,
            record: prior,
        };
        let effects = ops::for_change(c, phase, &cx)?;
        if let Some(why) = effects.left_alone {
            return Ok(Outcome::LeftAlone(why).into());
        }
        let mut done = Done::from(Outcome::Done);
        for op in &effects.ops {
            let out = match self.provider.execute(self.sd, op).await {
                Ok(out) => out,
                // Someone else's object holds the name (we were refused
                // when creating ours, or ours was replaced): nothing of ours
                // is there. Its record goes; the object stays.
                Err(e) if op.is_delete() && e.not_ours().is_some() => {
                    let what = e.not_ours().unwrap_or_default();
                    return Ok(Outcome::LeftAlone(format!("{what} exists but is not ours")).into());
                }
                Err(e) => return Err(e.into()),
            };
            done.computed.extend(out.computed);
            match out.outcome {
                ops::Outcome::Done => {}
                ops::Outcome::LeftAlone(why) => {
                    done.outcome = Outcome::LeftAlone(why);
                    return Ok(done);
                }
                ops::Outcome::Launched { pid } => done.outcome = Outcome::Vm { pid },
                ops::Outcome::Step(out) => {
                    if let Some(Target::Step { vm, index }) = &c.target {
                        self.provider.store_step_output(self.sd, vm, *index, &out)?;
                    }
                    done.outcome = Outcome::Step {
                        exit: out.exit,
                        vm_gen,
                        stderr: out.stderr,
                        replayed: out.replayed,
                        timed_out: out.timed_out,
                    };
                }
            }
        }
        Ok(done)
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
    let hash = s(&c.after, "hash");
    format!(
        "{} {hash} g{} s{serial}",
        c.address,
        vm_gen.unwrap_or_default()
    )
}

/// What one phase of a change did, and the attributes its engine chose.
struct Done {
    outcome: Outcome,
    computed: Attrs,
}

impl From<Outcome> for Done {
    fn from(outcome: Outcome) -> Self {
        Done {
            outcome,
            computed: Attrs::new(),
        }
    }
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
            } if *exit != 0
                && c.after
                    .as_ref()
                    .is_none_or(|a| !a.contains_key("allow_failure")) =>
            {
                Some(match timed_out {
                    Some(t) => format!("{} {}", c.address, crate::cc::timed_out_after(*t)),
                    None => format!("{} exited {exit}: {}", c.address, stderr.trim()),
                })
            }
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
    c.action == Action::Delete && c.prior_deps.is_empty() && c.after.is_none() && c.deps.is_empty()
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
