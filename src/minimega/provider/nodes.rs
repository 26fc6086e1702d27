//! A VM on a node that is gone (issue 14): refresh asks every node of the
//! namespace at once (`vm info`); a node that answers with an error
//! (minimega's per-host error: "not in the mesh", a timeout) or is missing
//! from the answer cannot say whether its VMs run. Such a VM is neither
//! "running" nor "killed": it is [`Unreachable`], and the plan says so
//! with its own reason (`node_unreachable`).

use std::collections::BTreeMap;

use crate::minimega::client::HostResponse;
use crate::observed::{ObservedVm, Unreachable};
use crate::state::{Kind, State};

/// The errors in an answer of the namespace's nodes, by the host that
/// reported each. minimega reports a node it could not reach (gone from
/// the mesh) as an error of the head node ("no such client mm2"), next to
/// the head's own answer: an error says some node was not asked, not which.
pub(super) fn silent_nodes(resps: &[HostResponse]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for r in resps.iter().filter(|r| !r.error.is_empty()) {
        let e = out.entry(r.host.clone()).or_default();
        if !e.is_empty() {
            e.push_str("; ");
        }
        e.push_str(r.error.trim());
    }
    out
}

/// The errors of an answer as one line ("host mm1: no such client mm2").
pub(super) fn errors_text(silent: &BTreeMap<String, String>) -> String {
    silent
        .iter()
        .map(|(h, e)| format!("host {h}: {}", crate::diag::escape(e)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Who answered a command sent to every node of the namespace.
pub(super) struct Asked {
    /// Nodes with an answer without error.
    pub answered: Vec<String>,
    /// The errors of the answer, by reporting host.
    pub errors: BTreeMap<String, String>,
}

impl Asked {
    pub fn of(resps: &[HostResponse]) -> Asked {
        Asked {
            answered: resps
                .iter()
                .filter(|r| r.error.is_empty())
                .map(|r| r.host.clone())
                .collect(),
            errors: silent_nodes(resps),
        }
    }

    /// Why the answer may lack a VM that is there (placed on `node`, when
    /// known): some node could not be asked, or `node` did not answer.
    pub fn doubt(&self, node: Option<&str>) -> Option<String> {
        let missing = node.filter(|n| !self.answered.iter().any(|a| a == n));
        match (missing, self.errors.is_empty()) {
            (None, true) => None,
            (None, false) => Some(errors_text(&self.errors)),
            (Some(n), true) => Some(format!("node {n} did not answer")),
            (Some(n), false) => Some(format!(
                "node {n} did not answer; {}",
                errors_text(&self.errors)
            )),
        }
    }
}

/// The recorded VMs refresh did not see whose recorded node is not among
/// the nodes that answered, by address: whether they run is unknown.
pub(super) fn unreachable_vms(
    resps: &[HostResponse],
    state: &State,
    seen: &BTreeMap<String, ObservedVm>,
) -> BTreeMap<String, Unreachable> {
    let errors = errors_text(&silent_nodes(resps));
    let answered: Vec<&str> = resps
        .iter()
        .filter(|r| r.error.is_empty())
        .map(|r| r.host.as_str())
        .collect();
    let mut out = BTreeMap::new();
    for (addr, rec) in &state.resources {
        if rec.kind != Kind::Vm || seen.contains_key(addr) {
            continue;
        }
        let Some(node) = rec.attrs.get("node").and_then(|v| v.as_str()) else {
            continue;
        };
        if answered.contains(&node) {
            // Its node answered without it: gone (not running), not unknown.
            continue;
        }
        let mut error = "it is missing from minimega's answer to `vm info`".to_string();
        if !errors.is_empty() {
            error.push_str(&format!("; minimega said: {errors}"));
        }
        out.insert(
            addr.clone(),
            Unreachable {
                node: node.to_string(),
                error,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Record;

    fn resp(host: &str, error: &str) -> HostResponse {
        HostResponse {
            host: host.into(),
            error: error.into(),
            ..Default::default()
        }
    }

    fn state(vms: &[(&str, &str)]) -> State {
        let mut s = State::new("x");
        for (vm, node) in vms {
            let mut r = Record::new(Kind::Vm, Default::default());
            r.attrs.insert("node".into(), (*node).into());
            s.resources.insert(format!("vm.{vm}"), r);
        }
        s
    }

    #[test]
    fn a_vm_whose_node_is_missing_from_the_answer_is_unreachable_and_nothing_else_is() {
        let st = state(&[("A", "mm1"), ("B", "mm2"), ("C", "mm3"), ("D", "mm1")]);
        let mut seen = BTreeMap::new();
        seen.insert(
            "vm.A".to_string(),
            ObservedVm {
                name: "A".into(),
                pid: Some(1),
                alive: true,
                status: None,
                cc: crate::observed::CcClient::NotAsked,
            },
        );
        // What minimega 3.0.1 answers when mm2 has left the mesh: the
        // head's own answer, and the head's error for the node it lost.
        let resps = [resp("mm1", ""), resp("mm1", "no such client mm2\n")];
        let u = unreachable_vms(&resps, &st, &seen);
        assert_eq!(u.keys().collect::<Vec<_>>(), ["vm.B", "vm.C"]);
        assert_eq!(u["vm.B"].node, "mm2");
        assert!(
            u["vm.B"]
                .error
                .ends_with("minimega said: host mm1: no such client mm2"),
            "{:?}",
            u["vm.B"]
        );
        assert_eq!(u["vm.C"].node, "mm3");
        // D's node answered and has no D: gone (not running), not unreachable.
        assert!(!u.contains_key("vm.D"));
        assert_eq!(
            errors_text(&silent_nodes(&resps)),
            "host mm1: no such client mm2"
        );
        let asked = Asked::of(&resps);
        assert_eq!(
            asked.doubt(Some("mm2")).as_deref(),
            Some("node mm2 did not answer; host mm1: no such client mm2")
        );
        assert_eq!(
            asked.doubt(Some("mm1")).as_deref(),
            Some("host mm1: no such client mm2")
        );
        let quiet = Asked::of(&[resp("mm1", "")]);
        assert_eq!(
            quiet.doubt(Some("mm2")).as_deref(),
            Some("node mm2 did not answer")
        );
        assert_eq!(quiet.doubt(Some("mm1")), None);
        assert_eq!(quiet.doubt(None), None);
        // Every node answered: nothing is unreachable.
        let all = [resp("mm1", ""), resp("mm2", ""), resp("mm3", "")];
        assert!(unreachable_vms(&all, &st, &seen).is_empty());
    }
}
