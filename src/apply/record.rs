//! The recorder: the state's side of every task. A create's record is saved
//! as `Creating` before its effect and `Ready` (or `Failed`) after; a
//! delete's record goes after its effect; the state file is written after
//! every task, so a crash or kill at any point leaves a state the next plan
//! converges from.

use crate::lab::Lab;
use crate::plan::{Action, Change};
use crate::provider::Rules;
use crate::provider::ops::Phase;
use crate::state::{Kind, Record, State, StateDir, StateError, Status};

use super::{Done, Outcome};

pub(super) struct Recorder<'a> {
    pub sd: &'a StateDir,
    pub rules: Rules,
}

impl Recorder<'_> {
    /// Record the intent of a create (`Creating`; an update in place keeps
    /// its status) with the desired attributes, and save it; a step gets the
    /// id of its run here.
    pub fn begin(
        &self,
        state: &mut State,
        c: &Change,
        vm_gen: Option<u64>,
    ) -> Result<(), StateError> {
        self.mark(state, c, vm_gen);
        self.sd.save(state)
    }

    /// [`Recorder::begin`] without the save (a batch saves once for all).
    pub fn mark(&self, state: &mut State, c: &Change, vm_gen: Option<u64>) {
        let was = state.resources.get(&c.address).cloned();
        let mut rec = was
            .clone()
            .unwrap_or_else(|| Record::new(c.kind, Default::default()));
        if c.action != Action::Update {
            rec.status = Status::Creating;
        }
        rec.attrs = c.after().unwrap_or_default();
        // An update in place keeps what the engine computed at create.
        if c.action == Action::Update
            && let Some(w) = &was
        {
            for (k, v) in &w.attrs {
                if self.rules.is_computed(c.kind, k) && !rec.attrs.contains_key(k) {
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
    }

    /// Record what a task's effect did (not saved: see [`Recorder::save`]).
    pub fn finish(&self, state: &mut State, c: &Change, phase: Phase, done: Done) {
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
                rec.attrs.extend(done.computed);
                match done.outcome {
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

    /// The effect failed: its record (if any) is `Failed`.
    pub fn failed(&self, state: &mut State, c: &Change) {
        if let Some(r) = state.resources.get_mut(&c.address) {
            r.status = Status::Failed;
        }
    }

    /// Write the state file.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        self.sd.save(state)
    }
}

/// The generation of the VM a step runs on, found by its typed name.
pub(super) fn vm_generation(c: &Change, lab: Option<&Lab>, state: &State) -> Option<u64> {
    match (&c.target, lab) {
        (Some(crate::graph::Target::Step { vm, .. }), Some(lab)) => lab
            .vm(vm)
            .and_then(|v| state.resources.get(&v.address))
            .and_then(|r| r.generation),
        _ => None,
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
