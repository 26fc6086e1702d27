//! The cc wire protocol, version 1 (see docs/protocol.md).
//!
//! A frame is a `u32` big-endian body length followed by that many bytes of
//! UTF-8 JSON: one [`Message`], internally tagged by `"type"`. A body may be at
//! most [`MAX_FRAME`] bytes. Readers never allocate more than that: a longer
//! frame is skipped (up to [`MAX_SKIP`] bytes) and reported as
//! [`Incoming::Oversized`], anything longer is a fatal [`FrameError::TooLarge`]
//! after which the connection is closed.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version carried in [`Hello::version`].
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body accepted or sent (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest oversized frame a reader skips to resynchronise; beyond this it closes.
pub const MAX_SKIP: usize = 16 << 20;
/// Raw bytes per file chunk (base64 makes it 4/3 larger on the wire).
pub const CHUNK_SIZE: usize = 256 << 10;
/// Captured bytes kept per output stream (stdout, stderr) of an exec, unless
/// the request's `max_output` says otherwise.
pub const OUTPUT_CAP: usize = 64 << 10;
/// The largest `max_output` an agent honours: both streams must fit in one
/// `exec_result` frame (the agent trims further if escaping makes it larger).
pub const MAX_OUTPUT_LIMIT: usize = 448 << 10;
/// The virtio-serial port name the guest agent looks for.
pub const PORT_NAME: &str = "megaplan.cc";

/// What the guest says when a connection starts (and in answer to `Refresh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`PROTOCOL_VERSION`] for this implementation.
    pub version: u32,
    /// The agent's own version string (informational).
    #[serde(default)]
    pub agent: String,
    /// SMBIOS product UUID (`/sys/class/dmi/id/product_uuid`, lowercased), if readable.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The messages beyond version 1's first set this agent understands.
    /// An agent of an older image sends none: the host then does without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<Feature>,
}

impl Hello {
    pub fn has(&self, f: Feature) -> bool {
        self.features.contains(&f)
    }
}

/// A capability an agent announces in its [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// `step_exec`/`step_result`: steps exactly once per boot.
    StepExec,
    /// One a newer agent announces that this host does not know.
    #[serde(other)]
    Unknown,
}

/// One guest network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, if the interface has a 6-byte hardware address.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses in CIDR notation, IPv4 first as the kernel lists them.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// The command of an exec: a shell string (`/bin/sh -c`) or an argv list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl From<&str> for Command {
    fn from(s: &str) -> Self {
        Command::Shell(s.to_string())
    }
}

impl From<String> for Command {
    fn from(s: String) -> Self {
        Command::Shell(s)
    }
}

impl From<Vec<String>> for Command {
    fn from(v: Vec<String>) -> Self {
        Command::Argv(v)
    }
}

impl From<&[&str]> for Command {
    fn from(v: &[&str]) -> Self {
        Command::Argv(v.iter().map(|s| s.to_string()).collect())
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Shell(s) => f.write_str(s),
            Command::Argv(v) => write!(f, "{v:?}"),
        }
    }
}

/// How a process ended: `{"code": N}` or `{"signal": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// The outcome of a foreground exec.
///
/// `stdout` and `stderr` are the first [`OUTPUT_CAP`] bytes of each stream,
/// decoded as lossy UTF-8 (invalid sequences become U+FFFD); `*_truncated`
/// says whether more was produced (and discarded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    pub id: u64,
    pub exit: Exit,
    /// The guest killed the process group because `timeout_ms` elapsed.
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub duration_ms: u64,
}

impl ExecResult {
    /// Exit code 0 and not timed out.
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0) && !self.timed_out
    }
}

/// The answer to a `StepExec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub id: u64,
    pub step: String,
    /// The step had already run (or was running) in this boot: this is that
    /// run's outcome; nothing ran again.
    #[serde(default)]
    pub replayed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every message of the protocol. Requests carry a host-chosen `id`; every
/// reply repeats it. Only `Hello` has no id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    // guest -> host, unsolicited, first frame of every connection
    Hello(Hello),
    // host -> guest requests
    Ping {
        id: u64,
    },
    Refresh {
        id: u64,
    },
    Exec {
        id: u64,
        command: Command,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        #[serde(default)]
        background: bool,
        /// Bytes kept per output stream ([`OUTPUT_CAP`] when absent; at most
        /// [`MAX_OUTPUT_LIMIT`]). Older agents ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_output: Option<u64>,
    },
    /// Starts an upload; followed by `FileChunk`s and one `FileEnd` with the same id.
    PutFile {
        id: u64,
        path: String,
        mode: u32,
        size: u64,
    },
    GetFile {
        id: u64,
        path: String,
    },
    /// `sync()`, unmount each path (in order), `sync()` again.
    SyncUnmount {
        id: u64,
        paths: Vec<String>,
    },
    // both directions (file transfer)
    /// `data` is standard base64 with padding; chunks are sequential (`offset`
    /// is the number of bytes sent before this one).
    FileChunk {
        id: u64,
        offset: u64,
        data: String,
    },
    /// Ends a transfer: total size and lowercase hex SHA-256 of the content.
    FileEnd {
        id: u64,
        size: u64,
        sha256: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    // guest -> host replies
    Pong {
        id: u64,
    },
    Info {
        id: u64,
        hello: Hello,
    },
    ExecResult(ExecResult),
    /// A background exec was started.
    Started {
        id: u64,
        pid: u32,
    },
    /// A `PutFile` or `SyncUnmount` completed.
    Done {
        id: u64,
    },
    /// host -> guest: run a cc step exactly once per boot. Like `Exec`, with
    /// `step`, the run's id: if the agent already ran (or is running) a step
    /// with this id it does not run it again but answers with that run's
    /// outcome (`replayed: true`).
    StepExec {
        id: u64,
        step: String,
        command: Command,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        #[serde(default)]
        background: bool,
    },
    /// guest -> host: the outcome of a `StepExec`: `result` for a
    /// foreground step, `pid` for a background one, `error` when it could
    /// not start.
    StepResult(StepResult),
    /// Either direction; `id` is absent when the offending frame had none.
    Error {
        #[serde(default)]
        id: Option<u64>,
        message: String,
    },
}

impl Message {
    /// The request id this message carries or answers (`None` for `Hello`).
    pub fn id(&self) -> Option<u64> {
        match self {
            Message::Hello(_) => None,
            Message::ExecResult(r) => Some(r.id),
            Message::StepResult(r) => Some(r.id),
            Message::StepExec { id, .. } => Some(*id),
            Message::Error { id, .. } => *id,
            Message::Ping { id }
            | Message::Refresh { id }
            | Message::Exec { id, .. }
            | Message::PutFile { id, .. }
            | Message::GetFile { id, .. }
            | Message::SyncUnmount { id, .. }
            | Message::FileChunk { id, .. }
            | Message::FileEnd { id, .. }
            | Message::Pong { id }
            | Message::Info { id, .. }
            | Message::Started { id, .. }
            | Message::Done { id } => Some(*id),
        }
    }

    /// The `"type"` tag, for messages and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Ping { .. } => "ping",
            Message::Refresh { .. } => "refresh",
            Message::Exec { .. } => "exec",
            Message::PutFile { .. } => "put_file",
            Message::GetFile { .. } => "get_file",
            Message::SyncUnmount { .. } => "sync_unmount",
            Message::FileChunk { .. } => "file_chunk",
            Message::FileEnd { .. } => "file_end",
            Message::Pong { .. } => "pong",
            Message::Info { .. } => "info",
            Message::ExecResult(_) => "exec_result",
            Message::Started { .. } => "started",
            Message::Done { .. } => "done",
            Message::Error { .. } => "error",
            Message::StepExec { .. } => "step_exec",
            Message::StepResult(_) => "step_result",
        }
    }
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The stream ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    /// A frame too large to skip (reading) or to send (writing).
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge { len: usize },
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// One frame as read: a message, or a frame that was consumed but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Message(Message),
    /// Not valid JSON, or not a known message. `id` is recovered when the
    /// body is a JSON object with a numeric `"id"`.
    Malformed {
        id: Option<u64>,
        error: String,
    },
    /// Longer than [`MAX_FRAME`]; its body was read and discarded.
    Oversized {
        len: usize,
    },
}

/// Encode a message as a complete frame (header + body).
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decode a frame body.
pub fn decode_body(body: &[u8]) -> Incoming {
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => Incoming::Message(m),
        Err(e) => {
            let id = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_u64()));
            Incoming::Malformed {
                id,
                error: e.to_string(),
            }
        }
    }
}

/// Write one message as a frame and flush.
pub async fn write_message<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    msg: &Message,
) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Read until `buf` is full or EOF; returns the number of bytes read.
async fn read_full<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Read one frame. `Ok(None)` is a clean EOF at a frame boundary.
///
/// Never allocates more than [`MAX_FRAME`] bytes: an oversized frame up to
/// [`MAX_SKIP`] is discarded through a small buffer and returned as
/// [`Incoming::Oversized`]; a longer one is [`FrameError::TooLarge`] and the
/// caller should close the connection.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<Incoming>, FrameError> {
    let mut hdr = [0u8; 4];
    let got = read_full(r, &mut hdr).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < 4 {
        return Err(FrameError::Truncated { expected: 4, got });
    }
    let len = u32::from_be_bytes(hdr) as usize;
    if len > MAX_FRAME {
        if len > MAX_SKIP {
            return Err(FrameError::TooLarge { len });
        }
        let mut scratch = vec![0u8; 64 << 10];
        let mut left = len;
        while left > 0 {
            let want = left.min(scratch.len());
            let n = r.read(&mut scratch[..want]).await?;
            if n == 0 {
                return Err(FrameError::Truncated {
                    expected: len,
                    got: len - left,
                });
            }
            left -= n;
        }
        return Ok(Some(Incoming::Oversized { len }));
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body).await?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(decode_body(&body)))
}

/// Read into `buf` until it is full or the reader ends; how many bytes came.
/// File transfers send whole chunks, so only the last one is short.
pub async fn read_chunk<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Standard base64 with padding, as used in `FileChunk::data`.
pub fn b64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Inverse of [`b64_encode`].
pub fn b64_decode(data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("bad base64: {e}"))
}

/// Lowercase hex of a finished SHA-256.
pub fn sha256_hex(h: Sha256) -> String {
    format!("{:x}", h.finalize())
}

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_of(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    sha256_hex(h)
}

/// Duration as written in experiment files: `500ms`, `30s`, `5m`, `1h30m`, `1m5s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 || !ms.is_multiple_of(1000) {
        return if ms >= 1000 {
            format!("{:.1}s", ms as f64 / 1000.0)
        } else {
            format!("{ms}ms")
        };
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// `1 GiB`, `10 MiB`, `64 KiB`, `123 bytes`: exact binary units when they fit.
pub fn human_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_size(64 << 10), "64 KiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(1000), "1000 bytes");
        use std::time::Duration;
        assert_eq!(human_duration(Duration::from_secs(30)), "30s");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(human_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
    }
}
