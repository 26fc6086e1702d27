//! Files in folders megaplan owns (the state folder, the owners folder), opened
//! relative to a directory descriptor and never through a symbolic link.
//!
//! Invariants:
//! - A [`Dir`] is opened `O_DIRECTORY | O_NOFOLLOW`: once open, renaming or
//!   replacing its path cannot redirect what is read or written in it.
//! - Every entry is named by a plain file name (no `/`, not `.` or `..`) and
//!   opened `O_NOFOLLOW`; files are created `0600` and folders `0700`
//!   whatever the process umask.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An open folder.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    pub path: PathBuf,
}

/// How to open a file in a [`Dir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    Read,
    /// Read and write, created (0600) if missing, not truncated.
    ReadWriteCreate,
    /// Write a new file; fails if the name exists (`O_EXCL`).
    CreateNew,
}

fn cstr(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a plain file name"),
        ));
    }
    Ok(CString::new(name).expect("no NUL"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The invoking user.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

impl Dir {
    /// Open `path` as a folder, refusing a link at its last component.
    /// With `create`, a missing folder is made (0700, parents too).
    /// `Ok(None)` when it does not exist and `create` is false.
    pub fn open(path: &Path, create: bool) -> io::Result<Option<Dir>> {
        let made = if create && std::fs::symlink_metadata(path).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)?;
            true
        } else {
            false
        };
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: a valid C string; the returned fd is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound && !create {
                return Ok(None);
            }
            return Err(not_a_folder(path, e));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let dir = Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        };
        if made {
            dir.chmod(0o700)?;
        }
        Ok(Some(dir))
    }

    fn chmod(&self, mode: libc::mode_t) -> io::Result<()> {
        // SAFETY: fchmod on a descriptor we own.
        check(unsafe { libc::fchmod(self.fd.as_raw_fd(), mode) }).map(|_| ())
    }

    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        // Through the descriptor, not the path: /proc/self/fd would follow.
        let f = self.dup()?;
        f.metadata()
    }

    fn dup(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    /// Why this folder is not safe to keep megaplan's files in, if it is not:
    /// it must belong to the invoking user and not be writable by others.
    pub fn unsafe_because(&self) -> io::Result<Option<String>> {
        let m = self.metadata()?;
        let me = euid();
        if m.uid() != me {
            return Ok(Some(format!(
                "it belongs to uid {}, not to the invoking user (uid {me})",
                m.uid()
            )));
        }
        if m.mode() & 0o022 != 0 {
            return Ok(Some(format!(
                "it is writable by {} (mode {:o})",
                if m.mode() & 0o002 != 0 {
                    "other users"
                } else {
                    "its group"
                },
                m.mode() & 0o7777
            )));
        }
        Ok(None)
    }

    /// Open `name` in this folder, never through a link.
    pub fn open_file(&self, name: &str, how: Open) -> io::Result<File> {
        let c = cstr(name)?;
        let flags = libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | match how {
                // Non-blocking: a FIFO planted under the name must not hang us.
                Open::Read => libc::O_RDONLY | libc::O_NONBLOCK,
                Open::ReadWriteCreate => libc::O_RDWR | libc::O_CREAT,
                Open::CreateNew => libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            };
        // SAFETY: a valid C string and a directory fd we own.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags,
                0o600 as libc::c_uint,
            )
        })?;
        // SAFETY: fd is a fresh descriptor we own.
        let f = unsafe { File::from_raw_fd(fd) };
        if how != Open::Read {
            let m = f.metadata()?;
            if !m.file_type().is_file() {
                return Err(io::Error::other(format!(
                    "{} is not a plain file",
                    self.path.join(name).display()
                )));
            }
            if how == Open::CreateNew {
                // The umask may have taken bits from 0600, never added any.
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            }
        }
        Ok(f)
    }

    /// The sub-folder `name` (made 0700 when `create` and missing), never through a link.
    pub fn subdir(&self, name: &str, create: bool) -> io::Result<Option<Dir>> {
        let c = cstr(name)?;
        let mut made = false;
        if create {
            // SAFETY: a valid C string and a directory fd we own.
            let rc = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) };
            if rc == 0 {
                made = true;
            } else {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
        // SAFETY: as above.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let path = self.path.join(name);
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound && !create {
                return Ok(None);
            }
            return Err(not_a_folder(&path, e));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let dir = Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path,
        };
        if made {
            dir.chmod(0o700)?;
        }
        Ok(Some(dir))
    }

    /// Is there an entry `name` (of any type; a link is not followed)?
    pub fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.lstat(name)?.is_some())
    }

    /// `fstatat(.., AT_SYMLINK_NOFOLLOW)`: (mode, uid), or None when absent.
    pub fn lstat(&self, name: &str) -> io::Result<Option<(u32, u32)>> {
        let c = cstr(name)?;
        // SAFETY: zeroed is a valid stat; fstatat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string, a directory fd we own, a stat to fill.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some((st.st_mode, st.st_uid)))
    }

    /// Rename `from` to `to`, both in this folder (replaces `to`; links are not followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid C strings and a directory fd we own.
        check(unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) }).map(|_| ())
    }

    /// A second name `to` for the file `from` (fails if `to` exists; a link is not followed).
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid C strings and a directory fd we own; flags 0 never follows.
        check(unsafe { libc::linkat(fd, a.as_ptr(), fd, b.as_ptr(), 0) }).map(|_| ())
    }

    /// Remove the file (or link) `name`; absent is fine.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid C string and a directory fd we own.
        match check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Remove the empty sub-folder `name` (never through a link: rmdir
    /// does not follow one).
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: a valid C string and a directory fd we own.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(|_| ())
    }

    /// Write `body` as the new content of `name`: a temp file (`O_EXCL`,
    /// 0600), fsync, rename over `name`, fsync the folder.
    pub fn write_atomic(&self, name: &str, body: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        // A leftover of an earlier process with our pid.
        self.unlink(&tmp)?;
        let mut f = self.open_file(&tmp, Open::CreateNew)?;
        let r = f.write_all(body).and_then(|()| f.sync_all());
        if let Err(e) = r {
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        drop(f);
        self.rename(&tmp, name)?;
        self.sync()
    }

    pub fn sync(&self) -> io::Result<()> {
        self.dup()?.sync_all()
    }

    /// `flock(LOCK_EX | LOCK_NB)` on the folder itself: true when taken.
    /// Held until this `Dir` is dropped (or the process dies); unlinking a
    /// file cannot release it.
    pub fn try_lock(&self) -> io::Result<bool> {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// `flock(LOCK_EX)`, waiting.
    pub fn lock_wait(&self) -> io::Result<()> {
        loop {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Read all of `name`, at most `limit` bytes (more is an error); None when absent.
    pub fn read(&self, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let f = match self.open_file(name, Open::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !f.metadata()?.file_type().is_file() {
            return Err(io::Error::other("not a plain file"));
        }
        let mut buf = Vec::new();
        f.take(limit + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            return Err(io::Error::other(format!("larger than {limit} bytes")));
        }
        Ok(Some(buf))
    }
}

fn not_a_folder(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
        io::Error::other(format!(
            "{} is a symbolic link or not a folder (megaplan never follows a link there)",
            path.display()
        ))
    } else {
        e
    }
}

/// Run the `#[ignore]`d test `name` (its full path) in a child test process
/// whose umask is 0, and require it to pass: the umask is process-wide, so
/// it is never changed under the other tests of this process.
#[cfg(test)]
pub(crate) fn run_with_umask_0(name: &str) {
    run_with_umask(name, 0);
}

/// [`run_with_umask_0`] with another umask.
#[cfg(test)]
pub(crate) fn run_with_umask(name: &str, mask: libc::mode_t) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} with umask {mask:o}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In a test run by [`run_with_umask_0`]: the umask is really 0.
#[cfg(test)]
pub(crate) fn assert_umask_0() {
    // SAFETY: umask has no preconditions; set back at once.
    let m = unsafe { libc::umask(0) };
    unsafe { libc::umask(m) };
    assert_eq!(m, 0, "run this test through run_with_umask_0");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_links_and_odd_names() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path(), false).unwrap().unwrap();
        std::fs::write(t.path().join("victim"), "keep me").unwrap();
        let fifo = std::ffi::CString::new(t.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(
            d.read("fifo", 10).is_err(),
            "a FIFO is refused, not waited on"
        );
        std::os::unix::fs::symlink(t.path().join("victim"), t.path().join("lnk")).unwrap();
        assert!(d.open_file("lnk", Open::ReadWriteCreate).is_err());
        assert!(d.open_file("lnk", Open::Read).is_err());
        assert!(d.open_file("../x", Open::CreateNew).is_err());
        assert!(d.open_file("..", Open::Read).is_err());
        assert!(d.subdir("lnk", true).is_err());
        let link_dir = t.path().join("dirlink");
        std::os::unix::fs::symlink(t.path(), &link_dir).unwrap();
        assert!(Dir::open(&link_dir, false).is_err());
        assert_eq!(
            std::fs::read_to_string(t.path().join("victim")).unwrap(),
            "keep me"
        );
        assert!(d.exists("lnk").unwrap());
        d.unlink("lnk").unwrap();
        assert!(!d.exists("lnk").unwrap());
        assert!(t.path().join("victim").exists());
    }
}
