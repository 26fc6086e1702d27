//! The walker: runs a [`Schedule`]'s tasks on one task (`FuturesUnordered`,
//! so provider futures need not be `Send`) with bounded parallelism.
//!
//! Invariants:
//! - Provider effects run up to `parallelism` at once; cc steps (which mostly
//!   wait for guests) run outside the cap, and effects are picked first.
//! - A task starts only once everything it waits for succeeded; a failure
//!   skips what depends on it (transitively), lets the rest finish, and every
//!   error is reported.
//! - The recorder is called before each create's effect and after every
//!   task; `MEGAPLAN_TEST_CRASH_BEFORE/AFTER=ADDRESS` kill the process
//!   between the two.

use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::plan::Plan;
use crate::provider::Provider;
use crate::provider::ops::Phase;
use crate::state::{Kind, State};

use super::record::{self, Recorder};
use super::schedule::{Schedule, schedule};
use super::{Executor, Outcome, Report, crash_point, done_verb, verb};

impl<P: Provider> Executor<'_, P> {
    /// Carry out `plan`, updating and saving `state` after every task.
    pub async fn run(&self, plan: &Plan, state: &mut State) -> Report {
        let started = Instant::now();
        let mut report = Report::default();
        // We hold the lock: any temporary of an interrupted op is a leftover.
        for p in self.provider.sweep(self.sd) {
            (self.progress)(&format!(
                "removed {} (left by an interrupted disk creation)",
                p.display()
            ));
        }
        let recorder = Recorder {
            sd: self.sd,
            rules: self.provider.rules(),
        };
        let Schedule {
            tasks,
            deps,
            dependents,
        } = schedule(plan);
        let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut ready: Vec<usize> = (0..tasks.len()).filter(|&t| waiting[t] == 0).collect();
        ready.reverse();
        let mut failed = vec![false; tasks.len()];
        let mut running = FuturesUnordered::new();
        let mut effects_running = 0usize;
        let mut finished = 0;
        let is_step = |t: &usize| plan.changes[tasks[*t].change].kind == Kind::Step;
        while finished < tasks.len() {
            // Provider effects are bounded by `parallelism`. cc steps are not:
            // they mostly wait for a guest to boot, and counting them would
            // hold back the launch of the other VMs. Effects go first.
            loop {
                let pick = if effects_running < self.parallelism.max(1) {
                    ready.iter().rposition(|t| !is_step(t))
                } else {
                    None
                }
                .or_else(|| ready.iter().rposition(is_step));
                let Some(i) = pick else { break };
                let t = ready.remove(i);
                let task = tasks[t];
                if !is_step(&t) {
                    effects_running += 1;
                }
                let c = &plan.changes[task.change];
                let vm_gen = record::vm_generation(c, self.lab, state);
                // Record intent before the effect.
                if task.phase == Phase::Create
                    && let Err(e) = recorder.begin(state, c, vm_gen)
                {
                    (self.progress)(&format!("warning: cannot save the state: {e}"));
                }
                let prior = state.resources.get(&c.address).cloned();
                (self.progress)(&format!("{}: {}…", c.address, verb(c, task.phase)));
                crash_point("BEFORE", &c.address);
                running.push(async move {
                    let started = Instant::now();
                    let r = self.effect(c, task.phase, prior.as_ref(), vm_gen).await;
                    (t, r, started.elapsed())
                });
            }
            let Some((t, result, took)) = running.next().await else {
                break;
            };
            let task = tasks[t];
            let c = &plan.changes[task.change];
            crash_point("AFTER", &c.address);
            finished += 1;
            if c.kind != Kind::Step {
                effects_running -= 1;
            }
            let key = format!(
                "{} {}",
                c.kind.as_str(),
                if task.phase == Phase::Create {
                    "create"
                } else {
                    "delete"
                }
            );
            *report.timings.entry(key).or_default() += took;
            match result {
                Ok(done) => {
                    let failure = done.outcome.failure(c);
                    let note = match &done.outcome {
                        Outcome::LeftAlone(why) => format!(" (record dropped; left alone: {why})"),
                        Outcome::Step { replayed: true, .. } => {
                            " (not run again: the agent had already run it in this boot; its outcome is recorded)".to_string()
                        }
                        _ => String::new(),
                    };
                    recorder.finish(state, c, task.phase, done);
                    if let Some(e) = failure {
                        failed[t] = true;
                        (self.progress)(&format!("{}: FAILED: {e}", c.address));
                        report.errors.push((c.address.clone(), e));
                    } else {
                        (self.progress)(&format!(
                            "{}: {} in {:.2}s{note}",
                            c.address,
                            done_verb(c, task.phase),
                            took.as_secs_f64()
                        ));
                        report.done.push(c.address.clone());
                    }
                }
                Err(e) => {
                    failed[t] = true;
                    recorder.failed(state, c);
                    (self.progress)(&format!("{}: FAILED: {e}", c.address));
                    report.errors.push((c.address.clone(), e));
                }
            }
            if let Err(e) = recorder.save(state) {
                report.errors.push(("state".into(), e.into()));
            }
            // Release dependents; skip the ones downstream of a failure.
            let mut stack = vec![t];
            while let Some(x) = stack.pop() {
                for &d in &dependents[x] {
                    if failed[x] {
                        if !failed[d] {
                            failed[d] = true;
                            finished += 1;
                            let cd = &plan.changes[tasks[d].change];
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
}
