//! A small QMP client (JSON lines over a unix socket) and stopping a VM.
//!
//! Replies are matched to commands by `id`; asynchronous events go to a broadcast
//! channel. A QMP monitor serves one client at a time: a second `connect` waits
//! until the first one disconnects, which is why connecting has a timeout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use super::process::{PidFd, kill_pid, process_alive, wait_exit};
use super::runtime::{CC_SOCKET_NAME, PIDFILE_NAME, QMP_SOCKET_NAME};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP connection closed")]
    Disconnected,
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("QEMU pid {0} is still running after SIGKILL")]
    StillRunning(u32),
}

/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
    pub timestamp: Value,
}

/// The answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    pub running: bool,
    /// `running`, `paused`, `shutdown`, `prelaunch`, …
    pub status: String,
}

type Reply = Result<Value, QmpError>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

/// A connected QMP session (capabilities negotiated).
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Receiver<bool>,
    greeting: Value,
    reader: JoinHandle<()>,
}

/// How long `connect` waits for the socket and the greeting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Qmp {
    /// Connects, reads the greeting and sends `qmp_capabilities`.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        Self::connect_timeout(path, CONNECT_TIMEOUT).await
    }

    pub async fn connect_timeout(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        tokio::time::timeout(timeout, Self::connect_inner(path))
            .await
            .map_err(|_| QmpError::Timeout(timeout, "the QMP greeting"))?
    }

    async fn connect_inner(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting: Value = match lines.next_line().await? {
            Some(l) => serde_json::from_str(&l).map_err(|e| QmpError::Protocol(e.to_string()))?,
            None => return Err(QmpError::Disconnected),
        };
        let Some(greeting) = greeting.get("QMP").cloned() else {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting}"
            )));
        };
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (events, _) = broadcast::channel(64);
        let (closed_tx, closed) = watch::channel(false);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events.clone(), closed_tx));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            closed,
            greeting,
            reader,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The greeting's content (`version`, `capabilities`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.closed {
                return Err(QmpError::Disconnected);
            }
            p.waiting.insert(id, tx);
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let written = self.writer.lock().await.write_all(line.as_bytes()).await;
        if let Err(e) = written {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .waiting
                .remove(&id);
            return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                QmpError::Disconnected
            } else {
                QmpError::Io(e)
            });
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(QmpError::Command { class, desc, .. })) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(QmpError::Disconnected),
        }
    }

    pub async fn query_status(&self) -> Result<VmStatus, QmpError> {
        let v = self.execute("query-status", None).await?;
        let status = v["status"].as_str().unwrap_or_default().to_string();
        let running = v["running"].as_bool().unwrap_or(status == "running");
        Ok(VmStatus { running, status })
    }

    /// Presses the ACPI power button (the guest decides what to do).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Asks QEMU to exit. QEMU may close the socket before its reply arrives: that
    /// counts as success. QEMU also removes its pidfile: read the pid before.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when QEMU has closed the connection.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Arc<Mutex<Pending>>,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(event) = msg.get("event").and_then(Value::as_str) {
            let _ = events.send(QmpEvent {
                event: event.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
                timestamp: msg.get("timestamp").cloned().unwrap_or(Value::Null),
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let reply = if let Some(r) = msg.get("return") {
            Ok(r.clone())
        } else {
            let err = msg.get("error").cloned().unwrap_or(Value::Null);
            Err(QmpError::Command {
                command: String::new(),
                class: err["class"].as_str().unwrap_or("Unknown").to_string(),
                desc: err["desc"].as_str().unwrap_or_default().to_string(),
            })
        };
        let tx = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    p.closed = true;
    p.waiting.clear(); // dropping the senders wakes every waiter with Disconnected
    let _ = closed.send(true);
}

/// How a VM was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running.
    AlreadyGone,
    /// The guest shut down after the ACPI power button.
    PoweredOff,
    /// QEMU exited on `quit`.
    Quit,
    /// It had to be killed with SIGKILL.
    Killed,
}

/// How long to wait for QEMU's exit after `quit` and after SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// Stops the VM whose QMP socket is in `runtime_dir` and whose QEMU is `pid`:
/// `system_powerdown` and up to `grace` for the guest to power off, then `quit`,
/// then SIGKILL. Afterwards removes the runtime dir's sockets and pidfile (not
/// the serial log).
pub async fn stop_vm(
    runtime_dir: &Path,
    pid: u32,
    grace: Duration,
) -> Result<StopOutcome, QmpError> {
    let outcome = stop_process(runtime_dir, pid, grace).await?;
    for name in [QMP_SOCKET_NAME, CC_SOCKET_NAME, PIDFILE_NAME] {
        let _ = std::fs::remove_file(runtime_dir.join(name));
    }
    Ok(outcome)
}

async fn stop_process(
    runtime_dir: &Path,
    pid: u32,
    grace: Duration,
) -> Result<StopOutcome, QmpError> {
    if !process_alive(pid) {
        return Ok(StopOutcome::AlreadyGone);
    }
    // Opened after the cmdline check: from here on it is this QEMU, whatever the pid.
    let pidfd = PidFd::open(pid);
    let pidfd = pidfd.as_ref();
    if let Ok(qmp) = Qmp::connect(&runtime_dir.join(QMP_SOCKET_NAME)).await {
        if !grace.is_zero()
            && qmp.system_powerdown().await.is_ok()
            && wait_exit(pid, pidfd, grace).await
        {
            return Ok(StopOutcome::PoweredOff);
        }
        if qmp.quit().await.is_ok() {
            let _ = tokio::time::timeout(QUIT_WAIT, qmp.closed()).await;
            if wait_exit(pid, pidfd, QUIT_WAIT).await {
                return Ok(StopOutcome::Quit);
            }
        }
    }
    match pidfd {
        Some(fd) => fd.kill()?,
        None => kill_pid(pid),
    }
    if wait_exit(pid, pidfd, QUIT_WAIT).await {
        Ok(StopOutcome::Killed)
    } else {
        Err(QmpError::StillRunning(pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake QMP server: greeting, replies by id, an event, then close on quit.
    #[tokio::test]
    async fn client_against_fake_server() {
        use tokio::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("megaplan-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Some(l) = lines.next_line().await.unwrap() {
                let v: Value = serde_json::from_str(&l).unwrap();
                let id = v["id"].clone();
                let reply = match v["execute"].as_str().unwrap() {
                    "query-status" => {
                        w.write_all(b"{\"event\": \"RESUME\", \"data\": {}, \"timestamp\": {}}\n")
                            .await
                            .unwrap();
                        json!({"return": {"status": "running", "running": true}, "id": id})
                    }
                    "quit" => break,
                    "bogus" => {
                        json!({"error": {"class": "CommandNotFound", "desc": "no"}, "id": id})
                    }
                    _ => json!({"return": {}, "id": id}),
                };
                w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
        });
        let qmp = Qmp::connect(&sock).await.unwrap();
        let mut events = qmp.subscribe();
        let st = qmp.query_status().await.unwrap();
        assert_eq!(
            st,
            VmStatus {
                running: true,
                status: "running".into()
            }
        );
        assert_eq!(events.recv().await.unwrap().event, "RESUME");
        match qmp.execute("bogus", None).await {
            Err(QmpError::Command { command, class, .. }) => {
                assert_eq!(command, "bogus");
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("{other:?}"),
        }
        qmp.quit().await.unwrap();
        qmp.closed().await;
        assert!(matches!(
            qmp.execute("query-status", None).await,
            Err(QmpError::Disconnected)
        ));
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
