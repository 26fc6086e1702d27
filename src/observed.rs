//! What refresh saw on the host: the live side of `plan(desired, prior, observed)`.
//!
//! Invariants:
//! - Plain data, filled by `refresh` (the only code that reads the system for
//!   planning) or by hand in tests.
//! - Keys are addresses recovered from ownership markers or from the state,
//!   never guessed from names.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Links carrying this experiment's marker, by the address in the marker.
    pub links: BTreeMap<String, ObservedLink>,
    /// Mirror filters seen on source taps.
    pub mirrors: BTreeSet<ObservedMirror>,
    /// VMs with a runtime folder, by address (`vm.A`).
    pub vms: BTreeMap<String, ObservedVm>,
    /// Disk addresses whose file exists.
    pub disks: BTreeSet<String>,
    /// Captures whose recorder runs, by address (`capture.mon`): its pid.
    #[serde(default)]
    pub captures: BTreeMap<String, u32>,
    /// VMs (by address) whose node did not answer: refresh cannot say
    /// whether they run (a node of a minimega mesh that is gone).
    #[serde(default)]
    pub unreachable: BTreeMap<String, Unreachable>,
}

/// Why refresh could not see a VM: its node, and what the engine said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub node: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedLink {
    pub name: String,
    /// A bridge, a tun-driver device (tap or tun), or another kernel kind.
    pub kind: ObservedKind,
    pub up: bool,
    /// The bridge it is enslaved to.
    pub controller: Option<String>,
    pub mac: Option<String>,
}

/// What kind of link refresh saw. Serialized as the kernel's word
/// (`"bridge"`, `"tun"`, or the other kind as it was), as it was when this
/// was a string, so saved plans made before still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ObservedKind {
    Bridge,
    /// A tun-driver device, in tap or tun mode.
    Tun,
    /// Any other kind, as the kernel names it.
    Other(String),
}

impl From<String> for ObservedKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "bridge" => ObservedKind::Bridge,
            "tun" => ObservedKind::Tun,
            _ => ObservedKind::Other(s),
        }
    }
}

impl From<ObservedKind> for String {
    fn from(k: ObservedKind) -> Self {
        match k {
            ObservedKind::Bridge => "bridge".into(),
            ObservedKind::Tun => "tun".into(),
            ObservedKind::Other(s) => s,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObservedMirror {
    /// The mirror's address, when the engine knows it (minimega: its taps
    /// are minimega's names, not planned ones); otherwise the planner finds
    /// a mirror by its taps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub source_tap: String,
    pub dest_tap: String,
    pub ingress: bool,
    pub egress: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVm {
    /// The VM's name: its runtime folder's name.
    #[serde(default)]
    pub name: String,
    pub pid: Option<u32>,
    /// The process is alive and is QEMU.
    pub alive: bool,
    /// QMP's `query-status`, when it answered ("running", "paused", "shutdown"...).
    pub status: Option<String>,
    /// Whether the guest's cc client is connected to the engine (minimega's
    /// `cc clients`); `NotAsked` where the engine has no such list.
    #[serde(default, skip_serializing_if = "CcClient::is_not_asked")]
    pub cc: CcClient,
}

/// What refresh knows of a VM's cc client (minimega's miniccc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CcClient {
    /// Not asked: the engine keeps no list of clients (megaplan's own), the
    /// experiment has no step, or the VM's node did not answer.
    #[default]
    NotAsked,
    /// Listed by the engine (`cc clients`) now.
    Connected,
    /// The VM's node answered and does not list it.
    Absent,
}

impl CcClient {
    pub fn is_not_asked(&self) -> bool {
        *self == CcClient::NotAsked
    }
}

impl ObservedVm {
    pub fn running(&self) -> bool {
        self.alive && self.status.as_deref().is_none_or(|s| s == "running")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_kinds_keep_their_serialized_names() {
        let link = |kind| ObservedLink {
            name: "b".into(),
            kind,
            up: true,
            controller: None,
            mac: None,
        };
        for (kind, word) in [
            (ObservedKind::Bridge, "bridge"),
            (ObservedKind::Tun, "tun"),
            (ObservedKind::Other("veth".into()), "veth"),
        ] {
            let json = serde_json::to_value(link(kind.clone())).unwrap();
            assert_eq!(json["kind"], word);
            let back: ObservedLink = serde_json::from_value(json).unwrap();
            assert_eq!(back.kind, kind);
        }
    }
}
