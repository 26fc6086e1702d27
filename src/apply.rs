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
}

/// How an apply went.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<String>,
    /// Each failed operation's address (or "state") and its typed error.
    pub errors: Vec<(String, ApplyError)>,
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

impl<P: Provider> Executor<'_, P> {
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
/// done, before the state records it. Unset, it costs one env lookup per step.
fn crash_point(when: &str, address: &str) {
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
