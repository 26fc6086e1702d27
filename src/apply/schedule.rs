//! The scheduler: which tasks a plan needs (a phase of a change each) and
//! what each must wait for. Pure: no provider, no state folder, no clock.
//!
//! Invariants:
//! - A replacement is a delete, then a create of the same change; a step's
//!   replacement is a create only (it has nothing to delete, and its record,
//!   with the id of a run whose outcome is unknown, must survive).
//! - Creates wait for the creates of their dependencies; deletes wait for the
//!   deletes of what depended on them (recorded `prior_deps`); orphans, which
//!   have no record, wait by kind (an orphan VM goes before the orphan taps
//!   and bridges), never by a name guessed from an address.

use std::collections::HashMap;

use crate::plan::{Action, Change, Plan};
use crate::provider::ops::Phase;
use crate::state::Kind;

/// One phase of one change of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub phase: Phase,
    /// Its change's index in the plan.
    pub change: usize,
}

/// The tasks of a plan and their ordering edges.
#[derive(Debug, Default, PartialEq)]
pub struct Schedule {
    pub tasks: Vec<Task>,
    /// `deps[t]`: the tasks that must finish before `t` starts.
    pub deps: Vec<Vec<usize>>,
    /// `dependents[t]`: the tasks waiting for `t`.
    pub dependents: Vec<Vec<usize>>,
}

/// The schedule of `plan`.
pub fn schedule(plan: &Plan) -> Schedule {
    let mut tasks: Vec<Task> = Vec::new();
    let mut task_of: HashMap<(usize, Phase), usize> = HashMap::new();
    for (i, c) in plan.changes.iter().enumerate() {
        let phases: &[Phase] = match c.action {
            Action::NoOp => &[],
            Action::Create | Action::Update => &[Phase::Create],
            Action::Delete => &[Phase::Delete],
            Action::Replace if c.kind == Kind::Step => &[Phase::Create],
            Action::Replace => &[Phase::Delete, Phase::Create],
        };
        for &p in phases {
            task_of.insert((i, p), tasks.len());
            tasks.push(Task {
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
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (t, task) in tasks.iter().enumerate() {
        let c = &plan.changes[task.change];
        match task.phase {
            Phase::Create => {
                if let Some(&d) = task_of.get(&(task.change, Phase::Delete)) {
                    deps[t].push(d);
                }
                for dep in &c.deps {
                    if let Some(&ci) = index.get(dep.as_str())
                        && let Some(&d) = task_of.get(&(ci, Phase::Create))
                    {
                        deps[t].push(d);
                    }
                }
            }
            Phase::Delete => {
                // Delete this before what it depended on: so `dep`'s delete waits for ours.
                for dep in effective_prior_deps(c, plan, &orphans) {
                    if let Some(&ci) = index.get(dep.as_str())
                        && let Some(&d) = task_of.get(&(ci, Phase::Delete))
                    {
                        deps[d].push(t);
                    }
                }
            }
        }
    }
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (t, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(t);
        }
    }
    Schedule {
        tasks,
        deps,
        dependents,
    }
}

impl Schedule {
    /// The tasks in waves: each wave's tasks wait only for earlier waves'
    /// (what could run at once with no parallelism cap). A cycle's tasks,
    /// which the planner never makes, would be left out.
    pub fn waves(&self) -> Vec<Vec<usize>> {
        let mut waiting: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut wave: Vec<usize> = (0..self.tasks.len()).filter(|&t| waiting[t] == 0).collect();
        let mut out = Vec::new();
        while !wave.is_empty() {
            let mut next = Vec::new();
            for &t in &wave {
                for &d in &self.dependents[t] {
                    waiting[d] -= 1;
                    if waiting[d] == 0 {
                        next.push(d);
                    }
                }
            }
            next.sort_unstable();
            out.push(std::mem::replace(&mut wave, next));
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Mode;

    fn change(address: &str, kind: Kind, action: Action, deps: &[&str], prior: &[&str]) -> Change {
        Change {
            address: address.into(),
            kind,
            target: None,
            action,
            before: None,
            spec: (action != Action::Delete)
                .then(|| crate::graph::Spec::Network(crate::graph::NetworkSpec::default())),
            reasons: vec![],
            replace_paths: vec![],
            deps: deps.iter().map(|d| d.to_string()).collect(),
            prior_deps: prior.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn plan(changes: Vec<Change>) -> Plan {
        Plan {
            experiment: "x".into(),
            mode: Mode::Apply,
            lineage: None,
            serial: 0,
            changes,
        }
    }

    /// Names of the tasks of each wave: `vm.A-` a delete, `vm.A+` a create.
    fn waves(p: &Plan) -> Vec<Vec<String>> {
        let s = schedule(p);
        s.waves()
            .into_iter()
            .map(|w| {
                w.into_iter()
                    .map(|t| {
                        let task = s.tasks[t];
                        let sign = if task.phase == Phase::Delete {
                            "-"
                        } else {
                            "+"
                        };
                        format!("{}{sign}", p.changes[task.change].address)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_replacement_deletes_before_it_creates_and_its_dependents_wait() {
        let p = plan(vec![
            change("network.L", Kind::Network, Action::NoOp, &[], &[]),
            change(
                "vm.A.nic[0]",
                Kind::Tap,
                Action::Replace,
                &["network.L"],
                &["network.L"],
            ),
            change(
                "vm.A",
                Kind::Vm,
                Action::Replace,
                &["vm.A.nic[0]"],
                &["vm.A.nic[0]"],
            ),
            change(
                "vm.A.cc[0]",
                Kind::Step,
                Action::Replace,
                &["vm.A"],
                &["vm.A"],
            ),
        ]);
        assert_eq!(
            waves(&p),
            [
                vec!["vm.A-"],
                vec!["vm.A.nic[0]-"],
                vec!["vm.A.nic[0]+"],
                vec!["vm.A+"],
                vec!["vm.A.cc[0]+"],
            ]
        );
    }

    #[test]
    fn independent_creates_share_a_wave_and_noops_have_no_task() {
        let p = plan(vec![
            change("network.L", Kind::Network, Action::Create, &[], &[]),
            change("disk.d", Kind::Disk, Action::NoOp, &[], &[]),
            change(
                "vm.A.nic[0]",
                Kind::Tap,
                Action::Create,
                &["network.L"],
                &[],
            ),
            change(
                "vm.B.nic[0]",
                Kind::Tap,
                Action::Create,
                &["network.L"],
                &[],
            ),
            change(
                "vm.A",
                Kind::Vm,
                Action::Create,
                &["vm.A.nic[0]", "disk.d"],
                &[],
            ),
            change("vm.B", Kind::Vm, Action::Update, &["vm.B.nic[0]"], &[]),
        ]);
        assert_eq!(
            waves(&p),
            [
                vec!["network.L+"],
                vec!["vm.A.nic[0]+", "vm.B.nic[0]+"],
                vec!["vm.A+", "vm.B+"],
            ]
        );
    }

    #[test]
    fn orphans_go_by_kind_before_what_they_could_have_used() {
        let p = plan(vec![
            change("network.L", Kind::Network, Action::Delete, &[], &[]),
            change("vm.A.nic[0]", Kind::Tap, Action::Delete, &[], &[]),
            change("vm.A", Kind::Vm, Action::Delete, &[], &[]),
        ]);
        assert_eq!(
            waves(&p),
            [vec!["vm.A-"], vec!["vm.A.nic[0]-"], vec!["network.L-"]]
        );
    }
}
