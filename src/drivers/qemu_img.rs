//! Disk images with `qemu-img`, `mkfs.ext4 -d` and `debugfs` (no mounts, no nbd).
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
    #[error("debugfs could not extract {guest_path:?} from {image}: {message}")]
    Debugfs {
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
const DEBUGFS: &str = "debugfs";

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
        let f = std::fs::File::create(raw_path).map_err(io_err(raw_path))?;
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

/// Quotes one argument for debugfs' request parser (libss): inside double quotes
/// a doubled `""` stands for one `"`.
fn debugfs_quote(arg: &str) -> Result<String, QemuImgError> {
    if arg.contains(['\n', '\r', '\0']) {
        return Err(QemuImgError::Invalid(format!(
            "{arg:?}: line breaks are not allowed in a debugfs path"
        )));
    }
    Ok(format!("\"{}\"", arg.replace('"', "\"\"")))
}

/// Copies `guest_path` (a file or a directory, recursively) out of the ext4
/// filesystem in `image` into `to_dir` (created if missing) with
/// `debugfs -R 'rdump GUEST_PATH TO_DIR'`. A qcow2 image is first converted to a raw
/// temporary file in the system temporary directory (`TMPDIR`). Like `cp -r`, the
/// last component of `guest_path` is created inside `to_dir`; `/` copies the whole
/// filesystem (lost+found included) into `to_dir` itself.
pub async fn extract(
    image: &Path,
    format: ImageFormat,
    guest_path: &str,
    to_dir: &Path,
) -> Result<(), QemuImgError> {
    if !guest_path.starts_with('/') {
        return Err(QemuImgError::Invalid(format!(
            "guest path {guest_path:?} must be absolute"
        )));
    }
    let image = absolute(image)?;
    let to_dir = absolute(to_dir)?;
    std::fs::create_dir_all(&to_dir).map_err(io_err(&to_dir))?;
    let to_str = to_dir
        .to_str()
        .ok_or_else(|| QemuImgError::Invalid(format!("{}: not valid UTF-8", to_dir.display())))?;

    let tmp;
    let raw = match format {
        ImageFormat::Raw => &image,
        ImageFormat::Qcow2 => {
            tmp = TempFile::beside(
                &std::env::temp_dir().join(image.file_name().unwrap_or(OsStr::new("image"))),
                "extract",
            )?;
            convert(&image, ImageFormat::Qcow2, &tmp.0, ImageFormat::Raw).await?;
            &tmp.0
        }
    };

    // rdump of "/" dumps the root's entries (lost+found too) into to_dir itself.
    let trimmed = guest_path.trim_end_matches('/');
    let source = if trimmed.is_empty() { "/" } else { trimmed };
    let request = format!(
        "rdump {} {}",
        debugfs_quote(source)?,
        debugfs_quote(to_str)?
    );
    // Read-only open (no -w); the request is one argv element.
    let args = vec![os("-R"), os(&request), raw.into()];
    let (_, stderr) = run(sbin_tool(DEBUGFS), args).await?;
    // debugfs exits 0 even when the request fails: its complaints go to stderr,
    // after the version banner.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !complaints.is_empty() {
        return Err(QemuImgError::Debugfs {
            image,
            guest_path: guest_path.to_string(),
            message: complaints.join("; "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_for_debugfs() {
        assert_eq!(debugfs_quote("/a b").unwrap(), "\"/a b\"");
        assert_eq!(debugfs_quote("/x\"y").unwrap(), "\"/x\"\"y\"");
        assert!(debugfs_quote("/a\nb").is_err());
    }

    #[test]
    fn format_round_trip() {
        for f in [ImageFormat::Qcow2, ImageFormat::Raw] {
            assert_eq!(f.as_str().parse::<ImageFormat>().unwrap(), f);
        }
        assert!("vmdk".parse::<ImageFormat>().is_err());
    }
}
