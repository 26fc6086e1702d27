//! VM creates carried out together (issue 14, speed): the executor hands
//! the minimega provider every VM create that is ready at once
//! ([`crate::provider::Provider::execute_batch`]), and they become the
//! sequence minimega's own scripts use, with a fixed number of round trips
//! however many VMs there are:
//!
//! 1. leftovers of an interrupted launch: one `namespace`, one `cc
//!    commands` (megaplan's commands for these UUIDs are deleted) and one
//!    `vm info`; a VM found there is stopped as before (rare);
//! 2. `ns queue`: what an interrupted batch left queued (configs only: no
//!    VM exists of them) is dropped with `ns flush` when all of it carries
//!    this experiment's marker; anything else queued there is refused;
//! 3. `ns queueing true`, then per VM `clear vm config`, its `vm config …`
//!    lines and `vm launch kvm NAME` (queued, not launched), then one bare
//!    `vm launch` (minimega schedules the queue and launches on every node
//!    in parallel; `colocate` with a VM of the same queue works), `ns
//!    queueing false` and `clear vm config`;
//! 4. one `vm start A,B,…` and one `vm info` for pids, nodes and taps.
//!
//! Invariants:
//! - Each VM's outcome is its own: a VM whose config or queueing fails, or
//!   that minimega did not launch, fails alone; the others go on.
//! - Nothing stays queued: a failed bare `vm launch` is followed by `ns
//!   flush`, and queueing is switched off again on every path.
//! - The executor records `Creating` for every VM before the batch and
//!   `Ready`/`Failed` for each after, so a crash in the middle leaves VMs
//!   recorded `Creating` that the next apply creates again (step 1 and 2
//!   clear what the crash left).

use std::sync::Arc;

use super::stop;
use super::*;
use crate::provider::execute_in_order;

/// One VM to launch.
pub(super) struct Launch<'a> {
    pub experiment: &'a str,
    pub accel: Accel,
    pub vm: &'a VmSpec,
    pub disks: &'a [DiskSpec],
}

type Results = Vec<Result<OpOutcome, PError>>;

/// A failure shared by several VMs of a batch (each VM's task reports it).
fn shared(e: &Arc<MinimegaError>) -> PError {
    MinimegaError::Batch(e.clone()).into()
}

impl MinimegaHost {
    /// [`crate::provider::Provider::execute_batch`]: VM creates (`StopVm`
    /// of leftovers, then `LaunchVm`) together, anything else one by one.
    pub(super) async fn execute_batch_ops(&self, sd: &StateDir, tasks: &[Vec<Op>]) -> Vec<Results> {
        let mut out: Vec<Results> = (0..tasks.len()).map(|_| Vec::new()).collect();
        let mut creates: Vec<(usize, Launch<'_>)> = Vec::new();
        // A capture waits for its VM, which may be in this very batch: the
        // batch's captures start after its launches.
        let mut captures: Vec<usize> = Vec::new();
        // VM deletes: one `vm kill` and one `vm flush` for all (super::stop).
        let mut stops: Vec<(usize, &str)> = Vec::new();
        for (i, ops) in tasks.iter().enumerate() {
            if matches!(ops.first(), Some(Op::StartCapture { .. })) {
                captures.push(i);
                continue;
            }
            match ops.as_slice() {
                [
                    Op::StopVm {
                        name, pid: None, ..
                    },
                    Op::LaunchVm {
                        experiment,
                        accel,
                        vm,
                        disks,
                        ..
                    },
                ] if *name == vm.name => creates.push((
                    i,
                    Launch {
                        experiment,
                        accel: *accel,
                        vm,
                        disks,
                    },
                )),
                [Op::StopVm { name, .. }] => stops.push((i, name)),
                _ => out[i] = execute_in_order(self, sd, ops).await,
            }
        }
        if !stops.is_empty() {
            let names: Vec<&str> = stops.iter().map(|(_, n)| *n).collect();
            for ((i, _), r) in stops.iter().zip(self.stop_many(&names).await) {
                out[*i].push(stop::stop_outcome(r));
            }
        }
        if !creates.is_empty() {
            self.launch_creates(&mut out, creates).await;
        }
        for i in captures {
            out[i] = execute_in_order(self, sd, &tasks[i]).await;
        }
        out
    }

    /// Steps 1 to 4 for the VM creates of a batch, each VM's results pushed
    /// to `out[i]`.
    async fn launch_creates<'a>(&self, out: &mut [Results], creates: Vec<(usize, Launch<'a>)>) {
        // 1. Leftovers of an interrupted launch.
        let names: Vec<&str> = creates.iter().map(|(_, l)| l.vm.name.as_str()).collect();
        let present = match self.leftovers(&creates) {
            Ok(p) => p,
            Err(e) => {
                let e = Arc::new(e);
                for (i, _) in &creates {
                    out[*i].push(Err(shared(&e)));
                }
                return;
            }
        };
        // The ones minimega has already are stopped together (rare).
        let old: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| present.iter().any(|v| v.name == *n))
            .collect();
        let mut stopped: BTreeMap<&str, Result<(), MinimegaError>> = BTreeMap::new();
        if !old.is_empty() {
            stopped.extend(old.iter().copied().zip(self.stop_many(&old).await));
        }
        let mut go: Vec<(usize, Launch<'_>)> = Vec::new();
        for (i, l) in creates {
            let r = stopped.remove(l.vm.name.as_str()).unwrap_or(Ok(()));
            let ok = r.is_ok();
            out[i].push(stop::stop_outcome(r));
            if ok {
                go.push((i, l));
            }
        }
        // A mirror partner outside this batch must be in minimega first.
        let mut ready: Vec<(usize, Launch<'_>)> = Vec::new();
        for (i, l) in go {
            let waits =
                l.vm.colocate
                    .as_ref()
                    .filter(|o| !names.contains(&o.as_str()));
            match waits {
                Some(other) => match self.wait_for_partner(&l.vm.name, other).await {
                    Ok(()) => ready.push((i, l)),
                    Err(e) => out[i].push(Err(e)),
                },
                None => ready.push((i, l)),
            }
        }
        let launches: Vec<&Launch<'_>> = ready.iter().map(|(_, l)| l).collect();
        for ((i, _), r) in ready.iter().zip(self.launch_many(&launches)) {
            out[*i].push(r);
        }
    }

    /// The VMs of `creates` minimega has already (an interrupted launch),
    /// after deleting megaplan's cc commands for their UUIDs (minimega
    /// would send a new client of that UUID every command it has not run).
    fn leftovers(&self, creates: &[(usize, Launch<'_>)]) -> Result<Vec<VmInfo>, MinimegaError> {
        if !self.namespace_exists()? {
            return Ok(Vec::new());
        }
        let uuids: BTreeSet<String> = creates.iter().map(|(_, l)| l.vm.uuid.to_string()).collect();
        self.forget_uuids(&uuids)?;
        let mine: BTreeSet<&str> = creates.iter().map(|(_, l)| l.vm.name.as_str()).collect();
        Ok(self
            .vm_info()?
            .into_iter()
            .filter(|v| mine.contains(v.name.as_str()))
            .collect())
    }

    /// Wait (up to [`GONE_WAIT`]) until minimega has `other`, the VM that
    /// `vm` is colocated with: minimega's scheduler places a VM with
    /// another only when that one is launched or in the same queue.
    pub(super) async fn wait_for_partner(&self, vm: &str, other: &str) -> Result<(), PError> {
        let end = Instant::now() + GONE_WAIT;
        while !self.vm_info()?.iter().any(|v| v.name == other) {
            if Instant::now() >= end {
                return Err(MinimegaError::NoPartner {
                    vm: vm.to_string(),
                    partner: other.to_string(),
                    after: GONE_WAIT,
                }
                .into());
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Queue, launch and start `vms` (steps 2 to 4 above): one result per VM.
    pub(super) fn launch_many(&self, vms: &[&Launch<'_>]) -> Results {
        let mut out: Vec<Option<Result<OpOutcome, PError>>> =
            (0..vms.len()).map(|_| None).collect();
        let mut queued: Vec<usize> = Vec::new();
        // Boot files and each VM's configuration, before anything is sent.
        let mut configs: Vec<(usize, Vec<Command>)> = Vec::new();
        for (i, l) in vms.iter().enumerate() {
            let missing =
                l.vm.kernel
                    .iter()
                    .chain(l.vm.initrd.iter())
                    .find(|p| !p.exists());
            if let Some(p) = missing {
                out[i] = Some(Err(PError::MissingBootFile { path: p.clone() }));
                continue;
            }
            match self.launch_sync(l.experiment, l.accel, l.vm, l.disks) {
                Ok(cfg) => configs.push((i, cfg)),
                Err(e) => out[i] = Some(Err(e.into())),
            }
        }
        let finish = |out: Vec<Option<Result<OpOutcome, PError>>>| -> Results {
            out.into_iter()
                .zip(vms)
                .map(|(r, l)| {
                    r.unwrap_or_else(|| {
                        Err(MinimegaError::NotLaunched {
                            vm: l.vm.name.clone(),
                            why: "no outcome".into(),
                        }
                        .into())
                    })
                })
                .collect()
        };
        if configs.is_empty() {
            return finish(out);
        }
        if let Err(e) = self.ensure_namespace() {
            let e = Arc::new(e);
            for (i, _) in &configs {
                out[*i] = Some(Err(shared(&e)));
            }
            return finish(out);
        }
        let launched = self.queue_and_launch(vms, configs, &mut out, &mut queued);
        if let Err(e) = launched {
            // Nothing of the batch was launched (the queue was flushed).
            let e = Arc::new(e);
            let mut todo: Vec<usize> = queued;
            todo.extend((0..vms.len()).filter(|&i| out[i].is_none()));
            for i in todo {
                out[i] = Some(Err(shared(&e)));
            }
            return finish(out);
        }
        if queued.is_empty() {
            return finish(out);
        }
        // 4. Start them all, then read what minimega made of them.
        let list: Vec<&str> = queued.iter().map(|&i| vms[i].vm.name.as_str()).collect();
        let infos = (|| -> Result<_, MinimegaError> {
            let start = Command::new("vm").word("start").arg(&list.join(","))?;
            let errors: Vec<String> = self
                .run(start)?
                .into_iter()
                .filter(|r| !r.error.is_empty())
                .map(|r| format!("host {}: {}", r.host, r.error))
                .collect();
            Ok((errors, self.vm_info()?))
        })();
        let (start_errors, infos) = match infos {
            Ok(x) => x,
            Err(e) => {
                let e = Arc::new(e);
                for i in queued {
                    out[i] = Some(Err(shared(&e)));
                }
                return finish(out);
            }
        };
        for i in queued {
            let name = &vms[i].vm.name;
            let info = infos
                .iter()
                .find(|v| &v.name == name && self.ours(v).is_some());
            out[i] = Some(match info {
                Some(v) if matches!(v.state, VmState::Error | VmState::Quit) => {
                    Err(MinimegaError::NotLaunched {
                        vm: name.clone(),
                        why: format!(
                            "it is {} in minimega on {} (minimega's log there says why)",
                            if v.state == VmState::Error {
                                "in error"
                            } else {
                                "quit"
                            },
                            v.host
                        ),
                    }
                    .into())
                }
                Some(v) if v.state == VmState::Building && !start_errors.is_empty() => {
                    Err(MinimegaError::NotLaunched {
                        vm: name.clone(),
                        why: format!("`vm start`: {}", start_errors.join("; ")),
                    }
                    .into())
                }
                Some(v) => {
                    let mut computed = crate::state::Attrs::new();
                    computed.insert("node".into(), v.host.clone().into());
                    let taps: Vec<serde_json::Value> =
                        v.networks.iter().map(|n| n.tap.clone().into()).collect();
                    computed.insert("minimega_taps".into(), taps.into());
                    Ok(OpOutcome {
                        outcome: Outcome::Launched {
                            pid: u32::try_from(v.pid).unwrap_or(0),
                        },
                        computed,
                    })
                }
                None => Err(MinimegaError::NotLaunched {
                    vm: name.clone(),
                    why: if start_errors.is_empty() {
                        "it is not in `vm info` after `vm launch` (minimega's log on its node says why)"
                            .into()
                    } else {
                        format!("`vm start`: {}", start_errors.join("; "))
                    },
                }
                .into()),
            });
        }
        finish(out)
    }

    /// Steps 2 and 3: on one hold of the connection (`vm config` and the
    /// queue are the namespace's shared state). A VM whose own commands
    /// fail gets its error in `out`; the ones queued are in `queued`; an
    /// error returned is one of the whole batch.
    fn queue_and_launch(
        &self,
        vms: &[&Launch<'_>],
        configs: Vec<(usize, Vec<Command>)>,
        out: &mut [Option<Result<OpOutcome, PError>>],
        queued: &mut Vec<usize>,
    ) -> Result<(), MinimegaError> {
        let ns = &self.ns;
        let mut c = self.client.lock().expect("the client lock");
        let left = c.run_ok(&Command::new("ns").word("queue").in_namespace(ns))?;
        let text: String = left.iter().map(|r| r.response.as_str()).collect();
        match queued_by(&text, self.experiment.as_str()) {
            QueueOwner::Empty => {}
            QueueOwner::Ours => {
                c.run_ok(&Command::new("ns").word("flush").in_namespace(ns))?;
            }
            QueueOwner::Other => {
                return Err(MinimegaError::ForeignQueue { ns: ns.to_string() });
            }
        }
        c.run_ok(
            &Command::new("ns")
                .word("queueing")
                .word("true")
                .in_namespace(ns),
        )?;
        let mut result: Result<(), MinimegaError> = Ok(());
        for (i, cfg) in configs {
            let name = match Name::new(&vms[i].vm.name) {
                Ok(n) => n,
                Err(e) => {
                    out[i] = Some(Err(MinimegaError::from(e).into()));
                    continue;
                }
            };
            let one = cfg
                .iter()
                .try_for_each(|cmd| c.run_ok(&cmd.clone().in_namespace(ns)).map(drop))
                .and_then(|()| {
                    c.run_ok(
                        &Command::new("vm")
                            .word("launch")
                            .word("kvm")
                            .name(&name)
                            .in_namespace(ns),
                    )
                    .map(drop)
                });
            match one {
                Ok(()) => {
                    queued.push(i);
                    crate::apply::crash_point("QUEUED", &vms[i].vm.address);
                }
                // The connection is gone: the batch is over.
                Err(e @ ClientError::Host { .. }) | Err(e @ ClientError::BadValue { .. }) => {
                    out[i] = Some(Err(MinimegaError::from(e).into()));
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        if result.is_ok() && !queued.is_empty() {
            // A bare `vm launch`: schedule the queue, launch on every node.
            if let Err(e) = c.run_ok(&Command::new("vm").word("launch").in_namespace(ns)) {
                result = Err(e.into());
            }
        }
        // Nothing stays queued, queueing goes off, the shared config is clear.
        if result.is_err() {
            let _ = c.run(&Command::new("ns").word("flush").in_namespace(ns));
        }
        let off = c.run_ok(
            &Command::new("ns")
                .word("queueing")
                .word("false")
                .in_namespace(ns),
        );
        let clear = c.run_ok(
            &Command::new("clear")
                .word("vm")
                .word("config")
                .in_namespace(ns),
        );
        result?;
        off?;
        clear?;
        Ok(())
    }
}

/// Whose VMs `ns queue` lists.
#[derive(Debug, PartialEq, Eq)]
enum QueueOwner {
    Empty,
    /// Every queued config carries megaplan's marker for this experiment.
    Ours,
    Other,
}

/// Read `ns queue`'s text: one block per queued config, each with a `VMs:`
/// line and a `Tags:` line holding the config's tags as JSON.
fn queued_by(text: &str, experiment: &str) -> QueueOwner {
    let blocks = text.lines().filter(|l| l.starts_with("VMs:")).count();
    if blocks == 0 {
        return if text.trim().is_empty() {
            QueueOwner::Empty
        } else {
            QueueOwner::Other
        };
    }
    let ours = text
        .lines()
        .filter_map(|l| l.strip_prefix("Tags:"))
        .filter(|json| {
            serde_json::from_str::<BTreeMap<String, String>>(json.trim())
                .ok()
                .and_then(|t| t.get(MARKER_TAG).cloned())
                .and_then(|m| m.strip_prefix(experiment).map(|r| r.starts_with(":vm.")))
                .unwrap_or(false)
        })
        .count();
    if ours == blocks {
        QueueOwner::Ours
    } else {
        QueueOwner::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(tags: &str) -> String {
        format!(
            "VMs: 1\nNames: a\nVM Type: kvm\n\nVM configuration:\nMemory:           128\nUUID:             u\nTags:             {tags}\n\n\n"
        )
    }

    #[test]
    fn a_queue_left_by_this_experiment_is_ours_and_anything_else_is_not() {
        assert_eq!(queued_by("", "x"), QueueOwner::Empty);
        assert_eq!(queued_by("\n", "x"), QueueOwner::Empty);
        let ours = block(r#"{"megaplan":"x:vm.a"}"#);
        assert_eq!(queued_by(&ours, "x"), QueueOwner::Ours);
        assert_eq!(queued_by(&format!("{ours}{ours}"), "x"), QueueOwner::Ours);
        // Another experiment's, no marker, no tags, mixed, or unreadable.
        assert_eq!(
            queued_by(&block(r#"{"megaplan":"xy:vm.a"}"#), "x"),
            QueueOwner::Other
        );
        assert_eq!(
            queued_by(&block(r#"{"other":"x:vm.a"}"#), "x"),
            QueueOwner::Other
        );
        assert_eq!(queued_by(&block("{}"), "x"), QueueOwner::Other);
        assert_eq!(
            queued_by(&format!("{ours}{}", block("{}")), "x"),
            QueueOwner::Other
        );
        assert_eq!(queued_by("something else", "x"), QueueOwner::Other);
    }
}
