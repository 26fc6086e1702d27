//! The real [`Executor`] on the strict in-memory provider
//! ([`crate::provider::memory`]): ordering, the parallelism cap, skips on
//! failure, record-before-effect, crashes between record and effect, and the
//! convergence items (typed identities, updates in place, taint, foreign
//! interfaces), all without root.

use std::collections::BTreeSet;

use super::*;
use crate::plan::{self, Mode, Options, Plan};
use crate::provider::memory::{Hang, Link, MemoryProvider};
use crate::state::{State, Status};

const LAB: &str = r#"
experiment "fx"
network "LAN"
vm "A" {
    kernel "KERNEL"; memory "64M"
    nic "LAN"
    cc {
        exec "A0"
        exec "A1"
    }
}
vm "B" {
    kernel "KERNEL"; memory "64M"
    nic "LAN"
    mirrors "A"
    cc { exec "B0"; }
}
"#;

struct Rig {
    dir: tempfile::TempDir,
    sd: StateDir,
    host: MemoryProvider,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: dir.path().join("state"),
            experiment: "fx".into(),
        };
        let host = MemoryProvider::new("fx");
        std::fs::write(dir.path().join("kernel"), b"a kernel").unwrap();
        host.add_file(dir.path().join("kernel"));
        Rig { dir, sd, host }
    }

    /// The lab of `text`, whose VMs boot `KERNEL`, a file of the rig.
    fn lab(&self, text: &str) -> Lab {
        let k = self.dir.path().join("kernel");
        crate::plan::tests::lab(&text.replace("KERNEL", k.to_str().unwrap()))
    }

    fn state(&self) -> State {
        self.sd.load().unwrap()
    }

    async fn plan(&self, text: Option<&str>, mode: Mode, opts: &Options) -> Plan {
        let state = self.state();
        let obs = self.host.refresh("fx", &state, &self.sd).await.unwrap();
        let lab = text.map(|t| self.lab(t));
        // As the CLI does: the files' digests are read before planning, and
        // the provider's rules are the planner's.
        let mut opts = opts.clone();
        opts.rules = self.host.rules();
        opts.digests = lab.as_ref().map(crate::digest::of_lab).unwrap_or_default();
        plan::plan_with(lab.as_ref(), &state, Some(&obs), mode, &opts)
    }

    async fn run(&self, text: Option<&str>, plan: &Plan, parallelism: usize) -> Report {
        self.run_logged(text, plan, parallelism).await.0
    }

    /// [`Rig::run`], with the progress lines it printed.
    async fn run_logged(
        &self,
        text: Option<&str>,
        plan: &Plan,
        parallelism: usize,
    ) -> (Report, Vec<String>) {
        let lines = std::sync::Mutex::new(Vec::new());
        let report = self
            .run_driven(text, plan, parallelism, &lines, async {})
            .await;
        (report, lines.into_inner().unwrap())
    }

    /// [`Rig::run_logged`] with `driver` alongside on the same task (it
    /// opens gates, blocks the state folder...): `lines` are the run's
    /// progress lines as they come.
    async fn run_driven(
        &self,
        text: Option<&str>,
        plan: &Plan,
        parallelism: usize,
        lines: &std::sync::Mutex<Vec<String>>,
        driver: impl std::future::Future<Output = ()>,
    ) -> Report {
        let lab = text.map(|t| self.lab(t));
        let mut state = self.state();
        let progress = |l: &str| lines.lock().unwrap().push(l.to_string());
        let ex = Executor {
            provider: &self.host,
            lab: lab.as_ref(),
            sd: &self.sd,
            experiment: "fx".into(),
            parallelism,
            progress: &progress,
        };
        futures::join!(ex.run(plan, &mut state), driver).0
    }

    /// Make every save of the state fail from now on (a folder holds the
    /// name of its temporary file) until [`Rig::unblock_saves`].
    fn block_saves(&self) {
        std::fs::create_dir_all(self.save_blocker().join("x")).unwrap();
    }

    fn unblock_saves(&self) {
        std::fs::remove_dir_all(self.save_blocker()).unwrap();
    }

    fn save_blocker(&self) -> std::path::PathBuf {
        let file = self.sd.state_file();
        let name = file.file_name().unwrap().to_str().unwrap();
        file.parent()
            .unwrap()
            .join(format!(".{name}.{}.tmp", std::process::id()))
    }

    /// Run `plan` until the provider has entered `hung` hung ops, then drop
    /// the run where it stands: what a SIGKILL at that point leaves.
    async fn run_until_hung(&self, text: &str, plan: &Plan, hung: usize) {
        let lab = self.lab(text);
        let mut state = self.state();
        let ex = Executor {
            provider: &self.host,
            lab: Some(&lab),
            sd: &self.sd,
            experiment: "fx".into(),
            parallelism: 4,
            progress: &|_| {},
        };
        let run = std::pin::pin!(ex.run(plan, &mut state));
        let stop = std::pin::pin!(self.host.hung(hung));
        match futures::future::select(run, stop).await {
            futures::future::Either::Left((r, _)) => panic!("the run ended: {r:?}"),
            futures::future::Either::Right(_) => {}
        }
    }

    /// Plan against the fake host and apply it.
    async fn apply(&self, text: &str) -> (Plan, Report) {
        let p = self
            .plan(Some(text), Mode::Apply, &Options::default())
            .await;
        let r = self.run(Some(text), &p, 4).await;
        (p, r)
    }

    async fn changes(&self, text: &str) -> Vec<(String, Action, Vec<plan::Reason>)> {
        let p = self
            .plan(Some(text), Mode::Apply, &Options::default())
            .await;
        p.changes
            .into_iter()
            .filter(|c| c.action != Action::NoOp)
            .map(|c| (c.address, c.action, c.reasons))
            .collect()
    }
}

fn pos(calls: &[String], what: &str) -> usize {
    calls
        .iter()
        .position(|c| c == what)
        .unwrap_or_else(|| panic!("no call {what:?} in {calls:#?}"))
}

#[tokio::test]
async fn creates_follow_their_dependencies_and_converge() {
    let rig = Rig::new();
    let (_, r) = rig.apply(LAB).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls();
    let net = pos(&calls, "bridge network.LAN");
    let tap = pos(&calls, "tap vm.A.nic[0]");
    let launch = pos(&calls, "launch A");
    let a0 = pos(&calls, "step A:A0");
    let a1 = pos(&calls, "step A:A1");
    assert!(
        net < tap && tap < launch && launch < a0 && a0 < a1,
        "{calls:#?}"
    );
    assert!(pos(&calls, "launch B") < pos(&calls, "step B:B0"));
    assert!(calls.iter().any(|c| c.starts_with("mirror ")));
    assert!(
        pos(&calls, "launch B")
            < pos(
                &calls,
                calls.iter().find(|c| c.starts_with("mirror ")).unwrap()
            )
    );
    assert_eq!(rig.changes(LAB).await, vec![], "a second plan is empty");
}

#[tokio::test]
async fn deletes_come_before_what_they_depended_on() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let before = rig.host.calls().len();
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let r = rig.run(None, &p, 4).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls()[before..].to_vec();
    let unmirror = calls
        .iter()
        .position(|c| c.starts_with("unmirror "))
        .unwrap();
    assert!(unmirror < pos(&calls, "stop A") && unmirror < pos(&calls, "stop B"));
    assert!(pos(&calls, "stop A") < pos(&calls, "delete-link vm.A.nic[0]"));
    assert!(pos(&calls, "delete-link vm.B.nic[0]") < pos(&calls, "delete-link network.LAN"));
    assert!(rig.state().resources.is_empty());
    let w = rig.host.world();
    assert!(w.links.is_empty() && w.vms.is_empty() && w.mirrors.is_empty());
}

#[tokio::test]
async fn orphans_go_before_the_links_they_used() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    // The state is lost: everything on the host is an orphan now.
    std::fs::remove_file(rig.sd.state_file()).unwrap();
    let before = rig.host.calls().len();
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let r = rig.run(None, &p, 4).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls()[before..].to_vec();
    for vm in ["A", "B"] {
        let stop = pos(&calls, &format!("stop {vm}"));
        assert!(
            stop < pos(&calls, &format!("delete-link vm.{vm}.nic[0]")),
            "{calls:#?}"
        );
        assert!(stop < pos(&calls, "delete-link network.LAN"), "{calls:#?}");
    }
    let w = rig.host.world();
    assert!(w.links.is_empty() && w.vms.is_empty(), "{:?}", w.links);
}

#[tokio::test]
async fn host_effects_respect_the_parallelism_cap() {
    let text = r#"
experiment "fx"
network "LAN"
vm "v[1-6]" { kernel "KERNEL"; memory "64M"; nic "LAN"; }
"#;
    for cap in [1, 3] {
        let mut rig = Rig::new();
        rig.host.delay_polls = 5;
        let p = rig.plan(Some(text), Mode::Apply, &Options::default()).await;
        let r = rig.run(Some(text), &p, cap).await;
        assert!(r.ok(), "{r:?}");
        assert_eq!(rig.host.world().max_in_flight, cap, "cap {cap}");
    }
}

#[tokio::test]
async fn a_failure_skips_only_its_dependents() {
    let mut rig = Rig::new();
    rig.host.fail.insert("tap vm.A.nic[0]".into());
    let (_, r) = rig.apply(LAB).await;
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert_eq!(r.errors[0].0, "vm.A.nic[0]");
    assert!(
        r.skipped
            .iter()
            .all(|(_, why)| *why == Skip::DependencyFailed),
        "{r:?}"
    );
    let skipped: BTreeSet<&str> = r.skipped.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        skipped,
        BTreeSet::from(["vm.A", "vm.A.cc[0]", "vm.A.cc[1]", "mirror.A[0]->B[0]"])
    );
    let calls = rig.host.calls();
    assert!(calls.contains(&"step B:B0".to_string()), "{calls:#?}");
    assert!(!calls.contains(&"launch A".to_string()));
    // Fixed, the next apply converges.
    rig.host.fail.clear();
    assert!(rig.apply(LAB).await.1.ok());
    assert_eq!(rig.changes(LAB).await, vec![]);
}

#[tokio::test]
async fn each_record_is_saved_as_creating_before_its_effect() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    for what in [
        "bridge network.LAN",
        "tap vm.A.nic[0]",
        "launch A",
        "launch B",
    ] {
        let c = rig.host.call(what).unwrap();
        assert_eq!(c.saved, Some(Status::Creating), "{what}");
    }
    for r in rig.state().resources.values() {
        assert_eq!(r.status, Status::Ready);
        assert!(r.target.is_some(), "{r:?}");
    }
}

/// A VM named `vm.web` is its own VM, not `web` (addresses were re-parsed
/// with `trim_start_matches("vm.")`).
#[tokio::test]
async fn a_vm_named_like_an_address_is_its_own_vm() {
    let text = r#"
experiment "fx"
network "LAN"
vm "web" { kernel "KERNEL"; memory "64M"; nic "LAN"; cc { exec "w0"; }; }
vm "vm.web" { kernel "KERNEL"; memory "64M"; nic "LAN"; cc { exec "v0"; }; }
disk "d.x" size="1M"
disk "x" size="1M"
"#;
    let rig = Rig::new();
    let (_, r) = rig.apply(text).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls();
    for c in [
        "launch web",
        "launch vm.web",
        "step web:w0",
        "step vm.web:v0",
        "disk d.x",
        "disk x",
    ] {
        assert_eq!(
            calls.iter().filter(|x| *x == c).count(),
            1,
            "{c}: {calls:#?}"
        );
    }
    // Replacing `web` stops `web` only.
    let before = calls.len();
    let p = rig
        .plan(
            Some(text),
            Mode::Apply,
            &Options {
                replace: BTreeSet::from(["vm.web".to_string()]),
                ..Default::default()
            },
        )
        .await;
    assert!(rig.run(Some(text), &p, 4).await.ok());
    let calls = rig.host.calls()[before..].to_vec();
    assert!(calls.contains(&"stop web".to_string()), "{calls:#?}");
    assert!(!calls.contains(&"stop vm.web".to_string()), "{calls:#?}");
}

/// Only `tags` changed: updated in place, and the next plan has nothing to
/// do (the update bumped the VM's generation, so its steps looked stale).
#[tokio::test]
async fn an_update_in_place_is_not_a_restart() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let text = LAB.replacen(
        "memory \"64M\"",
        "memory \"64M\"\n    tags { role \"x\" }",
        1,
    );
    let (p, r) = rig.apply(&text).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(p.change("vm.A").unwrap().action, Action::Update);
    assert_eq!(rig.changes(&text).await, vec![]);
    assert_eq!(
        rig.host
            .calls()
            .iter()
            .filter(|c| *c == "step A:A0")
            .count(),
        1
    );
}

/// A step that failed taints its VM: the next plan replaces it and reruns
/// its steps in order.
#[tokio::test]
async fn a_failed_step_taints_its_vm() {
    let mut rig = Rig::new();
    rig.host.exits.insert("A1".into(), 3);
    let (_, r) = rig.apply(LAB).await;
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(
        matches!(
            &r.errors[0].1,
            crate::apply::ApplyError::StepFailed { exit: 3, address, .. } if address == "vm.A.cc[1]"
        ),
        "{r:?}"
    );
    assert!(r.errors[0].1.to_string().contains("exited 3"), "{r:?}");
    let rec = &rig.state().resources["vm.A.cc[1]"];
    assert_eq!((rec.status, rec.exit), (Status::Failed, Some(3)));
    let ch = rig.changes(LAB).await;
    let vm = ch.iter().find(|c| c.0 == "vm.A").expect("vm.A changes");
    assert_eq!(vm.1, Action::Replace);
    assert_eq!(
        vm.2,
        [plan::Reason::Tainted {
            step: "vm.A.cc[1]".into()
        }]
    );
    for s in ["vm.A.cc[0]", "vm.A.cc[1]"] {
        assert!(
            ch.iter().any(|c| c.0 == s && c.1 == Action::Replace),
            "{ch:#?}"
        );
    }
    assert!(!ch.iter().any(|c| c.0 == "vm.B"), "{ch:#?}");
    // Fixed, the replacement boots afresh, reruns the steps, and converges.
    rig.host.exits.clear();
    let before = rig.host.calls().len();
    assert!(rig.apply(LAB).await.1.ok());
    let calls = rig.host.calls()[before..].to_vec();
    assert!(pos(&calls, "stop A") < pos(&calls, "launch A"));
    assert!(pos(&calls, "launch A") < pos(&calls, "step A:A0"));
    assert!(pos(&calls, "step A:A0") < pos(&calls, "step A:A1"));
    assert_eq!(rig.changes(LAB).await, vec![]);
}

/// `allow-failure` steps do not taint.
#[tokio::test]
async fn an_allowed_failure_does_not_taint() {
    let mut rig = Rig::new();
    let text = LAB.replace("exec \"A1\"", "exec \"A1\" allow-failure=#true");
    rig.host.exits.insert("A1".into(), 3);
    assert!(rig.apply(&text).await.1.ok());
    assert_eq!(rig.changes(&text).await, vec![]);
}

#[tokio::test]
async fn replacement_on_request() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let opts = Options {
        replace: BTreeSet::from(["vm.B".to_string()]),
        ..Default::default()
    };
    let p = rig.plan(Some(LAB), Mode::Apply, &opts).await;
    let b = p.change("vm.B").unwrap();
    assert_eq!(
        (b.action, b.reasons.clone()),
        (Action::Replace, vec![plan::Reason::ReplaceRequested])
    );
    assert_eq!(p.change("vm.B.cc[0]").unwrap().action, Action::Replace);
    assert_eq!(p.change("vm.A").unwrap().action, Action::NoOp);
    let lab = rig.lab(LAB);
    let bad = Options {
        replace: BTreeSet::from(["vm.B".to_string(), "vm.Q".to_string()]),
        ..Default::default()
    };
    assert_eq!(
        plan::unknown_replacements(Some(&lab), &rig.state(), &bad),
        ["vm.Q"]
    );
}

/// A tap refused because a foreign interface holds its name leaves a Failed
/// record; destroy drops it and leaves the foreign interface alone.
#[tokio::test]
async fn destroy_drops_the_record_of_a_refused_foreign_interface() {
    let rig = Rig::new();
    let lab = rig.lab(LAB);
    let tap = lab.vms[0].nics[0].tap.clone().expect("named");
    rig.host.world_mut().links.insert(
        tap.clone(),
        Link {
            marker: "someone else's".into(),
            bridge: false,
            controller: None,
            mac: None,
        },
    );
    let (_, r) = rig.apply(LAB).await;
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].1.to_string().contains("not ours"), "{r:?}");
    assert_eq!(rig.state().resources["vm.A.nic[0]"].status, Status::Failed);
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let r = rig.run(None, &p, 4).await;
    assert!(r.ok(), "{r:?}");
    assert!(
        rig.state().resources.is_empty(),
        "{:?}",
        rig.state().resources
    );
    let w = rig.host.world();
    assert_eq!(
        w.links.get(&tap).map(|l| l.marker.as_str()),
        Some("someone else's")
    );
    assert_eq!(w.links.len(), 1);
}

/// A damaged state naming a VM with a path in it is refused, not followed.
#[tokio::test]
async fn a_recorded_target_with_a_bad_name_is_refused() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let mut s = rig.state();
    s.resources.get_mut("vm.A").unwrap().target = Some(Target::Vm {
        name: "../../etc".into(),
    });
    rig.sd.save(&mut s).unwrap();
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let r = rig.run(None, &p, 4).await;
    assert!(
        r.errors
            .iter()
            .any(|(a, e)| a == "vm.A" && e.to_string().contains("bad name")),
        "{r:?}"
    );
    assert!(!rig.host.calls().iter().any(|c| c.contains("etc")));
}

/// A kernel rebuilt at the same path is a different kernel: the VMs booting
/// it are replaced (the plan said "No changes").
#[tokio::test]
async fn a_rebuilt_kernel_replaces_its_vms() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    assert_eq!(rig.changes(LAB).await, vec![]);
    std::fs::write(rig.dir.path().join("kernel"), b"another kernel").unwrap();
    let ch = rig.changes(LAB).await;
    for vm in ["vm.A", "vm.B"] {
        let c = ch.iter().find(|c| c.0 == vm).expect(vm);
        assert_eq!(c.1, Action::Replace);
        assert_eq!(
            c.2,
            [plan::Reason::ContentChanged {
                what: "kernel".into()
            }]
        );
    }
    assert!(rig.apply(LAB).await.1.ok());
    assert_eq!(rig.changes(LAB).await, vec![]);
}

/// A backing image rebuilt in place replaces the disk made from it.
#[tokio::test]
async fn a_rebuilt_backing_image_replaces_its_disk() {
    let rig = Rig::new();
    let base = rig.dir.path().join("base.img");
    std::fs::write(&base, b"image one").unwrap();
    rig.host.add_file(&base);
    let text = LAB.replace(
        "network \"LAN\"",
        &format!(
            "network \"LAN\"\ndisk \"d\" {{ from \"{}\"; }}",
            base.display()
        ),
    );
    assert!(rig.apply(&text).await.1.ok());
    assert_eq!(rig.changes(&text).await, vec![]);
    std::fs::write(&base, b"image two").unwrap();
    let ch = rig.changes(&text).await;
    assert_eq!(
        ch,
        [(
            "disk.d".to_string(),
            Action::Replace,
            vec![plan::Reason::ContentChanged {
                what: "from".into()
            }]
        )]
    );
}

/// A state written before digests were recorded plans no change.
#[tokio::test]
async fn a_state_without_digests_is_not_replanned() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let mut s = rig.state();
    for r in s.resources.values_mut() {
        r.attrs.retain(|k, _| !k.ends_with("_sha256"));
    }
    rig.sd.save(&mut s).unwrap();
    assert_eq!(rig.changes(LAB).await, vec![]);
}

/// A run first sweeps what interrupted ops left (the provider says what)
/// and reports each.
#[tokio::test]
async fn a_run_sweeps_leftovers_first() {
    let rig = Rig::new();
    let left = rig.sd.disks().join(".x.qcow2.ext4-99.tmp");
    rig.host.world_mut().leftovers.push(left.clone());
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let (r, lines) = rig.run_logged(None, &p, 4).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        lines,
        [format!(
            "removed {} (left by an interrupted disk creation)",
            left.display()
        )]
    );
    assert!(rig.host.world().leftovers.is_empty());
}

/// Killed after a step ran but before its outcome was recorded (the record
/// stays `Creating`): the next apply asks the agent, which answers with the
/// outcome of that run; the step does not run twice.
#[tokio::test]
async fn an_interrupted_step_is_not_run_twice() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    // What a SIGKILL right after the step's effect leaves.
    let mut s = rig.state();
    s.resources.get_mut("vm.A.cc[0]").unwrap().status = Status::Creating;
    rig.sd.save(&mut s).unwrap();
    let ch = rig.changes(LAB).await;
    assert_eq!(
        ch,
        [(
            "vm.A.cc[0]".to_string(),
            Action::Replace,
            vec![plan::Reason::CreationInterrupted]
        )]
    );
    let (_, r) = rig.apply(LAB).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "step A:A0").count(),
        1,
        "{calls:#?}"
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "replay A:A0").count(),
        1,
        "{calls:#?}"
    );
    assert_eq!(rig.state().resources["vm.A.cc[0]"].status, Status::Ready);
    assert_eq!(rig.changes(LAB).await, vec![]);
}

/// The step ran but its answer was lost (the connection dropped): the next
/// apply recovers the outcome instead of running it again.
#[tokio::test]
async fn a_step_whose_answer_was_lost_is_not_run_twice() {
    let mut rig = Rig::new();
    rig.host.lose_replies.insert("A1".into());
    let (_, r) = rig.apply(LAB).await;
    assert_eq!(r.errors.len(), 1, "{r:?}");
    let rec = &rig.state().resources["vm.A.cc[1]"];
    assert_eq!((rec.status, rec.exit), (Status::Failed, None));
    rig.host.lose_replies.clear();
    let (_, r) = rig.apply(LAB).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "step A:A1").count(),
        1,
        "{calls:#?}"
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "replay A:A1").count(),
        1,
        "{calls:#?}"
    );
    assert_eq!(rig.changes(LAB).await, vec![]);
}

/// A deliberate rerun (`-replace` of a step, a changed step) is a new run.
#[tokio::test]
async fn a_requested_rerun_runs_again() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let opts = Options {
        replace: BTreeSet::from(["vm.A.cc[0]".to_string()]),
        ..Default::default()
    };
    let p = rig.plan(Some(LAB), Mode::Apply, &opts).await;
    assert!(rig.run(Some(LAB), &p, 4).await.ok());
    let calls = rig.host.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "step A:A0").count(),
        2,
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("replay")), "{calls:#?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// The convergence property with the real executor on the fake host:
    /// apply one random lab, kill a VM maybe, apply another; the plan after
    /// that is empty, and destroy leaves nothing.
    #[test]
    fn the_executor_converges(
        n1 in 0usize..5, n2 in 0usize..5, nets1 in 1usize..3, nets2 in 1usize..3,
        mem1 in proptest::collection::vec(64u16..512, 1..4), mem2 in proptest::collection::vec(64u16..512, 1..4),
        m1 in 0usize..3, m2 in 0usize..3,
        st1 in proptest::collection::vec(0u8..3, 1..4), st2 in proptest::collection::vec(0u8..3, 1..4),
        kill in proptest::option::of(0usize..5),
        cap in 1usize..4,
    ) {
        let lab_text = crate::plan::tests::gen_lab;
        let first = lab_text(n1, nets1, &mem1, m1, &st1).replace("/img/k", "KERNEL");
        let second = lab_text(n2, nets2, &mem2, m2, &st2).replace("/img/k", "KERNEL");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut rig = Rig::new();
            rig.host.delay_polls = 2;
            let p = rig.plan(Some(&first), Mode::Apply, &Options::default()).await;
            let r = rig.run(Some(&first), &p, cap).await;
            assert!(r.ok(), "{r:?}");
            if let Some(k) = kill {
                rig.host.world_mut().vms.remove(&format!("v{k}"));
            }
            let p = rig.plan(Some(&second), Mode::Apply, &Options::default()).await;
            let r = rig.run(Some(&second), &p, cap).await;
            assert!(r.ok(), "{r:?}");
            let left = rig.changes(&second).await;
            assert!(left.is_empty(), "not converged: {left:?}");
            let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
            assert!(rig.run(None, &p, cap).await.ok());
            assert!(rig.state().resources.is_empty());
            let w = rig.host.world();
            assert!(w.links.is_empty() && w.vms.is_empty() && w.mirrors.is_empty());
        });
    }
}

/// A state written before targets were recorded still plans no change and
/// destroys everything: a VM's name comes from the runtime folder refresh
/// found, never from its address.
#[tokio::test]
async fn a_state_without_targets_still_destroys() {
    let rig = Rig::new();
    assert!(rig.apply(LAB).await.1.ok());
    let mut s = rig.state();
    for r in s.resources.values_mut() {
        r.target = None;
        r.run_id = None;
    }
    rig.sd.save(&mut s).unwrap();
    assert_eq!(rig.changes(LAB).await, vec![]);
    let before = rig.host.calls().len();
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let r = rig.run(None, &p, 4).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls()[before..].to_vec();
    assert!(calls.contains(&"stop A".to_string()), "{calls:#?}");
    assert!(calls.contains(&"stop B".to_string()), "{calls:#?}");
    let w = rig.host.world();
    assert!(w.links.is_empty() && w.vms.is_empty() && w.mirrors.is_empty());
}

/// Killed after `vm.A` was recorded `Creating` but before its launch: the
/// next plan replaces it (its creation was interrupted) and converges.
#[tokio::test]
async fn a_crash_between_record_and_launch_is_replanned() {
    let mut rig = Rig::new();
    rig.host.hang.insert("launch A".into(), Hang::BeforeEffect);
    let p = rig.plan(Some(LAB), Mode::Apply, &Options::default()).await;
    rig.run_until_hung(LAB, &p, 1).await;
    assert_eq!(rig.state().resources["vm.A"].status, Status::Creating);
    assert!(!rig.host.world().vms.contains_key("A"));
    rig.host.hang.clear();
    let ch = rig.changes(LAB).await;
    let a = ch.iter().find(|c| c.0 == "vm.A").expect("vm.A replanned");
    assert_eq!(
        (a.1, a.2.clone()),
        (Action::Replace, vec![plan::Reason::CreationInterrupted])
    );
    let (_, r) = rig.apply(LAB).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(rig.changes(LAB).await, vec![]);
    assert_eq!(
        rig.host
            .calls()
            .iter()
            .filter(|c| *c == "step A:A0")
            .count(),
        1
    );
}

/// Killed after the launch but before it was recorded: the running VM is
/// stopped and launched again (never launched twice over), and steps run once.
#[tokio::test]
async fn a_crash_between_launch_and_record_is_replanned() {
    let mut rig = Rig::new();
    rig.host.hang.insert("launch A".into(), Hang::AfterEffect);
    let p = rig.plan(Some(LAB), Mode::Apply, &Options::default()).await;
    rig.run_until_hung(LAB, &p, 1).await;
    assert_eq!(rig.state().resources["vm.A"].status, Status::Creating);
    assert!(rig.host.world().vms.contains_key("A"));
    rig.host.hang.clear();
    let before = rig.host.calls().len();
    let (_, r) = rig.apply(LAB).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls()[before..].to_vec();
    assert!(
        pos(&calls, "stop A") < pos(&calls, "launch A"),
        "{calls:#?}"
    );
    assert_eq!(rig.changes(LAB).await, vec![]);
    assert_eq!(
        rig.host
            .calls()
            .iter()
            .filter(|c| *c == "step A:A0")
            .count(),
        1
    );
}

/// Killed after a step ran in the guest, before its outcome was recorded:
/// the next apply recovers the outcome from the agent instead of rerunning.
#[tokio::test]
async fn a_crash_after_a_step_ran_does_not_run_it_twice() {
    let mut rig = Rig::new();
    rig.host.hang.insert("step A:A0".into(), Hang::AfterEffect);
    let p = rig.plan(Some(LAB), Mode::Apply, &Options::default()).await;
    rig.run_until_hung(LAB, &p, 1).await;
    assert_eq!(rig.state().resources["vm.A.cc[0]"].status, Status::Creating);
    rig.host.hang.clear();
    let (_, r) = rig.apply(LAB).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls();
    assert_eq!(calls.iter().filter(|c| *c == "step A:A0").count(), 1);
    assert_eq!(calls.iter().filter(|c| *c == "replay A:A0").count(), 1);
    assert_eq!(rig.changes(LAB).await, vec![]);
}

/// A slow launch holds back only what depends on it.
#[tokio::test]
async fn a_slow_op_delays_only_its_dependents() {
    let mut rig = Rig::new();
    rig.host.delays.insert("launch A".into(), 200);
    let (_, r) = rig.apply(LAB).await;
    assert!(r.ok(), "{r:?}");
    let calls = rig.host.calls();
    assert!(
        pos(&calls, "step B:B0") < pos(&calls, "step A:A0"),
        "{calls:#?}"
    );
}

/// Step outputs go to the provider's layout.
#[tokio::test]
async fn step_outputs_are_stored_by_the_provider() {
    let mut rig = Rig::new();
    rig.host.exits.insert("B0".into(), 4);
    let text = LAB.replace("exec \"B0\"", "exec \"B0\" allow-failure=#true");
    assert!(rig.apply(&text).await.1.ok());
    let w = rig.host.world();
    assert_eq!(w.outputs[&("B".to_string(), 0)].0, 4);
    assert_eq!(w.outputs[&("A".to_string(), 1)].0, 0);
}

/// What the engine chose at create ("known after apply") is recorded, not
/// diffed against the file, and kept by an update in place.
#[tokio::test]
async fn computed_attributes_are_recorded_and_kept() {
    let mut rig = Rig::new();
    rig.host.rules = crate::provider::Rules {
        computed: |k, a| k == Kind::Vm && a == "engine_id",
        ..crate::provider::Rules::LOCAL
    };
    assert!(rig.apply(LAB).await.1.ok());
    let id = |rig: &Rig| {
        rig.state().resources["vm.A"]
            .attrs
            .get("engine_id")
            .cloned()
    };
    let first = id(&rig).expect("the launch's engine_id is recorded");
    assert_eq!(rig.changes(LAB).await, vec![]);
    let text = LAB.replacen(
        "memory \"64M\"",
        "memory \"64M\"\n    tags { role \"x\" }",
        1,
    );
    let (p, r) = rig.apply(&text).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(p.change("vm.A").unwrap().action, Action::Update);
    assert_eq!(id(&rig), Some(first.clone()));
    assert_eq!(rig.changes(&text).await, vec![]);
    // A replacement is a new launch: a new id.
    let opts = Options {
        replace: BTreeSet::from(["vm.A".to_string()]),
        ..Default::default()
    };
    let p = rig.plan(Some(&text), Mode::Apply, &opts).await;
    assert!(rig.run(Some(&text), &p, 4).await.ok());
    assert_ne!(id(&rig), Some(first));
    assert_eq!(rig.changes(&text).await, vec![]);
}

mod batch;
mod walk;

/// A create whose intent (`Creating`) cannot be saved does not start: a
/// crash after it would leave something no record knows of. It fails with
/// the save's error, and what depends on it is skipped.
#[tokio::test]
async fn an_effect_whose_intent_cannot_be_saved_does_not_start() {
    let rig = Rig::new();
    let p = rig.plan(Some(LAB), Mode::Apply, &Options::default()).await;
    rig.block_saves();
    let r = rig.run(Some(LAB), &p, 4).await;
    assert!(
        rig.host.calls().is_empty(),
        "effects ran without a saved intent: {:#?}",
        rig.host.calls()
    );
    assert!(!r.errors.is_empty(), "{r:?}");
    assert!(
        r.errors
            .iter()
            .all(|(_, e)| matches!(e, ApplyError::State(_) | ApplyError::NotRecorded { .. })),
        "{r:?}"
    );
    assert!(r.done.is_empty(), "{r:?}");
    // Everything else waits for the network, whose intent was not saved.
    let tasks = p
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .count();
    assert_eq!(r.skipped.len(), tasks - 1, "{r:?}");
    // Once the state folder takes writes again, apply converges.
    rig.unblock_saves();
    assert!(rig.apply(LAB).await.1.ok());
    assert_eq!(rig.changes(LAB).await, vec![]);
}
