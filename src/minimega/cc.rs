//! cc `send` and `recv` steps through minimega's cc (docs/minimega.md).
//!
//! minimega moves cc files only from and to its files folder (`-filepath`,
//! by default `BASE/files`) on the head node, which iomeshage copies to the
//! node a VM runs on:
//! - `send SRC to=DST`: SRC is copied into megaplan's own folder there,
//!   `megaplan/EXP/cc/VM/PREFIX/file` (every part a validated name; PREFIX the
//!   run's cc prefix), `cc send` gives it to miniccc (which keeps it under
//!   `/tmp/miniccc/files/` + that path), and a `cc exec` of the same filter
//!   moves it to DST (parents made, the host file's mode, a rename);
//! - `recv SRC to=DIR`: `cc recv SRC`; miniccc's file lands in the VM
//!   node's `NS/miniccc_responses/ID/UUID/SRC`, `file get` brings it to the
//!   head, and it is copied into DIR as the local engine does (at most
//!   `max-size` bytes, never through a link, a part file renamed into place),
//!   then minimega's copies are deleted.
//!
//! Invariants:
//! - Nothing megaplan writes or deletes under minimega's folder is named from
//!   unvalidated text: the namespace and VM are [`Name`]s, the prefix is a
//!   hash, a received file's path is split into plain components.
//! - Every folder is opened `O_NOFOLLOW` component by component
//!   ([`crate::safefs::Dir`]); a link anywhere is refused.
//! - The files folder is the head's file path as minimega resolves a
//!   relative path (super::disks::head_filepath), confirmed by a probe file
//!   that minimega's own `file list` must show.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::MINICCC_FILES;
use std::sync::Mutex;

use super::client::{Client, Command, HostResponse, Name, column};
use super::provider::{MinimegaError, MinimegaHost};
use crate::host::StepOutcome;
use crate::lab::{CcActionSpec, VmSpec};
use crate::safefs::{Dir, Open};

/// megaplan's folder in minimega's files folder.
pub const FOLDER: &str = super::disks::TOP;
/// The folder of sent files under `megaplan/EXP`.
pub const SENT: &str = "cc";
/// The name a sent file has in its run's folder.
const SENT_NAME: &str = "file";
const POLL: Duration = Duration::from_millis(200);
/// How long a transfer may take when the step sets no timeout.
const TRANSFER_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("cannot find the files folder minimega serves (its -filepath): {why}")]
    FilesDir { why: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} changed size while it was copied", path.display())]
    Changed { path: PathBuf },
    #[error("`{src}` cannot go through minimega's cc: {why}")]
    BadPath { src: String, why: &'static str },
    #[error("{vm} sent no file {src} (minimega's `cc recv` found nothing there)")]
    NoFile { vm: String, src: String },
    #[error("{src} from {vm} is larger than max-size {max} bytes")]
    TooLarge { vm: String, src: String, max: u64 },
    #[error("{} is a link or a folder; refusing to replace it", path.display())]
    Refused { path: PathBuf },
    #[error("placing {to} in {vm} failed (exit {exit}): {stderr}")]
    Place {
        vm: String,
        to: String,
        exit: i32,
        stderr: String,
    },
    /// minimega did not make megaplan's folder on a VM's node in time.
    #[error("minimega did not make {folder} on {node} within {after:?}")]
    NoFolder {
        folder: String,
        node: String,
        after: Duration,
    },
    /// minimega's cc did not answer a transfer's command in time.
    #[error("no answer from minimega's cc to {doing} {src} (VM {vm}) within {after:?}")]
    NoAnswer {
        vm: String,
        /// "sending" or "receiving".
        doing: &'static str,
        src: String,
        after: Duration,
    },
    /// iomeshage did not bring a file to the head in time.
    #[error("minimega's `file get {file}` did not finish within {after:?}")]
    FileGet { file: String, after: Duration },
    /// The experiment's cc or captures folder could not be removed.
    #[error("removing {folder}: {source}")]
    Forget {
        folder: String,
        #[source]
        source: Box<super::disks::FilesError>,
    },
    /// The state folder refused (a link, a failed create).
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

pub(super) fn io(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> CcError + use<> {
    let path = path.to_path_buf();
    move |source| CcError::Io { what, path, source }
}

/// Wait for the guest's miniccc to check in (its boot-timeout).
pub(super) async fn wait_for_client(h: &MinimegaHost, spec: &VmSpec) -> Result<(), MinimegaError> {
    let boot = Duration::from_millis(spec.boot_timeout_ms);
    if wait_listed(&h.client, &h.ns, &spec.uuid.to_string(), boot).await? {
        return Ok(());
    }
    Err(MinimegaError::NoCcClient {
        vm: spec.name.clone(),
        after: boot,
    })
}

/// Whether the cc client of `uuid` is listed (`cc clients`) within `limit`.
pub(super) async fn wait_listed(
    client: &Mutex<Client>,
    ns: &Name,
    uuid: &str,
    limit: Duration,
) -> Result<bool, MinimegaError> {
    let end = Instant::now() + limit;
    loop {
        let r = run(client, ns, Command::new("cc").word("clients"), true)?;
        if r.iter()
            .any(|r| r.rows().iter().any(|row| row.contains(&("uuid", uuid))))
        {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One command in the namespace (`ok`: every node must succeed).
fn run(
    client: &Mutex<Client>,
    ns: &Name,
    cmd: Command,
    ok: bool,
) -> Result<Vec<HostResponse>, MinimegaError> {
    let mut c = client.lock().expect("the client lock");
    let cmd = cmd.in_namespace(ns);
    Ok(if ok { c.run_ok(&cmd)? } else { c.run(&cmd)? })
}

/// The exit code of command `ids` (per node) in the VM with `uuid`, from
/// the node whose miniccc answered: (node, id, exit), or None when
/// `timeout` passed first.
pub(super) async fn wait_exit(
    client: &Mutex<Client>,
    ns: &Name,
    ids: &[(String, u64)],
    uuid: &str,
    timeout: Option<Duration>,
) -> Result<Option<(String, u64, i32)>, MinimegaError> {
    let started = Instant::now();
    loop {
        for (host, id) in ids {
            let cmd = Command::new("cc").word("exitcode").num(*id).arg(uuid)?;
            for r in run(client, ns, cmd, false)? {
                if r.host == *host && r.error.is_empty() {
                    let code =
                        r.response
                            .trim()
                            .parse::<i32>()
                            .map_err(|_| MinimegaError::Answer {
                                command: "cc exitcode".into(),
                                got: r.response.clone(),
                                want: "an exit code",
                            })?;
                    return Ok(Some((host.clone(), *id, code)));
                }
            }
        }
        if let Some(t) = timeout
            && started.elapsed() >= t
        {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The stdout and stderr of command `id` in the VM with `uuid`, as `node`
/// (the one whose miniccc answered) keeps them.
pub(super) fn exec_output(
    client: &Mutex<Client>,
    ns: &Name,
    node: &str,
    id: u64,
    uuid: &str,
) -> Result<(String, String), MinimegaError> {
    let mut out = (String::new(), String::new());
    for r in run(
        client,
        ns,
        Command::new("cc").word("responses").num(id),
        false,
    )? {
        if r.host == node && r.error.is_empty() {
            out = super::provider::split_responses(
                &r.response,
                i64::try_from(id).unwrap_or(i64::MAX),
                uuid,
            );
        }
    }
    Ok(out)
}

/// A `send` or `recv` step.
pub(super) async fn transfer(
    h: &MinimegaHost,
    spec: &VmSpec,
    action: &CcActionSpec,
    timeout: Option<Duration>,
    run_id: &str,
) -> Result<StepOutcome, MinimegaError> {
    let limit = timeout.unwrap_or(TRANSFER_WAIT);
    match action {
        CcActionSpec::Send { src, to } => send(h, spec, src, to, run_id, limit).await,
        CcActionSpec::Recv { src, to, max_size } => {
            recv(h, spec, src, to, *max_size, run_id, limit).await
        }
        CcActionSpec::Exec(_) | CcActionSpec::Background(_) => {
            unreachable!("exec and background are step()'s")
        }
    }
}

/// Run `cmds` under `cc filter uuid=U` and the run's prefix, holding the
/// connection (the filter and prefix are the namespace's shared state);
/// the command ids of the last one, per node.
pub(super) fn under_filter(
    client: &Mutex<Client>,
    ns: &Name,
    uuid: &str,
    prefix: &str,
    cmds: &[Command],
) -> Result<Vec<(String, u64)>, MinimegaError> {
    let mut c = client.lock().expect("the client lock");
    c.run_ok(
        &Command::new("cc")
            .word("filter")
            .arg(&format!("uuid={uuid}"))?
            .in_namespace(ns),
    )?;
    c.run_ok(
        &Command::new("cc")
            .word("prefix")
            .arg(prefix)?
            .in_namespace(ns),
    )?;
    let mut ids = Vec::new();
    let mut result = Ok(());
    for cmd in cmds {
        match c.run_ok(&cmd.clone().in_namespace(ns)) {
            Ok(r) => {
                ids = r
                    .into_iter()
                    .filter_map(|r| Some((r.host, r.data.as_u64()?)))
                    .collect();
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = c.run(
        &Command::new("clear")
            .word("cc")
            .word("filter")
            .in_namespace(ns),
    );
    let _ = c.run(
        &Command::new("clear")
            .word("cc")
            .word("prefix")
            .in_namespace(ns),
    );
    result?;
    Ok(ids)
}

/// The node whose miniccc answered command `ids`, and the command's id
/// there: waits until one node lists a response for it.
async fn answered(
    h: &MinimegaHost,
    ids: &[(String, u64)],
    (vm, doing, src): (&str, &'static str, String),
    limit: Duration,
) -> Result<(String, u64), MinimegaError> {
    let end = Instant::now() + limit;
    loop {
        for r in h.run(Command::new("cc").word("commands"))? {
            let Some((_, id)) = ids.iter().find(|(host, _)| *host == r.host) else {
                continue;
            };
            let id = id.to_string();
            for row in r.rows() {
                if column(&row, "id") == Some(id.as_str())
                    && column(&row, "responses").and_then(|n| n.parse::<u64>().ok()) >= Some(1)
                {
                    return Ok((r.host.clone(), id.parse().expect("digits")));
                }
            }
        }
        if Instant::now() >= end {
            return Err(CcError::NoAnswer {
                vm: vm.to_string(),
                doing,
                src,
                after: limit,
            }
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn send(
    h: &MinimegaHost,
    spec: &VmSpec,
    src: &Path,
    to: &str,
    run_id: &str,
    limit: Duration,
) -> Result<StepOutcome, MinimegaError> {
    use std::os::unix::fs::PermissionsExt;
    if !to.starts_with('/') || to.ends_with('/') {
        return Err(CcError::BadPath {
            src: to.into(),
            why: "a send's `to` is an absolute guest file path",
        }
        .into());
    }
    wait_for_client(h, spec).await?;
    let vm = Name::new(&spec.name)?;
    let prefix = super::provider::run_prefix(run_id);
    let files = files_dir(h)?;
    // megaplan/EXP/cc/VM/PREFIX/file, each folder opened without following links.
    let exp = h.experiment_name()?;
    let mut dir = ours(&files)?;
    for part in [exp.as_str(), SENT, vm.as_str(), prefix.as_str()] {
        dir = sub(&dir, part, true)?;
    }
    let mut input = std::fs::File::open(src).map_err(io("open", src))?;
    let meta = input.metadata().map_err(io("read", src))?;
    if !meta.is_file() {
        return Err(CcError::BadPath {
            src: src.display().to_string(),
            why: "not a plain file",
        }
        .into());
    }
    let staged = dir.path.join(SENT_NAME);
    let _ = dir.unlink(SENT_NAME);
    let mut out = dir
        .open_file(SENT_NAME, Open::CreateNew)
        .map_err(io("create", &staged))?;
    let (size, sha256) = copy_limited(&mut input, &mut out, meta.len()).map_err(io("copy", src))?;
    if size != meta.len() {
        return Err(CcError::Changed {
            path: src.to_path_buf(),
        }
        .into());
    }
    drop(out);
    let rel = format!("{FOLDER}/{exp}/{SENT}/{vm}/{prefix}/{SENT_NAME}");
    let in_guest = format!("{MINICCC_FILES}/{rel}");
    let mode = format!("{:o}", meta.permissions().mode() & 0o7777);
    // Parents made, the host file's mode, a rename: as the local agent does.
    // One shell script (miniccc runs one command at a time, in order), its
    // paths quoted for sh; minimega's preprocessor must leave it alone.
    let parent = Path::new(to)
        .parent()
        .map_or("/".into(), |p| p.display().to_string());
    let part = format!("{to}.megaplan-part");
    let script = format!(
        "set -e; mkdir -p -- {d}; cp -- {s} {p}; chmod {mode} {p}; mv -f -- {p} {t}; rm -f -- {s}",
        d = sh_quote(&parent),
        s = sh_quote(&in_guest),
        p = sh_quote(&part),
        t = sh_quote(to),
    );
    unchanged_by_minimega(to, &script)?;
    let mut place = Command::new("cc").word("exec");
    for w in ["sh", "-c", &script] {
        place = place.arg(w)?;
    }
    let send = Command::new("cc").word("send").arg(&rel)?;
    let ids = under_filter(
        &h.client,
        &h.ns,
        &spec.uuid.to_string(),
        &prefix,
        &[send, place],
    )?;
    let (node, id) = answered(
        h,
        &ids,
        (&spec.name, "sending", src.display().to_string()),
        limit,
    )
    .await?;
    let (exit, stderr) = exit_and_stderr(h, &node, id, &spec.uuid.to_string())?;
    if exit != 0 {
        return Err(CcError::Place {
            vm: spec.name.clone(),
            to: to.into(),
            exit,
            stderr,
        }
        .into());
    }
    let t = crate::agent::Transfer {
        path: PathBuf::from(to),
        size,
        sha256,
    };
    Ok(StepOutcome {
        exit: 0,
        stdout: crate::cc::sent(&t),
        stderr: String::new(),
        timed_out: None,
        replayed: false,
    })
}

/// `cc exitcode ID UUID` and the command's stderr, from `node`.
fn exit_and_stderr(
    h: &MinimegaHost,
    node: &str,
    id: u64,
    uuid: &str,
) -> Result<(i32, String), MinimegaError> {
    let mut exit = None;
    for r in h.run(Command::new("cc").word("exitcode").num(id).arg(uuid)?)? {
        if r.host == node && r.error.is_empty() {
            exit = r.response.trim().parse::<i32>().ok();
        }
    }
    let Some(exit) = exit else {
        return Err(MinimegaError::Answer {
            command: "cc exitcode".into(),
            got: String::new(),
            want: "an exit code",
        });
    };
    let mut stderr = String::new();
    if exit != 0 {
        for r in h.run(Command::new("cc").word("responses").num(id))? {
            if r.host == node && r.error.is_empty() {
                stderr = r.response;
            }
        }
    }
    Ok((exit, crate::diag::escape(stderr.trim()).into_owned()))
}

#[allow(clippy::too_many_arguments)]
async fn recv(
    h: &MinimegaHost,
    spec: &VmSpec,
    src: &str,
    to: &Path,
    max_size: u64,
    run_id: &str,
    limit: Duration,
) -> Result<StepOutcome, MinimegaError> {
    let parts = guest_parts(src)?;
    unchanged_by_minimega(src, src)?;
    let name = parts.last().cloned().expect("a file name");
    wait_for_client(h, spec).await?;
    let uuid = spec.uuid.to_string();
    let prefix = super::provider::run_prefix(run_id);
    let files = files_dir(h)?;
    let recv = Command::new("cc").word("recv").arg(src)?;
    let ids = under_filter(&h.client, &h.ns, &uuid, &prefix, &[recv])?;
    let (node, id) = answered(h, &ids, (&spec.name, "receiving", src.to_string()), limit).await?;
    let ns = h.ns.as_str();
    let id_s = id.to_string();
    let mut rel: Vec<&str> = vec![ns, "miniccc_responses", &id_s, &uuid];
    rel.extend(parts.iter().map(String::as_str));
    let rel_text = rel.join("/");
    let result = async {
        if node != h.head()? {
            fetch(h, &files, &rel, &rel_text, limit).await?;
        }
        let Some(mut input) = open_under(&files, &rel)? else {
            return Err(CcError::NoFile {
                vm: spec.name.clone(),
                src: src.into(),
            }
            .into());
        };
        let t = store(&mut input, to, &name, max_size).map_err(|e| match e {
            Stored::TooLarge => CcError::TooLarge {
                vm: spec.name.clone(),
                src: src.into(),
                max: max_size,
            },
            Stored::Err(e) => e,
        })?;
        Ok::<_, MinimegaError>(t)
    }
    .await;
    // minimega's copies go, on the head and on the VM's node.
    let responses = format!("{ns}/miniccc_responses/{id_s}");
    forget(h, &node, &responses);
    let t = result?;
    Ok(StepOutcome {
        exit: 0,
        stdout: crate::cc::received(src, &t),
        stderr: String::new(),
        timed_out: None,
        replayed: false,
    })
}

/// `'…'` for sh: the text as one word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Refuse a word minimega's preprocessor would change (`$NAME`, a URL):
/// the guest would get another path than the experiment's.
fn unchanged_by_minimega(path: &str, word: &str) -> Result<(), CcError> {
    let (names, url) = super::lex::preprocessed(word);
    if names.is_empty() && !url {
        return Ok(());
    }
    Err(CcError::BadPath {
        src: path.into(),
        why: "minimega's preprocessor would change it (a `$` or a URL)",
    })
}

/// The plain components of an absolute guest path (miniccc globs it and
/// minimega writes it under its responses folder).
fn guest_parts(src: &str) -> Result<Vec<String>, CcError> {
    let bad = |why| CcError::BadPath {
        src: src.into(),
        why,
    };
    if !src.starts_with('/') {
        return Err(bad("not an absolute guest path"));
    }
    if src.contains(['*', '?', '[', '\\']) {
        return Err(bad("miniccc reads * ? [ \\ as a glob"));
    }
    let mut parts = Vec::new();
    for c in Path::new(src).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or_else(|| bad("not UTF-8"))?.to_string())
            }
            _ => return Err(bad("a `..` in the path")),
        }
    }
    if parts.is_empty() {
        return Err(bad("no file name"));
    }
    Ok(parts)
}

/// `file get REL` on the head, then wait until iomeshage has it there.
pub(super) async fn fetch(
    h: &MinimegaHost,
    files: &Path,
    rel: &[&str],
    rel_text: &str,
    limit: Duration,
) -> Result<(), MinimegaError> {
    {
        let mut c = h.client.lock().expect("the client lock");
        c.run_ok(&Command::new("file").word("get").arg(rel_text)?)?;
    }
    let end = Instant::now() + limit;
    loop {
        let busy = {
            let mut c = h.client.lock().expect("the client lock");
            c.run_ok(&Command::new("file").word("status"))?
                .iter()
                .any(|r| {
                    r.rows()
                        .iter()
                        .any(|row| row.contains(&("filename", rel_text)))
                })
        };
        if !busy && open_under(files, rel)?.is_some() {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(CcError::FileGet {
                file: rel_text.to_string(),
                after: limit,
            }
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `file delete REL` on the head and on `node` (best effort: what is left
/// goes with the namespace's files at destroy).
fn forget(h: &MinimegaHost, node: &str, rel: &str) {
    let Ok(del) = Command::new("file").word("delete").arg(rel) else {
        return;
    };
    // Asked before taking the connection (head() takes it itself).
    let remote = h.head().is_ok_and(|head| node != head);
    let mut c = h.client.lock().expect("the client lock");
    let _ = c.run(&del);
    if remote && let Ok(n) = Name::new(node) {
        let _ = c.run(&Command::new("mesh").word("send").name(&n).then(&del));
    }
}

/// What cc and captures put in minimega's files folder for the
/// experiment, on every node: `megaplan/EXP/cc` and `megaplan/EXP/captures`
/// (at destroy; the rest of `megaplan/EXP` is the disks', super::disks).
pub(super) fn forget_experiment(h: &MinimegaHost) -> Result<(), MinimegaError> {
    let exp = h.experiment_name()?;
    let mut c = h.client.lock().expect("the client lock");
    for sub in [SENT, super::captures::CAPTURES] {
        let folder = format!("{FOLDER}/{exp}/{sub}");
        super::disks::delete_everywhere(&mut c, &folder).map_err(|e| CcError::Forget {
            folder: folder.clone(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

enum Stored {
    TooLarge,
    Err(CcError),
}

/// Copy `input` into `dir/name` as the local engine receives a file: the
/// folder made if missing, a part file (0644) renamed into place, never
/// through a link, at most `max` bytes.
fn store(
    input: &mut std::fs::File,
    dir: &Path,
    name: &str,
    max: u64,
) -> Result<crate::agent::Transfer, Stored> {
    use std::os::unix::fs::PermissionsExt;
    let e = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| {
            Stored::Err(CcError::Io {
                what,
                path: p,
                source,
            })
        }
    };
    let meta = input.metadata().map_err(e("read", dir))?;
    if meta.len() > max {
        return Err(Stored::TooLarge);
    }
    std::fs::create_dir_all(dir).map_err(e("create", dir))?;
    let d = Dir::open(dir, false)
        .map_err(e("open", dir))?
        .ok_or_else(|| Stored::Err(CcError::Refused { path: dir.into() }))?;
    let dest = dir.join(name);
    let part = format!(".{name}.{}.part", uuid::Uuid::new_v4().simple());
    let mut out = d
        .open_file(&part, Open::CreateNew)
        .map_err(e("create", &dest))?;
    let copied = copy_limited(input, &mut out, max);
    let done = (|| {
        let (size, sha256) = copied.map_err(e("write", &dest))?;
        if size > max {
            return Err(Stored::TooLarge);
        }
        out.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(e("write", &dest))?;
        out.sync_all().map_err(e("write", &dest))?;
        if let Some((mode, _)) = d.lstat(name).map_err(e("read", &dest))? {
            let fmt = mode & libc::S_IFMT;
            if fmt == libc::S_IFLNK || fmt == libc::S_IFDIR {
                return Err(Stored::Err(CcError::Refused { path: dest.clone() }));
            }
        }
        d.rename(&part, name).map_err(e("rename", &dest))?;
        Ok(crate::agent::Transfer {
            path: dest.clone(),
            size,
            sha256,
        })
    })();
    if done.is_err() {
        let _ = d.unlink(&part);
    }
    done
}

/// Copy at most `max + 1` bytes (so a longer input shows as longer):
/// (bytes copied, their SHA-256).
pub(super) fn copy_limited(
    input: &mut impl Read,
    out: &mut impl Write,
    max: u64,
) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    let mut take = input.take(max.saturating_add(1));
    loop {
        let got = take.read(&mut buf)?;
        if got == 0 {
            break;
        }
        hasher.update(&buf[..got]);
        out.write_all(&buf[..got])?;
        n += got as u64;
    }
    out.flush()?;
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((n, hex))
}

/// `base/rel…`, every folder opened without following a link; the file
/// itself opened for reading, refused unless a plain file. None if absent.
pub(super) fn open_under(base: &Path, rel: &[&str]) -> Result<Option<std::fs::File>, CcError> {
    let Some(mut dir) = Dir::open(base, false).map_err(io("open", base))? else {
        return Ok(None);
    };
    let (file, folders) = rel.split_last().expect("a file name");
    for f in folders {
        match dir.subdir(f, false) {
            Ok(Some(d)) => dir = d,
            Ok(None) => return Ok(None),
            Err(e) => return Err(io("open", &dir.path.join(f))(e)),
        }
    }
    let path = dir.path.join(file);
    if !dir.exists(file).map_err(io("read", &path))? {
        return Ok(None);
    }
    let f = dir.open_file(file, Open::Read).map_err(io("open", &path))?;
    let m = f.metadata().map_err(io("read", &path))?;
    if !m.is_file() {
        return Err(CcError::Refused { path });
    }
    Ok(Some(f))
}

/// `name` in `dir`, made 0700 when missing, never through a link.
pub(super) fn sub(dir: &Dir, name: &str, create: bool) -> Result<Dir, CcError> {
    let path = dir.path.join(name);
    dir.subdir(name, create)
        .map_err(io("open", &path))?
        .ok_or(CcError::Refused { path })
}

/// megaplan's folder in minimega's files folder: made if missing, and
/// refused when it is not a folder this user owns.
pub(super) fn ours(files: &Path) -> Result<Dir, CcError> {
    let top = Dir::open(files, false)
        .map_err(io("open", files))?
        .ok_or_else(|| CcError::FilesDir {
            why: format!("{} does not exist", files.display()),
        })?;
    let d = sub(&top, FOLDER, true)?;
    if let Some(why) = d.unsafe_because().map_err(io("read", &d.path))? {
        return Err(CcError::FilesDir {
            why: format!("{}: {why}", d.path.display()),
        });
    }
    Ok(d)
}

/// minimega's files folder on the head node, as minimega resolves a
/// relative path ([`super::disks::head_filepath`]), confirmed by a probe
/// file in megaplan's folder there that minimega's `file list` shows (this
/// machine sees the head's folder: megaplan runs on the head).
pub(super) fn files_dir(h: &MinimegaHost) -> Result<PathBuf, MinimegaError> {
    let guess = {
        let mut c = h.client.lock().expect("the client lock");
        super::disks::head_filepath(&mut c, &h.ns)
            .map_err(|e| CcError::FilesDir { why: e.to_string() })?
    };
    let dir = ours(&guess)?;
    let probe = format!(".probe-{}", uuid::Uuid::new_v4().simple());
    dir.open_file(&probe, Open::CreateNew)
        .map_err(io("create", &dir.path.join(&probe)))?;
    let listed = {
        let mut c = h.client.lock().expect("the client lock");
        c.run_ok(&Command::new("file").word("list").arg(FOLDER)?)
    };
    let _ = dir.unlink(&probe);
    let want = format!("{FOLDER}/{probe}");
    let seen = listed?.iter().any(|r| {
        r.rows()
            .iter()
            .any(|row| row.contains(&("name", want.as_str())))
    });
    if !seen {
        return Err(CcError::FilesDir {
            why: format!(
                "minimega's `file list` does not show a file made in {}; run megaplan on minimega's head node, with minimega's -filepath readable",
                guess.display()
            ),
        }
        .into());
    }
    Ok(guess)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_reach_the_guest_as_written() {
        assert_eq!(sh_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert!(unchanged_by_minimega("/x", "cp -- '/root/a b' '/x'").is_ok());
        assert!(unchanged_by_minimega("/x", "cp '/root/$HOME'").is_err());
    }

    #[test]
    fn guest_paths_split_into_plain_parts() {
        assert_eq!(guest_parts("/etc/hostname").unwrap(), ["etc", "hostname"]);
        for bad in ["etc/x", "/a/../b", "/a/*", "/a[1]", "/"] {
            assert!(guest_parts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_received_file_is_stored_as_the_local_engine_does() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::write(&src, b"hello").unwrap();
        let to = t.path().join("out");
        let got = store(&mut std::fs::File::open(&src).unwrap(), &to, "f", 5)
            .ok()
            .unwrap();
        assert_eq!(std::fs::read(to.join("f")).unwrap(), b"hello");
        assert_eq!(got.size, 5);
        assert_eq!(
            got.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        // Larger than max-size: refused, nothing left behind.
        assert!(matches!(
            store(&mut std::fs::File::open(&src).unwrap(), &to, "g", 4),
            Err(Stored::TooLarge)
        ));
        assert!(!to.join("g").exists());
        // A link where the file goes is not followed or replaced.
        std::os::unix::fs::symlink(&src, to.join("l")).unwrap();
        assert!(matches!(
            store(&mut std::fs::File::open(&src).unwrap(), &to, "l", 5),
            Err(Stored::Err(CcError::Refused { .. }))
        ));
        assert_eq!(
            std::fs::read_dir(&to).unwrap().count(),
            2,
            "no part file left"
        );
    }

    #[test]
    fn files_under_a_link_are_not_read() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("real/ns")).unwrap();
        std::fs::write(t.path().join("real/ns/f"), b"x").unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
        assert!(
            open_under(t.path(), &["real", "ns", "f"])
                .unwrap()
                .is_some()
        );
        assert!(open_under(t.path(), &["link", "ns", "f"]).is_err());
        assert!(
            open_under(t.path(), &["real", "ns", "g"])
                .unwrap()
                .is_none()
        );
    }
}
