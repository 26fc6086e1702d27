//! Test fixture: a real two-node minimega mesh on this machine.
//!
//! Each node (`mm1`, `mm2`) runs in its own network namespace and UTS
//! namespace (its own hostname, which is its mesh name), with
//! - a veth to the other node (10.213.0.1/24, 10.213.0.2/24, inside the
//!   namespaces only), carrying the mesh (port 9000) and a kernel VXLAN,
//! - a private Open vSwitch (ovsdb-server + ovs-vswitchd, every file under the
//!   node's temp folder, userspace datapath) with `mega_bridge` pre-created as
//!   `datapath_type=netdev` (there is no OVS kernel module here),
//! - `minimega -base DIR -nostdin -port 9000 -degree 0` with its own context,
//!   file path and log file under the node's folder,
//! - the VXLAN trunked into `mega_bridge` (`bridge trunk`), so a VLAN spans
//!   both nodes (a point-to-point VXLAN without learning: its one forwarding
//!   entry sends everything to the peer).
//!
//! mm1 dials mm2 (`mesh dial`) and both must report `mesh status` size 2.
//! Dropping the mesh quits minimega (`quit`, then a kill), stops both OVS
//! daemons through their control sockets (then by pidfile), deletes the
//! namespaces and folders, and asserts that nothing is left: no process in
//! either namespace, no namespace.
//!
//! Prerequisites: root, QEMU, Open vSwitch, and minimega built by
//! `scripts/minimega.sh` (bin folder in `MEGAPLAN_MINIMEGA_BIN`, else the
//! script's default cache). Without them the tests skip with the reason, and
//! fail instead when `CI` or `MEGAPLAN_E2E` is set.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use megaplan::minimega::client::{Client, Command as Mm, HostResponse, Name, VmInfo, vm_infos};

use super::netns::NetnsGuard;

/// The default bin folder of scripts/minimega.sh.
pub const DEFAULT_BIN: &str = "/var/cache/megaplan/minimega-3.0.1/bin";
/// minimega's mesh port (inside the namespaces only).
pub const PORT: u16 = 9000;
/// The VXLAN id of the trunk between the nodes.
pub const VXLAN_ID: u32 = 4213;
/// The trunk interface's name on each node.
pub const TRUNK: &str = "mmvx";
const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const NAMES: [&str; 2] = ["mm1", "mm2"];
const ADDRS: [&str; 2] = ["10.213.0.1", "10.213.0.2"];
const VETHS: [&str; 2] = ["mmv1", "mmv2"];
/// How long any one step of the setup or teardown may take.
const STEP: Duration = Duration::from_secs(30);

/// Skip (return false) with the reason, or panic when CI or MEGAPLAN_E2E is
/// set: there a missing prerequisite is a failure.
pub fn skip(test: &str, why: &str) -> bool {
    for var in ["CI", "MEGAPLAN_E2E"] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            panic!("{test}: {why} ({var} is set, so this is a failure, not a skip)");
        }
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// The minimega bin folder when every prerequisite is there; None (after
/// printing why) when the test should skip.
pub fn prerequisites(test: &str) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root (network namespaces, Open vSwitch, QEMU)");
        return None;
    }
    let bin = std::env::var_os("MEGAPLAN_MINIMEGA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN));
    if !bin.join("minimega").is_file() {
        skip(
            test,
            &format!(
                "no minimega in {} (run scripts/minimega.sh and set MEGAPLAN_MINIMEGA_BIN)",
                bin.display()
            ),
        );
        return None;
    }
    for tool in [
        "ovsdb-tool",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ovs-appctl",
    ] {
        if which(tool).is_none() {
            skip(
                test,
                &format!("{tool} missing (scripts/minimega.sh installs openvswitch-switch)"),
            );
            return None;
        }
    }
    if !Path::new(OVS_SCHEMA).is_file() {
        skip(test, &format!("{OVS_SCHEMA} missing (openvswitch-switch)"));
        return None;
    }
    if which("qemu-system-x86_64").is_none() {
        skip(
            test,
            "qemu-system-x86_64 missing (bash scripts/setup-host.sh)",
        );
        return None;
    }
    Some(bin)
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

fn path_env() -> String {
    format!(
        "{}:/usr/local/sbin:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Run a program to completion; panic with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait for `cond` (checked every 20 ms) at most `limit`; false on timeout.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// One node of the mesh.
pub struct Node {
    pub name: &'static str,
    pub addr: &'static str,
    pub veth: &'static str,
    pub ns: NetnsGuard,
    /// The node's folder: base/, ovs/, files/, logs.
    pub dir: PathBuf,
    pub base: PathBuf,
    pub ovs: PathBuf,
    minimega: Option<Child>,
}

impl Node {
    /// `ip netns exec NS ARGS...` with this node's OVS environment.
    pub fn exec(&self, args: &[&str]) -> String {
        run(&mut self.exec_cmd(args))
    }

    /// Like [`Node::exec`], but returns the exit status and output.
    pub fn try_exec(&self, args: &[&str]) -> std::process::Output {
        self.exec_cmd(args).output().expect("run ip netns exec")
    }

    fn exec_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .args(args)
            .env("PATH", path_env())
            .env("OVS_RUNDIR", &self.ovs)
            .env("OVS_DBDIR", &self.ovs)
            .env("OVS_LOGDIR", &self.ovs)
            .stdin(Stdio::null());
        cmd
    }

    /// A new connection to this node's minimega.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.base).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        c.set_timeout(Duration::from_secs(120));
        c
    }

    /// The ports on this node's `mega_bridge`.
    pub fn bridge_ports(&self) -> Vec<String> {
        self.exec(&["ovs-vsctl", "--timeout=30", "list-ports", "mega_bridge"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Pids of the processes in this node's network namespace.
    pub fn processes(&self) -> Vec<(i32, String)> {
        let Ok(meta) = std::fs::metadata(self.ns.path()) else {
            return Vec::new();
        };
        let want = format!("net:[{}]", meta.ino());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(link) = std::fs::read_link(e.path().join("ns/net")) else {
                continue;
            };
            if link.to_str() == Some(want.as_str()) {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                out.push((pid, comm.trim().to_owned()));
            }
        }
        out
    }

    /// The QEMU processes in this node's namespace.
    pub fn qemus(&self) -> Vec<i32> {
        self.processes()
            .into_iter()
            .filter(|(_, c)| c.starts_with("qemu"))
            .map(|(p, _)| p)
            .collect()
    }

    fn start_ovs(&self) {
        let o = |f: &str| self.ovs.join(f).to_str().unwrap().to_owned();
        self.exec(&["ovsdb-tool", "create", &o("conf.db"), OVS_SCHEMA]);
        self.exec(&[
            "ovsdb-server",
            &o("conf.db"),
            &format!("--remote=punix:{}", o("db.sock")),
            &format!("--pidfile={}", o("ovsdb-server.pid")),
            &format!("--unixctl={}", o("ovsdb-server.ctl")),
            &format!("--log-file={}", o("ovsdb-server.log")),
            "--no-chdir",
            "--detach",
        ]);
        self.exec(&["ovs-vsctl", "--no-wait", "init"]);
        self.exec(&[
            "ovs-vswitchd",
            &format!("unix:{}", o("db.sock")),
            &format!("--pidfile={}", o("ovs-vswitchd.pid")),
            &format!("--unixctl={}", o("ovs-vswitchd.ctl")),
            &format!("--log-file={}", o("ovs-vswitchd.log")),
            "--no-chdir",
            "--detach",
        ]);
        // Without --no-wait this returns once ovs-vswitchd made the bridge.
        self.exec(&[
            "ovs-vsctl",
            "--timeout=30",
            "add-br",
            "mega_bridge",
            "--",
            "set",
            "bridge",
            "mega_bridge",
            "datapath_type=netdev",
        ]);
    }

    /// Start minimega; with `files_as`, it is told that path as its
    /// `-filepath` and sees its own `files/` there (a bind mount in a mount
    /// namespace of its own), as every node of a real cluster has the same
    /// file path on its own disk.
    fn start_minimega(&mut self, bin: &Path, context: &str, files_as: Option<&Path>) {
        let own = self.dir.join("files");
        let files = files_as.map_or_else(|| own.clone(), Path::to_path_buf);
        let bind = files_as.map(|to| {
            use std::os::unix::ffi::OsStrExt;
            let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            (c(&own), c(to))
        });
        let out = File::create(self.dir.join("minimega.out")).unwrap();
        let err = out.try_clone().unwrap();
        let name: &'static str = self.name;
        let mut cmd = self.exec_cmd(&[]);
        cmd.arg(bin.join("minimega"))
            .arg("-base")
            .arg(&self.base)
            .args(["-nostdin", "-port", &PORT.to_string(), "-degree", "0"])
            .args(["-context", context])
            .arg("-filepath")
            .arg(&files)
            .arg("-logfile")
            .arg(self.dir.join("minimega.log"))
            .args(["-level", "info", "-verbose=false"])
            .stdout(out)
            .stderr(err);
        // SAFETY: unshare, sethostname and mount are async-signal-safe system
        // calls on memory owned by this closure ('static str, C strings made
        // before the fork); nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWUTS) != 0
                    || libc::sethostname(name.as_ptr().cast(), name.len()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The bind mount stays in this process's own mount namespace
                // (private, so nothing propagates back), gone with its last
                // process (minimega and the QEMUs it starts).
                if let Some((from, to)) = &bind
                    && (libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            from.as_ptr(),
                            to.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start minimega");
        self.minimega = Some(child);
        let socket = self.base.join("minimega");
        let mut exited = None;
        let up = wait_for(STEP, || {
            if let Some(st) = self.minimega.as_mut().unwrap().try_wait().unwrap() {
                exited = Some(st);
                return true;
            }
            socket.exists()
        });
        assert!(
            up && exited.is_none(),
            "minimega on {} did not come up ({exited:?}): {}",
            self.name,
            self.log()
        );
    }

    /// Kill this node's minimega (SIGKILL, as a crash or a lost node), and
    /// wait until it is gone; its QEMUs run on, orphaned: the caller ends
    /// them with [`Node::kill_orphans`] once it has looked.
    #[allow(dead_code)]
    pub fn kill_minimega(&mut self) {
        if let Some(mut child) = self.minimega.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill what a killed minimega left running in this node (its QEMUs
    /// and their helpers); what was killed.
    #[allow(dead_code)]
    pub fn kill_orphans(&self) -> Vec<String> {
        let mut killed = Vec::new();
        for (pid, comm) in self.processes() {
            if comm.starts_with("ovs") {
                continue;
            }
            // SAFETY: plain kill of a process in our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_for(STEP, || !alive(pid));
            killed.push(comm);
        }
        killed
    }

    /// minimega's output and log, for failure messages.
    pub fn log(&self) -> String {
        let a = std::fs::read_to_string(self.dir.join("minimega.out")).unwrap_or_default();
        let b = std::fs::read_to_string(self.dir.join("minimega.log")).unwrap_or_default();
        format!("{a}{b}")
    }

    /// Stop minimega, then OVS; returns what had to be killed or was left.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.minimega.take() {
            if let Ok(mut c) = Client::connect(&self.base) {
                c.set_timeout(Duration::from_secs(10));
                // `quit` answers nothing: minimega exits and closes the socket.
                let _ = c.run(&Mm::new("quit"));
            }
            let mut status = None;
            wait_for(STEP, || {
                status = child.try_wait().ok().flatten();
                status.is_some()
            });
            if status.is_none() {
                problems.push(format!("{}: minimega ignored `quit`; killed", self.name));
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for daemon in ["ovs-vswitchd", "ovsdb-server"] {
            let pidfile = self.ovs.join(format!("{daemon}.pid"));
            let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|p| *p > 1)
            else {
                continue;
            };
            let ctl = self.ovs.join(format!("{daemon}.ctl"));
            let _ = Command::new("ovs-appctl")
                .env("PATH", path_env())
                .arg("-t")
                .arg(&ctl)
                .args(["--timeout=10", "exit"])
                .output();
            if !wait_for(STEP, || !alive(pid)) {
                problems.push(format!(
                    "{}: {daemon} ({pid}) ignored `exit`; killed",
                    self.name
                ));
                // SAFETY: plain kill of a pid read from our own pidfile.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                wait_for(STEP, || !alive(pid));
            }
        }
        for (pid, comm) in self.processes() {
            problems.push(format!(
                "{}: {comm} ({pid}) was left in the namespace; killed",
                self.name
            ));
            // SAFETY: plain kill of a process in our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_for(STEP, || !alive(pid));
        }
        problems
    }
}

/// The two-node mesh; mm1 (`nodes[0]`) is the head node.
pub struct Mesh {
    pub nodes: Vec<Node>,
    pub bin: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Node {
    /// Node `i` (`NAMES[i]`) in its own namespace, its folders made under
    /// `root`; nothing started yet.
    fn new(root: &Path, i: usize) -> Node {
        let ndir = root.join(NAMES[i]);
        let node = Node {
            name: NAMES[i],
            addr: ADDRS[i],
            veth: VETHS[i],
            ns: NetnsGuard::new(),
            base: ndir.join("base"),
            ovs: ndir.join("ovs"),
            dir: ndir,
            minimega: None,
        };
        for d in [&node.dir, &node.base, &node.ovs, &node.dir.join("files")] {
            std::fs::create_dir_all(d).unwrap();
        }
        node
    }
}

impl Mesh {
    /// Build and start the mesh; None (after printing why) when the test
    /// should skip.
    pub fn start(test: &str) -> Option<Mesh> {
        Mesh::start_with(test, false)
    }

    /// The mesh with one file path on both nodes (mm1's `files/` path; mm2
    /// sees its own `files/` there): what minimega's iomeshage needs to
    /// fetch a file named relative to it onto the node that lacks it.
    pub fn start_same_filepath(test: &str) -> Option<Mesh> {
        Mesh::start_with(test, true)
    }

    fn start_with(test: &str, same_filepath: bool) -> Option<Mesh> {
        let bin = prerequisites(test)?;
        let dir = tempfile::Builder::new()
            .prefix("megaplan-mm-")
            .tempdir()
            .unwrap();
        let context = format!("megaplan-test-{}", std::process::id());
        let mut mesh = Mesh {
            nodes: Vec::new(),
            bin,
            dir: Some(dir),
        };
        for i in 0..2 {
            let node = Node::new(mesh.dir.as_ref().unwrap().path(), i);
            mesh.nodes.push(node);
        }
        // From here on, Drop cleans up whatever a failing step left.
        let (a, b) = (&mesh.nodes[0], &mesh.nodes[1]);
        run(Command::new("ip").args([
            "-n", &a.ns.name, "link", "add", a.veth, "type", "veth", "peer", "name", b.veth,
            "netns", &b.ns.name,
        ]));
        for n in &mesh.nodes {
            let peer = if n.name == NAMES[0] {
                ADDRS[1]
            } else {
                ADDRS[0]
            };
            let ip = |args: &[&str]| run(Command::new("ip").args(["-n", &n.ns.name]).args(args));
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", &format!("{}/24", n.addr), "dev", n.veth]);
            ip(&["link", "set", n.veth, "up"]);
            ip(&[
                "link",
                "add",
                TRUNK,
                "type",
                "vxlan",
                "id",
                &VXLAN_ID.to_string(),
                "local",
                n.addr,
                "remote",
                peer,
                "dstport",
                "4789",
                "dev",
                n.veth,
                "nolearning",
            ]);
            ip(&["link", "set", TRUNK, "up"]);
            n.start_ovs();
        }
        let head_files = mesh.nodes[0].dir.join("files");
        for (i, n) in mesh.nodes.iter_mut().enumerate() {
            let files_as = (same_filepath && i > 0).then_some(head_files.as_path());
            n.start_minimega(&mesh.bin, &context, files_as);
        }
        let mut head = mesh.nodes[0].client();
        head.run_ok(&Mm::new("mesh").word("dial").arg(ADDRS[1]).unwrap())
            .expect("mesh dial");
        for n in &mesh.nodes {
            let mut c = n.client();
            let mut last = Vec::new();
            let sized = wait_for(STEP, || {
                last = c
                    .run_ok(&Mm::new("mesh").word("status"))
                    .expect("mesh status");
                cell(&last, "size") == Some("2")
            });
            assert!(
                sized,
                "{}: mesh status never showed 2 nodes: {last:?}",
                n.name
            );
            c.run_ok(
                &Mm::new("bridge")
                    .word("trunk")
                    .arg("mega_bridge")
                    .unwrap()
                    .arg(TRUNK)
                    .unwrap(),
            )
            .expect("bridge trunk");
        }
        Some(mesh)
    }

    /// One node (`mm1`) alone: no peer, so a new namespace places every VM
    /// on it (minimega's single-host case). Its own namespaces, OVS and
    /// minimega, torn down like the mesh.
    pub fn start_single(test: &str) -> Option<Mesh> {
        let bin = prerequisites(test)?;
        let dir = tempfile::Builder::new()
            .prefix("megaplan-mm-")
            .tempdir()
            .unwrap();
        let context = format!("megaplan-test-{}", std::process::id());
        let node = Node::new(dir.path(), 0);
        let mut mesh = Mesh {
            nodes: vec![node],
            bin,
            dir: Some(dir),
        };
        // From here on, Drop cleans up whatever a failing step left.
        let n = &mut mesh.nodes[0];
        run(Command::new("ip").args(["-n", &n.ns.name, "link", "set", "lo", "up"]));
        n.start_ovs();
        n.start_minimega(&mesh.bin, &context, None);
        Some(mesh)
    }

    pub fn head(&self) -> &Node {
        &self.nodes[0]
    }

    /// `image build --miniccc` into `images`: the test guest's kernel and
    /// initrd with megaplan's agent and this mesh's miniccc, so minimega's
    /// cc talks to the guests.
    pub fn build_miniccc_image(&self, images: &Path) {
        let mut opts = megaplan::image::ImageOptions::new(images);
        opts.kernel = megaplan::image::KernelSource::Dir(super::lab::guest_kernel_dir());
        opts.agent = Some(PathBuf::from(env!("CARGO_BIN_EXE_megaplan-agent")));
        opts.miniccc = Some(self.bin.join("miniccc"));
        megaplan::image::build(&opts).expect("image build --miniccc");
    }

    /// Tear down now (Drop does the same) and fail if anything was left.
    pub fn stop(mut self) {
        let problems = self.teardown();
        assert!(
            problems.is_empty(),
            "mesh teardown: {}",
            problems.join("; ")
        );
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for n in &mut self.nodes {
            problems.extend(n.stop());
        }
        let names: Vec<String> = self.nodes.iter().map(|n| n.ns.name.clone()).collect();
        let paths: Vec<PathBuf> = self
            .nodes
            .iter()
            .map(|n| PathBuf::from(n.ns.path()))
            .collect();
        // NetnsGuard's drop deletes each namespace.
        self.nodes.clear();
        for (name, path) in names.iter().zip(&paths) {
            if path.exists() {
                problems.push(format!("network namespace {name} is still there"));
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        if let Some(dir) = self.dir.take() {
            let p = dir.path().to_owned();
            if let Err(e) = dir.close() {
                problems.push(format!("removing {}: {e}", p.display()));
            }
        }
        problems
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if self.nodes.is_empty() && self.dir.is_none() {
            return;
        }
        if std::thread::panicking() {
            // The test failed: show what minimega said, before it is removed.
            for n in &self.nodes {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- minimega on {} (last lines) ---", n.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let problems = self.teardown();
        if !problems.is_empty() && !std::thread::panicking() {
            panic!("mesh teardown: {}", problems.join("; "));
        }
    }
}

/// The value of column `col` in the first row of the first host's table.
pub fn cell<'a>(resps: &'a [HostResponse], col: &str) -> Option<&'a str> {
    let r = resps.first()?;
    let i = r.header.iter().position(|h| h == col)?;
    r.tabular.first()?.get(i).map(String::as_str)
}

/// `vm info` in namespace `ns`, parsed.
pub fn vm_info(c: &mut Client, ns: &Name) -> Vec<VmInfo> {
    let cmd = Mm::new("vm").word("info").in_namespace(ns);
    let resps = c.run_ok(&cmd).expect("vm info");
    vm_infos(&cmd, &resps).expect("vm info data")
}

/// The VM called `name`; panics naming what there is when there is none.
pub fn by_name<'a>(vms: &'a [VmInfo], name: &str) -> &'a VmInfo {
    vms.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name} in {vms:?}"))
}

/// Whether minimega's `namespace` lists `ns` on the node behind `c`.
pub fn namespace_listed(c: &mut Client, ns: &str) -> bool {
    let r = c.run_ok(&Mm::new("namespace")).unwrap();
    r.iter()
        .any(|r| r.rows().iter().any(|row| row.contains(&("namespace", ns))))
}

/// Run `sh -c CMD` in the VM with `uuid` through minimega's cc (the test's
/// own use of it, independent of the provider's), waiting at most `limit`
/// for its exit code: (exit code, stdout). Every node answers the exit code
/// query; the VM's node has the response. The command is sent under the
/// prefix `test-cc-sh` and deleted after (a cc command megaplan did not
/// send keeps the namespace at destroy).
pub fn cc_sh(c: &mut Client, ns: &Name, uuid: &str, cmd: &str, limit: Duration) -> (i32, String) {
    const PREFIX: &str = "test-cc-sh";
    let filter = format!("uuid={uuid}");
    let on = |m: Mm| m.in_namespace(ns);
    c.run_ok(&on(Mm::new("cc").word("filter").arg(&filter).unwrap()))
        .unwrap();
    c.run_ok(&on(Mm::new("cc").word("prefix").arg(PREFIX).unwrap()))
        .unwrap();
    let sent = c
        .run_ok(&on(Mm::new("cc")
            .word("exec")
            .arg("sh")
            .unwrap()
            .arg("-c")
            .unwrap()
            .arg(cmd)
            .unwrap()))
        .unwrap();
    c.run_ok(&on(Mm::new("clear").word("cc").word("filter")))
        .unwrap();
    c.run_ok(&on(Mm::new("clear").word("cc").word("prefix")))
        .unwrap();
    let ids: Vec<(String, u64)> = sent
        .iter()
        .filter_map(|r| Some((r.host.clone(), r.data.as_u64()?)))
        .collect();
    let mut answer = None;
    let done = wait_for(limit, || {
        for (host, id) in &ids {
            let r = c
                .run(&on(Mm::new("cc")
                    .word("exitcode")
                    .num(*id)
                    .arg(uuid)
                    .unwrap()))
                .unwrap();
            if let Some(r) = r.iter().find(|r| &r.host == host && r.error.is_empty()) {
                let exit = r.response.trim().parse::<i32>();
                let exit = exit.unwrap_or_else(|e| panic!("exit code {:?}: {e}", r.response));
                answer = Some((host.clone(), *id, exit));
                return true;
            }
        }
        false
    });
    assert!(done, "no answer from {uuid} to `{cmd}`");
    let (host, id, exit) = answer.unwrap();
    let r = c
        .run(&on(Mm::new("cc").word("responses").num(id).word("raw")))
        .unwrap();
    let out = r
        .iter()
        .find(|r| r.host == host)
        .map(|r| r.response.clone())
        .unwrap_or_default();
    let deleted = c
        .run(&on(Mm::new("cc")
            .word("delete")
            .word("command")
            .arg(PREFIX)
            .unwrap()))
        .unwrap();
    for r in &deleted {
        assert!(
            r.error.is_empty() || r.error.starts_with("no such prefix"),
            "cc delete command {PREFIX} on {}: {}",
            r.host,
            r.error
        );
    }
    (exit, out)
}

impl Node {
    /// The names of the OVS mirrors on the node, one a line.
    pub fn mirror_names(&self) -> String {
        self.exec(&[
            "ovs-vsctl",
            "--timeout=30",
            "--data=bare",
            "--no-headings",
            "--columns=name",
            "list",
            "mirror",
        ])
    }

    /// After a destroy: no QEMU left on the node and only the trunk on its
    /// bridge (minimega removes a VM's tap once it has reaped its QEMU),
    /// each waited for at most 30 s.
    pub fn assert_bare(&self) {
        assert!(
            wait_for(Duration::from_secs(30), || self.qemus().is_empty()),
            "QEMU left on {}: {:?}",
            self.name,
            self.processes()
        );
        let mut ports = Vec::new();
        let bare = wait_for(Duration::from_secs(30), || {
            ports = self.bridge_ports();
            ports == [TRUNK]
        });
        assert!(bare, "ports left on {}'s bridge: {ports:?}", self.name);
    }
}

/// After `megaplan destroy` of `experiment` (its namespace has the same
/// name): nothing of it is left on any node of `mesh` (issue 14, "Destroy
/// leaves nothing on any node"). On every node: the namespace is gone
/// (`namespace`), no VM with the experiment's marker in any namespace
/// still listed (`vm info`), no QEMU and no port on `mega_bridge` but the
/// trunk ([`Node::assert_bare`]: minimega's taps, a host tap), no mirror
/// (`ovs-vsctl list mirror`), and no `megaplan/EXPERIMENT` folder in the
/// node's file path (its disks and boot files; an experiment with `keep`
/// disks asserts those itself).
pub fn assert_nothing_left(mesh: &Mesh, experiment: &str) {
    use megaplan::minimega::MARKER_TAG;
    let marker = format!("{experiment}:");
    for node in &mesh.nodes {
        let mut c = node.client();
        // Each listed namespace exists: asking in it makes nothing.
        let listed: Vec<String> = c
            .run_ok(&Mm::new("namespace"))
            .unwrap()
            .iter()
            .flat_map(|r| r.rows())
            .filter_map(|row| {
                row.iter()
                    .find(|(k, _)| *k == "namespace")
                    .map(|(_, v)| v.to_string())
            })
            .collect();
        assert!(
            !listed.iter().any(|n| n == experiment),
            "namespace {experiment} is still on {}: {listed:?}",
            node.name
        );
        for ns in &listed {
            let ns = Name::new(ns).unwrap();
            let ours: Vec<String> = vm_info(&mut c, &ns)
                .into_iter()
                .filter(|v| {
                    v.tags
                        .get(MARKER_TAG)
                        .is_some_and(|m| m.starts_with(&marker))
                })
                .map(|v| v.name)
                .collect();
            assert!(
                ours.is_empty(),
                "VMs of {experiment} still in namespace {ns} on {}: {ours:?}",
                node.name
            );
        }
        node.assert_bare();
        let mirrors = node.exec(&["ovs-vsctl", "--timeout=30", "list", "mirror"]);
        assert!(
            mirrors.trim().is_empty(),
            "mirrors left on {}: {mirrors}",
            node.name
        );
        let folder = node.dir.join("files/megaplan").join(experiment);
        assert!(
            !folder.exists(),
            "{} is left on {}",
            folder.display(),
            node.name
        );
    }
}
