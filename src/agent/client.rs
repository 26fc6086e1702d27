//! The host side: a client for one guest agent, over QEMU's chardev socket.
//!
//! One reader task reads every frame and routes replies by request id to the
//! waiting call; `Hello`s go to a watch channel. Requests from several tasks
//! may be in flight at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::protocol::{
    self, CHUNK_SIZE, Command, ExecResult, FrameError, Hello, Incoming, Message, PROTOCOL_VERSION,
};

/// How long [`AgentClient::connect`] waits for the socket to appear.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on a received file's size (1 GiB).
pub const DEFAULT_MAX_RECV: u64 = 1 << 30;
/// Extra time the host waits beyond an exec's own timeout for the reply.
const REPLY_GRACE: Duration = Duration::from_secs(10);

/// Errors of [`AgentClient`].
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("timed out {0}")]
    Timeout(String),
    #[error("agent disconnected")]
    Disconnected,
    #[error("agent protocol error: {0}")]
    Protocol(String),
    #[error("agent: {0}")]
    Remote(String),
    #[error("{path}: the guest sent more than {} (max-size); nothing was kept", crate::agent::protocol::human_size(*max))]
    TooLarge { path: String, max: u64 },
    #[error("{0}: exists and is a symlink or a directory; refusing to replace it")]
    Refused(PathBuf),
    #[error(
        "another megaplan session kept the agent busy for {}; try again when it ends",
        crate::agent::protocol::human_duration(*waited)
    )]
    Busy { waited: Duration },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for AgentError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => AgentError::Io(e),
            other => AgentError::Protocol(other.to_string()),
        }
    }
}

/// A completed file transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Where the file now is (guest path for a send, host path for a receive).
    pub path: PathBuf,
    pub size: u64,
    /// Lowercase hex SHA-256, checked by both ends.
    pub sha256: String,
}

/// Requests waiting for replies; `closed` once the reader has stopped.
#[derive(Default)]
struct Table {
    map: HashMap<u64, mpsc::Sender<Message>>,
    closed: bool,
}

type Pending = Arc<Mutex<Table>>;
type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

/// Request id of the `Refresh` sent on connect; its `Info` counts as a hello.
const HELLO_ID: u64 = 0;

/// First request id of a client: derived from the clock, so replies left
/// over from an earlier host connection do not match new requests.
fn first_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ((nanos % (1 << 40)) << 8) + 1
}

/// A connection to one guest agent.
pub struct AgentClient {
    writer: Writer,
    pending: Pending,
    next_id: AtomicU64,
    hello: watch::Receiver<Option<Hello>>,
    reader: tokio::task::JoinHandle<()>,
    /// Held for as long as this connection lives (see [`SessionLock`]).
    _session: Option<SessionLock>,
}

/// An exclusive lock on one guest's agent channel, held by one host session
/// at a time.
///
/// QEMU's chardev socket serves one client at a time; others are queued in a
/// tiny backlog or refused with `EAGAIN`. Sessions of megaplan processes
/// (cc steps, `cc exec`, `show`) therefore take turns: each takes an
/// exclusive `flock` on a lock file beside the socket, waiting for its turn
/// (bounded), and the lock goes with the connection.
#[derive(Debug)]
pub struct SessionLock {
    _file: std::fs::File,
}

impl SessionLock {
    /// Take the lock on `path` (created 0600 if missing; a symlink, FIFO or
    /// anything but a regular file there is refused), waiting at most `wait`.
    pub async fn acquire(path: &Path, wait: Duration) -> Result<SessionLock, AgentError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(AgentError::Io(std::io::Error::other(format!(
                "{}: not a regular file",
                path.display()
            ))));
        }
        let start = Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(SessionLock { _file: f });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e.into());
            }
            if start.elapsed() + delay > wait {
                return Err(AgentError::Busy {
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Removes a request from the pending table when the call ends or is dropped.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).map.remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AgentClient {
    /// Connect to QEMU's chardev unix socket (QEMU is the server), retrying
    /// until it exists, for at most [`DEFAULT_CONNECT_TIMEOUT`].
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, AgentError> {
        Self::connect_timeout(path, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with an explicit bound.
    pub async fn connect_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(10);
        loop {
            match tokio::net::UnixStream::connect(path).await {
                Ok(s) => return Ok(Self::from_stream(s)),
                // EAGAIN: QEMU's backlog is full (another client holds the
                // channel); that one will go away.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    if Instant::now() + delay > deadline {
                        return Err(AgentError::Timeout(format!(
                            "connecting to {}: {e}",
                            path.display()
                        )));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One exclusive session: take the [`SessionLock`] at `lock` (waiting at
    /// most `connect_wait + hello_wait` for other sessions to end), connect to
    /// `sock` (at most `connect_wait`) and wait for the hello (at most
    /// `hello_wait`). The lock is released when the client is dropped.
    pub async fn connect_exclusive(
        sock: &Path,
        lock: &Path,
        connect_wait: Duration,
        hello_wait: Duration,
    ) -> Result<Self, AgentError> {
        let session = SessionLock::acquire(lock, connect_wait + hello_wait).await?;
        let mut client = Self::connect_timeout(sock, connect_wait).await?;
        client._session = Some(session);
        client.wait_hello(hello_wait).await?;
        Ok(client)
    }

    /// Use an already connected stream (a socketpair, an accepted socket).
    /// Must be called inside a tokio runtime.
    pub fn from_stream<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let (hello_tx, hello_rx) = watch::channel(None);
        let reader = tokio::spawn(read_loop(rd, pending.clone(), hello_tx));
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(wr)));
        // Ask for the guest's information right away. A guest agent says
        // hello when it opens its port, but a host that disconnects and
        // reconnects quickly can go unnoticed on virtio-serial: the answer to
        // this request then stands in for the hello.
        let w = writer.clone();
        tokio::spawn(async move {
            if let Ok(f) = protocol::encode_frame(&Message::Refresh { id: HELLO_ID }) {
                let mut w = w.lock().await;
                let _ = w.write_all(&f).await;
                let _ = w.flush().await;
            }
        });
        AgentClient {
            writer,
            pending,
            next_id: AtomicU64::new(first_id()),
            hello: hello_rx,
            reader,
            _session: None,
        }
    }

    /// The guest's `Hello`: the latest one if it already arrived, otherwise
    /// wait for it (at most `timeout`).
    pub async fn wait_hello(&self, timeout: Duration) -> Result<Hello, AgentError> {
        let mut rx = self.hello.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|h| h.is_some())).await;
        match r {
            Err(_) => Err(AgentError::Timeout("waiting for the agent's hello".into())),
            Ok(Err(_)) => Err(AgentError::Disconnected),
            Ok(Ok(h)) => {
                let h = h.clone().expect("checked by wait_for");
                if h.version != PROTOCOL_VERSION {
                    return Err(AgentError::Protocol(format!(
                        "agent speaks protocol version {}, this host speaks {PROTOCOL_VERSION}",
                        h.version
                    )));
                }
                Ok(h)
            }
        }
    }

    /// The latest `Hello`, if any, without waiting.
    pub fn hello(&self) -> Option<Hello> {
        self.hello.borrow().clone()
    }

    /// A receiver that sees every new `Hello` (a guest agent that restarts on
    /// the same channel says hello again).
    pub fn subscribe_hello(&self) -> watch::Receiver<Option<Hello>> {
        self.hello.clone()
    }

    /// Round trip.
    pub async fn ping(&self, timeout: Duration) -> Result<(), AgentError> {
        let (_g, mut rx) = self.request(|id| Message::Ping { id }).await?;
        match recv(&mut rx, Some(timeout), "waiting for pong").await? {
            Message::Pong { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Ask for fresh guest information (hostname, interfaces and addresses).
    pub async fn refresh(&self, timeout: Duration) -> Result<Hello, AgentError> {
        let (_g, mut rx) = self.request(|id| Message::Refresh { id }).await?;
        match recv(&mut rx, Some(timeout), "waiting for guest info").await? {
            Message::Info { hello, .. } => Ok(hello),
            other => Err(unexpected(&other)),
        }
    }

    /// Run a command to completion. With a timeout the guest kills the
    /// command's process group when it elapses and answers with
    /// `timed_out: true`; `Err(Timeout)` means the guest did not answer at all.
    pub async fn exec(
        &self,
        command: impl Into<Command>,
        timeout: Option<Duration>,
    ) -> Result<ExecResult, AgentError> {
        self.exec_capped(command, timeout, None).await
    }

    /// [`exec`](Self::exec) keeping up to `max_output` bytes of each output
    /// stream (the agent's default, 64 KiB, when `None`; at most
    /// [`protocol::MAX_OUTPUT_LIMIT`]). `*_truncated` in the result says
    /// whether more was produced.
    pub async fn exec_capped(
        &self,
        command: impl Into<Command>,
        timeout: Option<Duration>,
        max_output: Option<u64>,
    ) -> Result<ExecResult, AgentError> {
        let command = command.into();
        let timeout_ms = timeout.map(|t| t.as_millis().max(1) as u64);
        let (_g, mut rx) = self
            .request(|id| Message::Exec {
                id,
                command: command.clone(),
                timeout_ms,
                background: false,
                max_output,
            })
            .await?;
        let wait = timeout.map(|t| t + REPLY_GRACE);
        match recv(&mut rx, wait, "waiting for the command's result").await? {
            Message::ExecResult(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Start a command detached in the guest; returns its pid.
    pub async fn background(&self, command: impl Into<Command>) -> Result<u32, AgentError> {
        let command = command.into();
        let (_g, mut rx) = self
            .request(|id| Message::Exec {
                id,
                command: command.clone(),
                timeout_ms: None,
                background: true,
                max_output: None,
            })
            .await?;
        match recv(&mut rx, Some(REPLY_GRACE), "starting a background command").await? {
            Message::Started { pid, .. } => Ok(pid),
            other => Err(unexpected(&other)),
        }
    }

    /// Run a cc step exactly once per boot (`step_exec`): `step` is the
    /// run's id. If the agent already ran or is running that id, nothing runs
    /// again and the answer is that run's outcome (`replayed`). A foreground
    /// step is waited for like [`Self::exec`]; a background one answers at once.
    pub async fn step_exec(
        &self,
        step: &str,
        command: impl Into<Command>,
        timeout: Option<Duration>,
        background: bool,
    ) -> Result<protocol::StepResult, AgentError> {
        let command = command.into();
        let timeout_ms = timeout.map(|t| t.as_millis().max(1) as u64);
        let (_g, mut rx) = self
            .request(|id| Message::StepExec {
                id,
                step: step.to_string(),
                command: command.clone(),
                timeout_ms,
                background,
            })
            .await?;
        let wait = if background {
            Some(REPLY_GRACE)
        } else {
            timeout.map(|t| t + REPLY_GRACE)
        };
        match recv(&mut rx, wait, "waiting for the step's outcome").await? {
            Message::StepResult(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Copy a host file to `guest_path` (absolute; parent directories are
    /// created; the file keeps the host file's permission bits). The guest
    /// writes a temporary file and renames it once the SHA-256 matches.
    pub async fn send_file(
        &self,
        host_path: impl AsRef<Path>,
        guest_path: &str,
    ) -> Result<Transfer, AgentError> {
        use std::os::unix::fs::PermissionsExt;
        let host_path = host_path.as_ref();
        let mut f = tokio::fs::File::open(host_path).await?;
        let meta = f.metadata().await?;
        let size = meta.len();
        let mode = meta.permissions().mode() & 0o7777;
        let (_g, mut rx) = self
            .request(|id| Message::PutFile {
                id,
                path: guest_path.to_string(),
                mode,
                size,
            })
            .await?;
        let id = _g.id;
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            // An early error (cannot create the file) ends the upload.
            if let Ok(m) = rx.try_recv() {
                return Err(unexpected(&m));
            }
            let got = protocol::read_chunk(&mut f, &mut buf).await?;
            if got == 0 {
                break;
            }
            hasher.update(&buf[..got]);
            let data = protocol::b64_encode(&buf[..got]);
            self.send(&Message::FileChunk { id, offset, data }).await?;
            offset += got as u64;
            if got < buf.len() {
                break;
            }
        }
        if offset != size {
            return Err(AgentError::Io(std::io::Error::other(format!(
                "{} changed size while sending",
                host_path.display()
            ))));
        }
        let sha256 = protocol::sha256_hex(hasher);
        self.send(&Message::FileEnd {
            id,
            size,
            sha256: sha256.clone(),
            mode: Some(mode),
        })
        .await?;
        match recv(
            &mut rx,
            Some(REPLY_GRACE),
            "waiting for the upload to finish",
        )
        .await?
        {
            Message::Done { .. } => Ok(Transfer {
                path: PathBuf::from(guest_path),
                size,
                sha256,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Copy a guest file into `host_dir` (created if missing), under the same
    /// file name, taking at most [`DEFAULT_MAX_RECV`] bytes. See
    /// [`recv_file_limited`](Self::recv_file_limited).
    pub async fn recv_file(
        &self,
        guest_path: &str,
        host_dir: impl AsRef<Path>,
        idle_timeout: Duration,
    ) -> Result<Transfer, AgentError> {
        self.recv_file_limited(guest_path, host_dir, idle_timeout, DEFAULT_MAX_RECV)
            .await
    }

    /// Copy a guest file into `host_dir` (created if missing), under the same
    /// file name. `idle_timeout` bounds the wait for each chunk.
    ///
    /// The guest is untrusted: the data goes to a new temporary file created
    /// with `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name in `host_dir`
    /// (never through a planted link), the guest's mode is ignored (the file
    /// is 0644), more than `max_size` bytes is an error, and the file is
    /// renamed into place only once the SHA-256 matches and if the final name
    /// is not a symlink or a directory. On any error the temporary file is
    /// removed.
    pub async fn recv_file_limited(
        &self,
        guest_path: &str,
        host_dir: impl AsRef<Path>,
        idle_timeout: Duration,
        max_size: u64,
    ) -> Result<Transfer, AgentError> {
        let name = Path::new(guest_path)
            .file_name()
            .ok_or_else(|| AgentError::Protocol(format!("{guest_path}: no file name")))?
            .to_owned();
        let host_dir = host_dir.as_ref();
        tokio::fs::create_dir_all(host_dir).await?;
        let dest = host_dir.join(&name);
        let dir = std::fs::File::open(host_dir)?;
        let (part_name, part) = create_part(&dir, &name)?;
        let (_g, mut rx) = match self
            .request(|id| Message::GetFile {
                id,
                path: guest_path.to_string(),
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let _ = unlink_at(&dir, &part_name);
                return Err(e);
            }
        };
        let result = async {
            let mut f = tokio::fs::File::from_std(part);
            let mut hasher = Sha256::new();
            let mut written = 0u64;
            loop {
                match recv(&mut rx, Some(idle_timeout), "receiving a file").await? {
                    Message::FileChunk { offset, data, .. } => {
                        if offset != written {
                            return Err(AgentError::Protocol(format!(
                                "chunk at offset {offset}, expected {written}"
                            )));
                        }
                        let bytes = protocol::b64_decode(&data).map_err(AgentError::Protocol)?;
                        if written + bytes.len() as u64 > max_size {
                            return Err(AgentError::TooLarge {
                                path: guest_path.to_string(),
                                max: max_size,
                            });
                        }
                        hasher.update(&bytes);
                        f.write_all(&bytes).await?;
                        written += bytes.len() as u64;
                    }
                    Message::FileEnd { size, sha256, .. } => {
                        // The guest's mode is ignored: the file is 0644.
                        let got = protocol::sha256_hex(hasher);
                        if size != written || !got.eq_ignore_ascii_case(&sha256) {
                            return Err(AgentError::Protocol(format!(
                                "corrupt transfer: guest sent {size} bytes sha256 {sha256}, \
                                 received {written} bytes sha256 {got}"
                            )));
                        }
                        f.flush().await?;
                        f.sync_all().await?;
                        drop(f);
                        rename_into_place(&dir, &part_name, &name, &dest)?;
                        return Ok(Transfer {
                            path: dest.clone(),
                            size,
                            sha256: got,
                        });
                    }
                    other => return Err(unexpected(&other)),
                }
            }
        }
        .await;
        if result.is_err() {
            let _ = unlink_at(&dir, &part_name);
        }
        result
    }

    /// `sync()` in the guest, then unmount `paths` in order (an empty list
    /// just syncs). Call before the VM stops.
    pub async fn sync_unmount(&self, paths: &[&str], timeout: Duration) -> Result<(), AgentError> {
        let paths = paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let (_g, mut rx) = self
            .request(|id| Message::SyncUnmount {
                id,
                paths: paths.clone(),
            })
            .await?;
        match recv(&mut rx, Some(timeout), "waiting for sync/unmount").await? {
            Message::Done { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn send(&self, m: &Message) -> Result<(), AgentError> {
        let frame = protocol::encode_frame(m)?;
        let mut w = self.writer.lock().await;
        let r = async {
            w.write_all(&frame).await?;
            w.flush().await
        }
        .await;
        r.map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                AgentError::Disconnected
            }
            _ => AgentError::Io(e),
        })
    }

    /// Register a new id, send the request, and return the reply channel.
    async fn request(
        &self,
        make: impl FnOnce(u64) -> Message,
    ) -> Result<(PendingGuard<'_>, mpsc::Receiver<Message>), AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        {
            let mut t = lock(&self.pending);
            if t.closed {
                return Err(AgentError::Disconnected);
            }
            t.map.insert(id, tx);
        }
        let guard = PendingGuard {
            pending: &self.pending,
            id,
        };
        self.send(&make(id)).await?;
        Ok((guard, rx))
    }
}

fn unexpected(m: &Message) -> AgentError {
    match m {
        Message::Error { message, .. } => AgentError::Remote(message.clone()),
        other => AgentError::Protocol(format!("unexpected reply {:?}", other.kind())),
    }
}

async fn recv(
    rx: &mut mpsc::Receiver<Message>,
    timeout: Option<Duration>,
    what: &str,
) -> Result<Message, AgentError> {
    let m = match timeout {
        Some(t) => tokio::time::timeout(t, rx.recv())
            .await
            .map_err(|_| AgentError::Timeout(what.to_string()))?,
        None => rx.recv().await,
    };
    m.ok_or(AgentError::Disconnected)
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    pending: Pending,
    hello: watch::Sender<Option<Hello>>,
) {
    let mut saw_hello = false;
    loop {
        let m = match protocol::read_frame(&mut rd).await {
            Ok(Some(Incoming::Message(m))) => m,
            Ok(Some(Incoming::Malformed { id, error })) => {
                // Fail the request it belongs to, if we can tell.
                let m = Message::Error {
                    id,
                    message: format!("malformed reply: {error}"),
                };
                match id {
                    Some(_) => m,
                    None => continue,
                }
            }
            Ok(Some(Incoming::Oversized { .. })) => continue,
            Ok(None) | Err(_) => break,
        };
        match m {
            Message::Hello(h) => {
                // A second hello on a live connection means the agent
                // restarted: its earlier requests will never be answered.
                if saw_hello {
                    lock(&pending).map.clear();
                }
                saw_hello = true;
                hello.send_replace(Some(h));
                continue;
            }
            Message::Info {
                id: HELLO_ID,
                hello: h,
            } => {
                hello.send_replace(Some(h));
                continue;
            }
            _ => {}
        }
        let Some(id) = m.id() else { continue };
        let tx = lock(&pending).map.get(&id).cloned();
        if let Some(tx) = tx
            && tx.send(m).await.is_err()
        {
            lock(&pending).map.remove(&id);
        }
    }
    // Dropping every sender wakes every waiting call with Disconnected.
    let mut t = lock(&pending);
    t.closed = true;
    t.map.clear();
}

fn c_name(name: &std::ffi::OsStr) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in file name"))
}

/// A new temporary file `.NAME.RANDOM.part` (0600) in `dir`, created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW`: never an existing file, never through a link.
fn create_part(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
) -> std::io::Result<(std::ffi::CString, std::fs::File)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut last = None;
    for _ in 0..16 {
        let mut part = std::ffi::OsString::from(".");
        part.push(name);
        part.push(format!(".{}.part", uuid::Uuid::new_v4().simple()));
        let c = c_name(&part)?;
        // SAFETY: valid descriptor and NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor we just opened and own.
            let f = unsafe { std::fs::File::from_raw_fd(fd) };
            // Not the guest's mode, and not the umask's either.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            return Ok((c, f));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
        last = Some(e);
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("cannot create a temporary file")))
}

fn unlink_at(dir: &std::fs::File, name: &std::ffi::CStr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: valid descriptor and NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Rename `part` to `name` in `dir`, unless `name` is a symlink or a directory.
fn rename_into_place(
    dir: &std::fs::File,
    part: &std::ffi::CStr,
    name: &std::ffi::OsStr,
    dest: &Path,
) -> Result<(), AgentError> {
    use std::os::fd::AsRawFd;
    let c = c_name(name)?;
    // SAFETY: valid descriptor, NUL-terminated name, a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFLNK || fmt == libc::S_IFDIR {
            return Err(AgentError::Refused(dest.to_path_buf()));
        }
    }
    // SAFETY: valid descriptors and NUL-terminated names.
    if unsafe { libc::renameat(dir.as_raw_fd(), part.as_ptr(), dir.as_raw_fd(), c.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
