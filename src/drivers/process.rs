//! QEMU processes: pidfiles, whether a pid is a live QEMU, waiting for its exit
//! through a pidfd, and SIGKILL. Uses only the runtime folder layout.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::runtime;

#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad pidfile {path}: {content:?}")]
    Bad { path: PathBuf, content: String },
}

/// The pid in a VM's runtime folder, if its pidfile is there and readable
/// (for refresh and stop, where a missing or garbled file means "no pid").
pub fn pid_in(runtime_dir: &Path) -> Option<u32> {
    read_pidfile(&runtime::pidfile(runtime_dir)).ok().flatten()
}

/// The pid in the pidfile at `path`; `None` when there is no such file.
pub fn read_pidfile(path: &Path) -> Result<Option<u32>, PidfileError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| PidfileError::Bad {
            path: path.to_path_buf(),
            content: s,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PidfileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// True when `pid` is a live process whose command is QEMU (`/proc/PID/cmdline`),
/// so that a reused pid or a zombie does not count.
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
    base.starts_with(b"qemu")
}

/// A pidfd: becomes readable when the process exits, and signals go to exactly
/// that process even if its pid is reused.
pub struct PidFd(tokio::io::unix::AsyncFd<OwnedFd>);

impl PidFd {
    pub fn open(pid: u32) -> Option<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a freshly opened descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the OwnedFd, whose raw fd stays open and the same
        // until the AsyncFd is dropped.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .ok()
        .map(PidFd)
    }

    pub fn kill(&self) -> std::io::Result<()> {
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: pidfd_send_signal(fd, sig, info = NULL, flags = 0).
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Waits up to `timeout` for the process to exit; true when it did.
pub async fn wait_exit(pid: u32, pidfd: Option<&PidFd>, timeout: Duration) -> bool {
    let wait = async {
        match pidfd {
            Some(fd) => {
                let _ = fd.0.readable().await;
            }
            None => {
                while process_alive(pid) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.is_ok() || !process_alive(pid)
}

/// Resolves when QEMU process `pid` has exited (at once if it is not a
/// running QEMU): a pidfd, so no polling, where the kernel has them.
pub async fn exited(pid: u32) {
    if !process_alive(pid) {
        return;
    }
    let fd = PidFd::open(pid);
    // Opened after the check: the pid could have gone (and come back) between.
    if !process_alive(pid) {
        return;
    }
    wait_exit(pid, fd.as_ref(), Duration::MAX).await;
}

/// Sends SIGKILL to `pid` if it is still a live QEMU (for when no pidfd could be
/// opened; prefer [`PidFd::kill`]).
pub fn kill_pid(pid: u32) {
    if process_alive(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_qemu_is_not_alive() {
        assert!(!process_alive(std::process::id()));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn pidfile_contents() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pid_in(dir.path()), None);
        let pf = runtime::pidfile(dir.path());
        std::fs::write(&pf, "1234\n").unwrap();
        assert_eq!(read_pidfile(&pf).unwrap(), Some(1234));
        assert_eq!(pid_in(dir.path()), Some(1234));
        std::fs::write(&pf, "12x").unwrap();
        assert!(matches!(read_pidfile(&pf), Err(PidfileError::Bad { .. })));
        assert_eq!(pid_in(dir.path()), None);
    }
}
