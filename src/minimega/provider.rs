//! The minimega provider: an experiment built on a minimega cluster through
//! its command socket (`BASE/minimega`, [`super::client`]), with the same
//! plan/apply/destroy as megaplan's own engine.
//!
//! What maps to what (docs/minimega.md, "The minimega provider"):
//! - the experiment is one minimega namespace (`provider.namespace`, default
//!   the experiment's name); the head node joins it (`ns add-hosts`) when a
//!   VM is placed there;
//! - a network is a VLAN alias of the namespace (allocated by `vm config
//!   net ALIAS`, listed by `vlans`);
//! - a tap is the VM's own minimega tap (made by `vm launch`; its name is in
//!   `vm info`), so creating one changes nothing;
//! - a VM is `clear vm config`, `vm config …` (uuid, memory, vcpus, kernel,
//!   initrd, append, snapshot, disks, `net ALIAS,MAC,DRIVER`, tags with
//!   megaplan's marker, qemu-append, `schedule` from `host` or `colocate`
//!   with its mirror partner; TCG: an absolute `qemu` and `cpu qemu64`),
//!   `vm launch kvm NAME`, `vm start NAME`; the whole sequence holds the
//!   connection, since `vm config` is the namespace's shared state;
//! - a mirror is `tap mirror SRC NIC DST NIC` (minimega's own check that
//!   both VMs are on one node; validate places them so), removed with
//!   `clear tap mirror DST NIC`;
//! - a cc step is minimega's cc: `cc filter uuid=U`, `cc prefix ID`, `cc
//!   exec`/`cc background`, then `cc exitcode` and `cc responses`.
//!
//! Invariants:
//! - Nothing without megaplan's marker (the VM tag `megaplan` =
//!   `EXPERIMENT:ADDRESS`) is changed or removed: refresh skips such VMs,
//!   and a kill re-reads the VM's tags first.
//! - Refresh only reads: it never names a namespace that does not exist
//!   (minimega would create it).
//! - Every command is built by [`Command`]: values quoted, names [`Name`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::MARKER_TAG;
use super::client::{
    Client, ClientError, Command, HostResponse, Name, VmInfo, VmState, column, vm_infos,
};
use crate::host::StepOutcome;
use crate::lab::{Accel, CcActionSpec, CommandSpec, DiskSpec, Lab, VmSpec};
use crate::observed::{Observed, ObservedLink, ObservedMirror, ObservedVm};
use crate::provider::{
    GuestWait, Left, Op, OpOutcome, Outcome, Provider, ProviderError as PError, Requirements, Rules,
};
use crate::state::{Kind, State, StateDir};

mod batch;
mod clients;
mod namespace;
mod nodes;
mod stop;

/// How often a wait on minimega (a cc response, a VM leaving) looks again.
const POLL: Duration = Duration::from_millis(200);
/// The most a removed VM may take to leave `vm info`.
const GONE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MinimegaError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Files(#[from] super::disks::FilesError),
    #[error("{what} is not possible with the minimega provider: {why}")]
    Unsupported { what: String, why: &'static str },
    #[error(
        "VM {name} in minimega's namespace {ns} does not carry megaplan's marker for {address}; left alone"
    )]
    NotOurs {
        name: String,
        ns: String,
        address: String,
    },
    #[error("no VM {0} in the experiment")]
    NoVm(String),
    #[error("{0} names no nic of the experiment")]
    NoNic(String),
    /// A guest's miniccc did not check in within its boot-timeout.
    #[error(
        "miniccc of {vm} did not check in with minimega within {after:?} (boot-timeout); does its image start miniccc (`image build --miniccc`)?"
    )]
    NoCcClient { vm: String, after: Duration },
    /// `cc exec` from megaplan found the VM's miniccc not connected.
    #[error(
        "{vm}'s miniccc is not connected to minimega (not in `cc clients` of namespace {ns} within {after:?})"
    )]
    NotConnected {
        vm: String,
        ns: String,
        after: Duration,
    },
    /// A VM placed with its mirror partner waited for that one's launch.
    #[error("{vm} waits for {partner} (its mirror partner) to launch first (waited {after:?})")]
    NoPartner {
        vm: String,
        partner: String,
        after: Duration,
    },
    /// A killed VM did not leave the namespace in time.
    #[error("VM {vm} is still in minimega's namespace {ns} after {after:?}")]
    StillThere {
        vm: String,
        ns: String,
        after: Duration,
    },
    #[error(transparent)]
    Cc(#[from] super::cc::CcError),
    #[error(transparent)]
    Tap(#[from] super::taps::TapError),
    /// A failure of a batch of VM launches, reported by each of its VMs.
    #[error(transparent)]
    Batch(std::sync::Arc<MinimegaError>),
    #[error(
        "VM {vm} was not removed: minimega could not ask every node of the namespace ({errors}); it may still run there"
    )]
    NodeSilent { vm: String, errors: String },
    #[error("minimega did not launch VM {vm}: {why}")]
    NotLaunched { vm: String, why: String },
    #[error(
        "minimega's namespace {ns} has VMs queued for launch that are not this experiment's (`ns queue`); launch them or drop them with `ns flush` first"
    )]
    ForeignQueue { ns: String },
    #[error("minimega answered `{command}` with {got:?}, not {want}")]
    Answer {
        command: String,
        got: String,
        want: &'static str,
    },
}

/// One experiment on one minimega cluster.
pub struct MinimegaHost {
    /// Shared with the guests handed out ([`super::guest`]).
    pub(super) client: std::sync::Arc<Mutex<Client>>,
    pub(super) ns: Name,
    experiment: String,
    pub(super) lab: Option<Lab>,
    /// The head node's name (`host name`), asked once when first needed.
    head: std::sync::OnceLock<String>,
    /// The namespace is known to hold the head node when VMs are placed
    /// there (asked once per process).
    joined: std::sync::atomic::AtomicBool,
    qemu: Option<PathBuf>,
}

/// What the provider's settings say for this run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub base: PathBuf,
    pub namespace: String,
}

impl MinimegaHost {
    pub fn connect(
        settings: &Settings,
        experiment: &str,
        lab: Option<&Lab>,
    ) -> Result<MinimegaHost, MinimegaError> {
        let ns = Name::new(&settings.namespace)?;
        let mut client = Client::connect(&settings.base)?;
        client.set_timeout(Duration::from_secs(300));
        Ok(MinimegaHost {
            client: std::sync::Arc::new(Mutex::new(client)),
            ns,
            experiment: experiment.to_string(),
            lab: lab.cloned(),
            head: std::sync::OnceLock::new(),
            joined: std::sync::atomic::AtomicBool::new(false),
            qemu: which("qemu-system-x86_64"),
        })
    }

    pub(super) fn run(&self, cmd: Command) -> Result<Vec<HostResponse>, MinimegaError> {
        let mut c = self.client.lock().expect("the client lock");
        Ok(c.run(&cmd.in_namespace(&self.ns))?)
    }

    pub(super) fn run_ok(&self, cmd: Command) -> Result<Vec<HostResponse>, MinimegaError> {
        let mut c = self.client.lock().expect("the client lock");
        Ok(c.run_ok(&cmd.in_namespace(&self.ns))?)
    }

    /// A command every node of the namespace runs, of which one node (the
    /// VM's) must succeed: the others answer "vm not found".
    fn run_on_one(&self, cmd: Command) -> Result<Vec<HostResponse>, MinimegaError> {
        let text = cmd.as_str().to_string();
        let r = self.run(cmd)?;
        if r.iter().any(|r| r.error.is_empty()) {
            return Ok(r);
        }
        Err(ClientError::Host {
            command: text,
            errors: r.into_iter().map(|r| (r.host, r.error)).collect(),
        }
        .into())
    }

    /// Whether the namespace exists (asked without naming it).
    fn namespace_exists(&self) -> Result<bool, MinimegaError> {
        let mut c = self.client.lock().expect("the client lock");
        let r = c.run_ok(&Command::new("namespace"))?;
        Ok(r.iter().any(|r| {
            r.rows()
                .iter()
                .any(|row| row.contains(&("namespace", self.ns.as_str())))
        }))
    }

    /// Every VM of the namespace (all nodes), ours or not.
    /// Nodes that do not answer are left out (refresh says why); when none
    /// answers, that is an error.
    pub fn vm_info(&self) -> Result<Vec<VmInfo>, MinimegaError> {
        Ok(self.vm_info_nodes()?.0)
    }

    /// [`MinimegaHost::vm_info`], and the nodes that did not answer (each
    /// with its error).
    fn vm_info_nodes(&self) -> Result<(Vec<VmInfo>, nodes::Asked), MinimegaError> {
        let cmd = Command::new("vm").word("info").word("summary");
        let resps = self.run_on_one(cmd.clone())?;
        let vms = vm_infos(&cmd.in_namespace(&self.ns), &resps)?;
        Ok((vms, nodes::Asked::of(&resps)))
    }

    /// The address our marker names on a VM, if it is ours.
    fn ours<'a>(&self, v: &'a VmInfo) -> Option<&'a str> {
        let tag = v.tags.get(MARKER_TAG)?;
        let addr = tag.strip_prefix(&self.experiment)?.strip_prefix(':')?;
        (addr == format!("vm.{}", v.name)).then_some(addr)
    }

    /// Refresh: what of this experiment minimega has.
    pub fn observe_sync(&self, state: &State) -> Result<Observed, MinimegaError> {
        let mut obs = Observed::default();
        // Disks: files in the head's file path (disks.rs), namespace or not.
        if state.resources.values().any(|r| r.kind == Kind::Disk) {
            let have = {
                let mut c = self.client.lock().expect("the client lock");
                super::disks::observe(&mut c, &self.experiment)?
            };
            for (addr, rec) in &state.resources {
                if rec.kind == Kind::Disk && rec.attr_str("file").is_some_and(|f| have.contains(f))
                {
                    obs.disks.insert(addr.clone());
                }
            }
        }
        if !self.namespace_exists()? {
            return Ok(obs);
        }
        // Every node that answers; a node that does not (gone from the
        // mesh) leaves its VMs unseen, and says why.
        let cmd = Command::new("vm")
            .word("info")
            .word("summary")
            .in_namespace(&self.ns);
        let resps = {
            let mut c = self.client.lock().expect("the client lock");
            c.run(&cmd)?
        };
        let vms = vm_infos(&cmd, &resps)?;
        // VLAN aliases of the namespace.
        let mut aliases: BTreeMap<String, i64> = BTreeMap::new();
        for r in self.run_ok(Command::new("vlans"))? {
            for row in r.rows() {
                if let (Some(a), Some(v)) = (column(&row, "alias"), column(&row, "vlan")) {
                    aliases.insert(a.to_string(), v.parse().unwrap_or(-1));
                }
            }
        }
        // Networks: a record (or a lab network) whose alias exists.
        let mut networks: BTreeMap<String, String> = BTreeMap::new();
        for (addr, rec) in &state.resources {
            if rec.kind == Kind::Network
                && let Some(crate::graph::Target::Network { name }) = &rec.target
            {
                networks.insert(addr.clone(), name.clone());
            }
        }
        if let Some(lab) = &self.lab {
            for n in &lab.networks {
                networks.insert(n.address.clone(), n.name.clone());
            }
        }
        // A network with a host-address needs its host tap too.
        let host_taps = match &self.lab {
            Some(l) if l.networks.iter().any(|n| n.host_address.is_some()) => {
                super::taps::host_taps(self)?
            }
            _ => BTreeSet::new(),
        };
        let tap_missing = |addr: &str| {
            self.lab
                .as_ref()
                .and_then(|l| l.networks.iter().find(|n| n.address == addr))
                .is_some_and(|n| {
                    n.host_address.is_some()
                        && !host_taps.contains(&super::taps::host_tap_of(&self.experiment, &n.name))
                })
        };
        for (addr, name) in &networks {
            if aliases.contains_key(name) && !tap_missing(addr) {
                obs.links.insert(
                    addr.clone(),
                    ObservedLink {
                        name: name.clone(),
                        kind: crate::observed::ObservedKind::Bridge,
                        up: true,
                        controller: None,
                        mac: None,
                    },
                );
            }
        }
        // cc clients, when a step that ran makes their absence count (clients.rs).
        let ccs = clients::Clients::wanted(state)
            .then(|| clients::Clients::ask(self))
            .transpose()?;
        // VMs (ours only) and their taps.
        let mut minimega_tap: BTreeMap<(String, usize), (String, String)> = BTreeMap::new();
        for v in &vms {
            let Some(addr) = self.ours(v) else { continue };
            let alive = !matches!(v.state, VmState::Quit | VmState::Error);
            let status = match v.state {
                VmState::Running => "running".to_string(),
                VmState::Paused => "paused".to_string(),
                VmState::Building => "building".to_string(),
                VmState::Quit => format!("quit in minimega (on {})", v.host),
                VmState::Error => format!("in error in minimega (on {})", v.host),
                VmState::Unknown(n) => format!("in minimega state {n} (on {})", v.host),
            };
            obs.vms.insert(
                addr.to_string(),
                ObservedVm {
                    name: v.name.clone(),
                    pid: u32::try_from(v.pid).ok().filter(|p| *p > 0),
                    // A QUIT VM is a VM minimega still lists: "alive" as a
                    // record, not running, so the reason names its state.
                    alive: alive || matches!(v.state, VmState::Quit | VmState::Error),
                    status: Some(status),
                    cc: ccs
                        .as_ref()
                        .map_or(crate::observed::CcClient::NotAsked, |c| {
                            c.client(&v.host, &v.uuid)
                        }),
                },
            );
            for (i, n) in v.networks.iter().enumerate() {
                minimega_tap.insert((v.name.clone(), i), (n.tap.clone(), v.host.clone()));
                let Some(lab) = &self.lab else { continue };
                let Some(spec) = lab.vm(&v.name).and_then(|s| s.nics.get(i)) else {
                    continue;
                };
                // The nic is on its network's VLAN: the tap is there.
                if aliases.get(&spec.network) == Some(&n.vlan) && !n.tap.is_empty() {
                    obs.links.insert(
                        spec.address.clone(),
                        ObservedLink {
                            name: n.tap.clone(),
                            kind: crate::observed::ObservedKind::Tun,
                            up: true,
                            // minimega keeps no bridge per network: the tap
                            // is on its network when it is on the VLAN.
                            controller: lab.network(&spec.network).and_then(|n| n.bridge.clone()),
                            mac: Some(n.mac.clone()),
                        },
                    );
                }
            }
        }
        // A VM recorded on a node that did not answer: unreachable.
        obs.unreachable = nodes::unreachable_vms(&resps, state, &obs.vms);
        // Captures minimega records (super::captures).
        if let Some(lab) = &self.lab {
            obs.captures = super::captures::observe(self, lab)?;
        }
        // Mirrors: OVS mirrors named `mirror-DSTTAP` on the node of the
        // destination (minimega keeps no list of them).
        if let Some(lab) = &self.lab
            && !lab.mirrors.is_empty()
        {
            let mut by_host: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for m in &lab.mirrors {
                let Some((tap, host)) = minimega_tap.get(&(m.dest_vm.clone(), m.dest_nic)) else {
                    continue;
                };
                let present = match by_host.get(host) {
                    Some(set) => set.contains(&format!("mirror-{tap}")),
                    None => {
                        let set = self.ovs_mirrors(host)?;
                        let p = set.contains(&format!("mirror-{tap}"));
                        by_host.insert(host.clone(), set);
                        p
                    }
                };
                let Some((source_tap, _)) = minimega_tap.get(&(m.source_vm.clone(), m.source_nic))
                else {
                    continue;
                };
                if present {
                    // Keyed by address: the taps are minimega's names, which
                    // the plan (megaplan names no tap here) does not hold.
                    obs.mirrors.insert(ObservedMirror {
                        address: Some(m.address.clone()),
                        source_tap: source_tap.clone(),
                        dest_tap: tap.clone(),
                        ingress: true,
                        egress: true,
                    });
                }
            }
        }
        Ok(obs)
    }

    /// The names of the OVS mirrors on `host` (`ovs-vsctl` through
    /// minimega's `shell`, an argv it runs without a shell).
    fn ovs_mirrors(&self, host: &str) -> Result<BTreeSet<String>, MinimegaError> {
        let shell = Command::new("shell")
            .arg("ovs-vsctl")?
            .arg("--format=csv")?
            .arg("--data=bare")?
            .arg("--no-headings")?
            .arg("--columns=name")?
            .arg("list")?
            .arg("mirror")?;
        let cmd = if host == self.head()? {
            shell
        } else {
            // `mesh send HOST shell …`: the shell command's words follow.
            Command::new("mesh")
                .word("send")
                .name(&Name::new(host)?)
                .then(&shell)
        };
        let mut c = self.client.lock().expect("the client lock");
        let r = c.run_ok(&cmd)?;
        Ok(r.iter()
            .flat_map(|r| r.response.lines())
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Make the namespace (and put the head node in it when a VM is
    /// placed there).
    fn ensure_namespace(&self) -> Result<(), MinimegaError> {
        use std::sync::atomic::Ordering;
        if self.joined.load(Ordering::Relaxed) {
            return Ok(());
        }
        let head = self.head()?;
        let head_used = self
            .lab
            .as_ref()
            .is_some_and(|l| l.vms.iter().any(|v| v.host.as_deref() == Some(head)));
        if head_used && !head.is_empty() {
            let hosts: Vec<String> = self
                .run_ok(Command::new("host").word("name"))?
                .into_iter()
                .map(|r| r.host)
                .collect();
            if !hosts.iter().any(|h| h == head) {
                self.run_ok(Command::new("ns").word("add-hosts").arg(head)?)?;
            }
        }
        self.joined.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The head node's name (`host name` outside any namespace), once.
    pub(super) fn head(&self) -> Result<&str, MinimegaError> {
        if let Some(h) = self.head.get() {
            return Ok(h);
        }
        let name = {
            let mut c = self.client.lock().expect("the client lock");
            c.run_ok(&Command::new("host").word("name"))?
                .into_iter()
                .next()
                .map(|r| r.response)
                .unwrap_or_default()
        };
        Ok(self.head.get_or_init(|| name))
    }

    fn ensure_alias(&self, alias: &str) -> Result<(), MinimegaError> {
        self.ensure_namespace()?;
        // `vm config net ALIAS` allocates the alias (and tells every node).
        let mut c = self.client.lock().expect("the client lock");
        c.run_ok(
            &Command::new("vm")
                .word("config")
                .word("net")
                .arg(alias)?
                .in_namespace(&self.ns),
        )?;
        c.run_ok(
            &Command::new("clear")
                .word("vm")
                .word("config")
                .in_namespace(&self.ns),
        )?;
        Ok(())
    }

    /// The `vm config …` commands of one VM (config.rs, as export writes
    /// them), from `clear vm config` on, its files placed;
    /// [`batch`] queues and launches them.
    fn launch_sync(
        &self,
        experiment: &str,
        accel: Accel,
        vm: &VmSpec,
        disks: &[DiskSpec],
    ) -> Result<Vec<Command>, MinimegaError> {
        // minimega takes a relative qemu as a file in its -filepath.
        let tcg_qemu = match accel {
            Accel::Tcg => Some(self.qemu.as_deref().ok_or(MinimegaError::Unsupported {
                what: "accel \"tcg\"".into(),
                why: "qemu-system-x86_64 is not on this machine's PATH (minimega needs its absolute path)",
            })?),
            _ => None,
        };
        let mut files = super::config::Files {
            tcg_qemu,
            ..Default::default()
        };
        // Kernel and initrd go into the head's file path, named relative to
        // it: the VM's node fetches them through iomeshage (disks.rs).
        if vm.kernel.is_some() || vm.initrd.is_some() {
            let root = {
                let mut cl = self.client.lock().expect("the client lock");
                super::disks::head_filepath(&mut cl, &self.ns)?
            };
            if let Some(p) = &vm.kernel {
                files.kernel = Some(super::disks::place_boot(&root, experiment, p)?);
            }
            if let Some(p) = &vm.initrd {
                files.initrd = Some(super::disks::place_boot(&root, experiment, p)?);
            }
            let sources: Vec<&Path> = (self.lab.iter().flat_map(|l| l.vms.iter()))
                .flat_map(|v| v.kernel.iter().chain(v.initrd.iter()))
                .map(PathBuf::as_path)
                .collect();
            super::disks::prune_boot(&self.client, experiment, &sources)?;
        }
        if !vm.disks.is_empty() {
            // Shared with export (disks.rs): a `disk "PATH"` under snapshot
            // goes by digest into the file path's bases/.
            let mut root = None;
            files.disks = super::disks::vm_disks(experiment, vm, disks, |p| {
                let r = match &root {
                    Some(r) => r,
                    None => {
                        let mut cl = self.client.lock().expect("the client lock");
                        root.insert(super::disks::head_filepath(&mut cl, &self.ns)?)
                    }
                };
                super::disks::place(r, experiment, "bases", p)
            })?;
        }
        // The commands export writes too (config.rs).
        let cfg = super::config::vm_config(experiment, vm, &files)
            .iter()
            .map(super::config::ConfigCommand::command)
            .collect::<Result<Vec<Command>, ClientError>>()?;
        Ok(cfg)
    }

    /// The experiment's name as a name in minimega's files folder.
    pub(super) fn experiment_name(&self) -> Result<Name, MinimegaError> {
        Ok(Name::new(&self.experiment)?)
    }

    pub(super) fn vm_spec(&self, vm: &str) -> Result<&VmSpec, MinimegaError> {
        self.lab
            .as_ref()
            .and_then(|l| l.vm(vm))
            .ok_or_else(|| MinimegaError::NoVm(vm.to_string()))
    }

    /// A mirror end as minimega names it: the nic the op's typed target
    /// names (minimega chose the tap's name itself).
    fn nic_of(
        &self,
        nic: Option<&crate::provider::ops::NicRef>,
        address: &str,
    ) -> Result<(Name, usize), MinimegaError> {
        let nic = nic
            .filter(|n| self.vm_spec(&n.vm).is_ok_and(|v| n.nic < v.nics.len()))
            .ok_or_else(|| MinimegaError::NoNic(address.to_string()))?;
        Ok((Name::new(&nic.vm)?, nic.nic))
    }

    /// Remove everything of the namespace that is ours, then the namespace
    /// itself when nothing else is left in it: what kept it (a VM, a host
    /// tap or a cc command that is not megaplan's, a node that did not
    /// answer), empty when it was cleared or was not there.
    pub fn clear_namespace_if_empty(&self) -> Result<Vec<namespace::Foreign>, MinimegaError> {
        if !self.namespace_exists()? {
            return Ok(Vec::new());
        }
        let foreign = namespace::foreign(self)?;
        if !foreign.is_empty() {
            return Ok(foreign);
        }
        // The files cc send and captures put in minimega's files folder.
        super::cc::forget_experiment(self)?;
        let mut c = self.client.lock().expect("the client lock");
        c.run_ok(&Command::new("clear").word("namespace").name(&self.ns))?;
        Ok(Vec::new())
    }

    async fn step(
        &self,
        vm: &str,
        action: &CcActionSpec,
        timeout: Option<Duration>,
        run_id: &str,
    ) -> Result<StepOutcome, MinimegaError> {
        let spec = self.vm_spec(vm)?;
        let uuid = spec.uuid.to_string();
        let (kw, words): (&'static str, Vec<String>) = match action {
            CcActionSpec::Exec(c) => ("exec", argv(c)),
            CcActionSpec::Background(c) => ("background", argv(c)),
            CcActionSpec::Send { .. } | CcActionSpec::Recv { .. } => {
                return super::cc::transfer(self, spec, action, timeout, run_id).await;
            }
        };
        if words.first().is_some_and(|w| {
            ["stdin=", "stdout=", "stderr="]
                .iter()
                .any(|p| w.starts_with(p))
        }) {
            return Err(MinimegaError::Unsupported {
                what: "a command whose first word is stdin=/stdout=/stderr=".into(),
                why: "minimega reads it as plumbing",
            });
        }
        super::cc::wait_for_client(self, spec).await?;
        // The run's prefix: the same run id finds the same command again.
        let prefix = run_prefix(run_id);
        let mut ids: BTreeMap<String, i64> = BTreeMap::new();
        let mut replayed = false;
        for r in self.run_ok(Command::new("cc").word("commands"))? {
            for row in r.rows() {
                if row.contains(&("prefix", prefix.as_str()))
                    && let Some(id) = column(&row, "id")
                    && let Ok(id) = id.parse()
                {
                    ids.insert(r.host.clone(), id);
                    replayed = true;
                }
            }
        }
        if !replayed {
            let mut cmd = Command::new("cc").word(kw);
            for w in &words {
                cmd = cmd.arg(w)?;
            }
            // Sent under a UUID filter and the run's prefix, both cleared after.
            for (host, id) in
                super::cc::under_filter(&self.client, &self.ns, &uuid, &prefix, &[cmd])?
            {
                ids.insert(host, i64::try_from(id).unwrap_or(i64::MAX));
            }
        }
        if kw == "background" {
            return Ok(StepOutcome {
                exit: 0,
                stdout: String::new(),
                stderr: String::new(),
                timed_out: None,
                replayed,
            });
        }
        // The exit code, from the node whose miniccc answered.
        let ids: Vec<(String, u64)> = ids
            .into_iter()
            .map(|(h, id)| (h, u64::try_from(id).unwrap_or_default()))
            .collect();
        let Some((host, id, exit)) =
            super::cc::wait_exit(&self.client, &self.ns, &ids, &uuid, timeout).await?
        else {
            return Ok(StepOutcome {
                exit: -1,
                stdout: String::new(),
                stderr: String::new(),
                timed_out: timeout,
                replayed,
            });
        };
        let (stdout, stderr) = super::cc::exec_output(&self.client, &self.ns, &host, id, &uuid)?;
        Ok(StepOutcome {
            exit,
            stdout,
            stderr,
            timed_out: None,
            replayed,
        })
    }
}

/// A cc prefix naming one run of a step (its run id hashed): the same run
/// id finds the same command again after an interruption.
pub(super) fn run_prefix(run_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(run_id.as_bytes());
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("mp{hex}")
}

/// A `clear tap mirror VM NIC` answer: done when every node either
/// cleared it or answered minimega's "not found" (the VM is on another
/// node, `vm not found`; or its tap has no mirror, `not a valid mirror`).
/// Any other error (a node that failed to remove it) fails the op, so the
/// mirror stays recorded.
fn mirror_cleared(r: Result<Vec<HostResponse>, MinimegaError>) -> Result<(), MinimegaError> {
    match r {
        Ok(_) => Ok(()),
        Err(MinimegaError::Client(ClientError::Host { command, errors })) => {
            let gone = |e: &str| e.starts_with("vm not found") || e == "not a valid mirror";
            let errors: Vec<(String, String)> =
                errors.into_iter().filter(|(_, e)| !gone(e)).collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(ClientError::Host { command, errors }.into())
            }
        }
        Err(e) => Err(e),
    }
}

/// The words miniccc runs: a string under `sh -c`, a list as it is.
fn argv(c: &CommandSpec) -> Vec<String> {
    match c {
        CommandSpec::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        CommandSpec::Argv(v) => v.clone(),
    }
}

/// `cc responses ID` (not raw) is `ID/UUID/stderr:` and `ID/UUID/stdout:`
/// headers, each followed by that file's text and a newline.
pub(super) fn split_responses(text: &str, id: i64, uuid: &str) -> (String, String) {
    let (out_h, err_h) = (
        format!("{id}/{uuid}/stdout:"),
        format!("{id}/{uuid}/stderr:"),
    );
    let (mut out, mut err) = (String::new(), String::new());
    let mut cur: Option<&mut String> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if bare == out_h {
            cur = Some(&mut out);
            continue;
        }
        if bare == err_h {
            cur = Some(&mut err);
            continue;
        }
        if let Some(c) = cur.as_deref_mut() {
            c.push_str(line);
        }
    }
    // Each file's text is followed by one newline of minimega's own.
    for s in [&mut out, &mut err] {
        if s.ends_with('\n') {
            s.pop();
        }
    }
    (out, err)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

impl Provider for MinimegaHost {
    type Guest = super::guest::MinimegaGuest;

    fn name(&self) -> &'static str {
        "minimega"
    }

    fn rules(&self) -> Rules {
        RULES
    }

    /// minimega names its taps when it launches a VM (recorded as the VM's
    /// computed `minimega_taps`) and keeps no bridge per network (a VLAN
    /// alias): those names stay unset, known after apply. A network's
    /// host-address tap is named by `taps::host_tap_of` and recorded as the
    /// computed `host_tap`; it is no bridge, so the plan names none.
    fn assign_names(&self, _lab: &mut Lab) -> Result<(), PError> {
        Ok(())
    }

    /// Once nothing but `keep` disks is recorded: clear the namespace if
    /// nothing that is not megaplan's is left in it, and then the boot
    /// files (and, when no keep disk is left, all the files) megaplan
    /// placed in minimega's file path. A namespace kept is said in the
    /// destroy output, with what kept it; megaplan's files stay with it
    /// (a destroy once those are gone removes them).
    fn after_destroy(
        &self,
        sd: &StateDir,
        _experiment: &str,
        left: Left,
        all: bool,
    ) -> Result<Vec<String>, PError> {
        // The captures fetched into the state folder (super::captures).
        crate::provider::remove_captures(sd, all)?;
        if left == Left::Other {
            return Ok(Vec::new());
        }
        let kept = self.clear_namespace_if_empty()?;
        if !kept.is_empty() {
            let what: Vec<String> = kept.iter().map(ToString::to_string).collect();
            return Ok(vec![format!(
                "minimega: namespace {} kept: it holds what megaplan did not make ({}); megaplan's files in minimega's file path stay with it until a destroy finds it empty",
                self.ns,
                what.join(", ")
            )]);
        }
        let mut c = self.client.lock().expect("the client lock");
        super::disks::forget(&mut c, &self.experiment).map_err(MinimegaError::from)?;
        Ok(match left {
            Left::KeptDisks => vec![format!(
                "minimega: keep disks stay in {}/disks of minimega's file path (`destroy --all` removes them)",
                super::disks::experiment_rel(&self.experiment).map_err(MinimegaError::from)?
            )],
            _ => Vec::new(),
        })
    }

    /// Fetched from the VM's node into the state folder (super::captures).
    async fn capture_file(
        &self,
        sd: &StateDir,
        capture: &crate::lab::CaptureSpec,
    ) -> Result<PathBuf, PError> {
        Ok(super::captures::fetch(self, capture, sd).await?)
    }

    async fn preflight(&self, needs: &Requirements) -> Result<(), PError> {
        preflight_files(needs)
    }

    /// `auto` is what the head node can run: the head is this machine (its
    /// command socket is a unix socket here), so it is probed as the local
    /// engine probes (SPEC: KVM when /dev/kvm works for ordinary guests,
    /// else TCG); the other nodes are taken to be alike, as minimega's own
    /// `vm launch kvm` takes them. `kvm` is minimega's KVM, not probed: its
    /// nodes run the VMs.
    fn resolve_accel(&self, asked: crate::lab::Accel) -> Result<crate::provider::Accel, PError> {
        Ok(accel_for(asked, || {
            crate::drivers::qemu::resolve_accel(crate::drivers::qemu::AccelChoice::Auto)
        }))
    }

    async fn refresh(&self, _e: &str, state: &State, _sd: &StateDir) -> Result<Observed, PError> {
        Ok(self.observe_sync(state)?)
    }

    async fn execute(&self, _sd: &StateDir, op: &Op) -> Result<OpOutcome, PError> {
        match op {
            Op::CreateNetwork {
                name, host_address, ..
            } => {
                self.ensure_alias(name)?;
                // host-address: a host tap on the head (super::taps), named
                // from the network's typed name.
                let bridge = &super::taps::host_tap_of(&self.experiment, name);
                match host_address {
                    Some(a) => {
                        let computed = super::taps::create(self, name, bridge, a)?;
                        return Ok(OpOutcome {
                            outcome: Outcome::Done,
                            computed,
                        });
                    }
                    None => super::taps::delete(self, bridge)?,
                }
            }
            // An alias goes with the namespace; its host tap, as the
            // record names it (checked), now. A record without one had none.
            Op::DeleteNetwork { host_tap, .. } => {
                if let Some(tap) = host_tap {
                    super::taps::delete(self, tap)?
                }
            }
            // A tap is made and removed with its VM.
            Op::CreateTap { .. } | Op::DeleteTap { .. } => {}
            // minimega's `capture pcap vm` (super::captures).
            Op::StartCapture { spec, .. } => super::captures::start(self, spec).await?,
            Op::StopCapture { name, .. } => super::captures::stop_named(self, name)?,
            Op::CreateDisk { spec, .. } => {
                super::disks::create(&self.client, &self.ns, &self.experiment, spec)
                    .await
                    .map_err(MinimegaError::from)?;
            }
            Op::RemoveDisk { file, .. } => {
                let mut c = self.client.lock().expect("the client lock");
                super::disks::remove(&mut c, &self.experiment, file)
                    .map_err(MinimegaError::from)?;
            }
            // A batch of one (VM deletes come in batches: `execute_batch`).
            Op::StopVm { name, .. } => return stop::stop_outcome(self.stop_one(name).await),
            // A batch of one (VM creates come in batches: `execute_batch`).
            Op::LaunchVm {
                experiment,
                accel,
                vm,
                disks,
                ..
            } => {
                if let Some(other) = &vm.colocate {
                    self.wait_for_partner(&vm.name, other).await?;
                }
                let one = batch::Launch {
                    experiment,
                    accel: *accel,
                    vm,
                    disks,
                };
                return self
                    .launch_many(&[&one])
                    .pop()
                    .unwrap_or_else(|| Ok(OpOutcome::done()));
            }
            Op::AddMirror {
                address,
                source,
                dest,
                direction,
                ..
            } => {
                if *direction != crate::lab::Direction::Both {
                    return Err(unsupported(&format!(
                        "mirror one direction ({}): `tap mirror` copies both",
                        direction.as_str()
                    )));
                }
                let (svm, snic) = self.nic_of(source.as_ref(), address)?;
                let (dvm, dnic) = self.nic_of(dest.as_ref(), address)?;
                self.run_ok(
                    Command::new("tap")
                        .word("mirror")
                        .name(&svm)
                        .num(snic as u64)
                        .name(&dvm)
                        .num(dnic as u64),
                )?;
            }
            Op::RemoveMirror { address, dest, .. } => {
                // Gone with its VM already, or never made: nothing to clear.
                if let Ok((dvm, dnic)) = self.nic_of(dest.as_ref(), address) {
                    let cmd = Command::new("clear")
                        .word("tap")
                        .word("mirror")
                        .name(&dvm)
                        .num(dnic as u64);
                    mirror_cleared(self.run_ok(cmd))?;
                }
            }
            Op::RunStep {
                vm,
                action,
                timeout,
                run_id,
                ..
            } => {
                let out = self.step(vm, action, *timeout, run_id).await?;
                return Ok(Outcome::Step(out).into());
            }
        }
        Ok(OpOutcome::done())
    }

    fn sweep(&self, _sd: &StateDir) -> Vec<PathBuf> {
        Vec::new()
    }

    /// VM creates ready together are one batch (see [`batch`]), and so are
    /// VM deletes ([`stop`]); network, tap, mirror and capture changes too
    /// (they are carried out one by one, but recorded together: every op
    /// here runs on the one connection in turn anyway).
    fn batches(&self, kind: Kind, phase: crate::provider::ops::Phase) -> bool {
        use crate::provider::ops::Phase;
        match phase {
            Phase::Create => matches!(kind, Kind::Vm | Kind::Network | Kind::Tap | Kind::Capture),
            Phase::Delete => matches!(
                kind,
                Kind::Vm | Kind::Network | Kind::Tap | Kind::Mirror | Kind::Capture
            ),
        }
    }

    async fn execute_batch(
        &self,
        sd: &StateDir,
        tasks: &[Vec<Op>],
    ) -> Vec<Vec<Result<OpOutcome, PError>>> {
        self.execute_batch_ops(sd, tasks).await
    }

    /// The VM's cc through minimega (super::guest): once its miniccc is
    /// listed by `cc clients` (within `w.hello`).
    async fn guest(&self, _e: &str, vm: &str, w: GuestWait) -> Result<Self::Guest, PError> {
        let uuid = self.vm_spec(vm)?.uuid.to_string();
        if !self.namespace_exists()?
            || !super::cc::wait_listed(&self.client, &self.ns, &uuid, w.hello).await?
        {
            return Err(MinimegaError::NotConnected {
                vm: vm.to_string(),
                ns: self.ns.to_string(),
                after: w.hello,
            }
            .into());
        }
        Ok(super::guest::MinimegaGuest {
            client: self.client.clone(),
            ns: self.ns.clone(),
            vm: vm.to_string(),
            uuid,
        })
    }

    fn serial_log(&self, _sd: &StateDir, _vm: &str) -> Option<PathBuf> {
        None
    }

    fn console_socket(&self, _e: &str, _vm: &str) -> Option<PathBuf> {
        None
    }

    fn disk_file(&self, _sd: &StateDir, file: &str) -> Result<PathBuf, PError> {
        Err(unsupported(&format!("keep disk {file} on this machine")))
    }
}

fn unsupported(what: &str) -> PError {
    PError::Unsupported {
        provider: "minimega",
        what: what.to_string(),
    }
}

/// The minimega engine's rules: the local engine's replacements, and as
/// computed attributes the node a VM landed on, its minimega tap names, and
/// the interface names megaplan leaves to minimega (`assign_names`).
pub const RULES: Rules = Rules {
    replaces: crate::graph::forces_replacement,
    computed: |kind, key| match kind {
        Kind::Vm => matches!(key, "node" | "minimega_taps"),
        Kind::Network => matches!(key, "bridge" | "node" | super::taps::HOST_TAP),
        Kind::Tap => key == "name",
        Kind::Mirror => matches!(key, "source_tap" | "dest_tap"),
        _ => false,
    },
};

/// What a minimega apply needs here: the boot files it names (megaplan
/// copies them into minimega's file path; docs/minimega.md).
fn preflight_files(needs: &Requirements) -> Result<(), PError> {
    let mut missing = Vec::new();
    for b in &needs.boot_files {
        if !b.path.exists() {
            missing.push(format!(
                "{} ({}: boot file)",
                crate::diag::escape(&b.path.display().to_string()),
                b.address
            ));
        }
    }
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PError::Preflight {
            missing,
            not_root: false,
            only_files: true,
        })
    }
}

/// The accelerator minimega's nodes get for the one asked: `tcg` is TCG,
/// `kvm` minimega's own KVM, `auto` what `probe` (the head node's) says.
pub fn accel_for(
    asked: crate::lab::Accel,
    probe: impl FnOnce() -> crate::provider::Accel,
) -> crate::provider::Accel {
    match asked {
        crate::lab::Accel::Tcg => crate::provider::Accel::Tcg,
        crate::lab::Accel::Kvm => crate::provider::Accel::Kvm,
        crate::lab::Accel::Auto => probe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_is_cleared_only_when_every_node_cleared_it_or_has_none() {
        let host = |errors: &[(&str, &str)]| -> Result<Vec<HostResponse>, MinimegaError> {
            Err(ClientError::Host {
                command: "clear tap mirror monitor 0".into(),
                errors: errors
                    .iter()
                    .map(|(h, e)| (h.to_string(), e.to_string()))
                    .collect(),
            }
            .into())
        };
        assert!(mirror_cleared(Ok(Vec::new())).is_ok());
        assert!(mirror_cleared(host(&[("mm2", "vm not found: monitor")])).is_ok());
        assert!(
            mirror_cleared(host(&[
                ("mm1", "not a valid mirror"),
                ("mm2", "vm not found: monitor")
            ]))
            .is_ok()
        );
        let e = mirror_cleared(host(&[
            (
                "mm1",
                "ovs-vsctl: unix:/run/db.sock: database connection failed",
            ),
            ("mm2", "vm not found: monitor"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("mm1") && e.contains("database connection failed"),
            "{e}"
        );
        assert!(!e.contains("mm2"), "{e}");
        assert!(mirror_cleared(Err(ClientError::Broken.into())).is_err());
    }

    #[test]
    fn responses_split_into_stdout_and_stderr() {
        let u = "11111111-1111-1111-1111-111111111111";
        let text = format!("7/{u}/stderr:\nwarn\n\n7/{u}/stdout:\nline 1\nline 2\n\n");
        assert_eq!(
            split_responses(&text, 7, u),
            ("line 1\nline 2\n".to_string(), "warn\n".to_string())
        );
        // Another command's header is text, not a section.
        let text = format!("7/{u}/stdout:\n8/{u}/stderr:\n\n");
        assert_eq!(
            split_responses(&text, 7, u),
            (format!("8/{u}/stderr:\n"), String::new())
        );
    }

    #[test]
    fn shell_commands_run_under_sh() {
        assert_eq!(
            argv(&CommandSpec::Shell("ip link set eth0 up".into())),
            ["sh", "-c", "ip link set eth0 up"]
        );
        assert_eq!(argv(&CommandSpec::Argv(vec!["a b".into()])), ["a b"]);
    }
}

/// `--provider` on plan/apply/destroy/show.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum ProviderArg {
    Local,
    Minimega,
}

/// `--provider local|minimega` and `--minimega-base DIR`: override the
/// file's `provider`, so one file runs on either engine.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProviderArgs {
    /// The engine: megaplan's own (`local`) or a minimega cluster; overrides the file's `provider`.
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    /// minimega's -base folder (its command socket is DIR/minimega); implies --provider minimega.
    #[arg(long, value_name = "DIR")]
    pub minimega_base: Option<PathBuf>,
}

static OVERRIDE: std::sync::OnceLock<ProviderArgs> = std::sync::OnceLock::new();

/// Remember this run's `--provider`/`--minimega-base` (once, at dispatch).
pub fn set_override(args: ProviderArgs) {
    let _ = OVERRIDE.set(args);
}

/// The lab's provider after this run's flags, and whether the minimega
/// provider can build it: every problem, or nothing.
pub fn apply_override(lab: &mut Lab) -> Result<(), Vec<String>> {
    use crate::lab::ProviderSpec;
    let args = OVERRIDE.get().cloned().unwrap_or_default();
    if args.provider.is_some() || args.minimega_base.is_some() {
        lab.provider_origin = super::recorded::Origin::Flags;
    }
    let minimega = match args.provider {
        Some(ProviderArg::Local) => {
            if args.minimega_base.is_some() {
                return Err(vec![
                    "--minimega-base is a setting of the minimega provider, not of --provider local"
                        .into(),
                ]);
            }
            false
        }
        Some(ProviderArg::Minimega) => true,
        None => args.minimega_base.is_some() || !lab.provider.is_local(),
    };
    if !minimega {
        lab.provider = ProviderSpec::Local;
        return Ok(());
    }
    let (file_base, namespace) = match &lab.provider {
        ProviderSpec::Minimega { base, namespace } => (Some(base.clone()), namespace.clone()),
        ProviderSpec::Local => (None, lab.name.clone()),
    };
    let base = args
        .minimega_base
        .or(file_base)
        .unwrap_or_else(|| PathBuf::from(super::placement::DEFAULT_BASE));
    let mut problems = Vec::new();
    if let Err(e) = Name::new(&namespace) {
        problems.push(format!(
            "the minimega namespace '{namespace}' is not valid: {e} (set `namespace` in `provider \"minimega\"`)"
        ));
    }
    if !base.is_absolute() {
        problems.push(format!(
            "minimega's base {} is not an absolute path",
            base.display()
        ));
    }
    problems.extend(unmapped(lab));
    lab.provider = ProviderSpec::Minimega { base, namespace };
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// What of the lab the minimega provider does not build (yet): refused
/// before planning, so nothing is half made.
pub fn unmapped(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    for d in &lab.disks {
        if d.from.is_some() && d.format == crate::lab::DiskFormat::Raw {
            out.push(format!(
                "{}: a raw disk from a base image (minimega's `disk snapshot` makes qcow2 only); leave out format=\"raw\"",
                d.address
            ));
        }
    }
    out.extend(super::captures::unmapped(lab));
    for m in &lab.mirrors {
        if m.direction != crate::lab::Direction::Both {
            out.push(format!(
                "{}: direction {} (minimega's `tap mirror` copies both directions)",
                m.address,
                m.direction.as_str()
            ));
        }
    }
    out
}

/// The minimega settings of a lab, when it is built on minimega.
pub fn settings(lab: &Lab) -> Option<Settings> {
    match &lab.provider {
        crate::lab::ProviderSpec::Minimega { base, namespace } => Some(Settings {
            base: base.clone(),
            namespace: namespace.clone(),
        }),
        crate::lab::ProviderSpec::Local => None,
    }
}

/// The engine an apply or destroy runs on.
pub enum Engine {
    Local(crate::host::LocalHost),
    Minimega(Box<MinimegaHost>),
}

impl Engine {
    pub fn connect(lab: Option<&Lab>, experiment: &str) -> Result<Engine, PError> {
        match lab.and_then(settings) {
            None => Ok(Engine::Local(crate::host::LocalHost::connect()?)),
            Some(s) => Ok(Engine::Minimega(Box::new(
                MinimegaHost::connect(&s, experiment, lab).map_err(PError::from)?,
            ))),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $h:ident => $e:expr) => {
        match $self {
            Engine::Local($h) => $e,
            Engine::Minimega($h) => $e,
        }
    };
}

impl Provider for Engine {
    type Guest = super::guest::EngineGuest;
    fn name(&self) -> &'static str {
        delegate!(self, h => h.name())
    }
    fn rules(&self) -> Rules {
        delegate!(self, h => h.rules())
    }
    fn assign_names(&self, lab: &mut Lab) -> Result<(), PError> {
        delegate!(self, h => h.assign_names(lab))
    }
    async fn preflight(&self, needs: &Requirements) -> Result<(), PError> {
        delegate!(self, h => h.preflight(needs).await)
    }
    fn resolve_accel(&self, asked: crate::lab::Accel) -> Result<crate::provider::Accel, PError> {
        delegate!(self, h => h.resolve_accel(asked))
    }
    /// The chosen engine's bounds, by the lab's provider (nothing connected).
    fn check_lab(lab: &Lab) -> Vec<crate::provider::LabProblem> {
        match settings(lab) {
            None => crate::host::LocalHost::check_lab(lab),
            Some(_) => MinimegaHost::check_lab(lab),
        }
    }
    async fn refresh(&self, e: &str, state: &State, sd: &StateDir) -> Result<Observed, PError> {
        delegate!(self, h => h.refresh(e, state, sd).await)
    }
    async fn execute(&self, sd: &StateDir, op: &Op) -> Result<OpOutcome, PError> {
        delegate!(self, h => h.execute(sd, op).await)
    }
    fn sweep(&self, sd: &StateDir) -> Vec<PathBuf> {
        delegate!(self, h => h.sweep(sd))
    }
    async fn guest(&self, e: &str, vm: &str, w: GuestWait) -> Result<Self::Guest, PError> {
        use super::guest::EngineGuest;
        match self {
            Engine::Local(h) => h.guest(e, vm, w).await.map(EngineGuest::Local),
            Engine::Minimega(h) => h.guest(e, vm, w).await.map(EngineGuest::Minimega),
        }
    }
    fn store_step_output(
        &self,
        sd: &StateDir,
        vm: &str,
        index: usize,
        out: &StepOutcome,
    ) -> Result<(), PError> {
        delegate!(self, h => h.store_step_output(sd, vm, index, out))
    }
    fn serial_log(&self, sd: &StateDir, vm: &str) -> Option<PathBuf> {
        delegate!(self, h => h.serial_log(sd, vm))
    }
    fn console_socket(&self, e: &str, vm: &str) -> Option<PathBuf> {
        delegate!(self, h => h.console_socket(e, vm))
    }
    fn disk_file(&self, sd: &StateDir, file: &str) -> Result<PathBuf, PError> {
        delegate!(self, h => h.disk_file(sd, file))
    }
    fn disk_present(&self, sd: &StateDir, file: &str) -> bool {
        delegate!(self, h => h.disk_present(sd, file))
    }
    fn step_output(
        &self,
        sd: &StateDir,
        vm: &str,
        index: usize,
    ) -> Option<crate::provider::StoredStep> {
        delegate!(self, h => h.step_output(sd, vm, index))
    }
    fn serial_tail(&self, sd: &StateDir, vm: &str, max: u64) -> String {
        delegate!(self, h => h.serial_tail(sd, vm, max))
    }
    async fn extract_disk(
        &self,
        sd: &StateDir,
        disk: &crate::lab::DiskSpec,
        guest_path: &str,
        to: &std::path::Path,
    ) -> Result<crate::drivers::qemu_img::ExtractReport, PError> {
        delegate!(self, h => h.extract_disk(sd, disk, guest_path, to).await)
    }
    fn after_destroy(
        &self,
        sd: &StateDir,
        experiment: &str,
        left: crate::provider::Left,
        all: bool,
    ) -> Result<Vec<String>, PError> {
        delegate!(self, h => h.after_destroy(sd, experiment, left, all))
    }
    async fn capture_file(
        &self,
        sd: &StateDir,
        capture: &crate::lab::CaptureSpec,
    ) -> Result<PathBuf, PError> {
        delegate!(self, h => h.capture_file(sd, capture).await)
    }
    fn batches(&self, kind: Kind, phase: crate::provider::ops::Phase) -> bool {
        delegate!(self, h => h.batches(kind, phase))
    }
    async fn execute_batch(
        &self,
        sd: &StateDir,
        tasks: &[Vec<Op>],
    ) -> Vec<Vec<Result<OpOutcome, PError>>> {
        delegate!(self, h => h.execute_batch(sd, tasks).await)
    }
}
