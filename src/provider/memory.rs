//! A strict in-memory engine for tests: the real executor and planner run
//! against it without root, QEMU or a kernel.
//!
//! It records every call (with the status the state file gave the call's
//! address at that moment, so tests can check record-before-effect), refuses
//! what a real engine would refuse, and can fail, delay, hang or hold chosen
//! ops (a [`Gate`] the test opens when it has seen what it waits for).
//!
//! Strict, as the local engine is:
//! - a link whose name is held by an object without the op's marker is
//!   never changed or deleted (`NotOurs`); deleting what is not there is a
//!   no-op, as it is for the kernel;
//! - a tap needs its bridge; a mirror needs both its taps; a VM needs its
//!   boot files (declared with [`MemoryProvider::add_file`]), its taps (ours)
//!   and its disks, and is never launched twice (the executor stops
//!   leftovers first);
//! - a tap in use by a running VM is not deleted (the executor stops the VM
//!   first); deleting a bridge releases its taps, as the kernel does;
//! - a keep disk's image is never overwritten;
//! - a step needs its VM running; its agent runs a run id once per boot and
//!   answers a repeated id with the first outcome (`replayed`).
//!
//! Not `Send`: the executor polls its futures on one task.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{Command, ExecResult, Exit, Hello, Transfer};
use crate::identity;
use crate::lab::{CcActionSpec, Direction, DiskSource};
use crate::observed::{Observed, ObservedKind, ObservedLink, ObservedMirror, ObservedVm};
use crate::state::{Kind, State, StateDir, Status};

use super::ops::{Op, OpOutcome, Outcome, named};
use super::{Guest, GuestWait, Provider, ProviderError, StepOutcome};

/// One call the executor made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The op's label: `bridge network.LAN`, `tap vm.A.nic[0]`, `launch A`,
    /// `stop A`, `delete-link vm.A.nic[0]`, `disk d`, `rm d.qcow2`,
    /// `mirror SRC->DST`, `unmirror SRC->DST`, `step A:CMD`, `replay A:CMD`.
    pub what: String,
    /// The status of the op's address as saved in the state file when the
    /// call began (None: no record).
    pub saved: Option<Status>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub marker: String,
    pub bridge: bool,
    /// The bridge a tap is enslaved to.
    pub controller: Option<String>,
    pub mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vm {
    pub pid: u32,
    /// Its QEMU lives (false: it died, its runtime folder stays).
    pub alive: bool,
    /// Its taps, by name.
    pub taps: Vec<String>,
    /// Run ids its agent ran in this boot, with their exit codes.
    pub ran: HashMap<String, i32>,
}

/// What the engine holds.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// Links by name.
    pub links: BTreeMap<String, Link>,
    /// (source tap, destination tap) -> direction.
    pub mirrors: BTreeMap<(String, String), Direction>,
    /// Disk images by file name, with whether they are keep disks.
    pub disks: BTreeMap<String, bool>,
    /// Running VMs by name.
    pub vms: BTreeMap<String, Vm>,
    /// Host files the lab reads (kernels, initrds, base images, files to send).
    pub files: BTreeSet<PathBuf>,
    /// Step outputs stored: (VM, index) -> (exit, stdout, stderr).
    pub outputs: BTreeMap<(String, usize), (i32, String, String)>,
    pub calls: Vec<Call>,
    next_pid: u32,
    in_flight: usize,
    pub max_in_flight: usize,
    /// Hung ops entered so far.
    pub hung: usize,
    /// What interrupted ops left, for the next run's sweep.
    pub leftovers: Vec<PathBuf>,
}

/// Hold an op forever, before or after its effect: what a crash of the
/// executor at that point leaves (the test drops the run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hang {
    BeforeEffect,
    AfterEffect,
}

/// Holds the ops of one label (see [`MemoryProvider::gate`]) once they
/// started (logged and in flight) until the test opens it: a test orders
/// events by what it has seen, never by time.
#[derive(Clone, Debug, Default)]
pub struct Gate(std::sync::Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    open: std::sync::atomic::AtomicBool,
    /// Ops that reached the gate (held, or passed since it opened).
    reached: std::sync::atomic::AtomicUsize,
}

impl Gate {
    /// Let the ops held here (and any that come later) go on.
    pub fn open(&self) {
        self.0.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        self.0.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many ops reached the gate so far.
    pub fn reached(&self) -> usize {
        self.0.reached.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait here until the gate is open.
    async fn pass(&self) {
        self.0
            .reached
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while !self.is_open() {
            tokio::task::yield_now().await;
        }
    }
}

/// The in-memory engine. Configure the pub fields, then run.
#[derive(Default)]
pub struct MemoryProvider {
    pub experiment: String,
    world: RefCell<World>,
    /// Labels of calls that fail (before their effect).
    pub fail: BTreeSet<String>,
    /// Exit codes of exec steps by command (default 0).
    pub exits: HashMap<String, i32>,
    /// Steps (by command) that run but whose answer never reaches the host.
    pub lose_replies: BTreeSet<String>,
    /// Polls every op stays pending for, so others overlap it.
    pub delay_polls: usize,
    /// Polls chosen ops (by label) stay pending for, beyond `delay_polls`.
    pub delays: HashMap<String, usize>,
    /// Ops (by label) that never complete.
    pub hang: HashMap<String, Hang>,
    /// The rules it reports. With `computed(Kind::Vm, "engine_id")`, a
    /// launch returns the id it chose for the VM as a computed attribute.
    pub rules: super::Rules,
    /// Gates by op label (see [`MemoryProvider::gate`]).
    gates: RefCell<HashMap<String, Gate>>,
}

/// An interface name in a call's label (`-`: the op names none).
fn shown(name: &Option<String>) -> &str {
    name.as_deref().unwrap_or("-")
}

fn missing(what: impl Into<String>) -> ProviderError {
    ProviderError::Missing { what: what.into() }
}

fn not_ours(name: &str) -> ProviderError {
    ProviderError::NotOurs {
        what: format!("interface {name}"),
    }
}

impl MemoryProvider {
    pub fn new(experiment: &str) -> Self {
        MemoryProvider {
            experiment: experiment.into(),
            ..Default::default()
        }
    }

    /// What the engine holds now.
    pub fn world(&self) -> std::cell::Ref<'_, World> {
        self.world.borrow()
    }

    /// Change what the engine holds (a test's "outside" event: a killed
    /// QEMU, a foreign interface).
    pub fn world_mut(&self) -> std::cell::RefMut<'_, World> {
        self.world.borrow_mut()
    }

    /// Declare a host file the lab may read.
    pub fn add_file(&self, path: impl Into<PathBuf>) {
        self.world.borrow_mut().files.insert(path.into());
    }

    /// The labels of every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .borrow()
            .calls
            .iter()
            .map(|c| c.what.clone())
            .collect()
    }

    /// The first call with this label.
    pub fn call(&self, what: &str) -> Option<Call> {
        self.world
            .borrow()
            .calls
            .iter()
            .find(|c| c.what == what)
            .cloned()
    }

    /// Nothing of the experiment is left.
    pub fn is_empty(&self) -> bool {
        let w = self.world.borrow();
        w.links.is_empty() && w.vms.is_empty() && w.mirrors.is_empty() && w.disks.is_empty()
    }

    /// How many hung ops have been entered: a test waits for this to move
    /// (see [`MemoryProvider::hung`]).
    pub async fn hung(&self, count: usize) {
        loop {
            if self.world.borrow().hung >= count {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// The gate that holds the ops labelled `what` (see [`Call::what`])
    /// once they started, until it is opened; the same gate for a label
    /// asked twice.
    pub fn gate(&self, what: &str) -> Gate {
        self.gates
            .borrow_mut()
            .entry(what.to_string())
            .or_default()
            .clone()
    }

    /// The label of `op` (see [`Call::what`]); a step's depends on whether
    /// its agent already ran it.
    fn label(&self, op: &Op) -> String {
        match op {
            Op::CreateNetwork { address, .. } => format!("bridge {address}"),
            Op::DeleteNetwork { address, .. } | Op::DeleteTap { address, .. } => {
                format!("delete-link {address}")
            }
            Op::CreateTap { address, .. } => format!("tap {address}"),
            Op::StartCapture { address, .. } => format!("start-capture {address}"),
            Op::StopCapture { address, .. } => format!("stop-capture {address}"),
            Op::CreateDisk { spec, .. } => format!("disk {}", spec.name),
            Op::RemoveDisk { file, .. } => format!("rm {file}"),
            Op::StopVm { name, .. } => format!("stop {name}"),
            Op::LaunchVm { vm, .. } => format!("launch {}", vm.name),
            Op::AddMirror {
                source_tap,
                dest_tap,
                ..
            } => format!("mirror {}->{}", shown(source_tap), shown(dest_tap)),
            Op::RemoveMirror {
                source_tap,
                dest_tap,
                ..
            } => format!("unmirror {}->{}", shown(source_tap), shown(dest_tap)),
            Op::RunStep {
                vm, action, run_id, ..
            } => {
                let replay = self
                    .world
                    .borrow()
                    .vms
                    .get(vm)
                    .is_some_and(|v| v.ran.contains_key(run_id));
                let what = match action {
                    CcActionSpec::Exec(c) | CcActionSpec::Background(c) => c.to_string(),
                    other => other.to_string(),
                };
                format!("{} {vm}:{what}", if replay { "replay" } else { "step" })
            }
        }
    }

    /// Log the call, wait out its delay, fail it if asked.
    async fn enter(&self, sd: &StateDir, op: &Op, label: &str) -> Result<(), ProviderError> {
        let saved = sd
            .load()
            .ok()
            .and_then(|s| s.resources.get(op.address()).map(|r| r.status));
        {
            let mut w = self.world.borrow_mut();
            w.calls.push(Call {
                what: label.to_string(),
                saved,
            });
            w.in_flight += 1;
            w.max_in_flight = w.max_in_flight.max(w.in_flight);
        }
        let gate = self.gates.borrow().get(label).cloned();
        if let Some(g) = gate {
            g.pass().await;
        }
        let polls = self.delay_polls + self.delays.get(label).copied().unwrap_or(0);
        for _ in 0..polls {
            tokio::task::yield_now().await;
        }
        self.world.borrow_mut().in_flight -= 1;
        if self.fail.contains(label) {
            return Err(ProviderError::Injected(label.to_string()));
        }
        if self.hang.get(label) == Some(&Hang::BeforeEffect) {
            self.world.borrow_mut().hung += 1;
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// The effect of `op` on the world. Like the local engine, it names
    /// its interfaces before apply: an op without a name is refused.
    fn apply(&self, op: &Op) -> Result<OpOutcome, ProviderError> {
        let mut w = self.world.borrow_mut();
        let w = &mut *w;
        let address = op.address();
        match op {
            // The memory engine records no frames: a recorder is a no-op here.
            Op::StartCapture { .. } | Op::StopCapture { .. } => {}
            Op::CreateNetwork { bridge, marker, .. } => {
                let bridge = named(address, "bridge", bridge)?;
                match w.links.get(bridge) {
                    Some(l) if &l.marker != marker => return Err(not_ours(bridge)),
                    Some(l) if !l.bridge => {
                        return Err(ProviderError::Unsupported {
                            provider: "memory",
                            what: format!("make a bridge of tap {bridge}"),
                        });
                    }
                    Some(_) => {}
                    None => {
                        w.links.insert(
                            bridge.to_string(),
                            Link {
                                marker: marker.clone(),
                                bridge: true,
                                controller: None,
                                mac: None,
                            },
                        );
                    }
                }
            }
            Op::DeleteNetwork { bridge, marker, .. } => {
                let bridge = named(address, "bridge", bridge)?;
                match w.links.get(bridge) {
                    None => {}
                    Some(l) if &l.marker != marker => return Err(not_ours(bridge)),
                    Some(_) => {
                        w.links.remove(bridge);
                        for l in w.links.values_mut() {
                            if l.controller.as_deref() == Some(bridge) {
                                l.controller = None;
                            }
                        }
                    }
                }
            }
            Op::CreateTap {
                name,
                mac,
                bridge,
                marker,
                ..
            } => {
                let (name, bridge) = (
                    named(address, "tap", name)?,
                    named(address, "bridge", bridge)?,
                );
                match w.links.get(bridge) {
                    Some(b) if b.bridge => {}
                    _ => return Err(missing(format!("bridge {bridge}"))),
                }
                match w.links.get(name) {
                    Some(l) if &l.marker != marker => return Err(not_ours(name)),
                    _ => {
                        w.links.insert(
                            name.to_string(),
                            Link {
                                marker: marker.clone(),
                                bridge: false,
                                controller: Some(bridge.to_string()),
                                mac: Some(mac.clone()),
                            },
                        );
                    }
                }
            }
            Op::DeleteTap { name, marker, .. } => {
                let name = named(address, "tap", name)?;
                match w.links.get(name) {
                    None => {}
                    Some(l) if &l.marker != marker => return Err(not_ours(name)),
                    Some(_) => {
                        if let Some((vm, _)) = w
                            .vms
                            .iter()
                            .find(|(_, v)| v.alive && v.taps.iter().any(|t| t == name))
                        {
                            return Err(ProviderError::Unsupported {
                                provider: "memory",
                                what: format!("delete tap {name}: running VM {vm} uses it"),
                            });
                        }
                        w.links.remove(name);
                        w.mirrors.retain(|(s, d), _| s != name && d != name);
                    }
                }
            }
            Op::CreateDisk { spec, .. } => {
                let file = spec.file_name();
                if spec.keep && w.disks.contains_key(&file) {
                    return Err(ProviderError::Host(
                        crate::host::HostError::KeepDiskExists {
                            disk: spec.name.clone(),
                            path: PathBuf::from(&file),
                        },
                    ));
                }
                for p in spec.from.iter().chain(spec.inject.iter().map(|(p, _)| p)) {
                    if !w.files.contains(p) {
                        return Err(missing(p.display().to_string()));
                    }
                }
                w.disks.insert(file, spec.keep);
            }
            Op::RemoveDisk { file, .. } => {
                w.disks.remove(file);
            }
            Op::StopVm { name, .. } => {
                w.vms.remove(name);
            }
            Op::LaunchVm {
                experiment,
                vm,
                disks,
                ..
            } => {
                if w.vms.contains_key(&vm.name) {
                    return Err(ProviderError::Unsupported {
                        provider: "memory",
                        what: format!("launch VM {} while it runs", vm.name),
                    });
                }
                for p in vm.kernel.iter().chain(vm.initrd.iter()) {
                    if !w.files.contains(p) {
                        return Err(ProviderError::MissingBootFile { path: p.clone() });
                    }
                }
                let mut taps = Vec::new();
                for n in &vm.nics {
                    let marker = identity::marker(experiment, &n.address);
                    let Some(tap) = n.tap.as_ref().filter(|t| {
                        w.links
                            .get(*t)
                            .is_some_and(|l| !l.bridge && l.marker == marker)
                    }) else {
                        return Err(missing(format!(
                            "tap {} of VM {}",
                            n.tap.as_deref().unwrap_or(&n.address),
                            vm.name
                        )));
                    };
                    taps.push(tap.clone());
                }
                for d in &vm.disks {
                    let there = match &d.source {
                        DiskSource::Named(n) => disks
                            .iter()
                            .find(|s| &s.name == n)
                            .is_some_and(|s| w.disks.contains_key(&s.file_name())),
                        DiskSource::Path(p) => w.files.contains(p),
                    };
                    if !there {
                        return Err(missing(format!("a disk of VM {}", vm.name)));
                    }
                }
                w.next_pid += 1;
                let pid = 1000 + w.next_pid;
                w.vms.insert(
                    vm.name.clone(),
                    Vm {
                        pid,
                        alive: true,
                        taps,
                        ran: HashMap::new(),
                    },
                );
                let mut out = OpOutcome::from(Outcome::Launched { pid });
                if self.rules.is_computed(Kind::Vm, "engine_id") {
                    out.computed
                        .insert("engine_id".into(), format!("mem-{pid}").into());
                }
                return Ok(out);
            }
            Op::AddMirror {
                source_tap,
                dest_tap,
                direction,
                ..
            } => {
                let (src, dst) = (
                    named(address, "source tap", source_tap)?,
                    named(address, "destination tap", dest_tap)?,
                );
                for t in [src, dst] {
                    if w.links.get(t).is_none_or(|l| l.bridge) {
                        return Err(missing(format!("tap {t}")));
                    }
                }
                w.mirrors
                    .insert((src.to_string(), dst.to_string()), *direction);
            }
            Op::RemoveMirror {
                source_tap,
                dest_tap,
                ..
            } => {
                let (src, dst) = (
                    named(address, "source tap", source_tap)?,
                    named(address, "destination tap", dest_tap)?,
                );
                w.mirrors.remove(&(src.to_string(), dst.to_string()));
            }
            Op::RunStep {
                vm, action, run_id, ..
            } => {
                let Some(running) = w.vms.get_mut(vm).filter(|v| v.alive) else {
                    return Err(missing(format!("running VM {vm}")));
                };
                if let Some(&exit) = running.ran.get(run_id) {
                    return Ok(Outcome::Step(step_outcome(exit, true)).into());
                }
                let exit = match action {
                    CcActionSpec::Exec(c) | CcActionSpec::Background(c) => {
                        self.exits.get(&c.to_string()).copied().unwrap_or(0)
                    }
                    CcActionSpec::Send { src, .. } => {
                        if !w.files.contains(src) {
                            return Err(missing(src.display().to_string()));
                        }
                        0
                    }
                    CcActionSpec::Recv { .. } => 0,
                };
                let running = w.vms.get_mut(vm).expect("looked up above");
                running.ran.insert(run_id.clone(), exit);
                if let CcActionSpec::Exec(c) | CcActionSpec::Background(c) = action
                    && self.lose_replies.contains(&c.to_string())
                {
                    return Err(ProviderError::Agent {
                        vm: vm.clone(),
                        source: crate::agent::AgentError::Disconnected,
                    });
                }
                return Ok(Outcome::Step(step_outcome(exit, false)).into());
            }
        }
        Ok(OpOutcome::done())
    }
}

fn step_outcome(exit: i32, replayed: bool) -> StepOutcome {
    StepOutcome {
        exit,
        stdout: String::new(),
        stderr: if exit == 0 {
            String::new()
        } else {
            format!("exit status {exit}")
        },
        timed_out: None,
        replayed,
    }
}

impl Provider for MemoryProvider {
    type Guest = MemoryGuest;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn rules(&self) -> super::Rules {
        self.rules
    }

    /// As the local engine names them.
    fn assign_names(&self, lab: &mut crate::lab::Lab) -> Result<(), ProviderError> {
        Ok(super::names::local(lab)?)
    }

    /// Every boot file, base image and file to send must be declared.
    async fn preflight(&self, needs: &super::Requirements) -> Result<(), ProviderError> {
        let w = self.world.borrow();
        let mut missing = Vec::new();
        for b in &needs.boot_files {
            if !w.files.contains(&b.path) {
                missing.push(format!("{} (vm {})", b.path.display(), b.vm));
            }
        }
        for (step, src) in &needs.sends {
            if !w.files.contains(src) {
                missing.push(format!("{} ({step})", src.display()));
            }
        }
        for d in &needs.disk_sources {
            if !w.files.contains(&d.path) {
                missing.push(format!("{} ({})", d.path.display(), d.address));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ProviderError::Preflight {
                missing,
                not_root: false,
                only_files: true,
            })
        }
    }

    async fn refresh(
        &self,
        experiment: &str,
        state: &State,
        _: &StateDir,
    ) -> Result<Observed, ProviderError> {
        let w = self.world.borrow();
        let mut obs = Observed::default();
        for (name, l) in &w.links {
            if let Some(a) = identity::address_of_marker(experiment, &l.marker) {
                obs.links.insert(
                    a.to_string(),
                    ObservedLink {
                        name: name.clone(),
                        kind: if l.bridge {
                            ObservedKind::Bridge
                        } else {
                            ObservedKind::Tun
                        },
                        up: true,
                        controller: l.controller.clone(),
                        mac: l.mac.clone(),
                    },
                );
            }
        }
        for ((s, d), dir) in &w.mirrors {
            obs.mirrors.insert(ObservedMirror {
                address: None,
                source_tap: s.clone(),
                dest_tap: d.clone(),
                ingress: *dir != Direction::Egress,
                egress: *dir != Direction::Ingress,
            });
        }
        for (name, vm) in &w.vms {
            obs.vms.insert(
                format!("vm.{name}"),
                ObservedVm {
                    name: name.clone(),
                    pid: Some(vm.pid),
                    alive: vm.alive,
                    status: vm.alive.then(|| "running".into()),
                    cc: crate::observed::CcClient::NotAsked,
                },
            );
        }
        for (a, r) in &state.resources {
            if r.kind == Kind::Disk && r.attr_str("file").is_some_and(|f| w.disks.contains_key(f)) {
                obs.disks.insert(a.clone());
            }
        }
        Ok(obs)
    }

    async fn execute(&self, sd: &StateDir, op: &Op) -> Result<OpOutcome, ProviderError> {
        // The layout's checks, as the local engine makes them.
        match op {
            Op::CreateDisk { spec, .. } => drop(sd.disk_file(&spec.file_name())?),
            Op::RemoveDisk { file, .. } => drop(sd.disk_file(file)?),
            _ => {}
        }
        let label = self.label(op);
        self.enter(sd, op, &label).await?;
        let out = self.apply(op)?;
        if self.hang.get(&label) == Some(&Hang::AfterEffect) {
            self.world.borrow_mut().hung += 1;
            std::future::pending::<()>().await;
        }
        Ok(out)
    }

    fn sweep(&self, _: &StateDir) -> Vec<PathBuf> {
        std::mem::take(&mut self.world.borrow_mut().leftovers)
    }

    async fn guest(&self, _: &str, vm: &str, _: GuestWait) -> Result<MemoryGuest, ProviderError> {
        if !self.world.borrow().vms.get(vm).is_some_and(|v| v.alive) {
            return Err(missing(format!("running VM {vm}")));
        }
        Ok(MemoryGuest {
            vm: vm.to_string(),
            exits: self.exits.clone(),
        })
    }

    fn store_step_output(
        &self,
        _: &StateDir,
        vm: &str,
        index: usize,
        out: &StepOutcome,
    ) -> Result<(), ProviderError> {
        self.world.borrow_mut().outputs.insert(
            (vm.to_string(), index),
            (out.exit, out.stdout.clone(), out.stderr.clone()),
        );
        Ok(())
    }

    fn serial_log(&self, _: &StateDir, _: &str) -> Option<PathBuf> {
        None
    }

    fn console_socket(&self, _: &str, _: &str) -> Option<PathBuf> {
        None
    }

    fn disk_file(&self, sd: &StateDir, file: &str) -> Result<PathBuf, ProviderError> {
        Ok(sd.disk_file(file)?)
    }

    /// A disk image the world holds under that file name.
    fn disk_present(&self, _sd: &StateDir, file: &str) -> bool {
        self.world.borrow().disks.contains_key(file)
    }
}

/// A guest of the memory engine: commands exit as `exits` says.
pub struct MemoryGuest {
    pub vm: String,
    exits: HashMap<String, i32>,
}

impl Guest for MemoryGuest {
    async fn exec(
        &self,
        command: Command,
        timeout: Option<Duration>,
        _: Option<u64>,
    ) -> Result<ExecResult, ProviderError> {
        let key = match &command {
            Command::Shell(s) => s.clone(),
            Command::Argv(a) => format!("{a:?}"),
        };
        let _ = timeout;
        Ok(ExecResult {
            id: 0,
            exit: Exit::Code(self.exits.get(&key).copied().unwrap_or(0)),
            timed_out: false,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 0,
        })
    }

    async fn background(&self, _: Command) -> Result<u32, ProviderError> {
        Ok(1)
    }

    async fn send(&self, _: &Path, to: &str) -> Result<Transfer, ProviderError> {
        Ok(Transfer {
            path: PathBuf::from(to),
            size: 0,
            sha256: String::new(),
        })
    }

    async fn recv(
        &self,
        src: &str,
        _: &Path,
        _: Duration,
        _: u64,
    ) -> Result<Transfer, ProviderError> {
        Err(ProviderError::Unsupported {
            provider: "memory",
            what: format!("copy {src} out of {}", self.vm),
        })
    }

    async fn info(&self, _: Duration) -> Result<Hello, ProviderError> {
        Ok(Hello {
            version: crate::agent::protocol::PROTOCOL_VERSION,
            agent: "memory".into(),
            uuid: None,
            hostname: self.vm.clone(),
            interfaces: Vec::new(),
            features: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{DiskFormat, DiskSpec, NicSpec, VmSpec};

    fn sd() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: t.path().join("state"),
            experiment: "x".into(),
        };
        (t, sd)
    }

    fn bridge(address: &str, name: &str) -> Op {
        Op::CreateNetwork {
            address: address.into(),
            name: "LAN".into(),
            bridge: Some(name.into()),
            host_address: None,
            marker: identity::marker("x", address),
        }
    }

    fn tap(name: &str, bridge: &str) -> Op {
        Op::CreateTap {
            address: "vm.A.nic[0]".into(),
            vm: "A".into(),
            nic: 0,
            name: Some(name.into()),
            mac: "52:54:00:00:00:01".into(),
            bridge: Some(bridge.into()),
            marker: identity::marker("x", "vm.A.nic[0]"),
        }
    }

    fn launch(tap: &str) -> Op {
        Op::LaunchVm {
            address: "vm.A".into(),
            experiment: "x".into(),
            accel: crate::lab::Accel::Tcg,
            vm: Box::new(VmSpec {
                name: "A".into(),
                address: "vm.A".into(),
                uuid: uuid::Uuid::nil(),
                kernel: Some("/k".into()),
                initrd: None,
                append: None,
                memory_mib: 64,
                vcpus: 1,
                snapshot: true,
                boot_timeout_ms: 1000,
                disks: vec![],
                nics: vec![NicSpec {
                    index: 0,
                    address: "vm.A.nic[0]".into(),
                    network: "LAN".into(),
                    tap: Some(tap.into()),
                    mac: "52:54:00:00:00:01".into(),
                    driver: "virtio-net-pci".into(),
                }],
                tags: Default::default(),
                after: vec![],
                qemu_args: vec![],
                cc: vec![],
                host: None,
                colocate: None,
            }),
            disks: vec![],
        }
    }

    async fn run(p: &MemoryProvider, sd: &StateDir, op: Op) -> Result<OpOutcome, ProviderError> {
        p.execute(sd, &op).await
    }

    #[tokio::test]
    async fn it_refuses_what_a_real_engine_refuses() {
        let (_t, sd) = sd();
        let p = MemoryProvider::new("x");
        // This engine names its interfaces before apply: an op naming none is refused.
        let mut unnamed = bridge("network.LAN", "mpb1");
        if let Op::CreateNetwork { bridge, .. } = &mut unnamed {
            *bridge = None;
        }
        let e = run(&p, &sd, unnamed).await.unwrap_err();
        assert!(
            matches!(e, ProviderError::Unnamed { what: "bridge", .. }),
            "{e}"
        );
        assert!(p.world().links.is_empty());
        // A tap needs its bridge; a VM its boot files and its taps.
        let e = run(&p, &sd, tap("mpt1", "mpb1")).await.unwrap_err();
        assert!(matches!(e, ProviderError::Missing { .. }), "{e}");
        run(&p, &sd, bridge("network.LAN", "mpb1")).await.unwrap();
        let e = run(&p, &sd, launch("mpt1")).await.unwrap_err();
        assert!(matches!(e, ProviderError::MissingBootFile { .. }), "{e}");
        p.add_file("/k");
        let e = run(&p, &sd, launch("mpt1")).await.unwrap_err();
        assert_eq!(e.to_string(), "tap mpt1 of VM A does not exist");
        run(&p, &sd, tap("mpt1", "mpb1")).await.unwrap();
        let out = run(&p, &sd, launch("mpt1")).await.unwrap();
        assert!(matches!(out.outcome, Outcome::Launched { .. }));
        // Never twice; the tap it uses is not deleted under it.
        assert!(run(&p, &sd, launch("mpt1")).await.is_err());
        let del = Op::DeleteTap {
            address: "vm.A.nic[0]".into(),
            name: Some("mpt1".into()),
            marker: identity::marker("x", "vm.A.nic[0]"),
        };
        let e = run(&p, &sd, del.clone()).await.unwrap_err();
        assert!(e.to_string().contains("running VM A uses it"), "{e}");
        let stop = Op::StopVm {
            address: "vm.A".into(),
            experiment: "x".into(),
            name: "A".into(),
            pid: None,
            graceful: false,
        };
        run(&p, &sd, stop).await.unwrap();
        run(&p, &sd, del.clone()).await.unwrap();
        // Deleting what is gone is a no-op, as for the kernel.
        run(&p, &sd, del).await.unwrap();
        // A link of someone else's is never touched.
        p.world_mut().links.insert(
            "theirs".into(),
            Link {
                marker: "other".into(),
                bridge: true,
                controller: None,
                mac: None,
            },
        );
        let e = run(
            &p,
            &sd,
            Op::DeleteNetwork {
                address: "network.LAN".into(),
                bridge: Some("theirs".into()),
                host_tap: None,
                marker: identity::marker("x", "network.LAN"),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.not_ours().as_deref(), Some("interface theirs"));
        assert!(run(&p, &sd, bridge("network.LAN", "theirs")).await.is_err());
        assert!(p.world().links.contains_key("theirs"));
        // A keep disk's image is never overwritten; a bad file name is refused.
        let disk = DiskSpec {
            name: "data".into(),
            address: "disk.data".into(),
            size_bytes: Some(1 << 20),
            format: DiskFormat::Raw,
            filesystem: None,
            keep: true,
            from: None,
            inject: vec![],
        };
        let mk = Op::CreateDisk {
            address: "disk.data".into(),
            spec: disk,
        };
        run(&p, &sd, mk.clone()).await.unwrap();
        let e = run(&p, &sd, mk).await.unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        let rm = Op::RemoveDisk {
            address: "disk.data".into(),
            file: "../../etc/passwd".into(),
        };
        assert!(matches!(
            run(&p, &sd, rm).await.unwrap_err(),
            ProviderError::State(_)
        ));
        assert!(p.world().disks.contains_key("data.raw"));
    }

    #[tokio::test]
    async fn a_gate_holds_its_op_until_opened() {
        let (_t, sd) = sd();
        let p = MemoryProvider::new("x");
        let g = p.gate("bridge network.LAN");
        let op = bridge("network.LAN", "mpb1");
        let mut run = std::pin::pin!(p.execute(&sd, &op));
        for _ in 0..100 {
            assert!(futures::poll!(&mut run).is_pending());
        }
        assert_eq!((g.reached(), p.calls().len()), (1, 1));
        assert!(p.world().links.is_empty(), "held before its effect");
        g.open();
        run.await.unwrap();
        assert!(p.world().links.contains_key("mpb1"));
    }

    #[tokio::test]
    async fn it_records_calls_and_injects_failures() {
        let (_t, sd) = sd();
        let mut p = MemoryProvider::new("x");
        p.fail.insert("bridge network.LAN".into());
        let e = run(&p, &sd, bridge("network.LAN", "mpb1"))
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::Injected(_)), "{e}");
        assert!(p.world().links.is_empty(), "a failed op changes nothing");
        p.fail.clear();
        run(&p, &sd, bridge("network.LAN", "mpb1")).await.unwrap();
        assert_eq!(p.calls(), ["bridge network.LAN", "bridge network.LAN"]);
        assert_eq!(p.call("bridge network.LAN").unwrap().saved, None);
        let obs = p.refresh("x", &State::new("x"), &sd).await.unwrap();
        assert_eq!(obs.links["network.LAN"].name, "mpb1");
    }
}
