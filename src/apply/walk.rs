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
//!   between the two. A batch (tasks the provider takes together,
//!   [`Provider::batches`]) is recorded `Creating` all at once and saved
//!   once before its effect, and saved once after all its tasks finished.
//! - Once a save fails (before an effect or after a task), nothing new
//!   starts: what runs already finishes and is recorded in memory, one
//!   final save is tried, and every task not started is reported skipped
//!   ([`Skip::StateUnsaved`]). Going on would make things the saved state
//!   does not know of.

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::plan::Plan;
use crate::provider::Provider;
use crate::provider::ops::Phase;
use crate::state::{Kind, State, StateError};

use super::record::{self, Recorder};
use super::schedule::{Schedule, schedule};
use super::{
    ApplyError, BatchItem, Done, Executor, Outcome, Report, Skip, crash_point, done_verb, verb,
};

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
        // Finished, failed or skipped: neither waiting nor running.
        let mut settled = vec![false; tasks.len()];
        // A save failed: start nothing new.
        let mut halted = false;
        let mut running = FuturesUnordered::new();
        let mut effects_running = 0usize;
        // Effects not handed to the provider in batches, running now.
        let mut plain_running = 0usize;
        let mut finished = 0;
        let is_step = |t: &usize| plan.changes[tasks[*t].change].kind == Kind::Step;
        let batchable = |t: &usize| {
            let task = tasks[*t];
            let kind = plan.changes[task.change].kind;
            kind != Kind::Step && self.provider.batches(kind, task.phase)
        };
        let any_batchable = (0..tasks.len()).any(|t| batchable(&t));
        while finished < tasks.len() {
            // Provider effects are bounded by `parallelism`. cc steps are not:
            // they mostly wait for a guest to boot, and counting them would
            // hold back the launch of the other VMs. Effects go first. Tasks
            // the provider takes in batches wait until no other effect is
            // ready or running, then every ready one goes as one effect.
            while !halted {
                let room = effects_running < self.parallelism.max(1);
                let plain = if room {
                    ready.iter().rposition(|t| !is_step(t) && !batchable(t))
                } else {
                    None
                };
                let (group, batched): (Vec<usize>, bool) = if let Some(i) = plain {
                    (vec![ready.remove(i)], false)
                } else if room && plain_running == 0 && ready.iter().any(batchable) {
                    let (mut b, rest): (Vec<usize>, Vec<usize>) =
                        ready.iter().partition(|t| batchable(t));
                    ready = rest;
                    b.sort_unstable();
                    (b, true)
                } else if let Some(i) = ready.iter().rposition(is_step) {
                    (vec![ready.remove(i)], false)
                } else {
                    break;
                };
                if !is_step(&group[0]) {
                    effects_running += 1;
                    if !batched {
                        plain_running += 1;
                    }
                }
                // Record intent before the effect (a batch's, saved once).
                let gens: Vec<Option<u64>> = group
                    .iter()
                    .map(|&t| {
                        record::vm_generation(&plan.changes[tasks[t].change], self.lab, state)
                    })
                    .collect();
                // An effect whose intent is not saved does not start (a crash
                // would leave something the state does not know of): the
                // task fails with the save's error and its dependents skip.
                let mut unsaved: Option<StateError> = None;
                for (&t, &vm_gen) in group.iter().zip(&gens) {
                    let task = tasks[t];
                    let c = &plan.changes[task.change];
                    if task.phase != Phase::Create {
                        continue;
                    }
                    if batched {
                        recorder.mark(state, c, vm_gen);
                    } else if let Err(e) = recorder.begin(state, c, vm_gen) {
                        unsaved = Some(e);
                    }
                }
                if batched
                    && group.iter().any(|&t| tasks[t].phase == Phase::Create)
                    && let Err(e) = recorder.save(state)
                {
                    unsaved = Some(e);
                }
                if let Some(e) = unsaved {
                    let mut first = Some(ApplyError::State(e));
                    let results: Vec<Result<Done, ApplyError>> = group
                        .iter()
                        .map(|&t| {
                            Err(first.take().unwrap_or_else(|| ApplyError::NotRecorded {
                                address: plan.changes[tasks[t].change].address.clone(),
                            }))
                        })
                        .collect();
                    running.push(
                        async move { (group, batched, results, Duration::ZERO) }.boxed_local(),
                    );
                    halted = true;
                    continue;
                }
                let mut items = Vec::with_capacity(group.len());
                for (&t, &vm_gen) in group.iter().zip(&gens) {
                    let task = tasks[t];
                    let c = &plan.changes[task.change];
                    let prior = state.resources.get(&c.address).cloned();
                    (self.progress)(&format!("{}: {}…", c.address, verb(c, task.phase)));
                    crash_point("BEFORE", &c.address);
                    items.push(BatchItem {
                        change: c,
                        phase: task.phase,
                        prior,
                        vm_gen,
                    });
                }
                running.push(
                    async move {
                        let started = Instant::now();
                        let results = if batched {
                            self.effect_batch(&items).await
                        } else {
                            let it = &items[0];
                            vec![
                                self.effect(it.change, it.phase, it.prior.as_ref(), it.vm_gen)
                                    .await,
                            ]
                        };
                        (group, batched, results, started.elapsed())
                    }
                    .boxed_local(),
                );
            }
            let Some(first) = running.next().await else {
                break;
            };
            // With batching, take every effect already done before picking
            // again, so what they release is ready together.
            let mut done_now = vec![first];
            while any_batchable && let Some(Some(more)) = running.next().now_or_never() {
                done_now.push(more);
            }
            for (group, batched, results, took) in done_now {
                if !is_step(&group[0]) {
                    effects_running -= 1;
                    if !batched {
                        plain_running -= 1;
                    }
                }
                let len = group.len();
                for (n, (t, result)) in group.into_iter().zip(results).enumerate() {
                    let task = tasks[t];
                    let c = &plan.changes[task.change];
                    crash_point("AFTER", &c.address);
                    finished += 1;
                    settled[t] = true;
                    let key = format!(
                        "{} {}",
                        c.kind.as_str(),
                        if task.phase == Phase::Create {
                            "create"
                        } else {
                            "delete"
                        }
                    );
                    // A batch's wall time counts once.
                    *report.timings.entry(key).or_default() +=
                        if n == 0 { took } else { Duration::ZERO };
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
                    // A batch's tasks finished together: one save for all.
                    // Once a save failed, what still finishes is recorded in
                    // memory only, until the final save.
                    if !halted
                        && (!batched || n + 1 == len)
                        && let Err(e) = recorder.save(state)
                    {
                        (self.progress)(&format!(
                            "state: could not be saved ({e}): starting nothing new"
                        ));
                        report.errors.push(("state".into(), e.into()));
                        halted = true;
                    }
                    // Release dependents; skip the ones downstream of a failure.
                    let mut stack = vec![t];
                    while let Some(x) = stack.pop() {
                        for &d in &dependents[x] {
                            if failed[x] {
                                if !failed[d] {
                                    failed[d] = true;
                                    settled[d] = true;
                                    finished += 1;
                                    let cd = &plan.changes[tasks[d].change];
                                    let why = Skip::DependencyFailed;
                                    (self.progress)(&format!("{}: skipped ({why})", cd.address));
                                    report.skipped.push((cd.address.clone(), why));
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
            }
        }
        if halted {
            for t in (0..tasks.len()).filter(|&t| !settled[t]) {
                let c = &plan.changes[tasks[t].change];
                let why = Skip::StateUnsaved;
                (self.progress)(&format!("{}: skipped ({why})", c.address));
                report.skipped.push((c.address.clone(), why));
            }
            // What finished after the failed save, if the folder takes
            // writes again.
            if let Err(e) = recorder.save(state) {
                report.errors.push(("state".into(), e.into()));
            }
        }
        report.total = started.elapsed();
        report
    }
}
