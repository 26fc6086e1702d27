//! The guest side: what `megaplan-agent` runs inside the VM.
//!
//! One session per host connection. The agent says `Hello`, then serves
//! requests concurrently (each exec, transfer and sync is its own task; replies
//! go through one writer task). When the channel drops (EOF, EPIPE) it waits
//! briefly and opens it again. Nothing polls on a timer while connected.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::protocol::{
    self, CHUNK_SIZE, Command, ExecResult, Exit, FrameError, Hello, Incoming, Interface, MAX_FRAME,
    MAX_OUTPUT_LIMIT, Message, OUTPUT_CAP, PORT_NAME, PROTOCOL_VERSION,
};

/// How long captured output may keep draining after the process exited (a
/// leftover `cmd &` can hold the pipe open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Agent options (the binary's command line).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Channel to use instead of finding the virtio-serial port: a unix
    /// socket to connect to, or a character device.
    pub port: Option<PathBuf>,
    /// Report this UUID instead of the SMBIOS one.
    pub uuid: Option<String>,
    /// Serve one session and return (for tests and debugging).
    pub once: bool,
}

/// A bidirectional byte stream the agent can serve on.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Run forever: open the channel, serve, reopen when it drops.
pub async fn run(opts: Options) -> io::Result<()> {
    let mut backoff = MIN_BACKOFF;
    loop {
        match open_channel(&opts).await {
            Ok((stream, said_hello)) => {
                backoff = MIN_BACKOFF;
                let served = match serve(stream, &opts, said_hello).await {
                    Ok(frames) => {
                        log("channel closed by host");
                        frames
                    }
                    Err(e) => {
                        log(&format!("session ended: {e}"));
                        0
                    }
                };
                if opts.once {
                    return Ok(());
                }
                // A host that talked and hung up (one `cc exec`) may come
                // right back: reopen at once. Only a session that carried
                // nothing waits, so a channel that keeps failing cannot spin.
                if served > 0 {
                    continue;
                }
            }
            Err(e) => {
                if opts.once {
                    return Err(e);
                }
                log(&format!("cannot open channel: {e} (retrying)"));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

fn log(msg: &str) {
    eprintln!("megaplan-agent: {msg}");
}

/// Open the channel. Returns the stream and whether `Hello` was already sent
/// (a virtio port sends it with a blocking write that waits for the host).
async fn open_channel(opts: &Options) -> io::Result<(Box<dyn Stream>, bool)> {
    let path = match &opts.port {
        Some(p) => p.clone(),
        None => find_virtio_port(PORT_NAME)?,
    };
    let meta = std::fs::metadata(&path)?;
    if meta.file_type().is_socket() {
        let s = tokio::net::UnixStream::connect(&path).await?;
        return Ok((Box::new(s), false));
    }
    if meta.is_file() || meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is neither a socket nor a device",
            path.display()
        )));
    }
    // A character device (virtio-serial port) or fifo. On virtio-serial, a
    // write blocks until the host end is connected, and a read returns EOF
    // while it is not: say Hello with a blocking write (the event-driven wait
    // for the host), then switch to non-blocking I/O for the session.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)?;
    let frame =
        protocol::encode_frame(&Message::Hello(gather_hello(opts))).map_err(io::Error::other)?;
    let file = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
        io::Write::write_all(&mut &file, &frame)?;
        Ok(file)
    })
    .await
    .map_err(io::Error::other)??;
    set_nonblocking(&file)?;
    Ok((Box::new(DevPort::new(file)?), true))
}

fn set_nonblocking(f: &std::fs::File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Find `/sys/class/virtio-ports/vportNpM` whose `name` is `name` and return
/// its device node, creating `/dev/vportNpM` from `dev` (major:minor) when
/// there is no udev to do it.
pub fn find_virtio_port(name: &str) -> io::Result<PathBuf> {
    let class = Path::new("/sys/class/virtio-ports");
    for entry in std::fs::read_dir(class)? {
        let entry = entry?;
        let dir = entry.path();
        let Ok(n) = std::fs::read_to_string(dir.join("name")) else {
            continue;
        };
        if n.trim() != name {
            continue;
        }
        let dev_name = entry.file_name();
        let node = Path::new("/dev").join(&dev_name);
        if node.exists() {
            return Ok(node);
        }
        let mm = std::fs::read_to_string(dir.join("dev"))?;
        let (maj, min) = mm
            .trim()
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .ok_or_else(|| io::Error::other(format!("bad dev number {mm:?}")))?;
        let _ = std::fs::create_dir_all("/dev");
        let mut last = None;
        for candidate in [node, Path::new("/tmp").join(&dev_name)] {
            match mknod_char(&candidate, maj, min) {
                Ok(()) => return Ok(candidate),
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or_else(|| io::Error::other("mknod failed")));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name}"),
    ))
}

fn mknod_char(path: &Path, maj: u32, min: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(maj, min)) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// A non-blocking character device driven by epoll.
///
/// On virtio-serial a host disconnect shows as `EPOLLHUP`, which tokio keeps
/// as a sticky "closed" readiness. While the host is away a read returns EOF,
/// which ends the session. But if the host reconnected before we looked, the
/// port is usable again and a read or write that would block must wait for
/// a real event: we then register the descriptor afresh (clearing the sticky
/// state) and yield once, instead of spinning.
struct DevPort {
    fd: Option<AsyncFd<std::fs::File>>,
}

impl DevPort {
    fn new(file: std::fs::File) -> io::Result<DevPort> {
        // SAFETY: the File owns its descriptor, which stays open and
        // unchanged for as long as the AsyncFd owns the File.
        let fd = unsafe { AsyncFd::register(file) }?;
        Ok(DevPort { fd: Some(fd) })
    }

    fn fd(&self) -> io::Result<&AsyncFd<std::fs::File>> {
        self.fd
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Drop the sticky readiness, then let other tasks run (the reader may be
    /// about to see EOF).
    fn reregister(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(old) = self.fd.take() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let file = old.into_inner();
        // SAFETY: as in `new`.
        self.fd = Some(unsafe { AsyncFd::register(file) }?);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncRead for DevPort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let fd = self.fd()?;
            let mut guard = ready!(fd.poll_read_ready(cx))?;
            let hung_up = guard.ready().is_read_closed();
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| io::Read::read(&mut f.get_ref(), unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) if hung_up => return self.reregister(cx),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for DevPort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let fd = self.fd()?;
            let mut guard = ready!(fd.poll_write_ready(cx))?;
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|f| io::Write::write(&mut f.get_ref(), data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) if hung_up => {
                    ready!(self.reregister(cx))?;
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

pub(super) enum Out {
    Msg(Message),
    /// Flush and stop writing (the session is ending).
    Close,
}

type Tx = mpsc::Sender<Out>;

async fn reply(tx: &Tx, m: Message) {
    let _ = tx.send(Out::Msg(m)).await;
}

fn error(id: Option<u64>, message: impl Into<String>) -> Message {
    Message::Error {
        id,
        message: message.into(),
    }
}

/// Serve one session on `stream` until EOF or a fatal error.
pub async fn serve(
    stream: Box<dyn Stream>,
    opts: &Options,
    said_hello: bool,
) -> Result<u64, FrameError> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    if !said_hello {
        protocol::write_message(&mut wr, &Message::Hello(gather_hello(opts))).await?;
    }
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    let mut writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Msg(m) => {
                    let r = match protocol::encode_frame(&m) {
                        Ok(f) => wr.write_all(&f).await,
                        Err(e) => {
                            let m = error(m.id(), format!("reply not sent: {e}"));
                            match protocol::encode_frame(&m) {
                                Ok(f) => wr.write_all(&f).await,
                                Err(_) => Ok(()),
                            }
                        }
                    };
                    if r.is_err() || wr.flush().await.is_err() {
                        break;
                    }
                }
                Out::Close => {
                    let _ = wr.flush().await;
                    let _ = wr.shutdown().await;
                    break;
                }
            }
        }
    });

    let mut transfers: HashMap<u64, mpsc::Sender<Message>> = HashMap::new();
    let mut writer_gone = false;
    let mut frames: u64 = 0;
    let result = loop {
        let frame = tokio::select! {
            f = protocol::read_frame(&mut rd) => f,
            _ = &mut writer, if !writer_gone => {
                writer_gone = true;
                break Err(FrameError::Io(io::ErrorKind::BrokenPipe.into()));
            }
        };
        if let Ok(Some(_)) = &frame {
            frames += 1;
        }
        match frame {
            Ok(None) => break Ok(frames),
            Ok(Some(Incoming::Message(m))) => {
                dispatch(m, &tx, &mut transfers, opts).await;
            }
            Ok(Some(Incoming::Malformed { id, error: e })) => {
                reply(&tx, error(id, format!("malformed message: {e}"))).await;
            }
            Ok(Some(Incoming::Oversized { len })) => {
                let msg = format!("frame of {len} bytes exceeds {MAX_FRAME} bytes; skipped");
                reply(&tx, error(None, msg)).await;
            }
            Err(e @ FrameError::TooLarge { .. }) => {
                reply(&tx, error(None, format!("{e}; closing"))).await;
                break Err(e);
            }
            Err(e) => break Err(e),
        }
    };
    drop(transfers);
    let _ = tx.send(Out::Close).await;
    drop(tx);
    // Let queued replies go out, but never hang on a dead channel.
    if !writer_gone {
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    result
}

async fn dispatch(
    m: Message,
    tx: &Tx,
    transfers: &mut HashMap<u64, mpsc::Sender<Message>>,
    opts: &Options,
) {
    match m {
        Message::Ping { id } => reply(tx, Message::Pong { id }).await,
        Message::Refresh { id } => {
            let hello = gather_hello(opts);
            reply(tx, Message::Info { id, hello }).await;
        }
        Message::Exec {
            id,
            command,
            timeout_ms,
            background,
            max_output,
        } => {
            if background {
                let m = match spawn_background(&command) {
                    Ok(pid) => Message::Started { id, pid },
                    Err(e) => error(Some(id), format!("cannot start {command}: {e}")),
                };
                reply(tx, m).await;
            } else {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let cap = max_output
                        .map(|n| (n as usize).min(MAX_OUTPUT_LIMIT))
                        .unwrap_or(OUTPUT_CAP);
                    let m = run_exec(id, command, timeout_ms.map(Duration::from_millis), cap).await;
                    reply(&tx, m).await;
                });
            }
        }
        Message::StepExec {
            id,
            step,
            command,
            timeout_ms,
            background,
        } => {
            let timeout = timeout_ms.map(Duration::from_millis);
            super::steps::dispatch(id, step, command, timeout, background, tx).await;
        }
        Message::PutFile {
            id,
            path,
            mode,
            size,
        } => {
            if transfers.contains_key(&id) {
                reply(
                    tx,
                    error(Some(id), "a transfer with this id is in progress"),
                )
                .await;
                return;
            }
            let (ctx, crx) = mpsc::channel(8);
            transfers.insert(id, ctx);
            tokio::spawn(put_file(id, path, mode, size, crx, tx.clone()));
        }
        Message::FileChunk { id, .. } | Message::FileEnd { id, .. } => {
            let end = matches!(m, Message::FileEnd { .. });
            match transfers.get(&id) {
                Some(ctx) => {
                    let _ = ctx.send(m).await;
                    if end {
                        transfers.remove(&id);
                    }
                }
                None => reply(tx, error(Some(id), "no upload in progress with this id")).await,
            }
        }
        Message::GetFile { id, path } => {
            tokio::spawn(get_file(id, path, tx.clone()));
        }
        Message::SyncUnmount { id, paths } => {
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = tokio::task::spawn_blocking(move || sync_unmount(&paths)).await;
                let m = match r {
                    Ok(Ok(())) => Message::Done { id },
                    Ok(Err(e)) => error(Some(id), e),
                    Err(e) => error(Some(id), e.to_string()),
                };
                reply(&tx, m).await;
            });
        }
        other => {
            let msg = format!("unexpected message type {:?} from host", other.kind());
            reply(tx, error(other.id(), msg)).await;
        }
    }
}

/// The `Hello` of this guest, gathered now.
pub fn gather_hello(opts: &Options) -> Hello {
    let uuid = opts.uuid.clone().or_else(|| {
        [
            "/sys/class/dmi/id/product_uuid",
            "/sys/devices/virtual/dmi/id/product_uuid",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
    });
    Hello {
        version: PROTOCOL_VERSION,
        agent: env!("CARGO_PKG_VERSION").to_string(),
        uuid,
        hostname: hostname(),
        interfaces: interfaces(),
        features: vec![crate::agent::protocol::Feature::StepExec],
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Interfaces with MAC and CIDR addresses, from getifaddrs(3).
pub fn interfaces() -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs; the
        // sockaddr casts follow sa_family.
        unsafe {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let idx = match out.iter().position(|i| i.name == name) {
                Some(i) => i,
                None => {
                    out.push(Interface {
                        name,
                        mac: None,
                        addrs: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            if ifa.ifa_addr.is_null() {
                continue;
            }
            let entry = &mut out[idx];
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    let prefix = if ifa.ifa_netmask.is_null() {
                        32
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                        m.sin_addr.s_addr.count_ones()
                    };
                    entry.addrs.push(format!("{ip}/{prefix}"));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    let prefix = if ifa.ifa_netmask.is_null() {
                        128
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                        m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                    };
                    entry.addrs.push(format!("{ip}/{prefix}"));
                }
                libc::AF_PACKET => {
                    let sll = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
                    if sll.sll_halen == 6 {
                        let a = &sll.sll_addr;
                        entry.mac = Some(format!(
                            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                            a[0], a[1], a[2], a[3], a[4], a[5]
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}

fn build_command(command: &Command) -> io::Result<tokio::process::Command> {
    let mut cmd = match command {
        Command::Shell(s) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(s);
            c
        }
        Command::Argv(v) => {
            let (prog, args) = v
                .split_first()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
            let mut c = tokio::process::Command::new(prog);
            c.args(args);
            c
        }
    };
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    // Never let a child inherit the console: it would hang reading it.
    cmd.stdin(Stdio::null());
    // Own process group, so a timeout kills the whole pipeline and signals
    // aimed at the agent's group leave it alone.
    cmd.process_group(0);
    Ok(cmd)
}

pub(super) fn spawn_background(command: &Command) -> io::Result<u32> {
    let mut cmd = build_command(command)?;
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    // Reap it when it ends (it outlives the request and the session).
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(pid)
}

#[derive(Default)]
struct Capture {
    buf: Vec<u8>,
    truncated: bool,
}

fn capture<R: AsyncRead + Unpin + Send + 'static>(
    r: Option<R>,
    into: Arc<Mutex<Capture>>,
    cap: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut r) = r else { return };
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut c = into.lock().unwrap_or_else(|e| e.into_inner());
                    let room = cap - c.buf.len();
                    if n > room {
                        c.truncated = true;
                    }
                    c.buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    })
}

/// [`run_exec`] as a result: the outcome, or why the command could not run.
pub(super) async fn run_exec_result(
    id: u64,
    command: &Command,
    timeout: Option<Duration>,
    cap: usize,
) -> Result<ExecResult, String> {
    match run_exec(id, command.clone(), timeout, cap).await {
        Message::ExecResult(r) => Ok(r),
        Message::Error { message, .. } => Err(message),
        other => Err(format!("unexpected outcome {:?}", other.kind())),
    }
}

async fn run_exec(id: u64, command: Command, timeout: Option<Duration>, cap: usize) -> Message {
    let mut cmd = match build_command(&command) {
        Ok(c) => c,
        Err(e) => return error(Some(id), format!("cannot run {command}: {e}")),
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return error(Some(id), format!("cannot run {command}: {e}")),
    };
    let pid = child.id();
    let out = Arc::new(Mutex::new(Capture::default()));
    let err = Arc::new(Mutex::new(Capture::default()));
    let t_out = capture(child.stdout.take(), out.clone(), cap);
    let t_err = capture(child.stderr.take(), err.clone(), cap);

    let mut timed_out = false;
    let status = match timeout {
        None => child.wait().await,
        Some(d) => match tokio::time::timeout(d, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                timed_out = true;
                if let Some(pid) = pid {
                    // SAFETY: signal the child's own process group.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                let _ = child.start_kill();
                child.wait().await
            }
        },
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return error(Some(id), format!("wait for {command}: {e}")),
    };
    let (a_out, a_err) = (t_out.abort_handle(), t_err.abort_handle());
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        let _ = t_out.await;
        let _ = t_err.await;
    })
    .await;
    if drained.is_err() {
        a_out.abort();
        a_err.abort();
    }
    use std::os::unix::process::ExitStatusExt;
    let exit = match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Code(-1),
    };
    let take = |c: &Arc<Mutex<Capture>>| {
        let c = c.lock().unwrap_or_else(|e| e.into_inner());
        (String::from_utf8_lossy(&c.buf).into_owned(), c.truncated)
    };
    let (stdout, stdout_truncated) = take(&out);
    let (stderr, stderr_truncated) = take(&err);
    let mut r = ExecResult {
        id,
        exit,
        timed_out,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        duration_ms: start.elapsed().as_millis() as u64,
    };
    fit_in_a_frame(&mut r);
    Message::ExecResult(r)
}

/// Trim the longer stream (and say so) until the reply fits in one frame:
/// JSON escaping can make output up to six times larger.
fn fit_in_a_frame(r: &mut ExecResult) {
    loop {
        let len = serde_json::to_vec(&Message::ExecResult(r.clone()))
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if len <= MAX_FRAME || (r.stdout.is_empty() && r.stderr.is_empty()) {
            return;
        }
        let (s, t) = if r.stdout.len() >= r.stderr.len() {
            (&mut r.stdout, &mut r.stdout_truncated)
        } else {
            (&mut r.stderr, &mut r.stderr_truncated)
        };
        let mut cut = s.len() / 2;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        *t = true;
    }
}

fn part_path(path: &Path, id: u64) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.megaplan-{id}.part"))
}

async fn put_file(
    id: u64,
    path: String,
    mode: u32,
    size: u64,
    mut rx: mpsc::Receiver<Message>,
    tx: Tx,
) {
    let path = PathBuf::from(path);
    let part = part_path(&path, id);
    let result: Result<(), String> = async {
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(format!("{}: not an absolute file path", path.display()));
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        let mut f = tokio::fs::File::create(&part)
            .await
            .map_err(|e| format!("create {}: {e}", part.display()))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        loop {
            match rx.recv().await {
                Some(Message::FileChunk { offset, data, .. }) => {
                    if offset != written {
                        return Err(format!("chunk at offset {offset}, expected {written}"));
                    }
                    let bytes = protocol::b64_decode(&data)?;
                    if written + bytes.len() as u64 > size {
                        return Err(format!("more data than the announced {size} bytes"));
                    }
                    hasher.update(&bytes);
                    f.write_all(&bytes)
                        .await
                        .map_err(|e| format!("write {}: {e}", part.display()))?;
                    written += bytes.len() as u64;
                }
                Some(Message::FileEnd {
                    size: end_size,
                    sha256,
                    ..
                }) => {
                    if end_size != written || written != size {
                        return Err(format!(
                            "size mismatch: announced {size}, end says {end_size}, received {written}"
                        ));
                    }
                    let got = protocol::sha256_hex(hasher);
                    if !got.eq_ignore_ascii_case(&sha256) {
                        return Err(format!("sha256 mismatch: sent {sha256}, received {got}"));
                    }
                    f.sync_all()
                        .await
                        .map_err(|e| format!("sync {}: {e}", part.display()))?;
                    drop(f);
                    tokio::fs::set_permissions(&part, std::fs::Permissions::from_mode(mode))
                        .await
                        .map_err(|e| format!("chmod {}: {e}", part.display()))?;
                    tokio::fs::rename(&part, &path)
                        .await
                        .map_err(|e| format!("rename to {}: {e}", path.display()))?;
                    return Ok(());
                }
                Some(_) => return Err("unexpected message in upload".into()),
                None => return Err("upload aborted".into()),
            }
        }
    }
    .await;
    match result {
        Ok(()) => reply(&tx, Message::Done { id }).await,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            reply(&tx, error(Some(id), e)).await;
            // Swallow the rest of this upload quietly.
            while rx.recv().await.is_some() {}
        }
    }
}

async fn get_file(id: u64, path: String, tx: Tx) {
    let result: Result<(), String> = async {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("open {path}: {e}"))?;
        let meta = f
            .metadata()
            .await
            .map_err(|e| format!("stat {path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{path}: not a regular file"));
        }
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let got = protocol::read_chunk(&mut f, &mut buf)
                .await
                .map_err(|e| format!("read {path}: {e}"))?;
            if got == 0 {
                break;
            }
            hasher.update(&buf[..got]);
            let data = protocol::b64_encode(&buf[..got]);
            if tx
                .send(Out::Msg(Message::FileChunk { id, offset, data }))
                .await
                .is_err()
            {
                return Err("session closed".into());
            }
            offset += got as u64;
            if got < buf.len() {
                break;
            }
        }
        let end = Message::FileEnd {
            id,
            size: offset,
            sha256: protocol::sha256_hex(hasher),
            mode: Some(meta.permissions().mode() & 0o7777),
        };
        reply(&tx, end).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        reply(&tx, error(Some(id), e)).await;
    }
}

fn sync_unmount(paths: &[String]) -> Result<(), String> {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut errs = Vec::new();
    for p in paths {
        let Ok(c) = CString::new(p.as_bytes()) else {
            errs.push(format!("{p}: bad path"));
            continue;
        };
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            errs.push(format!("umount {p}: {}", io::Error::last_os_error()));
        }
    }
    // SAFETY: as above.
    unsafe { libc::sync() };
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("synced, but {}", errs.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_result_is_trimmed_to_fit_one_frame() {
        // NUL bytes escape as \u0000: six bytes on the wire for each.
        let mut r = ExecResult {
            id: 1,
            exit: Exit::Code(0),
            timed_out: false,
            stdout: "\0".repeat(MAX_OUTPUT_LIMIT),
            stderr: "e".repeat(1000),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 0,
        };
        fit_in_a_frame(&mut r);
        assert!(protocol::encode_frame(&Message::ExecResult(r.clone())).is_ok());
        assert!(r.stdout_truncated && !r.stderr_truncated);
        assert_eq!(r.stderr.len(), 1000);
    }
}
