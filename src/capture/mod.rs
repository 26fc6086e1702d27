//! Captures: the host records the frames of a tap, or of a network's member
//! taps, into `.megaplan/EXP/captures/NAME.pcap` (pcap, readable by tcpdump
//! and Wireshark), from the host side, with no tool in the guest.
//!
//! A recorder must outlive the megaplan command that starts it (there is no
//! daemon): [`start`] runs `/proc/self/exe capture-record` (argv only),
//! detached (its own session; it forks once more so nothing waits on it),
//! hands it the capture file as a descriptor opened here without following a
//! link, and waits for its "ready" line: when `start` returns, every socket
//! is bound, so the VM's steps that follow are recorded. The recorder's pid
//! is kept in `RUNTIME/EXP/.captures/NAME.pid`; its argv carries the
//! capture's ownership marker, which [`recorder_pid`] checks before
//! trusting a pid (a reused pid is not ours). [`stop`] ends it with SIGTERM
//! (the file is flushed and kept); `destroy --all` removes the files
//! ([`remove_files`]).
//!
//! The recorder itself is [`record`]; reading a file back for checks is
//! [`read_frames`].

pub mod cli;
pub mod record;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::lab::CaptureSpec;
use crate::safefs::{Dir, Open};
use crate::state::StateDir;

/// The folder of capture files in a state folder.
pub const CAPTURES_DIR: &str = "captures";
/// The folder of recorder pidfiles and logs in an experiment's runtime folder
/// (a VM name cannot begin with '.', so no VM's folder can be this one).
pub const RUNTIME_SUBDIR: &str = ".captures";
/// How long [`start`] waits for a recorder to bind its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`stop`] waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("there is no interface named {0}")]
    NoInterface(String),
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("capture file: {0}")]
    File(#[source] std::io::Error),
    #[error("capture file: {0}")]
    Format(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("bad capture name {0:?}")]
    BadName(String),
    #[error("the recorder of capture '{name}' did not start: {why}")]
    Start { name: String, why: String },
    #[error("capture-record: {0}")]
    Usage(String),
    /// The engine gave the tap no name this recorder can open.
    #[error("nic {nic} of VM {vm} has no tap name to record")]
    Unnamed { vm: String, nic: usize },
}

fn check_name(name: &str) -> Result<(), CaptureError> {
    match crate::validate::name_problem(name) {
        None => Ok(()),
        Some(_) => Err(CaptureError::BadName(name.to_string())),
    }
}

/// The capture file of `name` (the path only: nothing is opened).
pub fn file_path(sd: &StateDir, name: &str) -> Result<PathBuf, CaptureError> {
    check_name(name)?;
    Ok(sd.root.join(CAPTURES_DIR).join(format!("{name}.pcap")))
}

fn runtime_folder(experiment: &str, create: bool) -> Result<Option<Dir>, CaptureError> {
    let base = crate::host::runtime_base();
    let oserr = |what: String| move |source| CaptureError::Os { what, source };
    if crate::validate::name_problem(experiment).is_some() {
        return Err(CaptureError::BadName(experiment.to_string()));
    }
    let Some(dir) = Dir::open(&base, create).map_err(oserr(format!("open {}", base.display())))?
    else {
        return Ok(None);
    };
    // The same rule as the VMs' runtime folders: the base is the invoking
    // user's and writable by nobody else.
    if let Some(why) = dir
        .unsafe_because()
        .map_err(oserr(format!("check {}", base.display())))?
    {
        return Err(CaptureError::Os {
            what: format!("runtime folder {}", base.display()),
            source: std::io::Error::other(why),
        });
    }
    let Some(exp) = dir
        .subdir(experiment, create)
        .map_err(oserr(format!("open {}", base.join(experiment).display())))?
    else {
        return Ok(None);
    };
    exp.subdir(RUNTIME_SUBDIR, create).map_err(oserr(format!(
        "open {}",
        exp.path.join(RUNTIME_SUBDIR).display()
    )))
}

/// The ownership marker a recorder carries in its argv.
pub fn marker(experiment: &str, spec_address: &str) -> String {
    crate::identity::marker(experiment, spec_address)
}

/// Is `pid` a live recorder carrying `marker`? (A zombie has no cmdline.)
fn is_recorder(pid: u32, marker: &str) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.iter().any(|a| *a == b"capture-record")
        && args
            .windows(2)
            .any(|w| w[0] == b"--marker" && w[1] == marker.as_bytes())
}

/// The pid of the running recorder of capture `name`, if there is one.
pub fn recorder_pid(experiment: &str, name: &str) -> Option<u32> {
    check_name(name).ok()?;
    let dir = runtime_folder(experiment, false).ok()??;
    let bytes = dir.read(&format!("{name}.pid"), 64).ok()??;
    let pid: u32 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
    is_recorder(pid, &marker(experiment, &format!("capture.{name}"))).then_some(pid)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), CaptureError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CaptureError::Os {
            what: "pipe".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Put `fd` at `target` in a child about to exec (inheritable).
fn place(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2/fcntl on descriptors the child holds; async-signal-safe.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, target) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Start the recorder of `spec` unless it runs already; its pid. Unless
/// `append`, the file starts empty (a new capture: frames of an earlier run
/// of the experiment are not mixed in).
pub fn start(
    sd: &StateDir,
    experiment: &str,
    spec: &CaptureSpec,
    append: bool,
) -> Result<u32, CaptureError> {
    check_name(&spec.name)?;
    if let Some(pid) = recorder_pid(experiment, &spec.name) {
        return Ok(pid);
    }
    let root = sd.open(true)?.expect("created");
    let werr = |source| CaptureError::Os {
        what: format!("{}", sd.root.join(CAPTURES_DIR).display()),
        source,
    };
    let dir = root
        .subdir(CAPTURES_DIR, true)
        .map_err(werr)?
        .expect("created");
    let out = dir
        .open_file(&spec.file_name(), Open::ReadWriteCreate)
        .map_err(CaptureError::File)?;
    if !append {
        out.set_len(0).map_err(CaptureError::File)?;
    }
    let run = runtime_folder(experiment, true)?.expect("created");
    let rerr = |source| CaptureError::Os {
        what: format!("{}", run.path.display()),
        source,
    };
    let log = run
        .open_file(&format!("{}.log", spec.name), Open::ReadWriteCreate)
        .map_err(rerr)?;
    log.set_len(0).map_err(rerr)?;
    let (ready_r, ready_w) = pipe()?;

    let exe = std::env::current_exe().map_err(|source| CaptureError::Os {
        what: "the megaplan executable".into(),
        source,
    })?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("capture-record")
        .arg("--marker")
        .arg(marker(experiment, &spec.address));
    for t in &spec.taps {
        let tap = t.tap.as_deref().ok_or_else(|| CaptureError::Unnamed {
            vm: t.vm.clone(),
            nic: t.nic,
        })?;
        cmd.arg("--iface").arg(tap);
    }
    if spec.taps.len() > 1 {
        cmd.arg("--dedupe");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log.try_clone().map_err(rerr)?);
    let (out_fd, ready_fd) = (out.as_raw_fd(), ready_w.as_raw_fd());
    // SAFETY: the closure only calls async-signal-safe functions (setsid,
    // dup2, fcntl) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // READY first: OUT_FD (3) may be where ready_fd sits now.
            let tmp = libc::fcntl(ready_fd, libc::F_DUPFD_CLOEXEC, 10);
            if tmp < 0 {
                return Err(std::io::Error::last_os_error());
            }
            place(out_fd, record::OUT_FD)?;
            place(tmp, record::READY_FD)
        });
    }
    let mut child = cmd.spawn().map_err(|source| CaptureError::Os {
        what: "start capture-record".into(),
        source,
    })?;
    drop(ready_w);
    // The first child forks the recorder and exits at once.
    let _ = child.wait();
    let line = read_ready(&ready_r, START_TIMEOUT);
    let pid = line
        .as_deref()
        .and_then(|l| l.strip_prefix("ready "))
        .and_then(|p| p.trim().parse::<u32>().ok());
    let Some(pid) = pid else {
        let mut why = String::new();
        let _ = (&log).read_to_string(&mut why);
        let why = why.trim();
        return Err(CaptureError::Start {
            name: spec.name.clone(),
            why: if why.is_empty() {
                "it exited without saying why".into()
            } else {
                crate::diag::escape(why).to_string()
            },
        });
    };
    run.write_atomic(&format!("{}.pid", spec.name), format!("{pid}\n").as_bytes())
        .map_err(rerr)?;
    Ok(pid)
}

/// The first line written to `fd` within `timeout` (None at EOF or timeout).
fn read_ready(fd: &OwnedFd, timeout: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n <= 0 {
            return None;
        }
        let mut buf = [0u8; 64];
        // SAFETY: read into a local buffer.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            return None;
        }
        got.extend_from_slice(&buf[..r as usize]);
        if let Some(i) = got.iter().position(|&b| b == b'\n') {
            return String::from_utf8(got[..i].to_vec()).ok();
        }
        if got.len() > 256 {
            return None;
        }
    }
}

/// Refresh: every running recorder of the experiment, by address, with its
/// pid (a pidfile counts only when its process carries the marker).
pub fn observe(experiment: &str) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(Some(dir)) = runtime_folder(experiment, false) else {
        return out;
    };
    let Ok(entries) = std::fs::read_dir(&dir.path) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(file) = e.file_name().into_string() else {
            continue;
        };
        let Some(name) = file.strip_suffix(".pid") else {
            continue;
        };
        if let Some(pid) = recorder_pid(experiment, name) {
            out.insert(format!("capture.{name}"), pid);
        }
    }
    out
}

/// Stop the recorder of capture `name` (SIGTERM: it flushes and exits;
/// SIGKILL after [`STOP_TIMEOUT`]). The file stays. True when one ran.
pub fn stop(experiment: &str, name: &str) -> Result<bool, CaptureError> {
    check_name(name)?;
    let stopped = match recorder_pid(experiment, name) {
        None => false,
        Some(pid) => {
            signal_and_wait(pid);
            true
        }
    };
    if let Some(dir) = runtime_folder(experiment, false)? {
        for f in [format!("{name}.pid"), format!("{name}.log")] {
            match dir.unlink(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CaptureError::Os {
                        what: format!("remove {}", dir.path.join(f).display()),
                        source,
                    });
                }
            }
        }
    }
    // The last capture gone: the folder goes (destroy removes the parent);
    // fails harmlessly while other recorders' files are in it.
    let root = crate::host::runtime_root(experiment);
    if let Ok(Some(dir)) = Dir::open(&root, false) {
        let _ = dir.remove_dir(RUNTIME_SUBDIR);
    }
    Ok(stopped)
}

fn signal_and_wait(pid: u32) {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let send = |sig: i32| {
        // SAFETY: pidfd_send_signal(fd, sig, NULL, 0).
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        }
    };
    send(libc::SIGTERM);
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd; a pidfd is readable once the process has exited.
    let n = unsafe { libc::poll(&mut p, 1, STOP_TIMEOUT.as_millis() as i32) };
    if n <= 0 {
        send(libc::SIGKILL);
        // SAFETY: as above.
        unsafe { libc::poll(&mut p, 1, STOP_TIMEOUT.as_millis() as i32) };
    }
}

/// `destroy --all`: remove every capture file (and the folder).
pub fn remove_files(sd: &StateDir) -> Result<usize, CaptureError> {
    let Some(root) = sd.open(false)? else {
        return Ok(0);
    };
    let Some(dir) = root
        .subdir(CAPTURES_DIR, false)
        .map_err(CaptureError::File)?
    else {
        return Ok(0);
    };
    let mut n = 0;
    let names: Vec<String> = std::fs::read_dir(&dir.path)
        .map_err(CaptureError::File)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for name in names {
        let Some(stem) = name.strip_suffix(".pcap") else {
            continue;
        };
        if crate::validate::name_problem(stem).is_some() {
            continue;
        }
        dir.unlink(&name).map_err(CaptureError::File)?;
        n += 1;
    }
    // Fails harmlessly when something else is still in it.
    let _ = root.remove_dir(CAPTURES_DIR);
    Ok(n)
}

/// One recorded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Since the Unix epoch.
    pub time: Duration,
    pub data: Vec<u8>,
    /// The length on the wire (more than `data` when it was cut).
    pub orig_len: u32,
}

/// Every whole frame of a capture file (one being written is read up to its
/// last complete record). Never through a link.
pub fn read_frames(sd: &StateDir, name: &str) -> Result<Vec<Frame>, CaptureError> {
    check_name(name)?;
    let root = sd.open(false)?.ok_or_else(|| {
        CaptureError::File(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} does not exist", sd.root.display()),
        ))
    })?;
    let dir = root
        .subdir(CAPTURES_DIR, false)
        .map_err(CaptureError::File)?
        .ok_or_else(|| {
            CaptureError::File(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", sd.root.join(CAPTURES_DIR).display()),
            ))
        })?;
    let mut f = dir
        .open_file(&format!("{name}.pcap"), Open::Read)
        .map_err(CaptureError::File)?;
    if !f.metadata().map_err(CaptureError::File)?.is_file() {
        return Err(CaptureError::Format(format!(
            "{name}.pcap is not a plain file"
        )));
    }
    parse_frames(&mut f)
}

/// The frames of an open pcap file.
pub fn parse_frames(f: &mut File) -> Result<Vec<Frame>, CaptureError> {
    let Some((end, _)) = record::complete_len(f)? else {
        return Ok(Vec::new());
    };
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(CaptureError::File)?;
    let mut bytes = vec![0u8; end as usize];
    f.read_exact(&mut bytes).map_err(CaptureError::File)?;
    let mut r = pcap_file::pcap::PcapReader::new(&bytes[..])
        .map_err(|e| CaptureError::Format(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.map_err(|e| CaptureError::Format(e.to_string()))?;
        out.push(Frame {
            time: p.timestamp,
            orig_len: p.orig_len,
            data: p.data.into_owned(),
        });
    }
    Ok(out)
}

/// The hidden `megaplan capture-record` subcommand: daemonize, then record
/// (descriptors [`record::OUT_FD`] and [`record::READY_FD`] come from [`start`]).
pub fn record_main(ifaces: &[String], dedupe: bool) -> Result<(), CaptureError> {
    let valid = |fd: RawFd| {
        // SAFETY: F_GETFD only asks.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    };
    if !valid(record::OUT_FD) || !valid(record::READY_FD) {
        return Err(CaptureError::Usage(
            "run by megaplan apply, with its capture file on descriptor 3".into(),
        ));
    }
    if ifaces.is_empty() {
        return Err(CaptureError::Usage("no --iface given".into()));
    }
    // SAFETY: the descriptors were checked above and are ours from here on.
    let (out, ready) = unsafe {
        (
            File::from_raw_fd(record::OUT_FD),
            File::from_raw_fd(record::READY_FD),
        )
    };
    for fd in [record::OUT_FD, record::READY_FD] {
        // SAFETY: set close-on-exec on our own descriptors.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // Fork once more so the process that started us can reap its child at
    // once and nothing is left waiting; we are single-threaded here.
    // SAFETY: fork in a single-threaded process; the parent only exits.
    match unsafe { libc::fork() } {
        -1 => {
            return Err(CaptureError::Os {
                what: "fork".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        0 => {}
        _ => unsafe { libc::_exit(0) },
    }
    record::record(out, Some(ready), ifaces, dedupe)
}

/// Write `lines` to stdout (for `capture list`).
pub fn print(lines: &[String]) {
    let mut o = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(o, "{l}");
    }
}
