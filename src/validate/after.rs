//! Passes: `after`. Per VM, each entry (a name or a range) names another
//! VM of the file; over all VMs, the ordering has no cycle (the whole cycle
//! is named, each edge labelled).

use std::collections::{HashMap, HashSet};

use petgraph::graph::DiGraph;

use super::Validator;
use super::names::{Known, VmInst};
use super::values::expand_range;
use super::vms::VmCheck;
use crate::diag::{Code, Diag, did_you_mean};
use crate::lab::VmSpec;
use crate::model::Sp;

impl Validator {
    /// The VMs this one waits for, expanded, each once, in file order.
    pub(super) fn after_refs(&mut self, vc: &mut VmCheck, known: &Known) -> Vec<String> {
        let vm = vc.vm;
        let mut after = Vec::new();
        for a in &vm.after {
            let names = match expand_range(&a.value) {
                Ok(n) => n,
                Err(e) => {
                    self.once(
                        vc,
                        Diag::error(
                            Code::BadRange,
                            format!("'{}' is not a VM name or range", a.value),
                        )
                        .label(a.span, e)
                        .help("a range looks like \"web[1-3]\" or \"web[01-10]\""),
                        "afterrange",
                    );
                    continue;
                }
            };
            for name in names {
                let a = &Sp::new(name, a.span);
                if !known.vm_set.contains(a.value.as_str()) {
                    self.once(
                        vc,
                        Diag::error(Code::UnknownVm, format!("there is no VM '{}'", a.value))
                            .label(a.span, "unknown VM")
                            .help_opt(did_you_mean(&a.value, known.vms.iter().copied())),
                        "after",
                    );
                } else if a.value == vc.name {
                    self.err(
                        Diag::error(
                            Code::AfterCycle,
                            format!("VM '{}' waits for itself", vc.name),
                        )
                        .label(a.span, "after itself")
                        .help("remove it from `after`"),
                    );
                } else if !after.contains(&a.value) {
                    after.push(a.value.clone());
                }
            }
        }
        after
    }

    pub(super) fn after_cycles(&mut self, insts: &[VmInst], vms: &[VmSpec]) {
        let mut g: DiGraph<&str, ()> = DiGraph::new();
        let idx: HashMap<&str, _> = vms
            .iter()
            .map(|v| (v.name.as_str(), g.add_node(v.name.as_str())))
            .collect();
        for v in vms {
            for a in &v.after {
                if let (Some(&from), Some(&to)) = (idx.get(a.as_str()), idx.get(v.name.as_str())) {
                    g.add_edge(from, to, ());
                }
            }
        }
        let mut reported = HashSet::new();
        for scc in petgraph::algo::tarjan_scc(&g) {
            if scc.len() < 2 {
                continue;
            }
            // Walk the cycle in order so the message reads A -> B -> A.
            let members: HashSet<_> = scc.iter().copied().collect();
            let start = *scc.iter().min_by_key(|n| g[**n]).expect("non-empty");
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = g
                    .neighbors(cur)
                    .filter(|n| members.contains(n))
                    .min_by_key(|n| g[*n])
                    .expect("a strongly connected component has a successor");
                if next == start || path.contains(&next) {
                    path.push(next);
                    break;
                }
                path.push(next);
                cur = next;
            }
            let names: Vec<&str> = path.iter().map(|n| g[*n]).collect();
            let cycle = names.join(" -> ");
            if !reported.insert(cycle.clone()) {
                continue;
            }
            let mut d = Diag::error(
                Code::AfterCycle,
                format!("the `after` ordering has a cycle: {cycle}"),
            )
            .help("cc steps would wait for each other forever: remove one `after` of the cycle");
            // Label each `after` entry that makes an edge of the cycle.
            for w in names.windows(2) {
                let (first, then) = (w[0], w[1]);
                if let Some(inst) = insts.iter().find(|i| i.name == then)
                    && let Some(a) = inst.src.after.iter().find(|a| {
                        a.value == first
                            || expand_range(&a.value).is_ok_and(|n| n.iter().any(|n| n == first))
                    })
                {
                    d = d.label(a.span, format!("'{then}' waits for '{first}'"));
                }
            }
            self.err(d);
        }
    }
}
