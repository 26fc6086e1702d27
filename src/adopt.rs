//! Rebuilding a lost state from the host. When `state.json` is gone (never
//! written, or moved away after corruption) or holds less than the host
//! (restored from its backup), what carries the experiment's marker and
//! matches the file is adopted as if it had been recorded, so apply neither
//! fails on it nor kills running VMs nor re-creates a disk over the user's
//! data. (Records are written before their effects, so an object of ours
//! with no record can only come from a lost or older state: with one state
//! folder per name, see `owners`, it is never another folder's.)
//!
//! Invariants:
//! - Only resources of the file with no record are filled in; records that
//!   exist are never changed.
//! - Only what refresh saw under this experiment's marker (links, QEMUs in
//!   this experiment's runtime folder, mirrors between its taps) and disk
//!   files the provider has at the file's own names (`disk_present`: the
//!   local engine's are plain files in `disks/`, not links) is
//!   adopted, each with the attributes the file gives it today; steps only
//!   with a recorded exit in `cc/VM/STEP/exit` on a VM adopted at the same time.
//! - Adopted objects are `Ready`: the planner's live checks still replace
//!   what is not as it should be.

use crate::graph::{self, Spec};
use crate::lab::Lab;
use crate::observed::{Observed, ObservedKind};
use crate::provider::Provider;
use crate::state::{Kind, Record, State, StateDir};

/// The generation given to an adopted VM (and the steps adopted on it).
const ADOPTED_GENERATION: u64 = 1;

/// Fill the records `state` lacks from what `observed` and the state folder
/// hold, and the disk files `provider` has (`Provider::disk_present`); the
/// adopted addresses (empty when there was nothing to do). Disks adopted
/// are added to `observed.disks` (refresh lists only recorded ones).
pub fn adopt<P: Provider>(
    provider: &P,
    lab: &Lab,
    state: &mut State,
    observed: &mut Observed,
    sd: &StateDir,
) -> Vec<String> {
    if lab.name != state.experiment {
        return Vec::new();
    }
    let mut adopted = Vec::new();
    let resources = graph::resources(lab);
    for r in &resources {
        if state.resources.contains_key(&r.address) {
            continue;
        }
        // Filled in only for what is found: most of a big lab is not.
        let mut rec = Record::new(r.kind, Default::default());
        let found = match &r.spec {
            Spec::Network(n) => observed.links.get(&r.address).is_some_and(|l| {
                l.kind == ObservedKind::Bridge && Some(&l.name) == n.bridge.as_ref()
            }),
            Spec::Tap(t) => observed
                .links
                .get(&r.address)
                .is_some_and(|l| l.kind == ObservedKind::Tun && Some(&l.name) == t.name.as_ref()),
            Spec::Disk(d) => provider.disk_present(sd, &d.disk.file_name()),
            Spec::Vm(_) => match observed.vms.get(&r.address) {
                Some(v) if v.alive => {
                    rec.pid = v.pid;
                    rec.generation = Some(ADOPTED_GENERATION);
                    true
                }
                _ => false,
            },
            Spec::Mirror(want) => {
                match observed.mirrors.iter().find(|m| match &m.address {
                    Some(a) => *a == r.address,
                    None => {
                        Some(&m.source_tap) == want.source_tap.as_ref()
                            && Some(&m.dest_tap) == want.dest_tap.as_ref()
                    }
                }) {
                    Some(m) if m.ingress || m.egress => {
                        let wired = match (m.ingress, m.egress) {
                            (true, true) => "both",
                            (true, false) => "ingress",
                            _ => "egress",
                        };
                        rec.attrs.insert("direction".into(), wired.into());
                        true
                    }
                    _ => false,
                }
            }
            Spec::Capture(_) => observed.captures.contains_key(&r.address),
            Spec::Step(_) => step_exit(r, state, &adopted, sd).is_some_and(|exit| {
                rec.exit = Some(exit);
                rec.generation = Some(ADOPTED_GENERATION);
                true
            }),
        };
        if found {
            let wired = rec.attrs.remove("direction");
            rec.attrs = r.attrs();
            if let Some(w) = wired {
                rec.attrs.insert("direction".into(), w);
            }
            rec.deps = r.deps.clone();
            if r.kind == Kind::Disk {
                observed.disks.insert(r.address.clone());
            }
            state.resources.insert(r.address.clone(), rec);
            adopted.push(r.address.clone());
        }
    }
    adopted
}

/// A step's recorded exit, when its VM (first dependency) was adopted now.
fn step_exit(r: &graph::Resource, state: &State, adopted: &[String], sd: &StateDir) -> Option<i32> {
    let vm = r.deps.first()?;
    if !adopted.contains(vm) {
        return None;
    }
    state.resources.get(vm).filter(|v| v.kind == Kind::Vm)?;
    let graph::Target::Step {
        vm: name,
        index: idx,
    } = &r.target
    else {
        return None;
    };
    let root = sd.open(false).ok()??;
    let cc = root.subdir("cc", false).ok()??;
    let v = cc.subdir(name, false).ok()??;
    let s = v.subdir(&idx.to_string(), false).ok()??;
    let text = s.read("exit", 64).ok()??;
    String::from_utf8(text).ok()?.trim().parse().ok()
}

/// The notice printed when something was adopted.
pub fn notice(sd: &StateDir, adopted: &[String]) -> String {
    format!(
        "not recorded in {}: adopted {} object{} of experiment '{}' found on this host with its marker ({}), as the file describes them; destroy and apply again if they may differ",
        sd.root.display(),
        adopted.len(),
        if adopted.len() == 1 { "" } else { "s" },
        sd.experiment,
        adopted.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use crate::observed::{ObservedLink, ObservedMirror, ObservedVm};
    use crate::plan::{self, Action, Mode};
    use crate::provider::memory::MemoryProvider;

    const LAB: &str = r#"experiment "x"
network "LAN"
disk "keep" size="4M" format="raw" keep=#true
vm "A" {
    kernel "/k"
    initrd "/i"
    nic "LAN"
    disk "keep"
    cc {
        exec "true"
    }
}
vm "B" {
    kernel "/k"
    initrd "/i"
    nic "LAN"
    mirrors "A"
}
"#;

    fn lab() -> Lab {
        let src = SourceFile::new("/lab/x.kdl", LAB);
        let (lab, diags) = crate::provider::names::check_local(&src);
        assert!(!diags.has_errors(), "{}", diags.render_plain(&src));
        lab.unwrap()
    }

    fn link(name: &str, kind: &str) -> ObservedLink {
        ObservedLink {
            name: name.into(),
            kind: ObservedKind::from(kind.to_string()),
            up: true,
            controller: None,
            mac: None,
        }
    }

    /// An engine holding the keep disk's file (the user's data).
    fn with_keep_disk() -> MemoryProvider {
        let mem = MemoryProvider::new("x");
        mem.world_mut().disks.insert("keep.raw".into(), true);
        mem
    }

    /// The host of an applied `lab` whose state.json was lost.
    fn host(lab: &Lab) -> Observed {
        let mut o = Observed::default();
        let n = &lab.networks[0];
        let bridge = n.bridge.clone().unwrap();
        o.links.insert(n.address.clone(), link(&bridge, "bridge"));
        for vm in &lab.vms {
            for nic in &vm.nics {
                let mut l = link(nic.tap.as_deref().unwrap(), "tun");
                l.controller = Some(bridge.clone());
                o.links.insert(nic.address.clone(), l);
            }
            o.vms.insert(
                vm.address.clone(),
                ObservedVm {
                    name: vm.name.clone(),
                    pid: Some(4242),
                    alive: true,
                    status: Some("running".into()),
                    cc: crate::observed::CcClient::NotAsked,
                },
            );
        }
        let (a, b) = (&lab.vms[0].nics[0].tap, &lab.vms[1].nics[0].tap);
        o.mirrors.insert(ObservedMirror {
            address: None,
            source_tap: a.clone().unwrap(),
            dest_tap: b.clone().unwrap(),
            ingress: true,
            egress: true,
        });
        o
    }

    #[test]
    fn a_lost_state_is_rebuilt_and_nothing_is_killed_or_recreated() {
        let lab = lab();
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: t.path().join("s"),
            experiment: "x".into(),
        };
        let mem = with_keep_disk();
        sd.write_step_result("A", 0, 0, "", "", None).unwrap();
        let mut state = State::new("x");
        let mut obs = host(&lab);
        // Before: the plan would replace the VMs and taps and re-create the keep disk.
        let before = plan::plan(Some(&lab), &state, Some(&obs), Mode::Apply);
        assert!(
            before
                .changes
                .iter()
                .any(|c| c.address == "vm.A" && c.action == Action::Replace)
        );
        let adopted = adopt(&mem, &lab, &mut state, &mut obs, &sd);
        assert_eq!(adopted.len(), 8, "{adopted:?}");
        let p = plan::plan(Some(&lab), &state, Some(&obs), Mode::Apply);
        assert!(
            !p.has_changes(),
            "{:?}",
            p.changes
                .iter()
                .filter(|c| c.action != Action::NoOp)
                .collect::<Vec<_>>()
        );
        assert_eq!(state.resources["vm.A"].pid, Some(4242));
        assert_eq!(state.resources["vm.A.cc[0]"].exit, Some(0));
        assert!(notice(&sd, &adopted).contains("adopted 8 objects"));
        // Adopting again (everything recorded) does nothing.
        assert!(adopt(&mem, &lab, &mut state, &mut obs, &sd).is_empty());
    }

    /// A state restored from its backup lacks what the last command made:
    /// that is adopted, and what is recorded is left as it is.
    #[test]
    fn an_older_state_gets_what_it_lacks() {
        let lab = lab();
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: t.path().join("s"),
            experiment: "x".into(),
        };
        let mem = with_keep_disk();
        let mut obs = host(&lab);
        let mut state = State::new("x");
        state.serial = 7;
        let mut net = Record::new(Kind::Network, Default::default());
        net.attrs
            .insert("bridge".into(), lab.networks[0].bridge.clone().into());
        net.attrs
            .insert("host_address".into(), "10.9.9.9/24".into());
        state.resources.insert("network.LAN".into(), net.clone());
        let adopted = adopt(&mem, &lab, &mut state, &mut obs, &sd);
        assert!(adopted.contains(&"vm.A".to_string()), "{adopted:?}");
        assert!(!adopted.contains(&"network.LAN".to_string()));
        assert_eq!(
            state.resources["network.LAN"], net,
            "records are never changed"
        );
        let p = plan::plan(Some(&lab), &state, Some(&obs), Mode::Apply);
        // The recorded network differs from the file: updated; nothing is replaced.
        assert_eq!(p.change("network.LAN").unwrap().action, Action::Update);
        assert!(
            !p.changes.iter().any(|c| c.action == Action::Replace),
            "{p:?}"
        );
    }

    #[test]
    fn only_what_matches_is_adopted() {
        let lab = lab();
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: t.path().join("s"),
            experiment: "x".into(),
        };
        // The engine has no file for the keep disk (the local engine: none,
        // or a link at its name, `host::local::disk_present`): not adopted.
        let mem = MemoryProvider::new("x");
        mem.world_mut().disks.insert("other.raw".into(), true);
        let mut obs = host(&lab);
        // B's QEMU died; A's tap has another name than the file gives it.
        obs.vms.get_mut("vm.B").unwrap().alive = false;
        obs.links.get_mut("vm.A.nic[0]").unwrap().name = "mptother".into();
        let mut state = State::new("x");
        let adopted = adopt(&mem, &lab, &mut state, &mut obs, &sd);
        assert!(!adopted.contains(&"disk.keep".to_string()), "{adopted:?}");
        assert!(!adopted.contains(&"vm.B".to_string()));
        assert!(!adopted.contains(&"vm.A.nic[0]".to_string()));
        assert!(
            !adopted.contains(&"vm.A.cc[0]".to_string()),
            "no recorded exit"
        );
        assert!(adopted.contains(&"vm.A".to_string()));
        let p = plan::plan(Some(&lab), &state, Some(&obs), Mode::Apply);
        assert_eq!(p.change("vm.B").unwrap().action, Action::Replace);
    }
}
