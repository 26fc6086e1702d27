//! Launching QEMU: a pure VM configuration, its argv, the accelerator choice, and
//! a daemonized launch.
//!
//! Every string that lands inside a QEMU option list (`key=value,key=value`) is
//! escaped by QEMU's rule (`,` is written `,,`) or, where escaping would not make
//! sense (interface names, MAC addresses, device drivers), refused. All paths must
//! be absolute: `-daemonize` changes QEMU's directory to `/`, and an absolute path
//! can never be mistaken for a protocol prefix (`nbd:`, `json:`).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use uuid::Uuid;

use super::process::{self, PidfileError, process_alive, read_pidfile};
pub use super::qemu_img::ImageFormat;
use super::runtime::{self, MAX_SOCKET_PATH};

/// The QEMU binary `launch` runs (overridable per config).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The name of the virtio-serial port the guest agent looks for.
pub const CC_PORT_NAME: &str = "megaplan.cc";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("invalid VM configuration: {0}")]
    Invalid(String),
    #[error("unknown accelerator {0:?} (expected auto, kvm or tcg)")]
    UnknownAccel(String),
    #[error("cannot run {program}: {source}{hint}", hint = if source.kind() == std::io::ErrorKind::NotFound { " (not installed? run scripts/setup-host.sh)" } else { "" })]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU for VM {name:?} failed to start ({status}): {stderr}")]
    Failed {
        name: String,
        status: String,
        stderr: String,
    },
    #[error("QEMU for VM {name:?} did not finish starting within {timeout:?}")]
    Timeout { name: String, timeout: Duration },
    #[error("VM {name:?} is already running as pid {pid} (pidfile {pidfile})")]
    AlreadyRunning {
        name: String,
        pid: u32,
        pidfile: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad pidfile {path}: {content:?}")]
    BadPidfile { path: PathBuf, content: String },
}

impl From<PidfileError> for QemuError {
    fn from(e: PidfileError) -> Self {
        match e {
            PidfileError::Bad { path, content } => QemuError::BadPidfile { path, content },
            PidfileError::Io { path, source } => QemuError::Io { path, source },
        }
    }
}

// ---------------------------------------------------------------- accelerator

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for: `auto`, `kvm` or `tcg` (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = QemuError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(QemuError::UnknownAccel(s.to_string())),
        }
    }
}

/// The environment variable that overrides the accelerator.
pub const ACCEL_ENV: &str = "MEGAPLAN_ACCEL";

/// The KVM device.
pub const DEV_KVM: &str = "/dev/kvm";

/// Whether `dev_kvm` opens read-write (what QEMU's `-enable-kvm` needs).
pub fn kvm_opens(dev_kvm: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
        .is_ok()
}

/// KVM when `dev_kvm` opens read-write and `pvm_marker` does not exist (a PVM-only
/// KVM, `/sys/module/kvm_pvm`, cannot run ordinary guests); TCG otherwise.
pub fn probe_accel(dev_kvm: &Path, pvm_marker: &Path) -> Accel {
    if kvm_opens(dev_kvm) && !pvm_marker.exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Resolves a choice: `auto` probes `/dev/kvm` and `/sys/module/kvm_pvm`.
pub fn resolve_accel(choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => probe_accel(Path::new(DEV_KVM), Path::new("/sys/module/kvm_pvm")),
    }
}

/// The choice in an `MEGAPLAN_ACCEL` value; unset or empty means `auto`.
pub fn parse_accel_env(value: Option<&str>) -> Result<AccelChoice, QemuError> {
    match value.map(str::trim) {
        None | Some("") => Ok(AccelChoice::Auto),
        Some(v) => v.parse(),
    }
}

/// The accelerator to use: `MEGAPLAN_ACCEL` (auto|kvm|tcg) if set, else auto.
/// An unknown value in the variable is an error rather than silently ignored.
pub fn detect_accel() -> Result<Accel, QemuError> {
    let value = std::env::var(ACCEL_ENV).ok();
    Ok(resolve_accel(parse_accel_env(value.as_deref())?))
}

// ---------------------------------------------------------------- configuration

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Machine {
    #[default]
    Q35,
    Pc,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }
}

/// A disk attached as virtio-blk (`/dev/vda`, `/dev/vdb`, … in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub readonly: bool,
}

pub const DEFAULT_NIC_DRIVER: &str = "virtio-net-pci";

/// A nic on a pre-created tap (`ethN` in the guest, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    /// The tap's interface name (at most 15 bytes).
    pub ifname: String,
    /// `xx:xx:xx:xx:xx:xx`, unicast.
    pub mac: String,
    /// The QEMU device, [`DEFAULT_NIC_DRIVER`] unless set.
    pub driver: String,
}

impl NicConfig {
    pub fn new(ifname: impl Into<String>, mac: impl Into<String>) -> Self {
        NicConfig {
            ifname: ifname.into(),
            mac: mac.into(),
            driver: DEFAULT_NIC_DRIVER.to_string(),
        }
    }
}

/// Everything QEMU needs for one VM, as plain values (in the spirit of
/// Firecracker's vmm_config). `runtime_dir` holds `qemu.pid`, `qmp.sock` and
/// `cc.sock`, and `serial.log` unless `serial_log` points elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub uuid: Uuid,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The kernel command line (include `console=ttyS0` to see it in the serial log).
    pub append: Option<String>,
    pub disks: Vec<DiskConfig>,
    pub nics: Vec<NicConfig>,
    pub accel: Accel,
    pub machine: Machine,
    pub runtime_dir: PathBuf,
    /// Where the serial console goes; `runtime_dir/serial.log` when `None`.
    pub serial_log: Option<PathBuf>,
    /// Appended verbatim at the end of the argv (the user's `qemu-args`).
    pub extra_args: Vec<String>,
    /// The QEMU binary; [`QEMU_BINARY`] from `PATH` when `None`.
    pub qemu_binary: Option<PathBuf>,
}

impl VmConfig {
    /// A config with minimega-like defaults: 2048 MiB, 1 vcpu, q35, no devices.
    pub fn new(
        name: impl Into<String>,
        uuid: Uuid,
        accel: Accel,
        runtime_dir: impl Into<PathBuf>,
    ) -> Self {
        VmConfig {
            name: name.into(),
            uuid,
            memory_mib: 2048,
            vcpus: 1,
            kernel: None,
            initrd: None,
            append: None,
            disks: Vec::new(),
            nics: Vec::new(),
            accel,
            machine: Machine::Q35,
            runtime_dir: runtime_dir.into(),
            serial_log: None,
            extra_args: Vec::new(),
            qemu_binary: None,
        }
    }

    pub fn pidfile(&self) -> PathBuf {
        runtime::pidfile(&self.runtime_dir)
    }
    pub fn qmp_socket(&self) -> PathBuf {
        runtime::qmp_socket(&self.runtime_dir)
    }
    pub fn cc_socket(&self) -> PathBuf {
        runtime::cc_socket(&self.runtime_dir)
    }
    pub fn console_socket(&self) -> PathBuf {
        runtime::console_socket(&self.runtime_dir)
    }
    pub fn serial_log_path(&self) -> PathBuf {
        self.serial_log
            .clone()
            .unwrap_or_else(|| runtime::serial_log(&self.runtime_dir))
    }
    pub fn binary(&self) -> &OsStr {
        self.qemu_binary
            .as_deref()
            .map(Path::as_os_str)
            .unwrap_or(OsStr::new(QEMU_BINARY))
    }

    /// Checks every value that goes into the argv.
    pub fn validate(&self) -> Result<(), QemuError> {
        let bad = |m: String| Err(QemuError::Invalid(m));
        if self.name.is_empty() {
            return bad("empty VM name".into());
        }
        if self.name.chars().any(char::is_control) {
            return bad(format!(
                "VM name {:?} contains control characters",
                self.name
            ));
        }
        if self.memory_mib == 0 {
            return bad("memory must be at least 1 MiB".into());
        }
        if self.vcpus == 0 {
            return bad("at least one vcpu".into());
        }
        let mut paths: Vec<(&str, &Path)> = vec![("runtime dir", &self.runtime_dir)];
        paths.extend(self.kernel.as_deref().map(|p| ("kernel", p)));
        paths.extend(self.initrd.as_deref().map(|p| ("initrd", p)));
        paths.extend(self.serial_log.as_deref().map(|p| ("serial log", p)));
        paths.extend(self.disks.iter().map(|d| ("disk", d.path.as_path())));
        for (what, p) in paths {
            check_path(what, p)?;
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return bad("an initrd needs a kernel".into());
        }
        if self.append.is_some() && self.kernel.is_none() {
            return bad("a kernel command line needs a kernel".into());
        }
        if let Some(a) = &self.append
            && a.contains('\0')
        {
            return bad("kernel command line contains NUL".into());
        }
        for sock in [self.qmp_socket(), self.cc_socket(), self.console_socket()] {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                return bad(format!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes (unix socket limit): use a shorter runtime dir",
                    sock.display()
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for nic in &self.nics {
            check_ifname(&nic.ifname)?;
            if !seen.insert(nic.ifname.as_str()) {
                return bad(format!("tap {} is used twice", nic.ifname));
            }
            check_mac(&nic.mac)?;
            if nic.driver.is_empty()
                || !nic
                    .driver
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return bad(format!(
                    "nic driver {:?} is not a QEMU device name",
                    nic.driver
                ));
            }
        }
        if self.extra_args.iter().any(|a| a.contains('\0')) {
            return bad("qemu-args contain NUL".into());
        }
        Ok(())
    }
}

fn check_path(what: &str, p: &Path) -> Result<(), QemuError> {
    if !p.is_absolute() {
        return Err(QemuError::Invalid(format!(
            "{what} path {} must be absolute",
            p.display()
        )));
    }
    if p.as_os_str()
        .as_bytes()
        .iter()
        .any(|&b| b == 0 || b == b'\n')
    {
        return Err(QemuError::Invalid(format!(
            "{what} path {:?} contains NUL or a line break",
            p
        )));
    }
    Ok(())
}

/// A Linux interface name: 1-15 bytes, no '/', ':' ',' '=' or whitespace.
fn check_ifname(name: &str) -> Result<(), QemuError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b',' | b'='));
    if ok {
        Ok(())
    } else {
        Err(QemuError::Invalid(format!(
            "{name:?} is not a valid tap name"
        )))
    }
}

fn check_mac(mac: &str) -> Result<(), QemuError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let hex = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !hex {
        return Err(QemuError::Invalid(format!(
            "{mac:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"
        )));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(0);
    if first & 1 != 0 {
        return Err(QemuError::Invalid(format!(
            "{mac} is a multicast MAC address"
        )));
    }
    Ok(())
}

/// Escapes a value for a QEMU option list: `,` becomes `,,`.
pub fn escape_opt(value: impl AsRef<OsStr>) -> OsString {
    let bytes = value.as_ref().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Joins `prefix` + escaped `value` + `suffix` into one option argument.
fn opt(prefix: &str, value: impl AsRef<OsStr>, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(escape_opt(value));
    s.push(suffix);
    s
}

/// The full argv (without the program) for `cfg`, after validating it.
pub fn argv(cfg: &VmConfig) -> Result<Vec<OsString>, QemuError> {
    cfg.validate()?;
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<OsStr>]| {
        for i in items {
            a.push(i.as_ref().to_os_string());
        }
    };
    push(&[&"-daemonize", &"-pidfile", &cfg.pidfile()]);
    push(&[
        &"-qmp",
        &opt("unix:", cfg.qmp_socket(), ",server=on,wait=off"),
    ]);
    push(&[&"-nodefaults", &"-no-user-config", &"-display", &"none"]);
    push(&[&"-name", &opt("guest=", &cfg.name, "")]);
    push(&[&"-uuid", &cfg.uuid.hyphenated().to_string()]);
    push(&[
        &"-machine",
        &cfg.machine.as_str(),
        &"-accel",
        &cfg.accel.as_str(),
    ]);
    if cfg.accel == Accel::Kvm {
        push(&[&"-cpu", &"host"]);
    }
    push(&[
        &"-m",
        &format!("{}M", cfg.memory_mib),
        &"-smp",
        &cfg.vcpus.to_string(),
    ]);
    // The console on the first serial port: a unix socket for
    // `megaplan console` (output is dropped while nobody is attached), and
    // everything the guest prints also in the log (truncated at each
    // launch, so a boot watch reads only this boot).
    let log = escape_opt(cfg.serial_log_path());
    let mut serial = opt("socket,id=serial0,path=", cfg.console_socket(), "");
    serial.push(",server=on,wait=off,logfile=");
    serial.push(&log);
    serial.push(",logappend=off");
    push(&[&"-chardev", &serial]);
    push(&[&"-serial", &"chardev:serial0"]);
    // -kernel, -initrd and -append take their argument whole (no option parsing).
    if let Some(k) = &cfg.kernel {
        push(&[&"-kernel", k]);
    }
    if let Some(i) = &cfg.initrd {
        push(&[&"-initrd", i]);
    }
    if let Some(ap) = &cfg.append {
        push(&[&"-append", ap]);
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        let ro = if d.readonly { ",readonly=on" } else { "" };
        let drive = opt(
            "file=",
            &d.path,
            &format!(",format={},if=none,id=disk{i}{ro}", d.format.as_str()),
        );
        push(&[&"-drive", &drive]);
        push(&[&"-device", &format!("virtio-blk-pci,drive=disk{i}")]);
    }
    for (i, n) in cfg.nics.iter().enumerate() {
        let netdev = format!(
            "tap,id=n{i},ifname={},script=no,downscript=no,vhost=off",
            n.ifname
        );
        push(&[&"-netdev", &netdev]);
        push(&[
            &"-device",
            &format!("{},netdev=n{i},mac={}", n.driver, n.mac),
        ]);
    }
    // The cc channel: a virtio-serial port named megaplan.cc on a unix socket.
    push(&[&"-device", &"virtio-serial-pci,id=vser0"]);
    push(&[
        &"-chardev",
        &opt("socket,id=cc,path=", cfg.cc_socket(), ",server=on,wait=off"),
    ]);
    push(&[
        &"-device",
        &format!("virtserialport,bus=vser0.0,chardev=cc,name={CC_PORT_NAME}"),
    ]);
    for e in &cfg.extra_args {
        push(&[e]);
    }
    Ok(a)
}

// ---------------------------------------------------------------- launch

/// How long `launch` waits for QEMU's foreground process to exit.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts QEMU daemonized and returns the pid of the VM process (from the pidfile).
///
/// Creates the runtime dir (mode 0700) and the serial log's directory. Refuses when
/// the pidfile names a live QEMU. Errors carry QEMU's stderr.
pub async fn launch(cfg: &VmConfig) -> Result<u32, QemuError> {
    let args = argv(cfg)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QemuError::Io { path, source }
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.runtime_dir)
            .map_err(io(&cfg.runtime_dir))?;
    }
    let serial = cfg.serial_log_path();
    if let Some(dir) = serial.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let pidfile = cfg.pidfile();
    if let Ok(Some(pid)) = read_pidfile(&pidfile)
        && process_alive(pid)
    {
        return Err(QemuError::AlreadyRunning {
            name: cfg.name.clone(),
            pid,
            pidfile,
        });
    }
    for stale in [
        &pidfile,
        &cfg.qmp_socket(),
        &cfg.cc_socket(),
        &cfg.console_socket(),
    ] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(QemuError::Io {
                    path: stale.to_path_buf(),
                    source,
                });
            }
        }
    }

    let program = cfg.binary();
    let mut cmd = Command::new(program);
    // QEMU creates its pidfile, sockets and serial log: private whatever
    // the caller's umask.
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let mut child = cmd
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| QemuError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
    // The daemonized child holds stderr until it has finished starting (then it
    // points stderr at /dev/null) or has failed: collect it in the background.
    let mut stderr_pipe = child.stderr.take();
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(p) = stderr_pipe.as_mut() {
            let _ = p.read_to_end(&mut buf).await;
        }
        buf
    });

    let status = match tokio::time::timeout(LAUNCH_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(QemuError::Spawn {
                program: program.to_string_lossy().into_owned(),
                source,
            });
        }
        Err(_) => {
            let _ = child.start_kill();
            if let Ok(Some(pid)) = read_pidfile(&pidfile)
                && process_alive(pid)
            {
                process::kill_pid(pid);
            }
            stderr_task.abort();
            return Err(QemuError::Timeout {
                name: cfg.name.clone(),
                timeout: LAUNCH_TIMEOUT,
            });
        }
    };
    if !status.success() {
        let stderr = match tokio::time::timeout(Duration::from_secs(5), stderr_task).await {
            Ok(Ok(buf)) => String::from_utf8_lossy(&buf).trim().to_string(),
            _ => String::from("(no stderr)"),
        };
        return Err(QemuError::Failed {
            name: cfg.name.clone(),
            status: status.to_string(),
            stderr,
        });
    }
    stderr_task.abort();
    match read_pidfile(&pidfile)? {
        Some(pid) => Ok(pid),
        None => Err(QemuError::BadPidfile {
            path: pidfile,
            content: String::from("(missing after QEMU started)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        let mut c = VmConfig::new(
            "A",
            Uuid::parse_str("11111111-1111-1111-1111-111111111111").unwrap(),
            Accel::Tcg,
            "/run/megaplan/x/vm.A",
        );
        c.memory_mib = 256;
        c.kernel = Some("/img/vmlinuz".into());
        c.initrd = Some("/img/initrd".into());
        c.append = Some("console=ttyS0 quiet".into());
        c
    }

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    /// The value following `flag` at each of its occurrences.
    fn values(v: &[String], flag: &str) -> Vec<String> {
        v.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    /// QEMU's own files (pidfile, sockets, serial log) are made with umask
    /// 077 whatever the caller's: a stand-in QEMU writes its pidfile.
    #[test]
    fn qemu_runs_with_a_private_umask() {
        crate::safefs::run_with_umask_0("drivers::qemu::tests::qemu_runs_with_a_private_umask_0");
    }

    #[tokio::test(flavor = "current_thread")]
    #[ignore = "run by qemu_runs_with_a_private_umask with umask 0"]
    async fn qemu_runs_with_a_private_umask_0() {
        use std::os::unix::fs::PermissionsExt;
        crate::safefs::assert_umask_0();
        let t = tempfile::tempdir().unwrap();
        let fake = t.path().join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -pidfile ] && p=\"$2\"; shift; done\necho $$ > \"$p\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = cfg();
        c.runtime_dir = t.path().join("rt");
        c.serial_log = Some(t.path().join("serial.log"));
        c.qemu_binary = Some(fake);
        launch(&c).await.unwrap();
        let mode = std::fs::metadata(c.pidfile()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(&c.runtime_dir)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn minimal_argv() {
        let a = strs(&argv(&cfg()).unwrap());
        let r = "/run/megaplan/x/vm.A";
        let expected = [
            "-daemonize",
            "-pidfile",
            &format!("{r}/qemu.pid"),
            "-qmp",
            &format!("unix:{r}/qmp.sock,server=on,wait=off"),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-name",
            "guest=A",
            "-uuid",
            "11111111-1111-1111-1111-111111111111",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256M",
            "-smp",
            "1",
            "-chardev",
            &format!(
                "socket,id=serial0,path={r}/console.sock,server=on,wait=off,logfile={r}/serial.log,logappend=off"
            ),
            "-serial",
            "chardev:serial0",
            "-kernel",
            "/img/vmlinuz",
            "-initrd",
            "/img/initrd",
            "-append",
            "console=ttyS0 quiet",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            &format!("socket,id=cc,path={r}/cc.sock,server=on,wait=off"),
            "-device",
            "virtserialport,bus=vser0.0,chardev=cc,name=megaplan.cc",
        ];
        assert_eq!(a, expected);
    }

    #[test]
    fn disks_nics_and_kvm() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        c.machine = Machine::Pc;
        c.vcpus = 2;
        c.disks.push(DiskConfig {
            path: "/d/a.qcow2".into(),
            format: ImageFormat::Qcow2,
            readonly: false,
        });
        c.disks.push(DiskConfig {
            path: "/d/b.img".into(),
            format: ImageFormat::Raw,
            readonly: true,
        });
        c.nics.push(NicConfig::new("mpt0", "02:00:00:00:00:01"));
        let mut e1000 = NicConfig::new("mpt1", "02:00:00:00:00:02");
        e1000.driver = "e1000".into();
        c.nics.push(e1000);
        c.extra_args = vec!["-no-reboot".into()];
        let a = strs(&argv(&c).unwrap());
        assert_eq!(values(&a, "-machine"), ["pc"]);
        assert_eq!(values(&a, "-accel"), ["kvm"]);
        assert_eq!(values(&a, "-cpu"), ["host"]);
        assert_eq!(values(&a, "-smp"), ["2"]);
        assert_eq!(
            values(&a, "-drive"),
            [
                "file=/d/a.qcow2,format=qcow2,if=none,id=disk0",
                "file=/d/b.img,format=raw,if=none,id=disk1,readonly=on"
            ]
        );
        assert_eq!(
            values(&a, "-netdev"),
            [
                "tap,id=n0,ifname=mpt0,script=no,downscript=no,vhost=off",
                "tap,id=n1,ifname=mpt1,script=no,downscript=no,vhost=off"
            ]
        );
        let devices = values(&a, "-device");
        assert_eq!(
            devices[..4],
            [
                "virtio-blk-pci,drive=disk0",
                "virtio-blk-pci,drive=disk1",
                "virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01",
                "e1000,netdev=n1,mac=02:00:00:00:00:02",
            ]
        );
        assert_eq!(a.last().unwrap(), "-no-reboot");
    }

    #[test]
    fn commas_are_escaped() {
        let mut c = cfg();
        c.name = "a,b=c".into();
        c.runtime_dir = "/run/x,y".into();
        c.serial_log = Some("/logs/s,erial.log".into());
        c.disks.push(DiskConfig {
            path: "/d/evil,format=raw,file=/etc/shadow".into(),
            format: ImageFormat::Qcow2,
            readonly: false,
        });
        let a = strs(&argv(&c).unwrap());
        assert_eq!(values(&a, "-name"), ["guest=a,,b=c"]);
        assert_eq!(values(&a, "-pidfile"), ["/run/x,y/qemu.pid"]);
        assert_eq!(
            values(&a, "-qmp"),
            ["unix:/run/x,,y/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            values(&a, "-drive"),
            ["file=/d/evil,,format=raw,,file=/etc/shadow,format=qcow2,if=none,id=disk0"]
        );
        let chardevs = values(&a, "-chardev");
        assert!(
            chardevs[0].ends_with(",logfile=/logs/s,,erial.log,logappend=off"),
            "{}",
            chardevs[0]
        );
        assert_eq!(
            chardevs[1],
            "socket,id=cc,path=/run/x,,y/cc.sock,server=on,wait=off"
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        let check = |f: &dyn Fn(&mut VmConfig)| {
            let mut c = cfg();
            f(&mut c);
            assert!(matches!(argv(&c), Err(QemuError::Invalid(_))), "{c:?}");
        };
        check(&|c| c.nics.push(NicConfig::new("tap,x=1", "02:00:00:00:00:01")));
        check(&|c| {
            c.nics
                .push(NicConfig::new("sixteen-bytes-xx", "02:00:00:00:00:01"))
        });
        check(&|c| c.nics.push(NicConfig::new("", "02:00:00:00:00:01")));
        check(&|c| c.nics.push(NicConfig::new("t0", "02:00:00:00:00:01,x")));
        check(&|c| c.nics.push(NicConfig::new("t0", "01:00:00:00:00:01")));
        check(&|c| c.nics.push(NicConfig::new("t0", "02:00:00:00:00")));
        check(&|c| {
            let mut n = NicConfig::new("t0", "02:00:00:00:00:01");
            n.driver = "e1000,romfile=/x".into();
            c.nics.push(n)
        });
        check(&|c| {
            c.nics.push(NicConfig::new("t0", "02:00:00:00:00:01"));
            c.nics.push(NicConfig::new("t0", "02:00:00:00:00:02"));
        });
        check(&|c| c.kernel = Some("relative/vmlinuz".into()));
        check(&|c| c.runtime_dir = "run".into());
        check(&|c| c.runtime_dir = format!("/{}", "r".repeat(100)).into());
        check(&|c| c.name = String::new());
        check(&|c| c.name = "a\nb".into());
        check(&|c| c.memory_mib = 0);
        check(&|c| c.vcpus = 0);
        check(&|c| c.kernel = None);
    }

    #[test]
    fn accel_choice_parsing() {
        assert_eq!(parse_accel_env(None).unwrap(), AccelChoice::Auto);
        assert_eq!(parse_accel_env(Some("")).unwrap(), AccelChoice::Auto);
        assert_eq!(parse_accel_env(Some(" TCG ")).unwrap(), AccelChoice::Tcg);
        assert_eq!(parse_accel_env(Some("kvm")).unwrap(), AccelChoice::Kvm);
        assert_eq!(parse_accel_env(Some("Auto")).unwrap(), AccelChoice::Auto);
        assert!(matches!(
            parse_accel_env(Some("hvf")),
            Err(QemuError::UnknownAccel(_))
        ));
        assert_eq!(resolve_accel(AccelChoice::Tcg), Accel::Tcg);
        assert_eq!(resolve_accel(AccelChoice::Kvm), Accel::Kvm);
    }

    #[test]
    fn accel_probe() {
        let dir = std::env::temp_dir().join(format!("megaplan-accel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kvm = dir.join("kvm");
        let pvm = dir.join("kvm_pvm");
        std::fs::write(&kvm, b"").unwrap();
        assert_eq!(probe_accel(&kvm, &pvm), Accel::Kvm);
        std::fs::create_dir(&pvm).unwrap();
        assert_eq!(probe_accel(&kvm, &pvm), Accel::Tcg);
        assert_eq!(
            probe_accel(&dir.join("absent"), &dir.join("absent2")),
            Accel::Tcg
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
