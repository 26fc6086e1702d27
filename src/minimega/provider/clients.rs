//! A VM whose cc client is gone (issue 14): its guest's miniccc was killed
//! or crashed while minimega still runs the VM. Refresh asks the
//! namespace's nodes once for `cc clients` (each node answers for the
//! clients of its own VMs) and marks every VM of ours as connected or
//! absent; the planner decides which absence matters (a VM whose steps ran
//! on this boot: `cc_client_lost`).
//!
//! Why `cc clients` and not `vm info`'s `cc_active`: minimega 3.0.1 sets
//! `cc_active` only from its client reaper (ron's `clientReaper`, every
//! `REAPER_RATE` = 30 s), so a client that just checked in reads `false`
//! for up to 30 s, and the plan right after an apply would flag it.
//! `cc clients` lists ron's clients as they are. Both drop a lost client at
//! the same moment: when the reaper finds its last heartbeat older than
//! `CLIENT_EXPIRED` = 30 s (miniccc heartbeats every 5 s), i.e. 30 to 60 s
//! after the client went quiet (docs/minimega.md).
//!
//! The question costs a round trip (a fan-out to every node), so it is
//! asked only when the state records a step that ran: without one, no
//! absence could count.

use std::collections::{BTreeMap, BTreeSet};

use super::MinimegaHost;
use crate::minimega::client::{Command, HostResponse, column};
use crate::minimega::provider::MinimegaError;
use crate::observed::CcClient;
use crate::state::{Kind, State, Status};

/// The cc clients each node listed, by the node that answered.
pub(super) struct Clients {
    by_host: BTreeMap<String, BTreeSet<String>>,
}

impl Clients {
    /// Whether refresh needs the list: some step of the state ran.
    pub fn wanted(state: &State) -> bool {
        state
            .resources
            .values()
            .any(|r| r.kind == Kind::Step && r.status == Status::Ready)
    }

    /// `cc clients` in the namespace, every node.
    pub fn ask(h: &MinimegaHost) -> Result<Clients, MinimegaError> {
        Ok(Clients::of(&h.run(Command::new("cc").word("clients"))?))
    }

    /// The answers of the nodes; a node's error (or a node missing from
    /// the answer) leaves its VMs [`CcClient::NotAsked`].
    pub fn of(resps: &[HostResponse]) -> Clients {
        let mut by_host: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in resps.iter().filter(|r| r.error.is_empty()) {
            let set = by_host.entry(r.host.clone()).or_default();
            for row in r.rows() {
                if let Some(u) = column(&row, "uuid") {
                    set.insert(u.to_ascii_lowercase());
                }
            }
        }
        Clients { by_host }
    }

    /// The client of the VM with `uuid` that runs on `node`.
    pub fn client(&self, node: &str, uuid: &str) -> CcClient {
        match self.by_host.get(node) {
            None => CcClient::NotAsked,
            Some(set) if set.contains(&uuid.to_ascii_lowercase()) => CcClient::Connected,
            Some(_) => CcClient::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Record;

    fn resp(host: &str, uuids: &[&str], error: &str) -> HostResponse {
        let mut r = HostResponse {
            host: host.into(),
            error: error.into(),
            ..Default::default()
        };
        r.header = ["uuid", "hostname", "arch", "os", "ip", "mac"]
            .map(String::from)
            .to_vec();
        r.tabular = uuids
            .iter()
            .map(|u| {
                [*u, "guest", "amd64", "linux", "[]", "[]"]
                    .map(String::from)
                    .to_vec()
            })
            .collect();
        r
    }

    #[test]
    fn a_vm_is_connected_absent_or_not_asked_by_its_own_nodes_answer() {
        let (a, b, c) = (
            "11111111-1111-1111-1111-111111111111",
            "22222222-2222-2222-2222-222222222222",
            "33333333-3333-3333-3333-333333333333",
        );
        // mm1 lists A; mm2 lists nobody; mm3 did not answer (the head's error).
        let cl = Clients::of(&[
            resp("mm1", &[&a.to_uppercase()], ""),
            resp("mm2", &[], ""),
            resp("mm1", &[], "no such client mm3"),
        ]);
        assert_eq!(cl.client("mm1", a), CcClient::Connected);
        assert_eq!(cl.client("mm1", b), CcClient::Absent);
        // B's client on mm2 is gone; a client of B on another node is not B's.
        assert_eq!(cl.client("mm2", b), CcClient::Absent);
        assert_eq!(cl.client("mm2", a), CcClient::Absent);
        assert_eq!(cl.client("mm3", c), CcClient::NotAsked);
    }

    #[test]
    fn the_list_is_asked_only_when_a_step_ran() {
        let mut s = State::new("x");
        s.resources
            .insert("vm.A".into(), Record::new(Kind::Vm, Default::default()));
        assert!(!Clients::wanted(&s));
        let mut step = Record::new(Kind::Step, Default::default());
        step.status = Status::Failed;
        s.resources.insert("vm.A.cc[0]".into(), step.clone());
        assert!(
            !Clients::wanted(&s),
            "only a step that ran counts (the planner asks no more)"
        );
        step.status = Status::Ready;
        s.resources.insert("vm.A.cc[0]".into(), step);
        assert!(Clients::wanted(&s));
    }
}
