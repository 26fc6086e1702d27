//! Disk images with `qemu-img` and `mkfs.ext4 -d`; ext4 is read in-process
//! (`ext4-view`) to extract files (no mounts, no nbd).
//!
//! Every function runs its tools with an argv (never a shell). Paths handed to
//! `qemu-img` are made absolute first so that a name such as `nbd:x` or `json:{…}`
//! can never be read as a protocol, and so that a backing file recorded in an
//! overlay does not depend on the current directory.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// The two image formats megaplan creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = QemuImgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qcow2" => Ok(ImageFormat::Qcow2),
            "raw" => Ok(ImageFormat::Raw),
            other => Err(QemuImgError::UnknownFormat(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error("cannot run {program}: {source}{hint}", hint = missing_hint(source))]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot extract {guest_path:?} from {image}: {message}")]
    Ext4 {
        image: PathBuf,
        guest_path: String,
        message: String,
    },
    #[error("cannot parse `qemu-img info` output for {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown image format {0:?} (expected qcow2 or raw)")]
    UnknownFormat(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

fn missing_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::NotFound {
        " (not installed? run scripts/setup-host.sh)"
    } else {
        ""
    }
}

/// What `qemu-img info --output=json` says about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The format as qemu-img names it (`qcow2`, `raw`, or any other it knows).
    pub format: String,
    pub virtual_size: u64,
    /// Bytes allocated on the host, when qemu-img reports it.
    pub actual_size: Option<u64>,
    /// The backing file as recorded in the image.
    pub backing_file: Option<PathBuf>,
    /// The backing file resolved against the image's directory.
    pub full_backing_file: Option<PathBuf>,
    pub backing_format: Option<String>,
}

impl ImageInfo {
    /// The format when it is one megaplan creates.
    pub fn image_format(&self) -> Option<ImageFormat> {
        self.format.parse().ok()
    }
}

#[derive(Deserialize)]
struct RawInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size")]
    actual_size: Option<u64>,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<PathBuf>,
    #[serde(rename = "full-backing-filename")]
    full_backing_filename: Option<PathBuf>,
    #[serde(rename = "backing-filename-format")]
    backing_filename_format: Option<String>,
}

const QEMU_IMG: &str = "qemu-img";
const MKFS_EXT4: &str = "mkfs.ext4";

/// e2fsprogs live in /sbin and /usr/sbin, often not on a user's PATH.
fn sbin_tool(name: &str) -> OsString {
    if let Ok(path) = std::env::var("PATH")
        && std::env::split_paths(&path).any(|d| d.join(name).is_file())
    {
        return name.into();
    }
    for dir in ["/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.into_os_string();
        }
    }
    name.into()
}

fn absolute(path: &Path) -> Result<PathBuf, QemuImgError> {
    if path.as_os_str().is_empty() {
        return Err(QemuImgError::Invalid("empty path".into()));
    }
    std::path::absolute(path).map_err(|source| QemuImgError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn display_command(program: &OsStr, args: &[OsString]) -> String {
    let mut s = program.to_string_lossy().into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a tool to completion; returns its stdout and stderr, or an error with stderr.
async fn run(
    program: impl AsRef<OsStr>,
    args: Vec<OsString>,
) -> Result<(Vec<u8>, String), QemuImgError> {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| QemuImgError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(QemuImgError::Failed {
            command: display_command(program, &args),
            status: out.status,
            stderr,
        });
    }
    Ok((out.stdout, stderr))
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// `qemu-img create -f FORMAT [-b BACKING -F BFORMAT] PATH SIZE`.
///
/// With a backing file the image becomes its copy-on-write child (qcow2 only);
/// `size_bytes` may then be 0 to take the backing file's size.
pub async fn create(
    path: &Path,
    format: ImageFormat,
    size_bytes: u64,
    backing: Option<(&Path, ImageFormat)>,
) -> Result<(), QemuImgError> {
    let path = absolute(path)?;
    let mut args = vec![os("create"), os("-q"), os("-f"), os(format.as_str())];
    if let Some((base, base_format)) = backing {
        if format != ImageFormat::Qcow2 {
            return Err(QemuImgError::Invalid(format!(
                "a {format} image cannot have a backing file"
            )));
        }
        args.extend([
            os("-b"),
            absolute(base)?.into(),
            os("-F"),
            os(base_format.as_str()),
        ]);
    } else if size_bytes == 0 {
        return Err(QemuImgError::Invalid(
            "image size 0 without a backing file".into(),
        ));
    }
    args.push(path.into());
    if size_bytes > 0 || backing.is_none() {
        args.push(os(size_bytes.to_string()));
    }
    run(QEMU_IMG, args).await.map(drop)
}

/// A qcow2 child of `base` (whose format qemu-img detects) at `overlay_path`.
pub async fn create_overlay(base: &Path, overlay_path: &Path) -> Result<(), QemuImgError> {
    let base_info = info(base).await?;
    let base_format = base_info
        .image_format()
        .ok_or_else(|| QemuImgError::UnknownFormat(base_info.format.clone()))?;
    create(
        overlay_path,
        ImageFormat::Qcow2,
        0,
        Some((base, base_format)),
    )
    .await
}

/// `qemu-img info --output=json -U PATH` (`-U`: also works while a VM has it open).
pub async fn info(path: &Path) -> Result<ImageInfo, QemuImgError> {
    let path = absolute(path)?;
    let args = vec![
        os("info"),
        os("--output=json"),
        os("-U"),
        path.clone().into(),
    ];
    let (stdout, _) = run(QEMU_IMG, args).await?;
    let raw: RawInfo =
        serde_json::from_slice(&stdout).map_err(|source| QemuImgError::Parse { path, source })?;
    Ok(ImageInfo {
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing_file: raw.backing_filename,
        full_backing_file: raw.full_backing_filename,
        backing_format: raw.backing_filename_format,
    })
}

/// `qemu-img convert -f FROM -O TO SRC DST`.
pub async fn convert(
    src: &Path,
    src_format: ImageFormat,
    dst: &Path,
    dst_format: ImageFormat,
) -> Result<(), QemuImgError> {
    let args = vec![
        os("convert"),
        os("-q"),
        os("-f"),
        os(src_format.as_str()),
        os("-O"),
        os(dst_format.as_str()),
        absolute(src)?.into(),
        absolute(dst)?.into(),
    ];
    run(QEMU_IMG, args).await.map(drop)
}

/// A temporary file that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn beside(path: &Path, tag: &str) -> Result<Self, QemuImgError> {
        let name = path.file_name().unwrap_or_else(|| OsStr::new("image"));
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{tag}-{}.tmp", std::process::id()));
        Ok(TempFile(absolute(path)?.with_file_name(tmp)))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QemuImgError + '_ {
    move |source| QemuImgError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image of `size_bytes` holding an ext4 filesystem, filled from `source_dir`
/// when given (`mkfs.ext4 -d`). It is built as a raw file beside `path` and converted
/// when `format` is qcow2.
pub async fn make_ext4(
    path: &Path,
    format: ImageFormat,
    size_bytes: u64,
    source_dir: Option<&Path>,
) -> Result<(), QemuImgError> {
    if size_bytes < 1024 * 1024 {
        return Err(QemuImgError::Invalid(format!(
            "{size_bytes} bytes is too small for an ext4 filesystem"
        )));
    }
    if let Some(dir) = source_dir
        && !dir.is_dir()
    {
        return Err(QemuImgError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let path = absolute(path)?;
    let tmp = TempFile::beside(&path, "ext4")?;
    let raw_path = match format {
        ImageFormat::Raw => &path,
        ImageFormat::Qcow2 => &tmp.0,
    };
    {
        // Never through a link: one left there is removed (unlinked itself),
        // and O_NOFOLLOW refuses one planted in between.
        use std::os::unix::fs::OpenOptionsExt;
        if std::fs::symlink_metadata(raw_path).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(raw_path).map_err(io_err(raw_path))?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(raw_path)
            .map_err(io_err(raw_path))?;
        f.set_len(size_bytes).map_err(io_err(raw_path))?;
    }
    let mut args = vec![os("-q"), os("-F"), os("-t"), os("ext4")];
    if let Some(dir) = source_dir {
        args.extend([os("-d"), absolute(dir)?.into()]);
    }
    args.push(raw_path.into());
    if let Err(e) = run(sbin_tool(MKFS_EXT4), args).await {
        if format == ImageFormat::Raw {
            let _ = std::fs::remove_file(&path);
        }
        return Err(e);
    }
    // Fault injection for the crash tests: killed mid-creation, with the
    // temporary image written (a SIGKILL runs no destructor).
    if std::env::var_os("MEGAPLAN_TEST_CRASH_DURING").is_some_and(|v| v == "ext4") {
        // SAFETY: raising a signal on ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    if format == ImageFormat::Qcow2 {
        convert(&tmp.0, ImageFormat::Raw, &path, ImageFormat::Qcow2).await?;
    }
    Ok(())
}

/// What [`extract`] copied, and what it left out (with the reason).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Entries skipped: device nodes, FIFOs, sockets, duplicate or unsafe
    /// names, names that already exist in the destination.
    pub warnings: Vec<String>,
}

/// Deepest directory nesting copied (a corrupt filesystem can loop).
const MAX_EXTRACT_DEPTH: usize = 256;

/// A private folder (0700, random name) removed with its contents when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(parent: &Path, tag: &str) -> Result<Self, QemuImgError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut last = None;
        for _ in 0..16 {
            let p = parent.join(format!(".megaplan-{tag}-{}", uuid::Uuid::new_v4().simple()));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(PrivateDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        Err(io_err(parent)(last.unwrap_or_else(|| {
            std::io::Error::other("cannot create a private folder")
        })))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `guest_path` (a file, symlink or directory, recursively) out of the
/// ext4 filesystem in `image` into `to_dir` (created if missing). The
/// filesystem is read in-process (`ext4-view`), never mounted; a qcow2 image is
/// first converted to a raw file in a private folder (0700) of the system
/// temporary directory (`TMPDIR`). Like `cp -r`, the last component of
/// `guest_path` is created inside `to_dir`; `/` copies the whole filesystem
/// (lost+found included) into `to_dir` itself.
///
/// The filesystem is the guest's and so untrusted. Every output entry is
/// created relative to a directory descriptor this function just created
/// (`mkdirat`, `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, `symlinkat`), so nothing is
/// ever written through a link or outside `to_dir`, and nothing that exists is
/// overwritten. Symlinks are copied as symlinks (never followed); modes lose
/// setuid/setgid/sticky and group/world write (owner keeps read/write);
/// ownership is not copied. Device nodes, FIFOs, sockets, duplicate names
/// and names already present in `to_dir` are skipped with a warning in the
/// report. On an error, the entries created so far are removed again.
pub async fn extract(
    image: &Path,
    format: ImageFormat,
    guest_path: &str,
    to_dir: &Path,
) -> Result<ExtractReport, QemuImgError> {
    if !guest_path.starts_with('/') {
        return Err(QemuImgError::Invalid(format!(
            "guest path {guest_path:?} must be absolute"
        )));
    }
    if guest_path.contains('\0') || guest_path.split('/').any(|c| c == "." || c == "..") {
        return Err(QemuImgError::Invalid(format!(
            "guest path {guest_path:?} must not contain '.' or '..' components"
        )));
    }
    let image = absolute(image)?;
    let to_dir = absolute(to_dir)?;
    std::fs::create_dir_all(&to_dir).map_err(io_err(&to_dir))?;

    let tmp;
    let raw = match format {
        ImageFormat::Raw => image.clone(),
        ImageFormat::Qcow2 => {
            tmp = PrivateDir::new(&std::env::temp_dir(), "extract")?;
            let raw = tmp.0.join("disk.raw");
            convert(&image, ImageFormat::Qcow2, &raw, ImageFormat::Raw).await?;
            raw
        }
    };
    let guest_path = guest_path.to_string();
    let image2 = image.clone();
    tokio::task::spawn_blocking(move || extract_blocking(&raw, &image2, &guest_path, &to_dir))
        .await
        .map_err(|e| QemuImgError::Invalid(format!("extraction task failed: {e}")))?
}

fn ext4_err(image: &Path, guest_path: &str, e: impl fmt::Display) -> QemuImgError {
    QemuImgError::Ext4 {
        image: image.to_path_buf(),
        guest_path: guest_path.to_string(),
        message: e.to_string(),
    }
}

fn extract_blocking(
    raw: &Path,
    image: &Path,
    guest_path: &str,
    to_dir: &Path,
) -> Result<ExtractReport, QemuImgError> {
    let file = std::fs::File::open(raw).map_err(io_err(raw))?;
    let fs = ext4_view::Ext4::load(Box::new(file)).map_err(|e| ext4_err(image, "/", e))?;
    // The destination is the user's own choice: it may be reached through a
    // link. Everything below it is created by us.
    let top = std::fs::File::open(to_dir).map_err(io_err(to_dir))?;
    if !top.metadata().map_err(io_err(to_dir))?.is_dir() {
        return Err(QemuImgError::Invalid(format!(
            "{} is not a directory",
            to_dir.display()
        )));
    }
    let mut x = Extractor {
        fs: &fs,
        image,
        report: ExtractReport::default(),
        created_top: Vec::new(),
        budget: std::fs::metadata(raw).map_err(io_err(raw))?.len(),
    };
    let trimmed = guest_path.trim_end_matches('/');
    let result = if trimmed.is_empty() {
        let root = ext4_view::PathBuf::new("/");
        x.children(&root, top.as_fd(), 0)
    } else {
        let gp = ext4_view::PathBuf::new(trimmed);
        match fs.symlink_metadata(&gp) {
            Err(ext4_view::Ext4Error::NotFound) => Err(ext4_err(image, guest_path, "not found")),
            Err(e) => Err(ext4_err(image, guest_path, e)),
            Ok(_) => {
                let name = trimmed.rsplit('/').next().unwrap_or(trimmed).as_bytes();
                x.entry(&gp, name, top.as_fd(), 0)
            }
        }
    };
    match result {
        Ok(()) => Ok(x.report),
        Err(e) => {
            // Leave nothing half-copied behind.
            for name in &x.created_top {
                let p = to_dir.join(std::ffi::OsStr::from_bytes(name));
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        let _ = std::fs::remove_dir_all(&p);
                    }
                    Ok(_) => {
                        let _ = std::fs::remove_file(&p);
                    }
                    Err(_) => {}
                }
            }
            Err(e)
        }
    }
}

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

struct Extractor<'a> {
    fs: &'a ext4_view::Ext4,
    image: &'a Path,
    report: ExtractReport,
    /// Names created directly in `to_dir` (removed again on an error).
    created_top: Vec<Vec<u8>>,
    /// Bytes the regular files may add up to: the filesystem's own size, so
    /// that hard links and sparse files cannot make a small disk fill the host.
    budget: u64,
}

/// Owner keeps read/write (and search on directories); nobody else may write;
/// setuid, setgid and sticky are dropped.
pub fn sanitize_mode(mode: u32, dir: bool) -> u32 {
    (mode & 0o755) | if dir { 0o700 } else { 0o600 }
}

fn cstr(name: &[u8]) -> Option<std::ffi::CString> {
    std::ffi::CString::new(name).ok()
}

impl Extractor<'_> {
    fn warn(&mut self, path: &ext4_view::PathBuf, why: &str) {
        self.report
            .warnings
            .push(format!("{}: {why}", path.display()));
    }

    fn children(
        &mut self,
        dir: &ext4_view::PathBuf,
        fd: BorrowedFd<'_>,
        depth: usize,
    ) -> Result<(), QemuImgError> {
        let gp = dir.display().to_string();
        let entries = self
            .fs
            .read_dir(dir)
            .map_err(|e| ext4_err(self.image, &gp, e))?;
        let mut seen = std::collections::HashSet::new();
        for entry in entries {
            let entry = entry.map_err(|e| ext4_err(self.image, &gp, e))?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let path = entry.path();
            if !seen.insert(name.clone()) {
                self.warn(
                    &path,
                    "duplicate name in its directory; kept the first, skipped this one",
                );
                continue;
            }
            self.entry(&path, &name, fd, depth)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        path: &ext4_view::PathBuf,
        name: &[u8],
        parent: BorrowedFd<'_>,
        depth: usize,
    ) -> Result<(), QemuImgError> {
        let gp = path.display().to_string();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            self.warn(path, "unsafe name; skipped");
            return Ok(());
        }
        let Some(cname) = cstr(name) else {
            self.warn(path, "unsafe name; skipped");
            return Ok(());
        };
        let top = depth == 0;
        let meta = self
            .fs
            .symlink_metadata(path)
            .map_err(|e| ext4_err(self.image, &gp, e))?;
        let mode = u32::from(meta.mode());
        let kind = meta.file_type();
        if kind.is_dir() {
            if depth >= MAX_EXTRACT_DEPTH {
                self.warn(path, "directories nested too deep; skipped");
                return Ok(());
            }
            // SAFETY: valid descriptor and NUL-terminated name.
            if unsafe { libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o700) } != 0 {
                return self.exists_or(path, std::io::Error::last_os_error());
            }
            if top {
                self.created_top.push(name.to_vec());
            }
            let fd = open_at(parent, &cname, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(|e| ext4_err(self.image, &gp, format!("open the copy: {e}")))?;
            self.report.dirs += 1;
            self.children(path, fd.as_fd(), depth + 1)?;
            fchmod(&fd, sanitize_mode(mode, true))
                .map_err(|e| ext4_err(self.image, &gp, format!("chmod the copy: {e}")))?;
        } else if kind.is_regular_file() {
            let fd = match open_at(
                parent,
                &cname,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            ) {
                Ok(fd) => fd,
                Err(e) => return self.exists_or(path, e),
            };
            if top {
                self.created_top.push(name.to_vec());
            }
            let mut out = std::fs::File::from(fd);
            let mut src = self
                .fs
                .open(path)
                .map_err(|e| ext4_err(self.image, &gp, e))?;
            let len = src.metadata().len();
            if len > self.budget {
                return Err(ext4_err(
                    self.image,
                    &gp,
                    "the files add up to more than the disk itself holds (hard links or \
                     sparse files?); refusing to fill the host",
                ));
            }
            self.budget -= len;
            let copied = std::io::copy(&mut std::io::Read::take(&mut src, len), &mut out)
                .map_err(|e| ext4_err(self.image, &gp, format!("copy: {e}")))?;
            if copied != len {
                return Err(ext4_err(self.image, &gp, "shorter than its size"));
            }
            use std::os::unix::fs::PermissionsExt;
            out.set_permissions(std::fs::Permissions::from_mode(sanitize_mode(mode, false)))
                .map_err(|e| ext4_err(self.image, &gp, format!("chmod the copy: {e}")))?;
            self.report.files += 1;
        } else if kind.is_symlink() {
            let target = self
                .fs
                .read_link(path)
                .map_err(|e| ext4_err(self.image, &gp, e))?;
            let Some(ctarget) = cstr(target.as_ref()) else {
                self.warn(path, "symlink target holds a NUL byte; skipped");
                return Ok(());
            };
            // SAFETY: valid descriptor and NUL-terminated strings.
            if unsafe { libc::symlinkat(ctarget.as_ptr(), parent.as_raw_fd(), cname.as_ptr()) } != 0
            {
                return self.exists_or(path, std::io::Error::last_os_error());
            }
            if top {
                self.created_top.push(name.to_vec());
            }
            self.report.symlinks += 1;
        } else {
            let what = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device node"
            };
            self.warn(path, &format!("{what}; skipped"));
        }
        Ok(())
    }

    /// A name that exists already is skipped with a warning (never
    /// overwritten); any other failure is an error.
    fn exists_or(
        &mut self,
        path: &ext4_view::PathBuf,
        e: std::io::Error,
    ) -> Result<(), QemuImgError> {
        if e.raw_os_error() == Some(libc::EEXIST) {
            self.warn(path, "already exists in the destination; not overwritten");
            Ok(())
        } else {
            Err(ext4_err(
                self.image,
                &path.display().to_string(),
                format!("create the copy: {e}"),
            ))
        }
    }
}

/// `openat(parent, name, flags|O_NOFOLLOW|O_CLOEXEC, mode)`.
fn open_at(
    parent: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    flags: i32,
    mode: libc::mode_t,
) -> std::io::Result<OwnedFd> {
    // SAFETY: valid descriptor and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fchmod(fd: &OwnedFd, mode: u32) -> std::io::Result<()> {
    // SAFETY: valid descriptor.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_sanitised() {
        assert_eq!(sanitize_mode(0o4755, false), 0o755);
        assert_eq!(sanitize_mode(0o2777, false), 0o755);
        assert_eq!(sanitize_mode(0o1777, true), 0o755);
        assert_eq!(sanitize_mode(0o000, false), 0o600);
        assert_eq!(sanitize_mode(0o000, true), 0o700);
        assert_eq!(sanitize_mode(0o640, false), 0o640);
    }

    #[test]
    fn format_round_trip() {
        for f in [ImageFormat::Qcow2, ImageFormat::Raw] {
            assert_eq!(f.as_str().parse::<ImageFormat>().unwrap(), f);
        }
        assert!("vmdk".parse::<ImageFormat>().is_err());
    }
}
