//! `megaplan serve`: a live web view of one experiment, read-only unless
//! `--allow-actions` (then apply, destroy and `cc exec`: [`actions`]).
//!
//! A small HTTP/1.1 server on tokio (GET and HEAD; POST only for actions) serves one page whose
//! assets are compiled into the binary, the drawing (`/graph.svg`, from
//! [`draw::svg`], the same function as `megaplan graph --format svg`), the
//! current snapshot (`/snapshot.json`), a server-sent event stream
//! (`/events`) that pushes each new snapshot, and each capture's file
//! (`/captures/NAME.pcap`, NAME one of the Lab's captures).
//!
//! Invariants:
//! - Read-only without `--allow-actions`: nothing reachable from the page
//!   changes the host (`/actions/*` is 404). With it, see [`actions`]. The
//!   snapshot is built with the functions the CLI uses, through the
//!   provider the CLI built (`Provider::refresh`, `cc::responses`,
//!   `cc::addresses`, `Provider::serial_tail`; the state folder's
//!   `checks.json` through `check::report::load`; then `show::rows`,
//!   `plan::plan` + `render::text`), each about a second, and is pushed
//!   only when it changed.
//! - A non-loopback listen address needs a token; with a token, every
//!   request carries it (`Authorization: Bearer` or `?token=`), compared in
//!   constant time. Everything else is 404 (or 401 / 405 / 400).
//! - No asset refers to another origin: the page works offline.
//! - A capture is served by a name looked up in the Lab, never by a path
//!   from the request; its file is opened inside the state folder with no
//!   link followed ([`open_capture`]).

pub mod actions;
pub mod draw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::lab::Lab;
use crate::provider::Provider;
use crate::state::StateDir;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// How often the server looks at the host.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How often it asks every running guest for its addresses (an agent
/// session each, serialised with steps: not every second). A running VM
/// with no address yet is asked at every [`REFRESH`].
pub const ADDRESS_REFRESH: Duration = Duration::from_secs(5);
/// The serial console tail shown per VM.
pub const SERIAL_TAIL: u64 = 4096;
/// A request head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once (event streams included); more get 503.
pub const MAX_CONNECTIONS: usize = 64;
/// The whole request head must arrive within this.
const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// The longest a token file may be.
const MAX_TOKEN_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {0} (not loopback) needs --token or --token-file")]
    TokenNeeded(SocketAddr),
    #[error("the token is empty")]
    EmptyToken,
    #[error("--allow-actions needs --token or --token-file, even on loopback")]
    ActionsNeedToken,
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {0} is larger than 4 KiB")]
    TokenFileTooLarge(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why a capture file could not be opened for download.
#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    #[error(transparent)]
    Name(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a plain file")]
    NotPlainFile(PathBuf),
}

/// Read a token file (one line; not a symlink; at most 4 KiB).
pub fn read_token_file(path: &Path) -> Result<String, ServeError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ServeError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_TOKEN_FILE {
        return Err(ServeError::TokenFileTooLarge(path.to_path_buf()));
    }
    let mut s = String::new();
    (&mut f)
        .take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut s)
        .map_err(err)?;
    let t = s.trim().to_string();
    if t.is_empty() {
        return Err(ServeError::EmptyToken);
    }
    Ok(t)
}

/// Equal in time independent of where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// Actions are allowed only with a token.
pub fn check_actions(allow: bool, token: Option<&str>) -> Result<(), ServeError> {
    if allow && token.is_none_or(str::is_empty) {
        return Err(ServeError::ActionsNeedToken);
    }
    Ok(())
}

/// The listen address is allowed with this token (None: no token).
pub fn check_listen(addr: SocketAddr, token: Option<&str>) -> Result<(), ServeError> {
    match token {
        Some("") => Err(ServeError::EmptyToken),
        None if !addr.ip().is_loopback() => Err(ServeError::TokenNeeded(addr)),
        _ => Ok(()),
    }
}

/// What one snapshot is made of: the state, and what the provider saw
/// (refresh, recorded step outputs, each VM's serial console tail).
pub struct Seen {
    pub state: crate::state::State,
    pub observed: crate::observed::Observed,
    pub results: Vec<crate::cc::Recorded>,
    pub serial: BTreeMap<String, String>,
    /// The last `checks.json` (after `megaplan test` or `check`), or why it
    /// could not be read.
    pub checks: Result<Option<crate::check::run::Report>, String>,
    /// Each capture's file size, when it has a file.
    pub capture_bytes: BTreeMap<String, u64>,
}

/// Open the capture file of `name` (a name from the Lab, never from a
/// request): inside the state folder, no component followed as a link, a
/// regular file. None when it was not recorded yet.
pub fn open_capture(sd: &StateDir, name: &str) -> Result<Option<std::fs::File>, CaptureFileError> {
    // The capture module names the file (and refuses a bad name); it is
    // opened one component at a time from the state folder's handle.
    let path = crate::capture::file_path(sd, name)?;
    let (folder, file) = (crate::capture::CAPTURES_DIR, format!("{name}.pcap"));
    debug_assert_eq!(path, sd.root.join(folder).join(&file));
    let err = |source| CaptureFileError::Open {
        path: path.clone(),
        source,
    };
    let Some(root) = sd.open(false)? else {
        return Ok(None);
    };
    let Some(dir) = root.subdir(folder, false).map_err(err)? else {
        return Ok(None);
    };
    let f = match dir.open_file(&file, crate::safefs::Open::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if !f.metadata().map_err(err)?.is_file() {
        return Err(CaptureFileError::NotPlainFile(path));
    }
    Ok(Some(f))
}

/// Gather a snapshot's inputs: the state from its folder, everything else
/// through the provider (the only door to the machine).
pub async fn look<P: Provider>(provider: &P, lab: &Lab, sd: &StateDir) -> Result<Seen, String> {
    let state = sd
        .load()
        .map_err(|e| format!("cannot read the state: {e}"))?;
    let observed = provider
        .refresh(&lab.name, &state, sd)
        .await
        .map_err(|e| format!("refresh failed: {e}"))?;
    let results = crate::cc::responses(provider, lab, sd, None);
    let serial = lab
        .vms
        .iter()
        .map(|vm| {
            (
                vm.name.clone(),
                provider.serial_tail(sd, &vm.name, SERIAL_TAIL),
            )
        })
        .collect();
    let checks = crate::check::report::load(sd).map_err(|e| e.to_string());
    let capture_bytes = lab
        .captures
        .iter()
        .filter_map(|c| {
            let f = open_capture(sd, &c.name).ok()??;
            Some((c.name.clone(), f.metadata().ok()?.len()))
        })
        .collect();
    Ok(Seen {
        state,
        observed,
        results,
        serial,
        checks,
        capture_bytes,
    })
}

/// Everything the page shows, as JSON (pure: from what [`look`] gathered).
pub fn snapshot(
    lab: &Lab,
    seen: Result<Seen, String>,
    addrs: &BTreeMap<String, Vec<String>>,
) -> Value {
    let Seen {
        state,
        observed,
        results,
        serial,
        checks,
        capture_bytes,
    } = match seen {
        Ok(s) => s,
        Err(e) => return json!({ "experiment": lab.name, "error": e }),
    };
    let rows = crate::show::rows(lab, &state, &observed);
    let hosts = draw::hosts(lab, &state);
    let mut states = BTreeMap::new();
    let vms: Vec<Value> = lab
        .vms
        .iter()
        .zip(rows)
        .map(|(vm, mut row)| {
            let st = row
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            states.insert(vm.name.clone(), st);
            row.insert(
                "host".into(),
                hosts
                    .get(&vm.name)
                    .cloned()
                    .map_or(Value::Null, Value::from),
            );
            row.insert(
                "ip".into(),
                addrs.get(&vm.name).cloned().unwrap_or_default().into(),
            );
            row.insert(
                "networks".into(),
                vm.nics
                    .iter()
                    .map(|n| n.network.clone())
                    .collect::<Vec<_>>()
                    .into(),
            );
            let steps: Vec<Value> = vm
                .cc
                .iter()
                .map(|step| {
                    let r = results.iter().find(|r| r.0 == step.address);
                    let (exit, stdout, stderr, timed_out) = match r {
                        Some((_, e, o, er, t)) => (e.clone(), o.clone(), er.clone(), *t),
                        None => (None, String::new(), String::new(), None),
                    };
                    let status = match &exit {
                        Some(e) => crate::cc::recorded_status(e, timed_out),
                        None => "not run".to_string(),
                    };
                    json!({
                        "address": step.address,
                        "action": step.action.to_string(),
                        "exit": exit,
                        "status": status,
                        "stdout": stdout,
                        "stderr": stderr,
                    })
                })
                .collect();
            row.insert("steps".into(), steps.into());
            row.insert(
                "serial".into(),
                serial.get(&vm.name).cloned().unwrap_or_default().into(),
            );
            Value::Object(row)
        })
        .collect();
    let p = crate::plan::plan(Some(lab), &state, Some(&observed), crate::plan::Mode::Apply);
    let checks = match checks {
        Ok(Some(r)) => json!(r),
        Ok(None) => Value::Null,
        Err(e) => json!({ "error": e }),
    };
    let captures: Vec<Value> = lab
        .captures
        .iter()
        .map(|c| {
            let records = match &c.network {
                Some(n) => format!("network {n}"),
                None => c
                    .taps
                    .iter()
                    .map(|t| match &t.tap {
                        Some(tap) => format!("{} nic {} ({tap})", t.vm, t.nic),
                        // The engine names it when it makes it.
                        None => format!("{} nic {}", t.vm, t.nic),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            json!({
                "name": c.name,
                "records": records,
                "recorder": observed.captures.get(&c.address),
                "bytes": capture_bytes.get(&c.name),
                // Relative to the page; the name is a validated capture name.
                "download": format!("captures/{}", c.file_name()),
            })
        })
        .collect();
    json!({
        "experiment": lab.name,
        "file": lab.file.display().to_string(),
        "networks": lab.networks.iter().map(|n| json!({
            "name": n.name, "bridge": n.bridge, "host_address": n.host_address,
        })).collect::<Vec<_>>(),
        "mirrors": lab.mirrors.iter().map(|m| json!({
            "address": m.address, "source": m.source_vm, "dest": m.dest_vm,
            "direction": m.direction.as_str(), "network": m.network,
        })).collect::<Vec<_>>(),
        "vms": vms,
        "plan": crate::plan::render::text(&p),
        "has_changes": p.has_changes(),
        "checks": checks,
        "captures": captures,
        "hosts": hosts,
        "svg": draw::svg(lab, &states, &hosts),
    })
}

struct Shared {
    token: Option<String>,
    /// The experiment's state folder (capture files are in it).
    sd: StateDir,
    /// The port listened on (for the `Host` check).
    port: u16,
    /// The latest snapshot, serialised.
    snap: watch::Receiver<Arc<String>>,
    lab: Lab,
    /// `--allow-actions`: what they run against.
    actions: Option<actions::Actions>,
    /// An action is running.
    busy: std::sync::atomic::AtomicBool,
}

/// Serve until the process is stopped. Prints `listening on http://ADDR/`
/// once the socket is bound (with port 0, ADDR has the chosen port).
/// `actions`: `--allow-actions` (needs the token).
pub async fn run<P: Provider>(
    provider: &P,
    lab: Lab,
    sd: StateDir,
    listen: SocketAddr,
    token: Option<String>,
    actions: Option<actions::Actions>,
) -> Result<(), ServeError> {
    check_listen(listen, token.as_deref())?;
    check_actions(actions.is_some(), token.as_deref())?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let seen = look(provider, &lab, &sd).await;
    let first = {
        let lab = lab.clone();
        tokio::task::spawn_blocking(move || snapshot(&lab, seen, &BTreeMap::new()))
            .await
            .map_err(std::io::Error::other)?
    };
    let (tx, rx) = watch::channel(Arc::new(first.to_string()));
    // Not spawned: the provider's futures need not be Send; the watch runs
    // beside the accept loop in this task.
    let watch = watch_host(provider, lab.clone(), sd.clone(), tx);
    let local = listener.local_addr()?;
    let shared = Arc::new(Shared {
        port: local.port(),
        token,
        sd,
        snap: rx,
        lab,
        actions,
        busy: std::sync::atomic::AtomicBool::new(false),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    println!("listening on http://{local}/");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let accept = accept_loop(listener, shared, slots);
    tokio::select! {
        () = watch => Ok(()),
        () = accept => Ok(()),
    }
}

/// Accept connections until the process is stopped.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut sock = sock;
                // Read the whole head first (it may come in several
                // segments): closing with unread data resets the connection
                // before the client sees the answer.
                let mut chunk = [0u8; 2048];
                let mut head = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() <= MAX_HEAD {
                    match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = sock.shutdown().await;
            });
            continue;
        };
        tokio::spawn(async move {
            let _ = handle(sock, shared).await;
            drop(slot);
        });
    }
}

/// Look at the host every [`REFRESH`]; publish the snapshot when it changed.
async fn watch_host<P: Provider>(
    provider: &P,
    lab: Lab,
    sd: StateDir,
    tx: watch::Sender<Arc<String>>,
) {
    let mut addrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last_addrs: Option<tokio::time::Instant> = None;
    // The VMs running at the last look.
    let mut running: std::collections::BTreeSet<String> = Default::default();
    loop {
        tokio::time::sleep(REFRESH).await;
        if last_addrs.is_none_or(|t| t.elapsed() >= ADDRESS_REFRESH) {
            addrs = crate::cc::addresses(provider, &lab).await;
            last_addrs = Some(tokio::time::Instant::now());
        } else {
            // A running VM without an address yet is asked every time, so
            // an address appearing shows within a second or two (and one
            // lost to a busy agent comes back as soon).
            let waiting: Vec<_> = lab
                .vms
                .iter()
                .filter(|v| {
                    running.contains(&v.name) && addrs.get(&v.name).is_none_or(Vec::is_empty)
                })
                .cloned()
                .collect();
            if !waiting.is_empty() {
                let some = Lab {
                    vms: waiting,
                    ..lab.clone()
                };
                addrs.extend(crate::cc::addresses(provider, &some).await);
            }
        }
        let seen = look(provider, &lab, &sd).await;
        let (l, a) = (lab.clone(), addrs.clone());
        let Ok(snap) = tokio::task::spawn_blocking(move || snapshot(&l, seen, &a)).await else {
            continue;
        };
        running = snap["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["state"] == "running")
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        let text = snap.to_string();
        tx.send_if_modified(|cur| {
            if **cur == text {
                false
            } else {
                *cur = Arc::new(text);
                true
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub bearer: Option<String>,
    /// The `Host` header.
    pub host: Option<String>,
    /// `Origin`, `Content-Type`, `Content-Length`, `Sec-Fetch-Site` (actions).
    pub origin: Option<String>,
    pub content_type: Option<String>,
    pub content_length: Option<usize>,
    pub sec_fetch_site: Option<String>,
}

/// Parse a request head (up to the blank line).
pub fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut bearer = None;
    let mut host = None;
    let (mut origin, mut content_type, mut content_length, mut sec_fetch_site) =
        (None, None, None, None);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("authorization")
            && let Some(t) = v.strip_prefix("Bearer ")
        {
            bearer = Some(t.trim().to_string());
        } else if k.eq_ignore_ascii_case("host") {
            host = Some(v.to_ascii_lowercase());
        } else if k.eq_ignore_ascii_case("origin") {
            origin = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("content-length") {
            // Two lengths, or one that is not a number: not a request we read.
            if content_length.is_some() {
                return None;
            }
            content_length = Some(v.parse().ok()?);
        } else if k.eq_ignore_ascii_case("sec-fetch-site") {
            sec_fetch_site = Some(v.to_ascii_lowercase());
        }
    }
    Some(Request {
        method,
        path,
        query,
        bearer,
        host,
        origin,
        content_type,
        content_length,
        sec_fetch_site,
    })
}

/// Without a token, only a loopback name for this port may be asked for: a
/// web page elsewhere that rebinds its own name to 127.0.0.1 (DNS rebinding)
/// sends its own name as `Host`, and gets nothing.
pub fn host_allowed(host: Option<&str>, port: u16) -> bool {
    let Some(h) = host else {
        return false;
    };
    if let Ok(a) = h.parse::<SocketAddr>() {
        return a.ip().is_loopback() && a.port() == port;
    }
    h == format!("localhost:{port}")
}

/// The token of a request: the header, else `?token=`.
fn presented(req: &Request) -> Option<String> {
    req.bearer.clone().or_else(|| {
        req.query.as_deref().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(percent_decode)
        })
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode everything but unreserved characters (for a query value).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The page; with a token, its stylesheet and script URLs carry it (the
/// browser sends no header for them, and app.js adds it to the rest). The
/// actions panel is in it only with `--allow-actions`.
fn index_html(token: Option<&str>, actions: bool) -> String {
    let page = if actions {
        INDEX_HTML.replacen("<main>\n", &format!("<main>\n  {}", actions::PANEL), 1)
    } else {
        INDEX_HTML.to_string()
    };
    match token {
        None => page,
        Some(t) => {
            let q = format!("?token={}", percent_encode(t));
            page.replace("href=\"style.css\"", &format!("href=\"style.css{q}\""))
                .replace("src=\"app.js\"", &format!("src=\"app.js{q}\""))
        }
    }
}

/// What a request gets: (status line, content type, body), or the event stream.
pub enum Reply {
    Fixed(&'static str, &'static str, String),
    Events,
    /// `/captures/NAME.pcap`: the capture of this name in the Lab (its
    /// name, taken from the Lab, not from the request).
    Capture(String),
}

/// Route a request (pure but for reading the latest snapshot); actions
/// are not routed here.
fn route(req: &Request, token: Option<&str>, snap: &str, lab: &Lab, actions: bool) -> Reply {
    if let Some(t) = token {
        let ok = presented(req).is_some_and(|p| constant_time_eq(p.as_bytes(), t.as_bytes()));
        if !ok {
            return Reply::Fixed(
                "401 Unauthorized",
                "text/plain; charset=utf-8",
                "a token is needed: Authorization: Bearer TOKEN, or ?token=TOKEN\n".into(),
            );
        }
    }
    // With --allow-actions they were answered before routing.
    if req.path.starts_with("/actions/") {
        return Reply::Fixed(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".into(),
        );
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Reply::Fixed(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "this view is read-only\n".into(),
        );
    }
    // Only the exact name of one of the Lab's captures: the request's path
    // is compared, never decoded or joined to anything.
    if let Some(c) = req
        .path
        .strip_prefix("/captures/")
        .and_then(|f| f.strip_suffix(".pcap"))
        .and_then(|n| lab.captures.iter().find(|c| c.name == n))
    {
        return Reply::Capture(c.name.clone());
    }
    match req.path.as_str() {
        "/" | "/index.html" => Reply::Fixed(
            "200 OK",
            "text/html; charset=utf-8",
            index_html(token, actions),
        ),
        "/app.js" => Reply::Fixed("200 OK", "text/javascript; charset=utf-8", APP_JS.into()),
        "/style.css" => Reply::Fixed("200 OK", "text/css; charset=utf-8", STYLE_CSS.into()),
        "/snapshot.json" => Reply::Fixed("200 OK", "application/json", snap.to_string()),
        "/graph.svg" => {
            let svg = serde_json::from_str::<Value>(snap)
                .ok()
                .and_then(|v| v.get("svg").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| draw::svg(lab, &BTreeMap::new(), &BTreeMap::new()));
            Reply::Fixed("200 OK", "image/svg+xml", svg)
        }
        "/events" => Reply::Events,
        _ => Reply::Fixed(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
    }
}

const HEADERS: &str = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'\r\nReferrer-Policy: no-referrer\r\n";

async fn handle(mut sock: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + HEAD_DEADLINE;
    let head = loop {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("request timed out"))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        if buf.len() > MAX_HEAD {
            sock.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
            return Ok(());
        }
    };
    let Some(req) = parse_head(&head) else {
        sock.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await?;
        return Ok(());
    };
    if shared.token.is_none() && !host_allowed(req.host.as_deref(), shared.port) {
        let body = format!(
            "this server answers to http://127.0.0.1:{}/ or http://localhost:{}/ only\n",
            shared.port, shared.port
        );
        let out = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(out.as_bytes()).await?;
        return sock.shutdown().await;
    }
    if let (Some(acts), Some(token)) = (&shared.actions, shared.token.as_deref())
        && req.path.starts_with("/actions/")
    {
        let rest = buf[buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4..].to_vec();
        let (status, body) = match read_body(&mut sock, rest, req.content_length, deadline).await? {
            None => (
                "413 Payload Too Large",
                "the body is too large\n".to_string(),
            ),
            Some(b) => match actions::gate(&req, &b, token) {
                Err((status, why)) => (status, format!("{why}\n")),
                Ok(action) => run_action(&shared, acts, action).await,
            },
        };
        let out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{HEADERS}Connection: close\r\n\r\n{body}",
            if status.starts_with("200") {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            },
            body.len()
        );
        sock.write_all(out.as_bytes()).await?;
        return sock.shutdown().await;
    }
    let snap = shared.snap.borrow().clone();
    let reply = route(
        &req,
        shared.token.as_deref(),
        &snap,
        &shared.lab,
        shared.actions.is_some(),
    );
    match reply {
        Reply::Capture(name) => send_capture(sock, &shared.sd, &name, req.method == "HEAD").await,
        Reply::Fixed(status, ctype, body) => {
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{HEADERS}Connection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if req.method != "HEAD" {
                out.extend_from_slice(body.as_bytes());
            }
            sock.write_all(&out).await?;
            sock.shutdown().await
        }
        Reply::Events => {
            sock.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{HEADERS}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            if req.method == "HEAD" {
                return sock.shutdown().await;
            }
            let mut rx = shared.snap.clone();
            eprintln!("event stream opened");
            let (mut rd, mut wr) = sock.into_split();
            let mut sink = [0u8; 512];
            loop {
                let snap = rx.borrow_and_update().clone();
                wr.write_all(format!("data: {snap}\n\n").as_bytes()).await?;
                // Until the next snapshot: a comment now and then; a client
                // that hangs up frees its slot at once.
                loop {
                    tokio::select! {
                        changed = rx.changed() => match changed {
                            Ok(()) => break,
                            Err(_) => return Ok(()),
                        },
                        n = rd.read(&mut sink) => match n {
                            Ok(0) | Err(_) => return Ok(()),
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_secs(15)) => {
                            wr.write_all(b": keep-alive\n\n").await?;
                        }
                    }
                }
            }
        }
    }
}

/// Stream a capture file as it is now (its length when opened: a recorder
/// may be appending), or 404 when it was not recorded yet.
async fn send_capture(
    mut sock: TcpStream,
    sd: &StateDir,
    name: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let plain = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{HEADERS}Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let file = match open_capture(sd, name) {
        Ok(Some(f)) => f,
        Ok(None) => {
            let body = format!("capture '{name}' has no file yet (apply starts its recorder)\n");
            sock.write_all(plain("404 Not Found", &body).as_bytes())
                .await?;
            return sock.shutdown().await;
        }
        Err(e) => {
            eprintln!("capture '{name}': {e}");
            let body = format!("cannot read capture '{name}'\n");
            sock.write_all(plain("500 Internal Server Error", &body).as_bytes())
                .await?;
            return sock.shutdown().await;
        }
    };
    let len = file.metadata()?.len();
    sock.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.tcpdump.pcap\r\nContent-Disposition: attachment; filename=\"{name}.pcap\"\r\nContent-Length: {len}\r\n{HEADERS}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    if !head_only {
        let mut body = tokio::fs::File::from_std(file).take(len);
        let sent = tokio::io::copy(&mut body, &mut sock).await?;
        if sent < len {
            // Shorter than it was (truncated under us): the length sent was
            // wrong, so the connection is cut rather than padded.
            return Err(std::io::Error::other("capture file shrank while sent"));
        }
    }
    sock.shutdown().await
}

/// The request body: what followed the head plus the rest of
/// `Content-Length`, within the head's deadline; None when it is larger
/// than an action takes.
async fn read_body(
    sock: &mut TcpStream,
    mut body: Vec<u8>,
    len: Option<usize>,
    deadline: tokio::time::Instant,
) -> std::io::Result<Option<Vec<u8>>> {
    let len = len.unwrap_or(0);
    if len > actions::MAX_BODY {
        return Ok(None);
    }
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("request timed out"))??;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Some(body))
}

/// Run one action (one at a time): this megaplan binary with the action's
/// argv, stdin closed; the reply is its exit code and output as JSON.
async fn run_action(
    shared: &Shared,
    acts: &actions::Actions,
    action: actions::Action,
) -> (&'static str, String) {
    use std::sync::atomic::Ordering;
    if shared.busy.swap(true, Ordering::AcqRel) {
        return ("409 Conflict", "another action is running\n".into());
    }
    struct Idle<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Idle<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _idle = Idle(&shared.busy);
    eprintln!("action: {}", action.name());
    let out = tokio::process::Command::new(&acts.exe)
        .args(acts.argv(&action))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false)
        .output()
        .await;
    match out {
        Err(e) => (
            "500 Internal Server Error",
            format!("cannot run {}: {e}\n", acts.exe.display()),
        ),
        Ok(o) => {
            let text = |b: &[u8]| {
                String::from_utf8_lossy(&b[..b.len().min(actions::MAX_OUTPUT)]).into_owned()
            };
            (
                "200 OK",
                json!({
                    "action": action.name(),
                    "exit": o.status.code(),
                    "stdout": text(&o.stdout),
                    "stderr": text(&o.stderr),
                })
                .to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Lab {
        let src = crate::diag::SourceFile::new(
            "t.kdl",
            "experiment \"x\"\nnetwork \"LAN\"\nvm \"A\" { kernel \"/k\"; nic \"LAN\"; }\n",
        );
        crate::provider::names::check_local(&src).0.unwrap()
    }

    fn req(head: &str) -> Request {
        parse_head(head).unwrap()
    }

    fn status(r: Reply) -> &'static str {
        match r {
            Reply::Fixed(s, _, _) => s,
            Reply::Events => "events",
            Reply::Capture(_) => "capture",
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    /// A provider that answers from memory and counts what it was asked.
    #[derive(Default)]
    struct Fake {
        asked: std::sync::Mutex<Vec<String>>,
    }

    impl Fake {
        fn ask(&self, what: &str) {
            self.asked.lock().unwrap().push(what.to_string());
        }
    }

    impl Provider for Fake {
        type Guest = crate::host::local::LocalGuest;
        fn name(&self) -> &'static str {
            "fake"
        }
        fn assign_names(&self, lab: &mut Lab) -> Result<(), crate::provider::ProviderError> {
            Ok(crate::provider::names::local(lab)?)
        }
        async fn preflight(
            &self,
            _: &crate::provider::Requirements,
        ) -> Result<(), crate::provider::ProviderError> {
            Ok(())
        }
        async fn refresh(
            &self,
            _: &str,
            _: &crate::state::State,
            _: &StateDir,
        ) -> Result<crate::observed::Observed, crate::provider::ProviderError> {
            self.ask("refresh");
            let mut o = crate::observed::Observed::default();
            o.vms.insert(
                "vm.A".into(),
                crate::observed::ObservedVm {
                    name: "A".into(),
                    pid: Some(4242),
                    alive: true,
                    status: Some("running".into()),
                    cc: crate::observed::CcClient::NotAsked,
                },
            );
            Ok(o)
        }
        async fn execute(
            &self,
            _: &StateDir,
            _: &crate::provider::Op,
        ) -> Result<crate::provider::OpOutcome, crate::provider::ProviderError> {
            unreachable!("the view changes nothing")
        }
        fn sweep(&self, _: &StateDir) -> Vec<PathBuf> {
            unreachable!("the view changes nothing")
        }
        async fn guest(
            &self,
            _: &str,
            vm: &str,
            _: crate::provider::GuestWait,
        ) -> Result<Self::Guest, crate::provider::ProviderError> {
            self.ask(&format!("guest {vm}"));
            Err(crate::provider::ProviderError::Missing { what: vm.into() })
        }
        fn store_step_output(
            &self,
            _: &StateDir,
            _: &str,
            _: usize,
            _: &crate::provider::StepOutcome,
        ) -> Result<(), crate::provider::ProviderError> {
            unreachable!("the view changes nothing")
        }
        fn serial_log(&self, _: &StateDir, _: &str) -> Option<PathBuf> {
            None
        }
        fn console_socket(&self, _: &str, _: &str) -> Option<PathBuf> {
            None
        }
        fn disk_file(
            &self,
            _: &StateDir,
            f: &str,
        ) -> Result<PathBuf, crate::provider::ProviderError> {
            Err(crate::provider::ProviderError::Missing { what: f.into() })
        }
        fn step_output(
            &self,
            _: &StateDir,
            vm: &str,
            index: usize,
        ) -> Option<crate::provider::StoredStep> {
            self.ask(&format!("step {vm}.{index}"));
            Some(crate::provider::StoredStep {
                exit: Some("0".into()),
                stdout: "from the provider\n".into(),
                stderr: String::new(),
                timed_out: None,
            })
        }
        fn serial_tail(&self, _: &StateDir, vm: &str, _: u64) -> String {
            self.ask(&format!("serial {vm}"));
            "booted through the provider".into()
        }
    }

    #[test]
    fn the_snapshot_is_what_the_provider_saw() {
        let src = crate::diag::SourceFile::new(
            "t.kdl",
            "experiment \"x\"\nnetwork \"LAN\"\nvm \"A\" { kernel \"/k\"; nic \"LAN\"; cc { exec \"true\"; } }\n",
        );
        let lab = crate::provider::names::check_local(&src).0.unwrap();
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: d.path().join("state"),
            experiment: "x".into(),
        };
        let fake = Fake::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (seen, addrs) = rt.block_on(async {
            (
                look(&fake, &lab, &sd).await,
                crate::cc::addresses(&fake, &lab).await,
            )
        });
        let snap = snapshot(&lab, seen, &addrs);
        let vm = &snap["vms"][0];
        assert_eq!(vm["pid"], 4242, "{snap}");
        assert_eq!(vm["serial"], "booted through the provider");
        assert_eq!(vm["steps"][0]["stdout"], "from the provider\n");
        assert_eq!(vm["steps"][0]["status"], "exit 0");
        assert_eq!(vm["ip"], serde_json::json!([]), "no guest answered");
        assert_eq!(
            *fake.asked.lock().unwrap(),
            ["refresh", "step A.0", "serial A", "guest A"]
        );
        // Nothing of the machine was read: the state folder was not even made.
        assert!(!sd.root.exists());
    }

    #[test]
    fn actions_need_a_token_even_on_loopback() {
        assert!(matches!(
            check_actions(true, None),
            Err(ServeError::ActionsNeedToken)
        ));
        assert!(check_actions(true, Some("")).is_err());
        assert!(check_actions(true, Some("t")).is_ok());
        assert!(check_actions(false, None).is_ok());
    }

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let lo: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let out: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert!(check_listen(lo, None).is_ok());
        assert!(check_listen(v6, None).is_ok());
        assert!(matches!(
            check_listen(out, None),
            Err(ServeError::TokenNeeded(_))
        ));
        assert!(check_listen(out, Some("s3cret")).is_ok());
        assert!(matches!(
            check_listen(lo, Some("")),
            Err(ServeError::EmptyToken)
        ));
    }

    #[test]
    fn requests_without_the_token_are_refused() {
        let l = lab();
        let t = Some("s3cret");
        let get = |h: &str| status(route(&req(h), t, "{}", &l, false));
        assert_eq!(get("GET / HTTP/1.1\r\nHost: x"), "401 Unauthorized");
        assert_eq!(get("GET /?token=wrong HTTP/1.1"), "401 Unauthorized");
        assert_eq!(get("GET /nope HTTP/1.1"), "401 Unauthorized");
        assert_eq!(get("GET /?token=s3cret HTTP/1.1"), "200 OK");
        assert_eq!(get("GET /events?token=s3cret HTTP/1.1"), "events");
        assert_eq!(
            get("GET /graph.svg HTTP/1.1\r\nauthorization: Bearer s3cret"),
            "200 OK"
        );
        assert_eq!(
            get("GET / HTTP/1.1\r\nAuthorization: Bearer nope"),
            "401 Unauthorized"
        );
        assert_eq!(get("GET /?token=s3cre%74 HTTP/1.1"), "200 OK");
    }

    #[test]
    fn with_a_token_the_page_asks_for_its_assets_with_it() {
        let html = index_html(Some("a b&\"<"), false);
        assert!(
            html.contains("href=\"style.css?token=a%20b%26%22%3C\""),
            "{html}"
        );
        assert!(
            html.contains("src=\"app.js?token=a%20b%26%22%3C\""),
            "{html}"
        );
        assert_eq!(percent_decode("a%20b%26%22%3C"), "a b&\"<");
        assert_eq!(index_html(None, false), INDEX_HTML);
        // The actions panel only with --allow-actions.
        assert!(!INDEX_HTML.contains("action-apply"));
        assert!(index_html(None, true).contains("<button id=\"action-apply\""));
    }

    #[test]
    fn without_a_token_only_loopback_names_are_served() {
        assert!(host_allowed(Some("127.0.0.1:8080"), 8080));
        assert!(host_allowed(Some("127.0.0.2:8080"), 8080));
        assert!(host_allowed(Some("[::1]:8080"), 8080));
        assert!(host_allowed(Some("localhost:8080"), 8080));
        assert!(!host_allowed(Some("localhost:8081"), 8080));
        assert!(!host_allowed(Some("evil.example:8080"), 8080));
        assert!(!host_allowed(Some("10.0.0.1:8080"), 8080));
        assert!(!host_allowed(None, 8080));
        let r = req("GET / HTTP/1.1\r\nHOST: LocalHost:80\r\nAuthorization: Bearer x");
        assert_eq!(r.host.as_deref(), Some("localhost:80"));
        assert_eq!(r.bearer.as_deref(), Some("x"));
    }

    #[test]
    fn unknown_paths_are_404_and_writes_405() {
        let l = lab();
        let get = |h: &str| status(route(&req(h), None, "{}", &l, false));
        assert_eq!(get("GET /../../etc/passwd HTTP/1.1"), "404 Not Found");
        assert_eq!(get("GET /assets/app.js HTTP/1.1"), "404 Not Found");
        assert_eq!(get("GET /app.js HTTP/1.1"), "200 OK");
        assert_eq!(get("POST / HTTP/1.1"), "405 Method Not Allowed");
        // Without --allow-actions the action endpoints do not exist.
        assert_eq!(get("POST /actions/apply HTTP/1.1"), "404 Not Found");
        assert_eq!(get("GET /actions/destroy HTTP/1.1"), "404 Not Found");
        assert!(parse_head("GET /").is_none());
        assert!(parse_head("").is_none());
    }

    #[test]
    fn a_capture_is_asked_for_by_its_exact_name() {
        let src = crate::diag::SourceFile::new(
            "t.kdl",
            "experiment \"x\"\nnetwork \"LAN\"\nvm \"A\" { kernel \"/k\"; nic \"LAN\"; }\ncapture \"mon\" { tap \"A\" nic=0; }\n",
        );
        let l = crate::validate::check(&src).0.unwrap();
        let ask = |h: &str, t: Option<&str>| match route(&req(h), t, "{}", &l, false) {
            Reply::Capture(n) => n,
            r => status(r).to_string(),
        };
        assert_eq!(ask("GET /captures/mon.pcap HTTP/1.1", None), "mon");
        assert_eq!(ask("HEAD /captures/mon.pcap HTTP/1.1", None), "mon");
        for bad in [
            "/captures/mon",
            "/captures/nope.pcap",
            "/captures/../mon.pcap",
            "/captures/%6Don.pcap",
            "/captures/mon.pcap/x",
            "/captures/x/../mon.pcap",
        ] {
            assert_eq!(
                ask(&format!("GET {bad} HTTP/1.1"), None),
                "404 Not Found",
                "{bad}"
            );
        }
        let t = Some("s3cret");
        assert_eq!(
            ask("GET /captures/mon.pcap HTTP/1.1", t),
            "401 Unauthorized"
        );
        assert_eq!(
            ask("GET /captures/mon.pcap?token=s3cret HTTP/1.1", t),
            "mon"
        );
        // Writes are refused before a capture is looked up.
        assert_eq!(
            ask("POST /captures/mon.pcap HTTP/1.1", None),
            "405 Method Not Allowed"
        );
    }

    #[test]
    fn a_capture_file_is_opened_inside_the_state_folder_only() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: d.path().join("state"),
            experiment: "x".into(),
        };
        assert!(open_capture(&sd, "mon").unwrap().is_none(), "no folder yet");
        std::fs::create_dir_all(sd.root.join("captures")).unwrap();
        assert!(open_capture(&sd, "mon").unwrap().is_none(), "no file yet");
        std::fs::write(sd.root.join("captures/mon.pcap"), "pcap").unwrap();
        assert!(open_capture(&sd, "mon").unwrap().is_some());
        std::fs::write(d.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), sd.root.join("captures/l.pcap"))
            .unwrap();
        assert!(open_capture(&sd, "l").is_err(), "a link is not followed");
        std::fs::create_dir(sd.root.join("captures/dir.pcap")).unwrap();
        assert!(open_capture(&sd, "dir").is_err(), "not a plain file");
        assert!(open_capture(&sd, "../secret").is_err(), "not a name");
        // A linked captures folder is not followed either.
        std::fs::remove_dir_all(sd.root.join("captures")).unwrap();
        std::fs::create_dir(d.path().join("elsewhere")).unwrap();
        std::fs::write(d.path().join("elsewhere/mon.pcap"), "x").unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), sd.root.join("captures")).unwrap();
        assert!(open_capture(&sd, "mon").is_err());
    }

    #[test]
    fn no_asset_refers_to_another_origin() {
        for (name, a) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            assert!(
                !a.contains("http://") && !a.contains("https://") && !a.contains("//cdn"),
                "{name}"
            );
        }
        // The drawing's only URL is the SVG namespace, which is never fetched.
        let s = draw::svg(&lab(), &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(s.matches("http").count(), 1, "{s}");
    }

    #[test]
    fn a_token_file_is_read_and_a_link_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        std::fs::write(&f, "abc\n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "abc");
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(read_token_file(&l).is_err());
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(read_token_file(&f), Err(ServeError::EmptyToken)));
        std::fs::write(&f, "x".repeat(5000)).unwrap();
        assert!(matches!(
            read_token_file(&f),
            Err(ServeError::TokenFileTooLarge(_))
        ));
    }

    #[test]
    fn the_tail_of_a_serial_log() {
        use crate::host::local::tail;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.log");
        std::fs::write(&f, "0123456789").unwrap();
        assert_eq!(tail(&f, 4), "6789");
        assert_eq!(tail(&f, 100), "0123456789");
        assert_eq!(tail(&d.path().join("none"), 4), "");
    }
}
