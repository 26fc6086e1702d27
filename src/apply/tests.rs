//! The real [`Executor`] on a fake, in-memory [`Host`]: ordering, the
//! parallelism cap, skips on failure, record-before-effect, and the
//! convergence items (typed identities, updates in place, taint, foreign
//! interfaces), all without root.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::drivers::netlink::NetlinkError;
use crate::host::{Host, HostError, StepOutcome};
use crate::identity;
use crate::lab::{CcActionSpec, DiskSpec, VmSpec};
use crate::observed::{Observed, ObservedLink, ObservedMirror, ObservedVm};
use crate::plan::{self, Mode, Options};
use crate::provider::{Op, OpOutcome, Outcome as OpResult};

/// One call the executor made, with what the state file said at that moment.
#[derive(Clone, Debug)]
struct Call {
    what: String,
    /// The status of the address the call acts for, as saved on disk when
    /// the call began (None: no record).
    saved: Option<Status>,
}

#[derive(Default)]
struct World {
    /// name -> marker
    links: BTreeMap<String, String>,
    /// tap -> its bridge
    controller: BTreeMap<String, String>,
    mirrors: BTreeSet<(String, String)>,
    disks: BTreeSet<String>,
    /// VM name -> pid
    vms: BTreeMap<String, u32>,
    next_pid: u32,
    calls: Vec<Call>,
    /// VM -> the run ids its agent ran in this boot, with their exit codes.
    ran: BTreeMap<String, HashMap<String, i32>>,
    in_flight: usize,
    max_in_flight: usize,
}

/// An in-memory host that records calls, can fail chosen ones and hold
/// every effect pending for a few polls (no clock, no sleeping).
struct FakeHost {
    experiment: String,
    sd: StateDir,
    world: RefCell<World>,
    /// Calls (`launch A`, `tap vm.A.nic[0]`...) that fail.
    fail: BTreeSet<String>,
    /// Exit codes of steps by address (default 0).
    exits: HashMap<String, i32>,
    /// Steps (by command) that run but whose answer never reaches the host.
    lose_replies: BTreeSet<String>,
    /// Polls each effect stays pending for, so others overlap it.
    delay_polls: usize,
}

impl FakeHost {
    fn new(experiment: &str, sd: &StateDir) -> Self {
        FakeHost {
            experiment: experiment.into(),
            sd: sd.clone(),
            world: RefCell::default(),
            fail: BTreeSet::new(),
            exits: HashMap::new(),
            delay_polls: 0,
            lose_replies: BTreeSet::new(),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.world
            .borrow()
            .calls
            .iter()
            .map(|c| c.what.clone())
            .collect()
    }

    fn call(&self, what: &str) -> Option<Call> {
        self.world
            .borrow()
            .calls
            .iter()
            .find(|c| c.what == what)
            .cloned()
    }

    /// Log a call for `address`, wait out the delay, then fail it if asked.
    async fn enter(&self, what: String, address: &str) -> Result<(), HostError> {
        let saved = self
            .sd
            .load()
            .ok()
            .and_then(|s| s.resources.get(address).map(|r| r.status));
        {
            let mut w = self.world.borrow_mut();
            w.calls.push(Call {
                what: what.clone(),
                saved,
            });
            w.in_flight += 1;
            w.max_in_flight = w.max_in_flight.max(w.in_flight);
        }
        for _ in 0..self.delay_polls {
            tokio::task::yield_now().await;
        }
        self.world.borrow_mut().in_flight -= 1;
        if self.fail.contains(&what) {
            return Err(HostError::Io(std::io::Error::other(format!(
                "injected failure of {what}"
            ))));
        }
        Ok(())
    }

    fn address_of(&self, marker: &str) -> String {
        identity::address_of_marker(&self.experiment, marker)
            .unwrap_or_default()
            .to_string()
    }
}

fn not_ours(name: &str, expected: &str, found: &str) -> HostError {
    HostError::Netlink(NetlinkError::NotOurs {
        name: name.into(),
        expected: expected.into(),
        found: Some(found.into()),
    })
}

impl Host for FakeHost {
    async fn observe(&self, _: &str, state: &State, _: &StateDir) -> Result<Observed, HostError> {
        let w = self.world.borrow();
        let mut obs = Observed::default();
        for (name, marker) in &w.links {
            if let Some(a) = identity::address_of_marker(&self.experiment, marker) {
                obs.links.insert(
                    a.to_string(),
                    ObservedLink {
                        name: name.clone(),
                        kind: if name.starts_with(identity::BRIDGE_PREFIX) {
                            "bridge".into()
                        } else {
                            "tun".into()
                        },
                        up: true,
                        controller: w.controller.get(name).cloned(),
                        mac: None,
                    },
                );
            }
        }
        for (s, d) in &w.mirrors {
            obs.mirrors.insert(ObservedMirror {
                source_tap: s.clone(),
                dest_tap: d.clone(),
                ingress: true,
                egress: true,
            });
        }
        for (name, pid) in &w.vms {
            obs.vms.insert(
                format!("vm.{name}"),
                ObservedVm {
                    name: name.clone(),
                    pid: Some(*pid),
                    alive: true,
                    status: Some("running".into()),
                },
            );
        }
        for (a, r) in &state.resources {
            if r.kind == Kind::Disk && r.attr_str("file").is_some_and(|f| w.disks.contains(f)) {
                obs.disks.insert(a.clone());
            }
        }
        Ok(obs)
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        marker: &str,
        _: Option<&str>,
    ) -> Result<(), HostError> {
        let a = self.address_of(marker);
        self.enter(format!("bridge {a}"), &a).await?;
        let mut w = self.world.borrow_mut();
        match w.links.get(name) {
            Some(m) if m != marker => Err(not_ours(name, marker, m)),
            _ => {
                w.links.insert(name.into(), marker.into());
                Ok(())
            }
        }
    }

    async fn ensure_tap(
        &self,
        name: &str,
        _: &str,
        marker: &str,
        bridge: &str,
    ) -> Result<(), HostError> {
        let a = self.address_of(marker);
        self.enter(format!("tap {a}"), &a).await?;
        let mut w = self.world.borrow_mut();
        match w.links.get(name) {
            Some(m) if m != marker => Err(not_ours(name, marker, m)),
            _ => {
                w.links.insert(name.into(), marker.into());
                w.controller.insert(name.into(), bridge.into());
                Ok(())
            }
        }
    }

    async fn delete_link(&self, name: &str, marker: &str) -> Result<(), HostError> {
        let a = self.address_of(marker);
        self.enter(format!("delete-link {a}"), &a).await?;
        let mut w = self.world.borrow_mut();
        match w.links.get(name) {
            Some(m) if m != marker => Err(not_ours(name, marker, m)),
            _ => {
                w.links.remove(name);
                Ok(())
            }
        }
    }

    async fn add_mirror(&self, src: &str, dst: &str, _: &str) -> Result<(), HostError> {
        self.enter(format!("mirror {src}->{dst}"), "").await?;
        self.world
            .borrow_mut()
            .mirrors
            .insert((src.into(), dst.into()));
        Ok(())
    }

    async fn remove_mirror(&self, src: &str, dst: &str) -> Result<(), HostError> {
        self.enter(format!("unmirror {src}->{dst}"), "").await?;
        self.world
            .borrow_mut()
            .mirrors
            .remove(&(src.to_string(), dst.to_string()));
        Ok(())
    }

    async fn create_disk(&self, disk: &DiskSpec, path: &Path) -> Result<(), HostError> {
        self.enter(format!("disk {}", disk.name), &disk.address)
            .await?;
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        self.world.borrow_mut().disks.insert(file);
        Ok(())
    }

    async fn remove_file(&self, path: &Path) -> Result<(), HostError> {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        self.enter(format!("rm {file}"), "").await?;
        self.world.borrow_mut().disks.remove(&file);
        Ok(())
    }

    async fn launch_vm(
        &self,
        _: &str,
        _: crate::lab::Accel,
        vm: &VmSpec,
        _: &[DiskSpec],
        _: &StateDir,
    ) -> Result<u32, HostError> {
        self.enter(format!("launch {}", vm.name), &vm.address)
            .await?;
        let mut w = self.world.borrow_mut();
        w.next_pid += 1;
        let pid = 1000 + w.next_pid;
        w.vms.insert(vm.name.clone(), pid);
        w.ran.remove(&vm.name);
        Ok(pid)
    }

    async fn stop_vm(
        &self,
        _: &str,
        vm: &str,
        _: Option<u32>,
        _: bool,
        _: &StateDir,
    ) -> Result<(), HostError> {
        self.enter(format!("stop {vm}"), "").await?;
        let mut w = self.world.borrow_mut();
        w.vms.remove(vm);
        w.ran.remove(vm);
        Ok(())
    }

    async fn run_step(
        &self,
        _: &str,
        vm: &str,
        action: &CcActionSpec,
        _: Option<Duration>,
        run_id: &str,
    ) -> Result<StepOutcome, HostError> {
        let CcActionSpec::Exec(cmd) = action else {
            unreachable!("these tests use exec steps")
        };
        // Steps name themselves: `exec "A0"` is the first step of A.
        if !self.world.borrow().vms.contains_key(vm) {
            return Err(HostError::Io(std::io::Error::other(format!(
                "{vm} is not running"
            ))));
        }
        // The agent of this boot runs a run id once; asked again, it replays.
        let known = self
            .world
            .borrow()
            .ran
            .get(vm)
            .and_then(|r| r.get(run_id))
            .copied();
        if let Some(exit) = known {
            self.enter(format!("replay {vm}:{cmd}"), "").await?;
            return Ok(StepOutcome {
                exit,
                stdout: String::new(),
                stderr: "boom".into(),
                replayed: true,
                timed_out: None,
            });
        }
        self.enter(format!("step {vm}:{cmd}"), "").await?;
        let exit = self.exits.get(&cmd.to_string()).copied().unwrap_or(0);
        self.world
            .borrow_mut()
            .ran
            .entry(vm.to_string())
            .or_default()
            .insert(run_id.to_string(), exit);
        if self.lose_replies.contains(&cmd.to_string()) {
            return Err(HostError::Io(std::io::Error::other(
                "the agent connection dropped",
            )));
        }
        Ok(StepOutcome {
            exit,
            stdout: String::new(),
            stderr: "boom".into(),
            replayed: false,
            timed_out: None,
        })
    }
}

/// The fake host as a provider: each op is the host call it was.
impl Provider for FakeHost {
    type Guest = crate::host::local::LocalGuest;

    fn name(&self) -> &'static str {
        "fake"
    }

    async fn preflight(&self, _: Option<&Lab>) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn refresh(
        &self,
        experiment: &str,
        state: &State,
        sd: &StateDir,
    ) -> Result<Observed, ProviderError> {
        Ok(self.observe(experiment, state, sd).await?)
    }

    async fn execute(&self, sd: &StateDir, op: &Op) -> Result<OpOutcome, ProviderError> {
        match op {
            Op::CreateNetwork {
                bridge,
                host_address,
                marker,
                ..
            } => {
                self.ensure_bridge(bridge, marker, host_address.as_deref())
                    .await?
            }
            Op::DeleteNetwork { bridge, marker, .. } => self.delete_link(bridge, marker).await?,
            Op::CreateTap {
                name,
                mac,
                bridge,
                marker,
                ..
            } => self.ensure_tap(name, mac, marker, bridge).await?,
            Op::DeleteTap { name, marker, .. } => self.delete_link(name, marker).await?,
            Op::CreateDisk { spec, .. } => {
                self.create_disk(spec, &sd.disk_file(&spec.file_name())?)
                    .await?
            }
            Op::RemoveDisk { file, .. } => self.remove_file(&sd.disk_file(file)?).await?,
            Op::StopVm {
                experiment,
                name,
                pid,
                graceful,
                ..
            } => self.stop_vm(experiment, name, *pid, *graceful, sd).await?,
            Op::LaunchVm {
                experiment,
                accel,
                vm,
                disks,
                ..
            } => {
                for p in vm.kernel.iter().chain(vm.initrd.iter()) {
                    if !p.exists() {
                        return Err(ProviderError::MissingBootFile { path: p.clone() });
                    }
                }
                let pid = self.launch_vm(experiment, *accel, vm, disks, sd).await?;
                return Ok(OpResult::Launched { pid }.into());
            }
            Op::AddMirror {
                source_tap,
                dest_tap,
                direction,
                ..
            } => {
                self.add_mirror(source_tap, dest_tap, direction.as_str())
                    .await?
            }
            Op::RemoveMirror {
                source_tap,
                dest_tap,
                ..
            } => self.remove_mirror(source_tap, dest_tap).await?,
            Op::RunStep {
                experiment,
                vm,
                action,
                timeout,
                run_id,
                ..
            } => {
                let out = self
                    .run_step(experiment, vm, action, *timeout, run_id)
                    .await?;
                return Ok(OpResult::Step(out).into());
            }
            // The fake records no frames: a recorder is a no-op here.
            Op::StartCapture { .. } | Op::StopCapture { .. } => {}
        }
        Ok(OpOutcome::done())
    }

    fn sweep(&self, sd: &StateDir) -> Vec<std::path::PathBuf> {
        crate::host::local::sweep_disk_temporaries(sd)
    }

    async fn guest(
        &self,
        _: &str,
        vm: &str,
        _: crate::provider::GuestWait,
    ) -> Result<Self::Guest, ProviderError> {
        Err(ProviderError::Unsupported {
            provider: "fake",
            what: format!("reach the guest of {vm}"),
        })
    }

    fn store_step_output(
        &self,
        sd: &StateDir,
        vm: &str,
        index: usize,
        out: &StepOutcome,
    ) -> Result<(), ProviderError> {
        Ok(sd.write_step_result(vm, index, out.exit, &out.stdout, &out.stderr)?)
    }

    fn serial_log(&self, _: &StateDir, _: &str) -> Option<std::path::PathBuf> {
        None
    }

    fn console_socket(&self, _: &str, _: &str) -> Option<std::path::PathBuf> {
        None
    }

    fn disk_file(&self, sd: &StateDir, file: &str) -> Result<std::path::PathBuf, ProviderError> {
        Ok(sd.disk_file(file)?)
    }
}

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
    host: FakeHost,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: dir.path().join("state"),
            experiment: "fx".into(),
        };
        let host = FakeHost::new("fx", &sd);
        std::fs::write(dir.path().join("kernel"), b"a kernel").unwrap();
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
        let obs = self.host.observe("fx", &state, &self.sd).await.unwrap();
        let lab = text.map(|t| self.lab(t));
        // As the CLI does: the files' digests are read before planning.
        let mut opts = opts.clone();
        opts.digests = lab.as_ref().map(crate::digest::of_lab).unwrap_or_default();
        plan::plan_with(lab.as_ref(), &state, Some(&obs), mode, &opts)
    }

    async fn run(&self, text: Option<&str>, plan: &Plan, parallelism: usize) -> Report {
        let lab = text.map(|t| self.lab(t));
        let mut state = self.state();
        let ex = Executor {
            provider: &self.host,
            lab: lab.as_ref(),
            sd: &self.sd,
            experiment: "fx".into(),
            parallelism,
            progress: &|_| {},
        };
        ex.run(plan, &mut state).await
    }

    /// Plan against the fake host and apply it.
    async fn apply(&self, text: &str) -> (Plan, Report) {
        let p = self
            .plan(Some(text), Mode::Apply, &Options::default())
            .await;
        let r = self.run(Some(text), &p, 4).await;
        (p, r)
    }

    async fn changes(&self, text: &str) -> Vec<(String, Action, Vec<String>)> {
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
    let w = rig.host.world.borrow();
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
    let w = rig.host.world.borrow();
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
        assert_eq!(rig.host.world.borrow().max_in_flight, cap, "cap {cap}");
    }
}

#[tokio::test]
async fn a_failure_skips_only_its_dependents() {
    let mut rig = Rig::new();
    rig.host.fail.insert("tap vm.A.nic[0]".into());
    let (_, r) = rig.apply(LAB).await;
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert_eq!(r.errors[0].0, "vm.A.nic[0]");
    let skipped: BTreeSet<&str> = r.skipped.iter().map(String::as_str).collect();
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
    assert!(r.errors[0].1.contains("exited 3"), "{r:?}");
    let rec = &rig.state().resources["vm.A.cc[1]"];
    assert_eq!((rec.status, rec.exit), (Status::Failed, Some(3)));
    let ch = rig.changes(LAB).await;
    let vm = ch.iter().find(|c| c.0 == "vm.A").expect("vm.A changes");
    assert_eq!(vm.1, Action::Replace);
    assert_eq!(vm.2, ["tainted: vm.A.cc[1] failed"]);
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
        (Action::Replace, vec!["replacement requested".to_string()])
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
    let tap = lab.vms[0].nics[0].tap.clone();
    rig.host
        .world
        .borrow_mut()
        .links
        .insert(tap.clone(), "someone else's".into());
    let (_, r) = rig.apply(LAB).await;
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].1.contains("not ours"), "{r:?}");
    assert_eq!(rig.state().resources["vm.A.nic[0]"].status, Status::Failed);
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    let r = rig.run(None, &p, 4).await;
    assert!(r.ok(), "{r:?}");
    assert!(
        rig.state().resources.is_empty(),
        "{:?}",
        rig.state().resources
    );
    let w = rig.host.world.borrow();
    assert_eq!(
        w.links.get(&tap).map(String::as_str),
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
            .any(|(a, e)| a == "vm.A" && e.contains("bad name")),
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
        assert_eq!(c.2, ["kernel changed (content)"]);
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
            vec!["from changed (content)".to_string()]
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

/// The next apply (or destroy) removes what a killed disk creation left.
#[tokio::test]
async fn a_run_sweeps_leftover_disk_temporaries() {
    let rig = Rig::new();
    let d = rig.sd.disks();
    std::fs::create_dir_all(d.join("x.stage")).unwrap();
    std::fs::write(d.join(".x.qcow2.ext4-99.tmp"), b"big").unwrap();
    std::fs::write(d.join("x.qcow2"), b"a disk").unwrap();
    let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
    assert!(rig.run(None, &p, 4).await.ok());
    assert!(!d.join(".x.qcow2.ext4-99.tmp").exists());
    assert!(!d.join("x.stage").exists());
    assert!(d.join("x.qcow2").exists());
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
            vec!["its creation was interrupted".to_string()]
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
                rig.host.world.borrow_mut().vms.remove(&format!("v{k}"));
            }
            let p = rig.plan(Some(&second), Mode::Apply, &Options::default()).await;
            let r = rig.run(Some(&second), &p, cap).await;
            assert!(r.ok(), "{r:?}");
            let left = rig.changes(&second).await;
            assert!(left.is_empty(), "not converged: {left:?}");
            let p = rig.plan(None, Mode::Destroy, &Options::default()).await;
            assert!(rig.run(None, &p, cap).await.ok());
            assert!(rig.state().resources.is_empty());
            let w = rig.host.world.borrow();
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
    let w = rig.host.world.borrow();
    assert!(w.links.is_empty() && w.vms.is_empty() && w.mirrors.is_empty());
}
