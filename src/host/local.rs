//! The local host: this machine, through netlink, tc, qemu-img, QEMU and QMP.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;

use crate::drivers::netlink::{LinkKind, Netlink};
use crate::drivers::process::process_alive;
use crate::drivers::qmp::Qmp;
use crate::drivers::tc::{Direction as TcDirection, Tc};
use crate::identity;
use crate::observed::{Observed, ObservedKind, ObservedLink, ObservedMirror, ObservedVm};
use crate::state::{Kind, State, StateDir};

use super::HostError;
use crate::provider::{Guest, GuestWait, Op, OpOutcome, Outcome, Provider, ProviderError};

pub struct LocalHost {
    pub nl: Netlink,
    pub tc: Tc,
    /// Each VM's `boot-timeout`, by (experiment, VM), recorded when this
    /// host launched it; a step of a VM it did not launch (already running)
    /// waits the default.
    boot_waits: std::sync::Mutex<HashMap<(String, String), Duration>>,
}

/// How many QEMUs refresh asks for their status at once.
const QMP_CONCURRENCY: usize = 32;

/// One VM's runtime folder: its QEMU's pid, whether it lives, and its run
/// state from QMP `query-status` (None when QMP does not answer in 2 s).
async fn observe_vm(rt: &Path) -> ObservedVm {
    let pid = crate::drivers::process::pid_in(rt);
    let alive = pid.is_some_and(process_alive);
    let mut status = None;
    if alive {
        let sock = rt.join(crate::drivers::runtime::QMP_SOCKET_NAME);
        if let Ok(Ok(q)) = tokio::time::timeout(
            Duration::from_secs(2),
            Qmp::connect_timeout(&sock, Duration::from_secs(2)),
        )
        .await
            && let Ok(s) = q.query_status().await
        {
            status = Some(s.status.clone());
        }
    }
    ObservedVm {
        name: rt
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        pid,
        alive,
        status,
        // megaplan's agent is reached per call, not listed: nothing to ask.
        cc: crate::observed::CcClient::NotAsked,
    }
}

impl LocalHost {
    /// Connect to the kernel (inside a tokio runtime).
    pub fn connect() -> Result<Self, HostError> {
        let nl = Netlink::connect()?;
        let tc = Tc::new(&nl);
        Ok(LocalHost {
            nl,
            tc,
            boot_waits: Default::default(),
        })
    }

    /// Refresh: links with our marker, their mirror filters, QEMU processes, disk files.
    pub async fn observe(
        &self,
        experiment: &str,
        state: &State,
        sd: &StateDir,
    ) -> Result<Observed, HostError> {
        let mut obs = Observed::default();
        let prefix = identity::marker_prefix(experiment);
        let links = self.nl.list_marked(&prefix).await?;
        for l in &links {
            let Some(address) = l
                .alias
                .as_deref()
                .and_then(|a| identity::address_of_marker(experiment, a))
            else {
                continue;
            };
            let kind = match l.kind {
                LinkKind::Bridge => ObservedKind::Bridge,
                LinkKind::Tap | LinkKind::Tun => ObservedKind::Tun,
                ref other => ObservedKind::Other(other.to_string()),
            };
            obs.links.insert(
                address.to_string(),
                ObservedLink {
                    name: l.name.clone(),
                    kind,
                    up: l.admin_up,
                    controller: l.controller_name.clone(),
                    mac: l.mac.map(|m| m.to_string()),
                },
            );
        }
        // Mirrors: every filter of ours on our taps (one qdisc dump, filter
        // dumps in parallel).
        let taps: Vec<(String, u32)> = links
            .iter()
            .filter(|l| matches!(l.kind, LinkKind::Tap | LinkKind::Tun))
            .map(|l| (l.name.clone(), l.index))
            .collect();
        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut seen: BTreeMap<(String, String), (bool, bool)> = BTreeMap::new();
        for (src, mirrors) in self.tc.list_mirrors_of(&taps, &names).await? {
            for m in mirrors {
                let Some(dst) = m.dst_name else {
                    continue;
                };
                let e = seen.entry((src.clone(), dst)).or_default();
                match m.direction {
                    TcDirection::Ingress => e.0 = true,
                    TcDirection::Egress => e.1 = true,
                    TcDirection::Both => *e = (true, true),
                }
            }
        }
        obs.mirrors = seen
            .into_iter()
            .map(
                |((source_tap, dest_tap), (ingress, egress))| ObservedMirror {
                    address: None,
                    source_tap,
                    dest_tap,
                    ingress,
                    egress,
                },
            )
            .collect();
        // VMs: runtime folders; their QEMUs asked for their status over QMP,
        // up to QMP_CONCURRENCY at once.
        let mut folders = Vec::new();
        if let Ok(dir) = std::fs::read_dir(super::runtime_root(experiment)) {
            for entry in dir.flatten() {
                // Only real folders with names megaplan could have made (not links).
                let name = entry.file_name().to_string_lossy().to_string();
                if crate::validate::name_problem(&name).is_some()
                    || !entry.file_type().is_ok_and(|t| t.is_dir())
                {
                    continue;
                }
                folders.push((name, entry.path()));
            }
        }
        let vms: Vec<(String, ObservedVm)> = futures::stream::iter(folders)
            .map(|(name, rt)| async move { (name, observe_vm(&rt).await) })
            .buffer_unordered(QMP_CONCURRENCY)
            .collect()
            .await;
        for (name, vm) in vms {
            obs.vms.insert(format!("vm.{name}"), vm);
        }
        // Disks recorded in the state.
        for (address, rec) in &state.resources {
            if rec.kind == Kind::Disk
                && let Some(file) = rec.attr_str("file")
                && sd
                    .disk_file(file)
                    .is_ok_and(|p| p.symlink_metadata().is_ok())
            {
                obs.disks.insert(address.clone());
            }
        }
        // Capture recorders: pidfiles whose process carries the capture's marker.
        obs.captures = crate::capture::observe(experiment);
        Ok(obs)
    }
}

use std::path::PathBuf;

use crate::agent::Command as AgentCommand;
use crate::drivers::netlink::MacAddr;
use crate::drivers::qemu::{self, DiskConfig, NicConfig, VmConfig};
use crate::drivers::qemu_img::{self, ImageFormat};
use crate::drivers::{process, runtime};
use crate::lab::{CcActionSpec, CommandSpec, DiskFormat, DiskSource, DiskSpec, VmSpec};

/// The outcome of one cc step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
    /// The step's timeout, when the guest killed it for running longer.
    pub timed_out: Option<Duration>,
    /// The agent had already run this step in this boot: this is that
    /// run's outcome, recovered (nothing ran again).
    pub replayed: bool,
}

impl StepOutcome {
    /// Why the step at `address` failed: `vm.A.cc[2] timed out after 30s`
    /// or `vm.A.cc[2] exited 3: <stderr>`.
    pub fn failure(&self, address: &str) -> String {
        match self.timed_out {
            Some(t) => format!("{address} {}", crate::cc::timed_out_after(t)),
            None => format!("{address} exited {}: {}", self.exit, self.stderr.trim()),
        }
    }
}

/// The driver's name for a lab disk format.
pub fn fmt_of(f: DiskFormat) -> ImageFormat {
    match f {
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
        DiskFormat::Raw => ImageFormat::Raw,
    }
}

fn tc_dir(d: &str) -> TcDirection {
    match d {
        "ingress" => TcDirection::Ingress,
        "egress" => TcDirection::Egress,
        _ => TcDirection::Both,
    }
}

impl super::Host for LocalHost {
    async fn observe(
        &self,
        experiment: &str,
        state: &State,
        sd: &StateDir,
    ) -> Result<Observed, HostError> {
        LocalHost::observe(self, experiment, state, sd).await
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        marker: &str,
        host_address: Option<&str>,
    ) -> Result<(), HostError> {
        self.nl.create_bridge(name, marker).await?;
        self.nl.set_up(name, marker, true).await?;
        let mut own = Vec::new();
        if let Some(cidr) = host_address {
            self.nl.set_address(name, marker, cidr).await?;
            own.push(cidr.parse()?);
        }
        // Networks stay apart through the host (docs/networking.md).
        self.nl.isolate(name, marker).await?;
        self.tc.isolate_bridge(name, &own).await?;
        Ok(())
    }

    async fn ensure_tap(
        &self,
        name: &str,
        guest_mac: &str,
        marker: &str,
        bridge: &str,
    ) -> Result<(), HostError> {
        let mac: MacAddr = guest_mac.parse()?;
        self.nl
            .create_tap(
                name,
                Some(MacAddr::tap_for_guest(mac)),
                marker,
                Some(bridge),
            )
            .await?;
        Ok(())
    }

    async fn delete_link(&self, name: &str, marker: &str) -> Result<(), HostError> {
        self.nl.delete_link(name, marker).await?;
        Ok(())
    }

    async fn add_mirror(&self, src: &str, dst: &str, direction: &str) -> Result<(), HostError> {
        self.tc.add_mirror(src, dst, tc_dir(direction)).await?;
        Ok(())
    }

    async fn remove_mirror(&self, src: &str, dst: &str) -> Result<(), HostError> {
        self.tc.remove_mirror(src, dst, TcDirection::Both).await?;
        Ok(())
    }

    async fn create_disk(&self, disk: &DiskSpec, path: &Path) -> Result<(), HostError> {
        if let Some(parent) = path.parent() {
            super::private_dir(parent)?;
        }
        // A keep disk's file is never replaced: if it is there with no record
        // (a lost state), it is the user's data.
        if disk.keep && path.symlink_metadata().is_ok() {
            return Err(HostError::KeepDiskExists {
                disk: disk.name.clone(),
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
        let fmt = fmt_of(disk.format);
        if disk.filesystem.is_some() {
            // Stage the injected files in a folder for mkfs.ext4 -d.
            let stage = path.with_extension("stage");
            let _ = std::fs::remove_dir_all(&stage);
            std::fs::create_dir_all(&stage)?;
            for (src, dst) in &disk.inject {
                let target = stage.join(dst.trim_start_matches('/'));
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p)?;
                }
                copy_tree(src, &target)?;
            }
            // The folders become the guest's: 0755 as under a usual umask,
            // whatever the caller's (077 would make the guest's root 0700).
            dirs_0755(&stage)?;
            let size = disk.size_bytes.unwrap_or(1 << 30);
            let r = qemu_img::make_ext4(path, fmt, size, Some(&stage)).await;
            let _ = std::fs::remove_dir_all(&stage);
            r?;
        } else if let Some(base) = &disk.from {
            let info = qemu_img::info(base).await?;
            let base_fmt = info.image_format().unwrap_or(ImageFormat::Raw);
            qemu_img::create(
                path,
                fmt,
                disk.size_bytes.unwrap_or(0),
                Some((base, base_fmt)),
            )
            .await?;
        } else {
            qemu_img::create(path, fmt, disk.size_bytes.unwrap_or(1 << 30), None).await?;
        }
        // qemu-img and mkfs.ext4 create with the caller's umask: the image is private.
        private_file(path)?;
        Ok(())
    }

    async fn remove_file(&self, path: &Path) -> Result<(), HostError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn launch_vm(
        &self,
        experiment: &str,
        accel: crate::lab::Accel,
        vm: &VmSpec,
        disks: &[DiskSpec],
        sd: &StateDir,
    ) -> Result<u32, HostError> {
        // `apply` resolves flag, MEGAPLAN_ACCEL and file up front (`Provider::resolve_accel`).
        let accel = match accel {
            crate::lab::Accel::Kvm => qemu::Accel::Kvm,
            crate::lab::Accel::Tcg => qemu::Accel::Tcg,
            crate::lab::Accel::Auto => qemu::detect_accel()?,
        };
        let rt = super::ensure_runtime_dir(experiment, &vm.name)?;
        let mut cfg = VmConfig::new(&vm.name, vm.uuid, accel, &rt);
        cfg.memory_mib = vm.memory_mib;
        cfg.vcpus = vm.vcpus;
        cfg.kernel = vm
            .kernel
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        cfg.initrd = vm
            .initrd
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        sd.private_subdir("logs")?;
        cfg.serial_log = Some(std::path::absolute(super::serial_log(sd, &vm.name))?);
        let mut append = vec![
            "console=ttyS0".to_string(),
            // The kernel's boot-time check that timer interrupts arrive
            // panics ("IO-APIC + timer doesn't work!") when the vCPU is
            // starved, e.g. 32 TCG guests booting on 2 cores; it exists for
            // broken physical chipsets, so VMs skip it (as cloud images do).
            "no_timer_check".to_string(),
            format!("megaplan.hostname={}", vm.name),
        ];
        let mut mounts = Vec::new();
        for (i, d) in vm.disks.iter().enumerate() {
            let (path, format) = match &d.source {
                DiskSource::Named(n) => {
                    let spec = disks
                        .iter()
                        .find(|d| &d.name == n)
                        .ok_or_else(|| HostError::UnknownDisk(n.clone()))?;
                    (
                        std::path::absolute(sd.disks().join(spec.file_name()))?,
                        fmt_of(spec.format),
                    )
                }
                DiskSource::Path(p) => {
                    let fmt = qemu_img::info(p)
                        .await?
                        .image_format()
                        .unwrap_or(ImageFormat::Raw);
                    (std::path::absolute(p)?, fmt)
                }
            };
            let (path, format) = if vm.snapshot {
                let overlay = std::path::absolute(overlay_path(sd, &vm.name, i))?;
                sd.private_subdir("overlays")?;
                let _ = std::fs::remove_file(&overlay);
                qemu_img::create_overlay(&path, &overlay).await?;
                private_file(&overlay)?;
                (overlay, ImageFormat::Qcow2)
            } else {
                (path, format)
            };
            cfg.disks.push(DiskConfig {
                path,
                format,
                readonly: false,
            });
            if let Some(m) = &d.mount {
                mounts.push(format!("vd{}:{m}", (b'a' + i as u8) as char));
            }
        }
        if !mounts.is_empty() {
            append.push(format!("megaplan.mounts={}", mounts.join(",")));
        }
        if let Some(a) = &vm.append {
            append.push(a.clone());
        }
        cfg.append = Some(append.join(" "));
        for n in &vm.nics {
            let tap = n.tap.as_deref().ok_or_else(|| HostError::Unnamed {
                what: n.address.clone(),
            })?;
            let mut nic = NicConfig::new(tap, &n.mac);
            nic.driver = n.driver.clone();
            cfg.nics.push(nic);
        }
        cfg.extra_args = vm.qemu_args.clone();
        let pid = qemu::launch(&cfg).await?;
        self.boot_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (experiment.to_string(), vm.name.clone()),
                Duration::from_millis(vm.boot_timeout_ms),
            );
        // QEMU's -daemonize sets umask 027 for itself: make its files 0600
        // (they sit in 0700 folders, so nobody else could reach them meanwhile).
        for p in [
            cfg.pidfile(),
            cfg.qmp_socket(),
            cfg.cc_socket(),
            cfg.console_socket(),
            cfg.serial_log_path(),
        ] {
            use std::os::unix::fs::PermissionsExt;
            if p.symlink_metadata()
                .is_ok_and(|m| !m.file_type().is_symlink())
            {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        // The serial log lives with the state; a link from the runtime folder
        // lets a step waiting for the agent watch it for a kernel panic.
        if let Some(log) = &cfg.serial_log {
            let link = cfg.runtime_dir.join(runtime::SERIAL_LOG_NAME);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(log, &link)?;
        }
        Ok(pid)
    }

    async fn stop_vm(
        &self,
        experiment: &str,
        vm: &str,
        pid: Option<u32>,
        graceful: bool,
        sd: &StateDir,
    ) -> Result<(), HostError> {
        let rt = super::runtime_dir(experiment, vm);
        // The pidfile in our runtime folder names the QEMU to stop; a pid
        // from the state only when that process runs with this runtime
        // folder (a state is untrusted: never signal someone else's process).
        let pid = process::pid_in(&rt).or(pid.filter(|&p| runs_with(p, &rt)));
        if let Some(pid) = pid
            && process_alive(pid)
        {
            if graceful {
                // Ask the agent to flush and unmount, then power down.
                if let Ok(client) = super::connect_agent(
                    experiment,
                    vm,
                    Duration::from_secs(1),
                    Duration::from_secs(2),
                )
                .await
                {
                    let _ = client.sync_unmount(&[], Duration::from_secs(10)).await;
                }
            }
            let grace = if graceful {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            };
            crate::drivers::qmp::stop_vm(&rt, pid, grace).await?;
        }
        // Never through a link: the experiment's runtime folder must be a real one.
        let root_is_real = std::fs::symlink_metadata(super::runtime_root(experiment))
            .is_ok_and(|m| m.file_type().is_dir());
        if root_is_real && crate::validate::name_problem(vm).is_none() {
            let _ = std::fs::remove_dir_all(&rt);
        }
        remove_overlays(sd, vm);
        Ok(())
    }

    async fn run_step(
        &self,
        experiment: &str,
        vm: &str,
        action: &CcActionSpec,
        timeout: Option<Duration>,
        run_id: &str,
    ) -> Result<StepOutcome, HostError> {
        let boot_wait = self
            .boot_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(experiment.to_string(), vm.to_string()))
            .copied()
            .unwrap_or(Duration::from_millis(crate::lab::DEFAULT_BOOT_TIMEOUT_MS));
        let client = super::connect_agent_watched(
            experiment,
            vm,
            Duration::from_secs(30).min(boot_wait),
            boot_wait,
        )
        .await?;
        let agent_err = |source| HostError::Agent {
            vm: vm.to_string(),
            source,
        };
        let cmd = |c: &CommandSpec| match c {
            CommandSpec::Shell(s) => AgentCommand::Shell(s.clone()),
            CommandSpec::Argv(a) => AgentCommand::Argv(a.clone()),
        };
        Ok(match action {
            CcActionSpec::Exec(c) | CcActionSpec::Background(c) => {
                let background = matches!(action, CcActionSpec::Background(_));
                // An agent of an older image does not announce `step_exec`:
                // plain exec, without the exactly-once guarantee.
                let r = if agent_has_step_exec(client.hello().as_ref()) {
                    client.step_exec(run_id, cmd(c), timeout, background).await
                } else {
                    old_agent_step(&client, cmd(c), timeout, background).await
                }
                .map_err(agent_err)?;
                if let Some(error) = r.error {
                    return Err(HostError::StepRefused {
                        vm: vm.to_string(),
                        error,
                    });
                }
                match (r.result, r.pid) {
                    (Some(r2), _) => {
                        let timed_out = r2.timed_out;
                        let (exit, stdout, stderr) = crate::cc::step_outcome(r2, timeout);
                        StepOutcome {
                            exit,
                            stdout,
                            stderr,
                            timed_out: timed_out.then_some(timeout).flatten(),
                            replayed: r.replayed,
                        }
                    }
                    (None, Some(pid)) => StepOutcome {
                        exit: 0,
                        stdout: format!("started pid {pid}\n"),
                        stderr: String::new(),
                        timed_out: None,
                        replayed: r.replayed,
                    },
                    (None, None) => {
                        return Err(HostError::NoStepOutcome { vm: vm.to_string() });
                    }
                }
            }
            CcActionSpec::Send { src, to } => {
                let t = client.send_file(src, to).await.map_err(agent_err)?;
                StepOutcome {
                    exit: 0,
                    stdout: crate::cc::sent(&t),
                    stderr: String::new(),
                    timed_out: None,
                    replayed: false,
                }
            }
            CcActionSpec::Recv { src, to, max_size } => {
                let t = client
                    .recv_file_limited(
                        src,
                        to,
                        timeout.unwrap_or(Duration::from_secs(60)),
                        *max_size,
                    )
                    .await
                    .map_err(agent_err)?;
                StepOutcome {
                    exit: 0,
                    stdout: crate::cc::received(src, &t),
                    stderr: String::new(),
                    timed_out: None,
                    replayed: false,
                }
            }
        })
    }
}

/// A step's outcome as [`StateDir::write_step_result`] wrote it.
fn read_step_output(sd: &StateDir, vm: &str, index: usize) -> Option<crate::provider::StoredStep> {
    if crate::validate::name_problem(vm).is_some() {
        return None;
    }
    let dir = sd.cc().join(vm).join(index.to_string());
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    Some(crate::provider::StoredStep {
        exit: read("exit").map(|e| e.trim().to_string()),
        stdout: read("stdout").unwrap_or_default(),
        stderr: read("stderr").unwrap_or_default(),
        // Absent from a record written before megaplan kept it.
        timed_out: read("timed_out_ms")
            .and_then(|t| t.trim().parse().ok())
            .map(Duration::from_millis),
    })
}

/// Does process `pid`'s command line name the runtime folder `rt`?
fn runs_with(pid: u32, rt: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    if !crate::state::valid_pid(u64::from(pid)) {
        return false;
    }
    let needle = rt.as_os_str().as_bytes();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| !needle.is_empty() && c.windows(needle.len()).any(|w| w == needle))
}

/// Does the agent that said this hello run `step_exec`? It says so in its
/// features; an agent of an older image says nothing.
fn agent_has_step_exec(hello: Option<&crate::agent::protocol::Hello>) -> bool {
    hello.is_some_and(|h| h.has(crate::agent::protocol::Feature::StepExec))
}

/// A step on an agent without `step_exec`: `exec` or `background`, its
/// answer in the shape of a `step_result` (never `replayed`).
async fn old_agent_step(
    client: &crate::agent::AgentClient,
    command: AgentCommand,
    timeout: Option<Duration>,
    background: bool,
) -> Result<crate::agent::protocol::StepResult, crate::agent::AgentError> {
    let (result, pid) = if background {
        (None, Some(client.background(command).await?))
    } else {
        (Some(client.exec(command, timeout).await?), None)
    };
    Ok(crate::agent::protocol::StepResult {
        id: 0,
        step: String::new(),
        replayed: false,
        result,
        pid,
        error: None,
    })
}

/// Separates the VM's name from the disk index in an overlay's file name: a
/// character no VM name may hold (`validate::name_problem`), so the overlays
/// of `A` and of `A.b` can never be taken for each other.
pub const OVERLAY_SEP: char = '+';

/// The overlay of a snapshot VM's i-th disk: `overlays/VM+I.qcow2`.
pub fn overlay_path(sd: &StateDir, vm: &str, i: usize) -> PathBuf {
    sd.root
        .join("overlays")
        .join(format!("{vm}{OVERLAY_SEP}{i}.qcow2"))
}

/// The disk index of an overlay file of `vm` named `file`, if it is exactly
/// one of that VM's overlays (`VM+DIGITS.qcow2`).
pub fn overlay_index(vm: &str, file: &std::ffi::OsStr) -> Option<usize> {
    let f = file.to_str()?;
    let idx = f
        .strip_prefix(vm)?
        .strip_prefix(OVERLAY_SEP)?
        .strip_suffix(".qcow2")?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    idx.parse().ok()
}

/// An overlay of `vm` as megaplan named them before [`OVERLAY_SEP`]:
/// exactly `VM.DIGITS.qcow2` (unambiguous too: another VM's overlays have
/// more than digits after `VM.`), so a running lab's overlays go after an
/// upgrade.
fn legacy_overlay(vm: &str, file: &std::ffi::OsStr) -> bool {
    file.to_str()
        .and_then(|f| {
            f.strip_prefix(vm)?
                .strip_prefix('.')?
                .strip_suffix(".qcow2")
        })
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// Snapshot overlays go with their VM: exactly its own, by index.
fn remove_overlays(sd: &StateDir, vm: &str) {
    if let Ok(dir) = std::fs::read_dir(sd.root.join("overlays")) {
        for e in dir.flatten() {
            if overlay_index(vm, &e.file_name()).is_some() || legacy_overlay(vm, &e.file_name()) {
                // remove_file unlinks a link itself; it never follows one.
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Make a file megaplan created 0600 (not through a link).
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if path.symlink_metadata()?.file_type().is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a link",
            path.display()
        )));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Set `dir` and every folder below it (not following links) to 0755.
pub(crate) fn dirs_0755(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            dirs_0755(&e.path())?;
        }
    }
    Ok(())
}

pub(crate) fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(src, dst).map(|_| ())
    }
}

/// Leftovers of a disk creation that was killed (SIGKILL runs no
/// destructor): `.NAME.FMT.ext4-PID.tmp` files (as big as the disk) and
/// `NAME.stage` folders of injected files, in the state's `disks/`. Only
/// names megaplan's own patterns match (NAME a valid name, FMT qcow2 or raw,
/// PID digits), never following a link: a link is removed itself, a folder
/// only if it is a real one. Called with the experiment's lock held, so no
/// other megaplan is creating a disk there. Returns what was removed.
pub fn sweep_disk_temporaries(sd: &StateDir) -> Vec<PathBuf> {
    let disks = sd.disks();
    let mut removed = Vec::new();
    // The folder itself must be a real folder, not a link to elsewhere.
    if !std::fs::symlink_metadata(&disks).is_ok_and(|m| m.is_dir()) {
        return removed;
    }
    let Ok(dir) = std::fs::read_dir(&disks) else {
        return removed;
    };
    for e in dir.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ours = if is_disk_temporary(&name) {
            !meta.is_dir()
        } else if let Some(disk) = name.strip_suffix(".stage") {
            crate::validate::name_problem(disk).is_none() && !meta.file_type().is_file()
        } else {
            false
        };
        if !ours {
            continue;
        }
        let r = if meta.is_dir() {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
        if r.is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// `.NAME.FMT.ext4-PID.tmp`, as `qemu_img::make_ext4` names its temporary.
fn is_disk_temporary(file: &str) -> bool {
    let Some(rest) = file.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((image, pid)) = rest.rsplit_once(".ext4-") else {
        return false;
    };
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let disk = image
        .strip_suffix(".qcow2")
        .or_else(|| image.strip_suffix(".raw"));
    disk.is_some_and(|d| crate::validate::name_problem(d).is_none())
}

/// A guest of this host, reached through its agent's cc socket.
pub struct LocalGuest {
    pub vm: String,
    pub client: crate::agent::AgentClient,
}

impl LocalGuest {
    fn err(&self, source: crate::agent::AgentError) -> ProviderError {
        ProviderError::Agent {
            vm: self.vm.clone(),
            source,
        }
    }
}

impl Guest for LocalGuest {
    async fn exec(
        &self,
        command: AgentCommand,
        timeout: Option<Duration>,
        max_output: Option<u64>,
    ) -> Result<crate::agent::ExecResult, ProviderError> {
        self.client
            .exec_capped(command, timeout, max_output)
            .await
            .map_err(|e| self.err(e))
    }

    async fn background(&self, command: AgentCommand) -> Result<u32, ProviderError> {
        self.client
            .background(command)
            .await
            .map_err(|e| self.err(e))
    }

    async fn send(&self, src: &Path, to: &str) -> Result<crate::agent::Transfer, ProviderError> {
        self.client
            .send_file(src, to)
            .await
            .map_err(|e| self.err(e))
    }

    async fn recv(
        &self,
        src: &str,
        to: &Path,
        idle_timeout: Duration,
        max_size: u64,
    ) -> Result<crate::agent::Transfer, ProviderError> {
        self.client
            .recv_file_limited(src, to, idle_timeout, max_size)
            .await
            .map_err(|e| self.err(e))
    }

    async fn info(&self, timeout: Duration) -> Result<crate::agent::Hello, ProviderError> {
        self.client.refresh(timeout).await.map_err(|e| self.err(e))
    }
}

/// What changing this host needs, every missing piece named: root, the tun
/// device, QEMU and qemu-img, and the files in `needs` (its VMs' kernels and
/// initrds, the files its steps send and its disks are made from).
pub fn preflight(needs: &crate::provider::Requirements) -> Result<(), ProviderError> {
    let mut missing: Vec<String> = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        missing.push("root (or CAP_NET_ADMIN): run megaplan apply/destroy as root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun: load the tun module (modprobe tun)".into());
    }
    let on_path = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    for (bin, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
    ] {
        if !on_path(bin) {
            missing.push(format!(
                "{bin}: apt-get install {pkg} (or bash scripts/setup-host.sh)"
            ));
        }
    }
    for b in &needs.boot_files {
        let p = &b.path;
        if !p.exists() {
            missing.push(format!(
                "{} (vm {}): build it with `megaplan image build --out {}`",
                p.display(),
                b.vm,
                p.parent().map_or(".".into(), |d| d.display().to_string())
            ));
        }
    }
    // Files the steps and disks read: missing ones would fail mid-apply.
    let mut files: Vec<String> = Vec::new();
    for (step, src) in &needs.sends {
        if !src.exists() {
            files.push(format!(
                "{} ({step}: the file to send does not exist)",
                crate::diag::escape(&src.display().to_string()),
            ));
        }
    }
    for d in &needs.disk_sources {
        if !d.path.exists() {
            files.push(format!(
                "{} ({}: the {} does not exist)",
                crate::diag::escape(&d.path.display().to_string()),
                d.address,
                d.what.as_str()
            ));
        }
    }
    files.dedup();
    let only_files = !files.is_empty() && missing.is_empty();
    missing.extend(files);
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProviderError::Preflight {
            missing,
            not_root: !root,
            only_files,
        })
    }
}

/// The accelerator the local engine gives for the one asked: `auto` is KVM
/// when /dev/kvm opens for ordinary guests (not a PVM-only KVM), TCG
/// otherwise; `kvm` must open.
pub fn resolve_accel(asked: crate::lab::Accel) -> Result<qemu::Accel, ProviderError> {
    resolve_accel_at(asked, Path::new(qemu::DEV_KVM))
}

/// [`resolve_accel`] with the KVM device at `dev_kvm`.
pub fn resolve_accel_at(
    asked: crate::lab::Accel,
    dev_kvm: &Path,
) -> Result<qemu::Accel, ProviderError> {
    use crate::lab::Accel;
    match asked {
        Accel::Tcg => Ok(qemu::Accel::Tcg),
        Accel::Auto => Ok(qemu::resolve_accel(qemu::AccelChoice::Auto)),
        Accel::Kvm if qemu::kvm_opens(dev_kvm) => Ok(qemu::Accel::Kvm),
        Accel::Kvm => Err(ProviderError::NoKvm),
    }
}

/// The local engine's bound on a lab: each VM's sockets (QMP, cc) live in
/// its runtime folder, and a unix socket path holds at most
/// [`runtime::MAX_SOCKET_PATH`] bytes. Reads the environment (the runtime
/// base), no file.
///
/// [`runtime::MAX_SOCKET_PATH`]: crate::drivers::runtime::MAX_SOCKET_PATH
pub fn check_lab(lab: &crate::lab::Lab) -> Vec<crate::provider::LabProblem> {
    use crate::drivers::runtime;
    let longest = [runtime::QMP_SOCKET_NAME, runtime::CC_SOCKET_NAME]
        .into_iter()
        .max_by_key(|n| n.len())
        .expect("two names");
    let base_len = super::runtime_dir("", "").as_os_str().len();
    let root = super::runtime_root(&lab.name);
    let mut out = Vec::new();
    for vm in &lab.vms {
        let sock = root.join(&vm.name).join(longest);
        let len = sock.as_os_str().len();
        if len > runtime::MAX_SOCKET_PATH {
            out.push(crate::provider::LabProblem {
                address: vm.address.clone(),
                code: crate::diag::Code::SocketPathTooLong,
                message: format!(
                    "VM '{}' would have a socket path of {len} bytes: a unix socket path holds at most {}",
                    vm.name,
                    runtime::MAX_SOCKET_PATH
                ),
                label: sock.display().to_string(),
                help: format!(
                    "the path is the runtime folder ({} bytes: MEGAPLAN_RUNTIME_DIR or /run/megaplan), /EXPERIMENT ({} bytes), /VM ({} bytes) and /{longest}: shorten the experiment or VM name by {} bytes, or set MEGAPLAN_RUNTIME_DIR to a shorter folder",
                    base_len.saturating_sub(1),
                    lab.name.len() + 1,
                    vm.name.len() + 1,
                    len - runtime::MAX_SOCKET_PATH
                ),
            });
        }
    }
    out
}

/// A disk file at a name from the file in the state's `disks/`, as a plain
/// file (a link there is not followed, and not ours).
pub fn disk_present(sd: &StateDir, file: &str) -> bool {
    sd.disk_file(file)
        .ok()
        .and_then(|p| p.symlink_metadata().ok())
        .is_some_and(|m| m.file_type().is_file())
}

impl Provider for LocalHost {
    type Guest = LocalGuest;

    fn name(&self) -> &'static str {
        "local"
    }

    /// Every bridge and tap, named from the experiment and its address.
    fn assign_names(&self, lab: &mut crate::lab::Lab) -> Result<(), ProviderError> {
        Ok(crate::provider::names::local(lab)?)
    }

    async fn preflight(&self, needs: &crate::provider::Requirements) -> Result<(), ProviderError> {
        preflight(needs)
    }

    fn resolve_accel(&self, asked: crate::lab::Accel) -> Result<qemu::Accel, ProviderError> {
        resolve_accel(asked)
    }

    fn check_lab(lab: &crate::lab::Lab) -> Vec<crate::provider::LabProblem> {
        check_lab(lab)
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
        use super::Host as _;
        use crate::provider::ops::named;
        match op {
            // This engine names its interfaces before apply: an op without
            // a name is refused (`ops::named`).
            Op::CreateNetwork {
                address,
                bridge,
                host_address,
                marker,
                ..
            } => {
                let bridge = named(address, "bridge", bridge)?;
                self.ensure_bridge(bridge, marker, host_address.as_deref())
                    .await?
            }
            Op::DeleteNetwork {
                address,
                bridge,
                marker,
                ..
            } => {
                self.delete_link(named(address, "bridge", bridge)?, marker)
                    .await?
            }
            Op::CreateTap {
                address,
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
                self.ensure_tap(name, mac, marker, bridge).await?
            }
            Op::DeleteTap {
                address,
                name,
                marker,
            } => {
                self.delete_link(named(address, "tap", name)?, marker)
                    .await?
            }
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
                return Ok(Outcome::Launched { pid }.into());
            }
            Op::AddMirror {
                address,
                source_tap,
                dest_tap,
                direction,
                ..
            } => {
                let (src, dst) = (
                    named(address, "source tap", source_tap)?,
                    named(address, "destination tap", dest_tap)?,
                );
                self.add_mirror(src, dst, direction.as_str()).await?
            }
            Op::RemoveMirror {
                address,
                source_tap,
                dest_tap,
                ..
            } => {
                let (src, dst) = (
                    named(address, "source tap", source_tap)?,
                    named(address, "destination tap", dest_tap)?,
                );
                self.remove_mirror(src, dst).await?
            }
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
                return Ok(Outcome::Step(out).into());
            }
            Op::StartCapture {
                experiment,
                spec,
                append,
                ..
            } => {
                // Blocks until the recorder has bound its sockets (or failed).
                let (sd, experiment, spec) = (sd.clone(), experiment.clone(), spec.clone());
                let append = *append;
                tokio::task::spawn_blocking(move || {
                    crate::capture::start(&sd, &experiment, &spec, append)
                })
                .await
                .map_err(|e| crate::capture::CaptureError::Start {
                    name: String::new(),
                    why: e.to_string(),
                })??;
            }
            Op::StopCapture {
                experiment, name, ..
            } => {
                let (experiment, name) = (experiment.clone(), name.clone());
                tokio::task::spawn_blocking(move || crate::capture::stop(&experiment, &name))
                    .await
                    .map_err(|e| crate::capture::CaptureError::Start {
                        name: String::new(),
                        why: e.to_string(),
                    })??;
            }
        }
        Ok(OpOutcome::done())
    }

    fn sweep(&self, sd: &StateDir) -> Vec<PathBuf> {
        sweep_disk_temporaries(sd)
    }

    async fn guest(
        &self,
        experiment: &str,
        vm: &str,
        wait: GuestWait,
    ) -> Result<LocalGuest, ProviderError> {
        let client = super::connect_agent(experiment, vm, wait.connect, wait.hello)
            .await
            .map_err(|source| ProviderError::Agent {
                vm: vm.to_string(),
                source,
            })?;
        Ok(LocalGuest {
            vm: vm.to_string(),
            client,
        })
    }

    fn serial_log(&self, sd: &StateDir, vm: &str) -> Option<PathBuf> {
        Some(super::serial_log(sd, vm))
    }

    fn console_socket(&self, experiment: &str, vm: &str) -> Option<PathBuf> {
        Some(runtime::console_socket(&super::runtime_dir(experiment, vm)))
    }

    fn disk_file(&self, sd: &StateDir, file: &str) -> Result<PathBuf, ProviderError> {
        Ok(sd.disk_file(file)?)
    }

    fn disk_present(&self, sd: &StateDir, file: &str) -> bool {
        disk_present(sd, file)
    }

    fn step_output(
        &self,
        sd: &StateDir,
        vm: &str,
        index: usize,
    ) -> Option<crate::provider::StoredStep> {
        read_step_output(sd, vm, index)
    }

    fn serial_tail(&self, sd: &StateDir, vm: &str, max: u64) -> String {
        tail(&super::serial_log(sd, vm), max)
    }

    async fn extract_disk(
        &self,
        sd: &StateDir,
        disk: &crate::lab::DiskSpec,
        guest_path: &str,
        to: &Path,
    ) -> Result<crate::drivers::qemu_img::ExtractReport, ProviderError> {
        let path = sd.disk_file(&disk.file_name())?;
        if !path.exists() {
            return Err(ProviderError::Missing {
                what: format!("disk '{}' image {}", disk.name, path.display()),
            });
        }
        std::fs::create_dir_all(to).map_err(HostError::Io)?;
        Ok(
            crate::drivers::qemu_img::extract(&path, fmt_of(disk.format), guest_path, to)
                .await
                .map_err(HostError::QemuImg)?,
        )
    }

    /// The recorder (crate::capture) writes the file in place.
    async fn capture_file(
        &self,
        sd: &StateDir,
        capture: &crate::lab::CaptureSpec,
    ) -> Result<PathBuf, ProviderError> {
        Ok(crate::capture::file_path(sd, &capture.name)?)
    }

    fn after_destroy(
        &self,
        sd: &StateDir,
        experiment: &str,
        _nothing_left: bool,
        all: bool,
    ) -> Result<(), ProviderError> {
        // Only if empty: a VM of the experiment that is still recorded
        // (a failed stop) keeps its folder, and that is not an error.
        let _ = std::fs::remove_dir(super::runtime_root(experiment));
        crate::provider::remove_captures(sd, all)
    }
}

/// The last `max` bytes of a file (never following a link), lossy UTF-8;
/// empty when it cannot be read.
pub fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return String::new();
    };
    let Ok(meta) = f.metadata() else {
        return String::new();
    };
    if !meta.is_file() {
        return String::new();
    }
    let start = meta.len().saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;

    fn disk(keep: bool) -> DiskSpec {
        DiskSpec {
            name: "data".into(),
            address: "disk.data".into(),
            size_bytes: Some(1 << 20),
            format: DiskFormat::Raw,
            filesystem: None,
            keep,
            from: None,
            inject: Vec::new(),
        }
    }

    /// A keep disk's file with no record (a lost state) is the user's data:
    /// creating the disk refuses instead of replacing it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_keep_disk_file_is_never_overwritten() {
        let host = match LocalHost::connect() {
            Ok(h) => h,
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "no netlink socket: {e}");
                eprintln!("SKIP a_keep_disk_file_is_never_overwritten: no netlink socket: {e}");
                return;
            }
        };
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("disks/data.raw");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "the user's data").unwrap();
        let err = host.create_disk(&disk(true), &path).await.unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the user's data");
        // Not keep: replaced by a fresh image of the size asked for, private.
        host.create_disk(&disk(false), &path).await.unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 1 << 20);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn injected_folders_are_0755_under_a_strict_umask() {
        crate::safefs::run_with_umask(
            "host::local::tests::injected_folders_are_0755_with_umask_077",
            0o077,
        );
    }

    /// With a caller's umask 077, the folders staged for `mkfs.ext4 -d`
    /// (which become the guest's) must still not be 0700.
    #[tokio::test(flavor = "current_thread")]
    #[ignore = "run by injected_folders_are_0755_under_a_strict_umask with umask 077"]
    async fn injected_folders_are_0755_with_umask_077() {
        let host = LocalHost::connect().unwrap();
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("hello"), "hi").unwrap();
        let mut d = disk(false);
        d.filesystem = Some("ext4".into());
        d.size_bytes = Some(8 << 20);
        d.inject = vec![(t.path().join("hello"), "/sub/dir/hello".into())];
        let path = t.path().join("disks/data.raw");
        host.create_disk(&d, &path).await.unwrap();
        for dir in ["/", "/sub", "/sub/dir"] {
            let out = std::process::Command::new("debugfs")
                .args(["-R", &format!("stat {dir}")])
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("Mode:  0755"), "{dir}: {text}");
        }
    }

    #[test]
    fn overlays_belong_to_exactly_one_vm() {
        let sd = StateDir {
            root: "/s".into(),
            experiment: "x".into(),
        };
        let a = overlay_path(&sd, "A", 0);
        let ab = overlay_path(&sd, "A.b", 0);
        assert_ne!(a, ab);
        let name = |p: &Path| p.file_name().unwrap().to_owned();
        assert_eq!(overlay_index("A", &name(&a)), Some(0));
        assert_eq!(overlay_index("A", &name(&ab)), None);
        assert_eq!(overlay_index("A.b", &name(&ab)), Some(0));
        assert_eq!(overlay_index("A.b", &name(&a)), None);
        assert_eq!(overlay_index("A", "A+12.qcow2".as_ref()), Some(12));
        for other in [
            "A+.qcow2",
            "A+1x.qcow2",
            "A+1.qcow2.tmp",
            "A.0.qcow2",
            "B+0.qcow2",
        ] {
            assert_eq!(overlay_index("A", other.as_ref()), None, "{other}");
        }
    }

    /// Replacing VM `A` must not remove the overlays of a running `A.b`
    /// (the old code removed every file starting with "A.").
    #[test]
    fn stopping_a_vm_removes_only_its_own_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: dir.path().into(),
            experiment: "x".into(),
        };
        std::fs::create_dir_all(sd.root.join("overlays")).unwrap();
        let mine = [
            overlay_path(&sd, "A", 0),
            overlay_path(&sd, "A", 1),
            sd.root.join("overlays/A.2.qcow2"),
        ];
        let theirs = [
            overlay_path(&sd, "A.b", 0),
            overlay_path(&sd, "AB", 0),
            sd.root.join("overlays/A.b.0.qcow2"),
            sd.root.join("overlays/A.1.0.qcow2"),
            sd.root.join("overlays/A..qcow2"),
        ];
        for p in mine.iter().chain(&theirs) {
            std::fs::write(p, b"x").unwrap();
        }
        remove_overlays(&sd, "A");
        for p in &mine {
            assert!(!p.exists(), "{} should be gone", p.display());
        }
        for p in &theirs {
            assert!(p.exists(), "{} should be kept", p.display());
        }
    }

    #[test]
    fn killed_disk_creations_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: dir.path().into(),
            experiment: "x".into(),
        };
        let d = sd.disks();
        std::fs::create_dir_all(d.join("web.stage/etc")).unwrap();
        std::fs::write(d.join("web.stage/etc/hosts"), b"x").unwrap();
        let leftovers = [".web.qcow2.ext4-4242.tmp", ".a.b.raw.ext4-1.tmp"];
        for f in leftovers {
            std::fs::write(d.join(f), b"big").unwrap();
        }
        let kept = [
            "web.qcow2",
            ".web.qcow2.ext4-.tmp",
            ".web.qcow2.ext4-12x.tmp",
            ".web.vmdk.ext4-1.tmp",
            "..qcow2.ext4-1.tmp",
            ".web.qcow2.extract-1.tmp",
            "notes.txt",
        ];
        for f in kept {
            std::fs::write(d.join(f), b"keep").unwrap();
        }
        // A link with our pattern pointing outside: the link goes, its target stays.
        std::fs::write(outside.path().join("precious"), b"p").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("precious"),
            d.join(".evil.qcow2.ext4-7.tmp"),
        )
        .unwrap();
        std::fs::create_dir(outside.path().join("tree")).unwrap();
        std::fs::write(outside.path().join("tree/f"), b"p").unwrap();
        std::os::unix::fs::symlink(outside.path().join("tree"), d.join("evil.stage")).unwrap();
        // A regular file named like a stage folder is not one of ours.
        std::fs::write(d.join("file.stage"), b"keep").unwrap();

        let mut removed: Vec<String> = sweep_disk_temporaries(&sd)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                ".a.b.raw.ext4-1.tmp",
                ".evil.qcow2.ext4-7.tmp",
                ".web.qcow2.ext4-4242.tmp",
                "evil.stage",
                "web.stage"
            ]
        );
        for f in kept.iter().chain(&["file.stage"]) {
            assert!(d.join(f).exists(), "{f} kept");
        }
        assert!(outside.path().join("precious").exists());
        assert!(outside.path().join("tree/f").exists());
    }

    #[test]
    fn a_disks_folder_that_is_a_link_is_not_swept() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join(".web.qcow2.ext4-1.tmp"), b"p").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("disks")).unwrap();
        let sd = StateDir {
            root: dir.path().into(),
            experiment: "x".into(),
        };
        assert!(sweep_disk_temporaries(&sd).is_empty());
        assert!(outside.path().join(".web.qcow2.ext4-1.tmp").exists());
    }

    /// A timed-out step's record says so as data (its stderr is not read
    /// for it); a rerun that did not time out clears it; a record from
    /// before reads with no timeout.
    #[test]
    fn a_stored_step_keeps_its_timeout_and_a_rerun_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        let t = Some(Duration::from_secs(2));
        sd.write_step_result("A", 0, 124, "", "", t).unwrap();
        assert_eq!(read_step_output(&sd, "A", 0).unwrap().timed_out, t);
        let note = "megaplan: (timed out after 2s)\n";
        sd.write_step_result("A", 0, 124, "", note, None).unwrap();
        assert_eq!(read_step_output(&sd, "A", 0).unwrap().timed_out, None);
        std::fs::remove_file(sd.cc().join("A/0/timed_out_ms")).unwrap();
        let old = read_step_output(&sd, "A", 0).unwrap();
        assert_eq!((old.exit.as_deref(), old.timed_out), (Some("124"), None));
    }

    /// An old agent's hello has no features: it gets plain exec. This
    /// agent announces `step_exec`; a feature from a newer agent is read,
    /// not refused.
    #[test]
    fn an_old_agent_is_recognised_by_its_hello() {
        use crate::agent::protocol::{Feature, Hello};
        let old: Hello = serde_json::from_str(r#"{"version":1,"hostname":"g"}"#).unwrap();
        assert!(!agent_has_step_exec(Some(&old)));
        assert!(!agent_has_step_exec(None));
        let now = crate::agent::guest::gather_hello(&Default::default());
        assert!(agent_has_step_exec(Some(&now)), "{now:?}");
        let newer: Hello =
            serde_json::from_str(r#"{"version":1,"features":["step_exec","teleport"]}"#).unwrap();
        assert_eq!(newer.features, [Feature::StepExec, Feature::Unknown]);
        assert!(agent_has_step_exec(Some(&newer)));
    }

    /// What `adopt` asks of a lost state's disks: a plain file at the
    /// name, never a link there (not followed), nothing for a bad name.
    #[test]
    fn a_disk_is_present_only_as_a_plain_file() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: t.path().join("s"),
            experiment: "x".into(),
        };
        assert!(!disk_present(&sd, "keep.raw"), "no state folder yet");
        std::fs::create_dir_all(sd.disks()).unwrap();
        std::fs::write(sd.disks().join("keep.raw"), "user data").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", sd.disks().join("link.raw")).unwrap();
        std::fs::create_dir(sd.disks().join("dir.raw")).unwrap();
        assert!(disk_present(&sd, "keep.raw"));
        assert!(!disk_present(&sd, "link.raw"));
        assert!(!disk_present(&sd, "dir.raw"));
        assert!(!disk_present(&sd, "gone.raw"));
        assert!(!disk_present(&sd, "../s/disks/keep.raw"));
    }
}
