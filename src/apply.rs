//! The executor: carries a plan out through a [`Provider`].
//!
//! - [`schedule`] (pure): the plan's tasks (a phase of a change each) and
//!   their order;
//! - `walk`: runs them with bounded parallelism, skipping what depends on
//!   a failure;
//! - `record`: the state's side, `Creating` before each effect and
//!   `Ready`/`Failed` after, saved after every task;
//! - [`Executor::effect`] here: a task's ops ([`crate::provider::ops::for_change`],
//!   pure) executed in order by the provider.
//!
//! Invariants:
//! - Only the executor changes the machine (through [`Provider`]) and the state.
//! - A record is saved as `Creating` before an effect starts and `Ready` after
//!   it succeeds (or `Failed`); a delete removes its record after the effect.
//!   The state file is written after every task, so a crash or kill at any
//!   point leaves a state the next plan converges from.
//! - Independent operations run at once: provider effects up to
//!   `parallelism`, cc steps (which mostly wait for guests) without a bound,
//!   effects first; a failure skips what depends on it, lets the rest
//!   finish, and every error is reported.
//! - Once a save of the state fails, nothing new starts (see `walk`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::graph::Target;
use crate::lab::Lab;
use crate::plan::{Action, Change};
use crate::provider::ops::{self, OpError, Phase};
use crate::provider::{Provider, ProviderError};
use crate::state::{Attrs, Kind, Record, StateDir, StateError};

/// Why one operation of an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The change could not become ops (a damaged state or saved plan).
    #[error(transparent)]
    Op(#[from] OpError),
    /// The engine failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A guest step exited non-zero (and was not allowed to fail).
    #[error("{address} exited {exit}: {stderr}")]
    StepFailed {
        address: String,
        exit: i32,
        stderr: String,
    },
    /// A guest step ran past its timeout.
    #[error("{address} {}", crate::cc::timed_out_after(*after))]
    StepTimedOut { address: String, after: Duration },
    /// The state could not be saved after an operation.
    #[error(transparent)]
    State(#[from] StateError),
    /// Its intent (`Creating`) could not be saved, so it was not started:
    /// an effect the state does not know of would be lost in a crash.
    #[error("{address} was not started: the state could not record it first")]
    NotRecorded { address: String },
    /// The engine answered a batch without the outcome of every op.
    #[error("the engine did not report the outcome of every operation of {address}")]
    Incomplete { address: String },
}

/// Why a task was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Something it waits for failed or was skipped.
    DependencyFailed,
    /// A save of the state failed earlier in the run: nothing new starts
    /// after that, so nothing is made that the saved state does not know of.
    StateUnsaved,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::DependencyFailed => "a dependency failed",
            Skip::StateUnsaved => "not started: the state could not be saved",
        })
    }
}

/// How an apply went.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<String>,
    /// Each failed operation's address (or "state") and its typed error.
    pub errors: Vec<(String, ApplyError)>,
    /// Each task not started: its address and why.
    pub skipped: Vec<(String, Skip)>,
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

impl<P: Provider> Executor<'_, P> {
    /// Carry out one phase of a change: its ops, in order, through the provider.
    async fn effect(
        &self,
        c: &Change,
        phase: Phase,
        prior: Option<&Record>,
        vm_gen: Option<u64>,
    ) -> Result<Done, ApplyError> {
        let effects = self.effects(c, phase, prior)?;
        if let Some(why) = effects.left_alone {
            return Ok(Outcome::LeftAlone(why).into());
        }
        let results = crate::provider::execute_in_order(self.provider, self.sd, &effects.ops).await;
        self.absorb(c, vm_gen, &effects.ops, results)
    }

    /// Carry out one phase each of several changes ready together, as one
    /// [`Provider::execute_batch`]: the outcome of each, in order.
    async fn effect_batch(&self, items: &[BatchItem<'_>]) -> Vec<Result<Done, ApplyError>> {
        let mut out: Vec<Option<Result<Done, ApplyError>>> = Vec::with_capacity(items.len());
        let mut batch: Vec<Vec<ops::Op>> = Vec::new();
        let mut which: Vec<usize> = Vec::new();
        for (i, it) in items.iter().enumerate() {
            match self.effects(it.change, it.phase, it.prior.as_ref()) {
                Err(e) => out.push(Some(Err(e))),
                Ok(ops::Effects {
                    left_alone: Some(why),
                    ..
                }) => out.push(Some(Ok(Outcome::LeftAlone(why).into()))),
                Ok(e) => {
                    out.push(None);
                    which.push(i);
                    batch.push(e.ops);
                }
            }
        }
        if !batch.is_empty() {
            let mut results = self
                .provider
                .execute_batch(self.sd, &batch)
                .await
                .into_iter();
            for (i, ops) in which.into_iter().zip(&batch) {
                let it = &items[i];
                let r = results.next().unwrap_or_default();
                out[i] = Some(self.absorb(it.change, it.vm_gen, ops, r));
            }
        }
        out.into_iter()
            .zip(items)
            .map(|(r, it)| {
                r.unwrap_or_else(|| {
                    Err(ApplyError::Incomplete {
                        address: it.change.address.clone(),
                    })
                })
            })
            .collect()
    }

    /// The ops of one phase of a change.
    fn effects(
        &self,
        c: &Change,
        phase: Phase,
        prior: Option<&Record>,
    ) -> Result<ops::Effects, ApplyError> {
        let cx = ops::Context {
            experiment: &self.experiment,
            lab: self.lab,
            record: prior,
        };
        Ok(ops::for_change(c, phase, &cx)?)
    }

    /// What the results of a change's ops (in order, ending at the first
    /// error or `LeftAlone`) come to.
    fn absorb(
        &self,
        c: &Change,
        vm_gen: Option<u64>,
        ops: &[ops::Op],
        results: Vec<Result<ops::OpOutcome, ProviderError>>,
    ) -> Result<Done, ApplyError> {
        let mut done = Done::from(Outcome::Done);
        let complete = results.len() == ops.len();
        for (op, r) in ops.iter().zip(results) {
            let out = match r {
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
        if !complete {
            return Err(ApplyError::Incomplete {
                address: c.address.clone(),
            });
        }
        Ok(done)
    }
}

/// One task of a batch: its change and phase, its record before, the
/// generation of the VM a step runs on.
struct BatchItem<'a> {
    change: &'a Change,
    phase: Phase,
    prior: Option<Record>,
    vm_gen: Option<u64>,
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
    fn failure(&self, c: &Change) -> Option<ApplyError> {
        match self {
            Outcome::Step {
                exit,
                stderr,
                timed_out,
                ..
            } if *exit != 0 && !c.allows_failure() => Some(match timed_out {
                Some(t) => ApplyError::StepTimedOut {
                    address: c.address.clone(),
                    after: *t,
                },
                None => ApplyError::StepFailed {
                    address: c.address.clone(),
                    exit: *exit,
                    stderr: stderr.trim().to_string(),
                },
            }),
            _ => None,
        }
    }
}

/// Fault injection for the crash tests: `MEGAPLAN_TEST_CRASH_BEFORE=ADDRESS`
/// kills this process with SIGKILL once ADDRESS is recorded as being created,
/// before its effect; `MEGAPLAN_TEST_CRASH_AFTER=ADDRESS` once the effect is
/// done, before the state records it; `MEGAPLAN_TEST_CRASH_QUEUED=ADDRESS`
/// (the minimega provider) once that VM is queued in minimega, before the
/// batch is launched. Unset, it costs one env lookup per step.
pub(crate) fn crash_point(when: &str, address: &str) {
    if std::env::var(format!("MEGAPLAN_TEST_CRASH_{when}")).is_ok_and(|a| a == address) {
        // SAFETY: raising a signal on ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }
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

mod record;
pub mod schedule;
mod walk;

#[cfg(test)]
mod tests;
