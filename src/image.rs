//! `megaplan image build`: a cc-enabled guest image, i.e. a kernel and an initrd
//! (cpio newc, gzip) holding busybox, `megaplan-agent`, the virtio (and ACPI
//! button) modules of that kernel, and an `/init` that sets the guest up and
//! hands over to busybox init, which keeps the agent running.
//!
//! The kernel comes from a kernel file plus its modules directory (by default
//! the host's running kernel), a Debian `linux-image-*.deb`, or a directory as
//! `scripts/guest-kernel.sh` produces (`boot/vmlinuz-*`, `lib/modules/VER/`).
//!
//! The initrd is deterministic: the same inputs give the same bytes (entries
//! sorted by path, mtime 0, uid/gid 0, gzip header mtime 0, fixed level).
//!
//! The guest's kernel command line understands (besides `console=ttyS0`):
//! `megaplan.mounts=vdb:/bro,vdc:/data` (ext4 disks to mount),
//! `megaplan.hostname=NAME` (else SMBIOS product name, else `megaplan`) and
//! `megaplan.shell` (a shell on the console).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The default image name (`OUT/NAME.kernel`, `OUT/NAME.initrd`), after minimega's cc agent.
pub const DEFAULT_NAME: &str = "miniccc";
/// The default busybox (Debian's busybox-static).
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// Where the agent lives in the guest.
pub const GUEST_AGENT_PATH: &str = "sbin/megaplan-agent";
/// The gzip level of the initrd (fixed, for byte-identical output).
const GZIP_LEVEL: u32 = 6;

/// Modules loaded at boot, in this order (each skipped when built in or absent).
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio_blk",
];
/// ext4 and its dependencies, in load order; only when ext4 is a module.
pub const EXT4_MODULES: &[&str] = &[
    "crc16",
    "crc32c_generic",
    "libcrc32c",
    "mbcache",
    "jbd2",
    "ext4",
];
/// Every nic model megaplan accepts (`nic ... driver=`), with the guest
/// modules that drive it. `image build` includes those the kernel has (with
/// the modules they depend on, from each module's `depends=`), and warns
/// about a model the kernel cannot drive.
pub const NIC_MODELS: &[(&str, &[&str])] = &[
    ("virtio-net-pci", &["virtio_net"]),
    ("e1000", &["e1000"]),
    ("e1000e", &["e1000e"]),
    ("rtl8139", &["8139cp", "8139too"]),
    ("vmxnet3", &["vmxnet3"]),
];
/// The ACPI power button (for `system_powerdown` through busybox acpid).
pub const ACPI_MODULES: &[&str] = &["evdev", "button"];
/// Modules without which the agent cannot reach the host.
const ESSENTIAL: &[&str] = &["virtio_pci", "virtio_console"];

/// Applets linked when `busybox --list-full` is not available.
const FALLBACK_APPLETS: &[&str] = &[
    "bin/sh",
    "bin/ash",
    "bin/cat",
    "bin/cp",
    "bin/dmesg",
    "bin/echo",
    "bin/grep",
    "bin/hostname",
    "bin/ip",
    "bin/ls",
    "bin/mkdir",
    "bin/mknod",
    "bin/mount",
    "bin/mv",
    "bin/ping",
    "bin/ps",
    "bin/rm",
    "bin/sed",
    "bin/sleep",
    "bin/sync",
    "bin/umount",
    "bin/uname",
    "sbin/acpid",
    "sbin/ifconfig",
    "sbin/init",
    "sbin/insmod",
    "sbin/modprobe",
    "sbin/poweroff",
    "sbin/reboot",
    "usr/bin/tr",
    "usr/bin/tail",
    "usr/bin/head",
];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("kernel not found: {0}")]
    Kernel(String),
    #[error(
        "agent binary {0} not found (build it with `cargo build --bin megaplan-agent`, or pass --agent)"
    )]
    AgentNotFound(PathBuf),
    #[error("{binary}: shared libraries not found: {}", libs.join(", "))]
    MissingLibraries { binary: PathBuf, libs: Vec<String> },
    #[error(
        "kernel {version} has neither {module} built in nor as a module: the agent could not reach the host"
    )]
    MissingModule { version: String, module: String },
    #[error("invalid image options: {0}")]
    Invalid(String),
    #[error("busybox {} not found", .0.display())]
    BusyboxNotFound(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the guest kernel and its modules come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KernelSource {
    /// The host's running kernel: `/boot/vmlinuz-$(uname -r)` and `/lib/modules/$(uname -r)`.
    #[default]
    Host,
    /// A kernel image and its modules directory (`.../lib/modules/VERSION`).
    Files { kernel: PathBuf, modules: PathBuf },
    /// A Debian `linux-image-*.deb`, unpacked with `dpkg-deb -x`.
    Deb(PathBuf),
    /// An unpacked kernel package: `boot/vmlinuz-VER` and `lib/modules/VER/`.
    Dir(PathBuf),
}

/// What `build` makes and from what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// Output directory (created if missing).
    pub out_dir: PathBuf,
    /// Output file stem: `OUT/NAME.kernel`, `OUT/NAME.initrd`.
    pub name: String,
    pub kernel: KernelSource,
    /// The agent binary; `megaplan-agent` beside the running executable when `None`.
    pub agent: Option<PathBuf>,
    /// Extra binaries, copied to the same path in the guest with their shared libraries.
    pub include: Vec<PathBuf>,
    /// The busybox binary ([`DEFAULT_BUSYBOX`]); it should be static.
    pub busybox: PathBuf,
    /// Strip debug information from the agent and the included binaries (`strip`).
    pub strip: bool,
}

impl ImageOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        ImageOptions {
            out_dir: out_dir.into(),
            name: DEFAULT_NAME.to_string(),
            kernel: KernelSource::Host,
            agent: None,
            include: Vec::new(),
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            strip: true,
        }
    }
}

/// What `build` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOutput {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
    /// Module names `/init` loads, in order.
    pub modules: Vec<String>,
    /// Things that work but are worth saying (absent optional modules, ...).
    pub warnings: Vec<String>,
    /// The nic models (`image::NIC_MODELS`) the guest can drive, as written
    /// to [`nic_manifest`] beside the initrd.
    pub nic_models: Vec<String>,
}

/// The file beside an initrd that lists the nic models its guest has a
/// driver for, one per line (`validate` warns about a nic whose model is
/// not in it; an initrd without one, not built by megaplan, is not checked).
pub fn nic_manifest(initrd: &Path) -> PathBuf {
    let mut name = initrd.as_os_str().to_owned();
    name.push(".nics");
    PathBuf::from(name)
}

/// The models listed in `initrd`'s [`nic_manifest`], if it has one (read
/// bounded: it is a few lines).
pub fn read_nic_manifest(initrd: &Path) -> Option<Vec<String>> {
    use std::io::Read;
    let f = std::fs::File::open(nic_manifest(initrd)).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(4096).read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
    )
}

// ---------------------------------------------------------------- cpio

/// One archive member's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioData {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// An archive member: a relative path (no leading `/`), permission bits and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub path: String,
    pub perm: u32,
    pub data: CpioData,
}

/// A cpio "newc" archive of `entries`, sorted by path, with inodes numbered in
/// that order, mtime 0 and uid/gid 0, ending with the `TRAILER!!!` record.
/// Uncompressed (the kernel also takes it so).
pub fn build_cpio(entries: &[CpioEntry]) -> Result<Vec<u8>, ImageError> {
    let mut sorted: Vec<&CpioEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut buf = Vec::new();
    for (i, e) in sorted.iter().enumerate() {
        let path = e.path.trim_start_matches('/');
        if path.is_empty() || path.contains('\0') {
            return Err(ImageError::Invalid(format!(
                "bad archive path {:?}",
                e.path
            )));
        }
        let (kind, data, rdev, nlink): (u32, &[u8], (u32, u32), u32) = match &e.data {
            CpioData::Dir => (0o040000, &[], (0, 0), 2),
            CpioData::File(d) => (0o100000, d, (0, 0), 1),
            CpioData::Symlink(t) => (0o120000, t.as_bytes(), (0, 0), 1),
            CpioData::CharDev { major, minor } => (0o020000, &[], (*major, *minor), 1),
        };
        let size = u32::try_from(data.len())
            .map_err(|_| ImageError::Invalid(format!("{path} is larger than 4 GiB")))?;
        cpio_record(
            &mut buf,
            i as u32 + 1,
            kind | (e.perm & 0o7777),
            nlink,
            rdev,
            path,
            data,
            size,
        );
    }
    cpio_record(&mut buf, 0, 0, 1, (0, 0), "TRAILER!!!", &[], 0);
    Ok(buf)
}

#[allow(clippy::too_many_arguments)]
fn cpio_record(
    buf: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
    size: u32,
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        size,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    buf.extend_from_slice(b"070701");
    for f in fields {
        buf.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    pad4(buf);
    buf.extend_from_slice(data);
    pad4(buf);
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// gzip with a zero mtime and a fixed level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
    enc.write_all(data).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

/// The archive being assembled: path -> entry, parents created on demand.
#[derive(Debug, Default)]
struct Tree(BTreeMap<String, CpioEntry>);

impl Tree {
    fn dir(&mut self, path: &str, perm: u32) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.parent_dirs(parent);
        }
        self.0.insert(
            path.to_string(),
            CpioEntry {
                path: path.to_string(),
                perm,
                data: CpioData::Dir,
            },
        );
    }

    fn parent_dirs(&mut self, dir: &str) {
        let dir = dir.trim_matches('/');
        if dir.is_empty() || matches!(self.0.get(dir), Some(e) if e.data == CpioData::Dir) {
            return;
        }
        self.dir(dir, 0o755);
    }

    fn put(&mut self, path: &str, perm: u32, data: CpioData) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.parent_dirs(parent);
        }
        self.0.insert(
            path.to_string(),
            CpioEntry {
                path: path.to_string(),
                perm,
                data,
            },
        );
    }

    fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) {
        self.put(path, perm, CpioData::File(data.into()));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.put(path, 0o777, CpioData::Symlink(target.to_string()));
    }

    fn has(&self, path: &str) -> bool {
        self.0.contains_key(path.trim_start_matches('/'))
    }

    fn entries(self) -> Vec<CpioEntry> {
        self.0.into_values().collect()
    }
}

// ---------------------------------------------------------------- ELF and ldd

/// The ELF interpreter (`PT_INTERP`) of a 64-bit little-endian ELF file; `None`
/// for other files and for static executables.
pub fn elf_interpreter(data: &[u8]) -> Option<String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? == 3 {
            let off = usize::try_from(u64_at(ph + 8)?).ok()?;
            let len = usize::try_from(u64_at(ph + 0x20)?).ok()?;
            let raw = data.get(off..off.checked_add(len)?)?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            return String::from_utf8(raw[..end].to_vec()).ok();
        }
    }
    None
}

fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// The libraries in `ldd` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LddLibs {
    /// Absolute paths of the libraries and the interpreter, in ldd's order.
    pub paths: Vec<PathBuf>,
    /// Names ldd reported as "not found".
    pub missing: Vec<String>,
}

/// Parses `ldd` output: `name => /path (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`,
/// `name => not found`; skips the vDSO and "statically linked".
pub fn parse_ldd(output: &str) -> LddLibs {
    let mut libs = LddLibs::default();
    for line in output.lines() {
        let line = line.trim();
        let strip_addr = |s: &str| -> String {
            match s.rfind(" (0x") {
                Some(i) => s[..i].trim().to_string(),
                None => s.trim().to_string(),
            }
        };
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                libs.missing.push(name.trim().to_string());
                continue;
            }
            let path = strip_addr(rest);
            if path.starts_with('/') {
                libs.paths.push(PathBuf::from(path));
            }
        } else if line.starts_with('/') {
            libs.paths.push(PathBuf::from(strip_addr(line)));
        }
    }
    libs
}

/// The shared libraries (and interpreter) a dynamically linked `binary` needs;
/// empty for static binaries and non-ELF files.
fn shared_libraries(binary: &Path, data: &[u8]) -> Result<Vec<PathBuf>, ImageError> {
    let Some(interp) = elf_interpreter(data) else {
        return Ok(Vec::new());
    };
    let out = run("ldd", &[binary.as_os_str()])?;
    let libs = parse_ldd(&String::from_utf8_lossy(&out));
    if !libs.missing.is_empty() {
        return Err(ImageError::MissingLibraries {
            binary: binary.to_path_buf(),
            libs: libs.missing,
        });
    }
    let mut paths = libs.paths;
    let interp = PathBuf::from(interp);
    if !paths.contains(&interp) {
        paths.push(interp);
    }
    Ok(paths)
}

// ---------------------------------------------------------------- commands

/// Runs `program args` and returns its stdout; a failure carries stderr.
fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, ImageError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        let mut command = program.to_string();
        for a in args {
            command.push(' ');
            command.push_str(&a.to_string_lossy());
        }
        return Err(ImageError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// A temporary directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self, ImageError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "megaplan-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).map_err(io_err(&p))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file's bytes with debug information removed (`strip --strip-debug`); the
/// original bytes when `strip` is unavailable or fails (with a warning).
fn stripped(path: &Path, data: Vec<u8>, warnings: &mut Vec<String>) -> Vec<u8> {
    if !is_elf(&data) {
        return data;
    }
    let attempt = || -> Result<Vec<u8>, ImageError> {
        let tmp = TempDir::new("strip")?;
        let out = tmp.0.join("out");
        run(
            "strip",
            &[
                "--strip-debug".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
                path.as_os_str(),
            ],
        )?;
        std::fs::read(&out).map_err(io_err(&out))
    };
    match attempt() {
        Ok(s) => s,
        Err(e) => {
            warnings.push(format!("not stripped: {e}"));
            data
        }
    }
}

// ---------------------------------------------------------------- kernel

/// A kernel image and its modules directory.
#[derive(Debug)]
struct Kernel {
    image: PathBuf,
    modules: PathBuf,
    version: String,
    /// Keeps an unpacked .deb alive while it is read.
    _unpacked: Option<TempDir>,
}

fn resolve_kernel(source: &KernelSource) -> Result<Kernel, ImageError> {
    match source {
        KernelSource::Host => {
            let p = Path::new("/proc/sys/kernel/osrelease");
            let version = std::fs::read_to_string(p)
                .map_err(io_err(p))?
                .trim()
                .to_string();
            let image = PathBuf::from(format!("/boot/vmlinuz-{version}"));
            let modules = PathBuf::from(format!("/lib/modules/{version}"));
            if !image.is_file() {
                return Err(ImageError::Kernel(format!(
                    "{} (the host's running kernel) does not exist: pass --kernel-dir, --kernel-deb or --kernel and --modules",
                    image.display()
                )));
            }
            Ok(Kernel {
                image,
                modules,
                version,
                _unpacked: None,
            })
        }
        KernelSource::Files { kernel, modules } => {
            if !kernel.is_file() {
                return Err(ImageError::Kernel(format!(
                    "{} is not a file",
                    kernel.display()
                )));
            }
            if !modules.is_dir() {
                return Err(ImageError::Kernel(format!(
                    "modules directory {} is not a directory",
                    modules.display()
                )));
            }
            let version = modules
                .canonicalize()
                .ok()
                .and_then(|m| m.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            Ok(Kernel {
                image: kernel.clone(),
                modules: modules.clone(),
                version,
                _unpacked: None,
            })
        }
        KernelSource::Deb(deb) => {
            if !deb.is_file() {
                return Err(ImageError::Kernel(format!(
                    "{} is not a file",
                    deb.display()
                )));
            }
            let tmp = TempDir::new("kernel-deb")?;
            run(
                "dpkg-deb",
                &["-x".as_ref(), deb.as_os_str(), tmp.0.as_os_str()],
            )?;
            let mut k = kernel_in_dir(&tmp.0)?;
            k._unpacked = Some(tmp);
            Ok(k)
        }
        KernelSource::Dir(dir) => kernel_in_dir(dir),
    }
}

/// `DIR/boot/vmlinuz-VER` and `DIR/lib/modules/VER` (or `DIR/usr/lib/modules/VER`).
fn kernel_in_dir(dir: &Path) -> Result<Kernel, ImageError> {
    let boot = dir.join("boot");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Some((version, e.path()))
        })
        .collect();
    found.sort();
    let Some((version, image)) = found.pop() else {
        return Err(ImageError::Kernel(format!(
            "no boot/vmlinuz-* in {}",
            dir.display()
        )));
    };
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| dir.join(m).join(&version))
        .find(|m| m.is_dir())
        .ok_or_else(|| {
            ImageError::Kernel(format!(
                "no lib/modules/{version} in {} for {}",
                dir.display(),
                image.display()
            ))
        })?;
    Ok(Kernel {
        image,
        modules,
        version,
        _unpacked: None,
    })
}

/// A module's name from its file name: `virtio-net.ko.xz` -> `virtio_net`.
fn module_name(file: &str) -> Option<(String, &'static str)> {
    for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
        if let Some(stem) = file.strip_suffix(ext) {
            return Some((stem.replace('-', "_"), ext));
        }
    }
    None
}

/// Every module file under `dir` (recursively), by name, relative path and extension.
fn index_modules(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, (PathBuf, &'static str)>,
) -> Result<(), ImageError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type().map_err(io_err(&path))?;
        if ft.is_dir() {
            index_modules(root, &path, out)?;
        } else if let Some((name, ext)) = module_name(&e.file_name().to_string_lossy()) {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.entry(name).or_insert((rel, ext));
        }
    }
    Ok(())
}

/// Names in `modules.builtin` (normalized).
fn builtin_modules(modules_dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let file = l.trim().rsplit('/').next()?;
            module_name(file).map(|(n, _)| n)
        })
        .collect()
}

/// A module's bytes, decompressed.
/// The modules a module needs, from the `depends=a,b` entry of its
/// `.modinfo` section (NUL-separated `key=value` strings).
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(|d| d.trim().replace('-', "_"))
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

fn read_module(path: &Path, ext: &str) -> Result<Vec<u8>, ImageError> {
    match ext {
        ".ko.xz" => run("xz", &["-dc".as_ref(), path.as_os_str()]),
        ".ko.zst" => run("zstd", &["-dcq".as_ref(), path.as_os_str()]),
        ".ko.gz" => {
            let f = std::fs::File::open(path).map_err(io_err(path))?;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(f)
                .read_to_end(&mut out)
                .map_err(io_err(path))?;
            Ok(out)
        }
        _ => std::fs::read(path).map_err(io_err(path)),
    }
}

// ---------------------------------------------------------------- guest files

const INIT: &str = r#"#!/bin/sh
# megaplan guest init (generated by `megaplan image build`): set the guest up,
# then hand over to busybox init, which keeps megaplan-agent and acpid running.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
log() { echo "megaplan-init: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /run/megaplan

# Kernel modules, in dependency order; built-in or absent ones are not listed.
while read -r m; do
    [ -n "$m" ] || continue
    insmod "$m" 2>/dev/null || log "insmod $m failed"
done < /etc/megaplan/modules

ip link set lo up 2>/dev/null || ifconfig lo up

host=
mounts=
shell=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        megaplan.hostname=*|hostname=*) host=${arg#*=} ;;
        megaplan.mounts=*) mounts=${arg#*=} ;;
        megaplan.shell|megaplan.shell=1) shell=1 ;;
    esac
done
if [ -z "$host" ] && [ -r /sys/class/dmi/id/product_name ]; then
    p=$(cat /sys/class/dmi/id/product_name)
    case "$p" in ""|*" "*|*"("*) ;; *) host=$p ;; esac
fi
host=${host:-megaplan}
hostname "$host"
echo "$host" > /etc/hostname
echo "127.0.1.1 $host" >> /etc/hosts

# Disks: megaplan.mounts=vdb:/bro,vdc:/data (ext4).
: > /run/megaplan/mounts
for spec in $(echo "$mounts" | tr ',' ' '); do
    case "$spec" in *:/*) ;; *) log "bad mount $spec (want DEV:/PATH)"; continue ;; esac
    dev=${spec%%:*}
    path=${spec#*:}
    case "$dev" in /dev/*) ;; *) dev=/dev/$dev ;; esac
    i=0
    while [ ! -b "$dev" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    mkdir -p "$path"
    if mount -t ext4 "$dev" "$path" 2>/dev/null || mount "$dev" "$path"; then
        echo "$path" >> /run/megaplan/mounts
        log "mounted $dev at $path"
    else
        log "cannot mount $dev at $path"
    fi
done

# acpid opens the input devices once, when it starts: wait (bounded) for the button.
if [ -e /etc/megaplan/acpi ]; then
    i=0
    while ! ls /dev/input/event* >/dev/null 2>&1 && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi

if [ -n "$shell" ]; then
    echo "::respawn:-/bin/sh" >> /etc/inittab
fi
log "up; starting init"
exec /sbin/init
"#;

/// root, nobody, and the users packaged tools switch to.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:104::/nonexistent:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ntcpdump:x:104:\nnogroup:x:65534:\n";

const INITTAB: &str = "\
::respawn:/bin/sh -c '/sbin/megaplan-agent; sleep 1'
::respawn:/sbin/acpid -f -c /etc/acpi -l /dev/null
::shutdown:/etc/megaplan/shutdown
::shutdown:/bin/umount -a -r
::ctrlaltdel:/sbin/reboot
";

/// Syncs and unmounts the `megaplan.mounts` disks (read-only remount if busy).
const SHUTDOWN: &str = "#!/bin/sh
sync
if [ -r /run/megaplan/mounts ]; then
    for p in $(cat /run/megaplan/mounts); do
        umount \"$p\" 2>/dev/null || mount -o remount,ro \"$p\"
    done
fi
sync
";

/// busybox acpid runs CONFDIR/PWRF/00000080 on the ACPI power button.
const POWER_BUTTON: &str = "#!/bin/sh
echo 'megaplan: power button: shutting down' >/dev/console
/etc/megaplan/shutdown
poweroff -f
";

/// The applets busybox provides, as paths relative to `/`.
fn busybox_applets(busybox: &Path) -> Vec<String> {
    match run(&busybox.to_string_lossy(), &["--list-full".as_ref()]) {
        Ok(out) => {
            let list: Vec<String> = String::from_utf8_lossy(&out)
                .lines()
                .map(|l| l.trim().trim_start_matches('/').to_string())
                .filter(|l| !l.is_empty() && !l.contains(".."))
                .collect();
            if list.is_empty() {
                FALLBACK_APPLETS.iter().map(|s| s.to_string()).collect()
            } else {
                list
            }
        }
        Err(_) => FALLBACK_APPLETS.iter().map(|s| s.to_string()).collect(),
    }
}

/// Adds a binary (at `guest_path`) and, if it is dynamically linked, its
/// shared libraries and interpreter at their host paths.
fn add_binary(
    tree: &mut Tree,
    host_path: &Path,
    guest_path: &str,
    strip: bool,
    warnings: &mut Vec<String>,
) -> Result<(), ImageError> {
    let data = std::fs::read(host_path).map_err(io_err(host_path))?;
    for lib in shared_libraries(host_path, &data)? {
        let key = lib.to_string_lossy().into_owned();
        if !tree.has(&key) {
            let bytes = std::fs::read(&lib).map_err(io_err(&lib))?;
            tree.file(&key, 0o755, bytes);
        }
    }
    let data = if strip {
        stripped(host_path, data, warnings)
    } else {
        data
    };
    tree.file(guest_path, 0o755, data);
    Ok(())
}

fn default_agent() -> Result<PathBuf, ImageError> {
    let exe = std::env::current_exe().map_err(|source| ImageError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    Ok(exe
        .parent()
        .unwrap_or(Path::new("/"))
        .join("megaplan-agent"))
}

/// The initrd's (uncompressed) entries, the kernel and the loaded modules.
fn assemble(
    opts: &ImageOptions,
    kernel: &Kernel,
    warnings: &mut Vec<String>,
) -> Result<(Vec<CpioEntry>, Vec<String>), ImageError> {
    let mut tree = Tree::default();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "mnt", "root",
        "var", "var/log",
    ] {
        tree.dir(d, 0o755);
    }
    tree.dir("tmp", 0o1777);
    tree.dir("root", 0o700);
    tree.put(
        "dev/console",
        0o600,
        CpioData::CharDev { major: 5, minor: 1 },
    );
    tree.put("dev/null", 0o666, CpioData::CharDev { major: 1, minor: 3 });

    // busybox and its applets (all pointing at /bin/busybox).
    if !opts.busybox.is_file() {
        return Err(ImageError::BusyboxNotFound(opts.busybox.clone()));
    }
    add_binary(&mut tree, &opts.busybox, "bin/busybox", false, warnings)?;
    for applet in busybox_applets(&opts.busybox) {
        if applet != "bin/busybox" && !tree.has(&applet) {
            tree.symlink(&applet, "/bin/busybox");
        }
    }

    // The agent.
    let agent = match &opts.agent {
        Some(a) => a.clone(),
        None => default_agent()?,
    };
    if !agent.is_file() {
        return Err(ImageError::AgentNotFound(agent));
    }
    add_binary(&mut tree, &agent, GUEST_AGENT_PATH, opts.strip, warnings)?;

    // Extra binaries, at their host paths.
    for inc in &opts.include {
        let abs = if inc.is_absolute() {
            inc.clone()
        } else {
            std::env::current_dir()
                .map_err(io_err(Path::new(".")))?
                .join(inc)
        };
        if !abs.is_file() {
            return Err(ImageError::Invalid(format!(
                "--include {}: not a file",
                inc.display()
            )));
        }
        let guest = abs.to_string_lossy().into_owned();
        add_binary(&mut tree, &abs, &guest, opts.strip, warnings)?;
    }

    // Kernel modules.
    let mut index = BTreeMap::new();
    let kdir = kernel.modules.join("kernel");
    if kdir.is_dir() {
        index_modules(&kernel.modules, &kdir, &mut index)?;
    } else {
        warnings.push(format!(
            "{} has no kernel/ directory",
            kernel.modules.display()
        ));
    }
    let builtin = builtin_modules(&kernel.modules);
    let mut wanted: Vec<&str> = VIRTIO_MODULES.to_vec();
    if !builtin.contains("ext4") {
        wanted.extend_from_slice(EXT4_MODULES);
    }
    wanted.extend_from_slice(ACPI_MODULES);
    for (model, mods) in NIC_MODELS {
        for m in mods.iter() {
            if !wanted.contains(m) {
                wanted.push(m);
            }
        }
        if !mods
            .iter()
            .any(|m| builtin.contains(*m) || index.contains_key(*m))
        {
            warnings.push(format!(
                "kernel {}: no driver for nic model {model} (no module {}, not built in): a nic with driver=\"{model}\" gets no interface in the guest",
                kernel.version,
                mods.join(" or ")
            ));
        }
    }
    let moddir = format!("lib/modules/{}", kernel.version);
    let mut loaded = Vec::new();
    let mut order = String::new();
    let mut dep = String::new();
    // Depth first: a module's dependencies (its `depends=`) load before it.
    let mut stack: Vec<(String, bool)> = wanted
        .iter()
        .rev()
        .map(|n| (n.to_string(), false))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut data_of: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some((name, expanded)) = stack.pop() {
        if builtin.contains(&name) || (seen.contains(&name) && !expanded) {
            continue;
        }
        let Some((rel, ext)) = index.get(&name) else {
            if ESSENTIAL.contains(&name.as_str()) {
                return Err(ImageError::MissingModule {
                    version: kernel.version.clone(),
                    module: name.to_string(),
                });
            }
            let nic = NIC_MODELS.iter().any(|(_, m)| m.contains(&name.as_str()));
            if name != "libcrc32c" && name != "crc32c_generic" && !nic {
                warnings.push(format!(
                    "kernel {}: no module {name} (and not built in)",
                    kernel.version
                ));
            }
            continue;
        };
        if !expanded {
            seen.insert(name.clone());
            let data = read_module(&kernel.modules.join(rel), ext)?;
            stack.push((name.clone(), true));
            for d in module_depends(&data).into_iter().rev() {
                if !seen.contains(&d) {
                    stack.push((d, false));
                }
            }
            data_of.insert(name, data);
            continue;
        }
        let data = data_of.remove(&name).unwrap_or_default();
        let rel = rel.to_string_lossy();
        let rel = format!("{}.ko", rel.strip_suffix(ext).unwrap_or(&rel));
        tree.file(&format!("{moddir}/{rel}"), 0o644, data);
        order.push_str(&format!("/{moddir}/{rel}\n"));
        dep.push_str(&format!("{rel}:\n"));
        loaded.push(name.to_string());
    }
    if let Ok(b) = std::fs::read(kernel.modules.join("modules.builtin")) {
        tree.file(&format!("{moddir}/modules.builtin"), 0o644, b);
    }
    tree.file(&format!("{moddir}/modules.dep"), 0o644, dep);
    tree.dir(&moddir, 0o755);

    // /init and its configuration.
    tree.file("init", 0o755, INIT);
    tree.file("etc/megaplan/modules", 0o644, order);
    tree.file("etc/megaplan/shutdown", 0o755, SHUTDOWN);
    tree.file("etc/inittab", 0o644, INITTAB);
    // Users that tools drop privileges to (tcpdump runs as `tcpdump` on Debian).
    tree.file("etc/passwd", 0o644, PASSWD);
    tree.file("etc/group", 0o644, GROUP);
    if loaded.iter().any(|m| m == "button") || builtin.contains("button") {
        tree.file("etc/megaplan/acpi", 0o644, "button\n");
    }
    tree.file("etc/acpi/PWRF/00000080", 0o755, POWER_BUTTON);
    tree.file("etc/hosts", 0o644, "127.0.0.1 localhost\n");
    tree.file("etc/hostname", 0o644, "megaplan\n");
    Ok((tree.entries(), loaded))
}

/// The gzip-compressed initrd for `opts` with `kernel`'s modules.
fn initrd_bytes(
    opts: &ImageOptions,
    kernel: &Kernel,
    warnings: &mut Vec<String>,
) -> Result<(Vec<u8>, Vec<String>), ImageError> {
    let (entries, loaded) = assemble(opts, kernel, warnings)?;
    let cpio = build_cpio(&entries)?;
    Ok((gzip(&cpio), loaded))
}

/// Writes `data` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp-megaplan");
    std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Builds `OUT/NAME.kernel` and `OUT/NAME.initrd`.
pub fn build(opts: &ImageOptions) -> Result<ImageOutput, ImageError> {
    if opts.name.is_empty() || opts.name.contains('/') || opts.name.starts_with('.') {
        return Err(ImageError::Invalid(format!(
            "image name {:?} must be a plain file name",
            opts.name
        )));
    }
    let kernel = resolve_kernel(&opts.kernel)?;
    let mut warnings = Vec::new();
    let (initrd, modules) = initrd_bytes(opts, &kernel, &mut warnings)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    let kernel_out = opts.out_dir.join(format!("{}.kernel", opts.name));
    let initrd_out = opts.out_dir.join(format!("{}.initrd", opts.name));
    let image = std::fs::read(&kernel.image).map_err(io_err(&kernel.image))?;
    write_atomic(&kernel_out, &image)?;
    write_atomic(&initrd_out, &initrd)?;
    let builtin = builtin_modules(&kernel.modules);
    let nic_models: Vec<String> = NIC_MODELS
        .iter()
        .filter(|(_, mods)| {
            mods.iter()
                .any(|m| builtin.contains(*m) || modules.iter().any(|l| l == m))
        })
        .map(|(model, _)| model.to_string())
        .collect();
    let mut manifest =
        String::from("# nic models this initrd's guest has a driver for (megaplan image build)\n");
    for m in &nic_models {
        manifest.push_str(m);
        manifest.push('\n');
    }
    write_atomic(&nic_manifest(&initrd_out), manifest.as_bytes())?;
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    Ok(ImageOutput {
        kernel: abs(kernel_out),
        initrd: abs(initrd_out),
        kernel_version: kernel.version.clone(),
        modules,
        warnings,
        nic_models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed member: (name, mode, rdev, data).
    type Member = (String, u32, (u32, u32), Vec<u8>);

    /// Parses a newc archive back into its members.
    fn parse_cpio(mut b: &[u8]) -> Vec<Member> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at {off}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            assert_eq!((field(2), field(3), field(5)), (0, 0, 0), "uid gid mtime");
            let name = String::from_utf8(b[110..110 + namesize as usize - 1].to_vec()).unwrap();
            let hdr = (110 + namesize as usize).next_multiple_of(4);
            let data = b[hdr..hdr + size as usize].to_vec();
            let total = (hdr + size as usize).next_multiple_of(4);
            b = &b[total..];
            off += total;
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                assert_eq!(off % 4, 0);
                return out;
            }
            out.push((name, mode, (rmaj, rmin), data));
        }
    }

    #[test]
    fn cpio_roundtrip_sorted() {
        let entries = vec![
            CpioEntry {
                path: "bin/sh".into(),
                perm: 0o777,
                data: CpioData::Symlink("/bin/busybox".into()),
            },
            CpioEntry {
                path: "bin".into(),
                perm: 0o755,
                data: CpioData::Dir,
            },
            CpioEntry {
                path: "init".into(),
                perm: 0o755,
                data: CpioData::File(b"#!/bin/sh\n".to_vec()),
            },
            CpioEntry {
                path: "dev/console".into(),
                perm: 0o600,
                data: CpioData::CharDev { major: 5, minor: 1 },
            },
        ];
        let a = build_cpio(&entries).unwrap();
        assert_eq!(a.len() % 4, 0);
        let parsed = parse_cpio(&a);
        let names: Vec<&str> = parsed.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/sh", "dev/console", "init"]);
        assert_eq!(parsed[0].1, 0o040755);
        assert_eq!(parsed[1].1, 0o120777);
        assert_eq!(parsed[1].3, b"/bin/busybox");
        assert_eq!(parsed[2].1, 0o020600);
        assert_eq!(parsed[2].2, (5, 1));
        assert_eq!(parsed[3].1, 0o100755);
        assert_eq!(parsed[3].3, b"#!/bin/sh\n");
        // Input order does not matter.
        let mut rev = entries.clone();
        rev.reverse();
        assert_eq!(build_cpio(&rev).unwrap(), a);
        // The first header, byte for byte: ino 1, dir, nlink 2, name "bin".
        assert!(a.starts_with(
            b"07070100000001000041ED00000000000000000000000200000000000000000000000000000000000000000000000000000004"
                .to_ascii_lowercase()
                .as_slice()
        ));
        assert!(
            build_cpio(&[CpioEntry {
                path: "/".into(),
                perm: 0,
                data: CpioData::Dir
            }])
            .is_err()
        );
    }

    #[test]
    fn gzip_is_deterministic() {
        let data = b"hello hello hello".repeat(100);
        let a = gzip(&data);
        assert_eq!(a, gzip(&data));
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "mtime 0");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(a.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn ldd_parsing() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc8a5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c5c1000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c3e0000)
\tlibpcap.so.0.8 => not found
\tlinux-gate.so.1 =>  (0x00007f0000000000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c600000)
";
        let libs = parse_ldd(out);
        assert_eq!(
            libs.paths,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(libs.missing, ["libpcap.so.0.8"]);
        assert_eq!(parse_ldd("\tstatically linked\n"), LddLibs::default());
    }

    #[test]
    fn elf_interpreter_of_real_binaries() {
        // This test binary is dynamically linked unless built static.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if let Some(i) = elf_interpreter(&me) {
            assert!(i.starts_with('/') && i.contains("ld"), "{i}");
        }
        if let Ok(bb) = std::fs::read(DEFAULT_BUSYBOX)
            && elf_interpreter(&bb).is_none()
        {
            assert!(is_elf(&bb));
        }
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_interpreter(&[0x7f, b'E', b'L', b'F', 2, 1]), None);
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("virtio-net.ko.xz"),
            Some(("virtio_net".into(), ".ko.xz"))
        );
        assert_eq!(module_name("ext4.ko"), Some(("ext4".into(), ".ko")));
        assert_eq!(module_name("modules.dep"), None);
    }

    /// A fake kernel dir (guest-kernel.sh layout) with some modules.
    fn fake_kernel(dir: &Path) {
        let m = dir.join("lib/modules/9.9.9-test");
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("boot/vmlinuz-9.9.9-test"), b"KERNEL").unwrap();
        for (rel, data) in [
            ("kernel/drivers/virtio/virtio_ring.ko", b"RING".as_slice()),
            ("kernel/drivers/virtio/virtio_pci.ko", b"PCI"),
            ("kernel/drivers/char/virtio_console.ko", b"CONSOLE"),
            ("kernel/drivers/input/evdev.ko", b"EVDEV"),
        ] {
            let p = m.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        // A gzip-compressed module is decompressed at build time.
        std::fs::create_dir_all(m.join("kernel/drivers/acpi")).unwrap();
        std::fs::write(m.join("kernel/drivers/acpi/button.ko.gz"), gzip(b"BUTTON")).unwrap();
        std::fs::write(
            m.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
    }

    /// A .deb (made with `dpkg-deb -b`) holding xz- and zstd-compressed modules.
    #[test]
    fn build_from_deb() {
        let have = |p: &str| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if !Path::new(DEFAULT_BUSYBOX).is_file()
            || !have("dpkg-deb")
            || !have("xz")
            || !have("zstd")
        {
            eprintln!("skipping: needs busybox-static, dpkg-deb, xz and zstd");
            return;
        }
        let tmp = TempDir::new("image-deb-test").unwrap();
        let root = tmp.0.join("root");
        fake_kernel(&root);
        let m = root.join("lib/modules/9.9.9-test/kernel/drivers");
        run("xz", &[m.join("virtio/virtio_ring.ko").as_os_str()]).unwrap();
        run(
            "zstd",
            &["-q", "--rm"]
                .map(AsRef::as_ref)
                .into_iter()
                .chain([m.join("char/virtio_console.ko").as_os_str()])
                .collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::create_dir(root.join("DEBIAN")).unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            "Package: linux-image-test\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@example.org>\nDescription: test\n",
        )
        .unwrap();
        let deb = tmp.0.join("k.deb");
        run(
            "dpkg-deb",
            &["-b".as_ref(), root.as_os_str(), deb.as_os_str()],
        )
        .unwrap();
        let agent = tmp.0.join("agent");
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        let mut opts = ImageOptions::new(tmp.0.join("out"));
        opts.kernel = KernelSource::Deb(deb);
        opts.agent = Some(agent);
        opts.name = "deb".into();
        let out = build(&opts).unwrap();
        assert_eq!(out.kernel_version, "9.9.9-test");
        assert!(out.initrd.ends_with("out/deb.initrd"));
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(std::fs::read(&out.initrd).unwrap().as_slice())
            .read_to_end(&mut cpio)
            .unwrap();
        let entries = parse_cpio(&cpio);
        let get = |n: &str| entries.iter().find(|e| e.0 == n).map(|e| e.3.clone());
        let d = "lib/modules/9.9.9-test/kernel/drivers";
        assert_eq!(get(&format!("{d}/virtio/virtio_ring.ko")).unwrap(), b"RING");
        assert_eq!(
            get(&format!("{d}/char/virtio_console.ko")).unwrap(),
            b"CONSOLE"
        );
    }

    #[test]
    fn nic_drivers_are_included_with_their_dependencies_in_load_order() {
        if !Path::new(DEFAULT_BUSYBOX).is_file() {
            eprintln!("skipping: no {DEFAULT_BUSYBOX} (busybox-static)");
            return;
        }
        let tmp = TempDir::new("image-nic-test").unwrap();
        let kdir = tmp.0.join("k");
        fake_kernel(&kdir);
        let net = kdir.join("lib/modules/9.9.9-test/kernel/drivers/net");
        std::fs::create_dir_all(net.join("ethernet")).unwrap();
        for (rel, data) in [
            ("mii.ko", b"\x7fELF\0license=GPL\0depends=\0".as_slice()),
            (
                "ethernet/8139cp.ko",
                b"\x7fELF\0alias=pci:x\0depends=mii\0name=8139cp\0",
            ),
            ("ethernet/8139too.ko", b"\x7fELF\0depends=mii\0"),
            ("ethernet/e1000.ko", b"\x7fELF\0depends=\0"),
            ("vmxnet3.ko", b"\x7fELF\0"),
        ] {
            std::fs::write(net.join(rel), data).unwrap();
        }
        let agent = tmp.0.join("agent");
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        let mut opts = ImageOptions::new(tmp.0.join("out"));
        opts.kernel = KernelSource::Dir(kdir);
        opts.agent = Some(agent);
        let img = build(&opts).unwrap();
        let nic_part: Vec<&str> = img
            .modules
            .iter()
            .map(String::as_str)
            .skip_while(|m| *m != "e1000")
            .collect();
        assert_eq!(nic_part, ["e1000", "mii", "8139cp", "8139too", "vmxnet3"]);
        // e1000e is not there: said, naming the model.
        assert!(
            img.warnings
                .iter()
                .any(|w| w.contains("no driver for nic model e1000e")),
            "{:?}",
            img.warnings
        );
        assert!(!img.warnings.iter().any(|w| w.contains("nic model e1000 ")));
        // /init loads them in that order.
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(std::fs::read(&img.initrd).unwrap().as_slice())
            .read_to_end(&mut cpio)
            .unwrap();
        let entries = parse_cpio(&cpio);
        let order = entries
            .iter()
            .find(|e| e.0 == "etc/megaplan/modules")
            .map(|e| String::from_utf8(e.3.clone()).unwrap())
            .unwrap();
        let pos = |m: &str| {
            order
                .find(m)
                .unwrap_or_else(|| panic!("{m} not in {order}"))
        };
        assert!(pos("/mii.ko") < pos("/8139cp.ko"));
        assert!(pos("/8139cp.ko") < pos("/8139too.ko"));
        // Every model validate accepts is one the image knows.
        for model in crate::validate::NIC_MODEL_NAMES {
            assert!(NIC_MODELS.iter().any(|(m, _)| m == model), "{model}");
        }
    }

    #[test]
    fn build_is_deterministic() {
        if !Path::new(DEFAULT_BUSYBOX).is_file() {
            eprintln!("skipping: no {DEFAULT_BUSYBOX} (busybox-static)");
            return;
        }
        let tmp = TempDir::new("image-test").unwrap();
        let kdir = tmp.0.join("k");
        fake_kernel(&kdir);
        let agent = tmp.0.join("agent");
        std::fs::write(&agent, b"#!/bin/sh\necho agent\n").unwrap();
        let mut opts = ImageOptions::new(tmp.0.join("out1"));
        opts.kernel = KernelSource::Dir(kdir.clone());
        opts.agent = Some(agent);
        let a = build(&opts).unwrap();
        assert_eq!(a.kernel_version, "9.9.9-test");
        assert_eq!(
            a.modules,
            [
                "virtio_ring",
                "virtio_pci",
                "virtio_console",
                "evdev",
                "button"
            ]
        );
        assert!(
            a.warnings.iter().any(|w| w.contains("virtio_net")),
            "{:?}",
            a.warnings
        );
        assert!(a.kernel.ends_with("out1/miniccc.kernel"));
        assert_eq!(std::fs::read(&a.kernel).unwrap(), b"KERNEL");
        opts.out_dir = tmp.0.join("out2");
        let b = build(&opts).unwrap();
        let (ia, ib) = (
            std::fs::read(&a.initrd).unwrap(),
            std::fs::read(&b.initrd).unwrap(),
        );
        assert_eq!(ia, ib, "same inputs, same bytes");

        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(ia.as_slice())
            .read_to_end(&mut cpio)
            .unwrap();
        let entries = parse_cpio(&cpio);
        let get = |n: &str| entries.iter().find(|e| e.0 == n).map(|e| e.3.clone());
        assert_eq!(
            get("sbin/megaplan-agent").unwrap(),
            b"#!/bin/sh\necho agent\n"
        );
        assert_eq!(
            get("lib/modules/9.9.9-test/kernel/drivers/acpi/button.ko").unwrap(),
            b"BUTTON"
        );
        assert_eq!(
            String::from_utf8(get("etc/megaplan/modules").unwrap()).unwrap(),
            [
                "virtio/virtio_ring",
                "virtio/virtio_pci",
                "char/virtio_console",
                "input/evdev",
                "acpi/button"
            ]
            .map(|m| format!("/lib/modules/9.9.9-test/kernel/drivers/{m}.ko\n"))
            .concat()
        );
        assert_eq!(get("bin/sh").unwrap(), b"/bin/busybox");
        assert!(get("init").unwrap().starts_with(b"#!/bin/sh"));
        let names: Vec<&String> = entries.iter().map(|e| &e.0).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        // No virtio_console anywhere: refused.
        std::fs::remove_file(
            kdir.join("lib/modules/9.9.9-test/kernel/drivers/char/virtio_console.ko"),
        )
        .unwrap();
        assert!(matches!(
            build(&opts),
            Err(ImageError::MissingModule { module, .. }) if module == "virtio_console"
        ));
        opts.kernel = KernelSource::Dir(tmp.0.join("nothing"));
        assert!(build(&opts).is_err());
    }
}
