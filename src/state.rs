//! The state: what megaplan created, recorded beside the experiment file in
//! `.megaplan/EXPERIMENT/state.json`, and the lock that serialises writers.
//!
//! Invariants:
//! - `state.json` is replaced atomically (temp file, fsync, rename, fsync dir)
//!   and `serial` grows by one on every write; `lineage` never changes for the
//!   life of an experiment's state.
//! - A record is written *before* its effect, with status `Creating`, and set to
//!   `Ready` after: a crash in between leaves a record the next plan replaces.
//! - Only the holder of [`Lock`] writes the state. The lock is an `flock` on
//!   the state folder's own descriptor.
//! - The state folder belongs to the invoking user and is writable by nobody
//!   else; nothing in it is opened through a link; files are 0600, folders 0700.
//! - A loaded state is untrusted: every address must parse to a kind whose
//!   names pass `validate::name_problem`, file attributes are plain names.
//! - The previous `state.json` is kept as `state.json.backup`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::safefs::{Dir, Open};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Network,
    Disk,
    Tap,
    Vm,
    Mirror,
    Step,
    /// A recorder writing a capture file (src/capture/).
    Capture,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Disk => "disk",
            Kind::Tap => "tap",
            Kind::Vm => "vm",
            Kind::Mirror => "mirror",
            Kind::Step => "step",
            Kind::Capture => "capture",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The effect may have started but was not seen to finish.
    Creating,
    #[default]
    Ready,
    /// The effect failed; the next plan replaces it.
    Failed,
}

/// Attributes as plain JSON values, in a stable order.
pub type Attrs = AttrMap;

/// A map from attribute name to value, sorted by name: a `BTreeMap`'s
/// behaviour (order, serialisation, equality) in a vector sized to its few
/// entries. A `BTreeMap` node holds room for 11 entries (~1.3 kB with
/// `serde_json::Value`): with 10^5 resources that was most of a plan's memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttrMap(Vec<(String, Value)>);

impl AttrMap {
    pub fn new() -> Self {
        AttrMap(Vec::new())
    }
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }
    /// Sets `key`, returning the value it had (as `BTreeMap::insert`).
    pub fn insert(&mut self, key: String, value: Value) -> Option<Value> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }
    pub fn retain(&mut self, mut f: impl FnMut(&String, &mut Value) -> bool) {
        self.0.retain_mut(|(k, v)| f(k, v));
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }
}

impl FromIterator<(String, Value)> for AttrMap {
    /// Sorted by key; of equal keys the last wins (as collecting into a `BTreeMap`).
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut v: Vec<(String, Value)> = iter.into_iter().collect();
        v.reverse();
        // Stable: of equal keys the last given comes first, and is kept.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, kept| later.0 == kept.0);
        v.shrink_to_fit();
        AttrMap(v)
    }
}

impl Extend<(String, Value)> for AttrMap {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl IntoIterator for AttrMap {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a AttrMap {
    type Item = (&'a String, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Value)>,
        fn(&'a (String, Value)) -> (&'a String, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<const N: usize> From<[(String, Value); N]> for AttrMap {
    fn from(a: [(String, Value); N]) -> Self {
        a.into_iter().collect()
    }
}

impl std::ops::Index<&str> for AttrMap {
    type Output = Value;
    /// Panics without `key`, as `BTreeMap`'s index does.
    fn index(&self, key: &str) -> &Value {
        self.get(key).expect("no such attribute")
    }
}

impl Serialize for AttrMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for AttrMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, Value>::deserialize(d)?;
        Ok(AttrMap(m.into_iter().collect()))
    }
}

/// One resource megaplan created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    #[serde(default)]
    pub status: Status,
    /// The attributes it was created with (the same keys as the plan's `after`).
    pub attrs: Attrs,
    /// Addresses this resource depended on when created (destroy runs in reverse).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
    /// VM: QEMU's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// VM: bumped at every launch. Step: the VM generation it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Step: the exit code it returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
    /// What it is, as typed data (absent in states written before it was
    /// recorded; never recovered from the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<crate::graph::Target>,
    /// Step: the id of its latest run, saved before the run starts; the
    /// agent runs an id at most once per boot (see docs/protocol.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl Record {
    pub fn new(kind: Kind, attrs: Attrs) -> Self {
        Record {
            kind,
            status: Status::Ready,
            attrs,
            deps: Vec::new(),
            pid: None,
            generation: None,
            exit: None,
            target: None,
            run_id: None,
        }
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).and_then(Value::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    pub lineage: Uuid,
    pub serial: u64,
    pub experiment: String,
    pub resources: BTreeMap<String, Record>,
    /// The engine that built it (crate::minimega::recorded); absent: local.
    #[serde(default, skip_serializing_if = "crate::lab::ProviderSpec::is_local")]
    pub provider: crate::lab::ProviderSpec,
}

impl State {
    pub fn new(experiment: &str) -> Self {
        State {
            format_version: FORMAT_VERSION,
            lineage: Uuid::new_v4(),
            serial: 0,
            experiment: experiment.to_string(),
            resources: BTreeMap::new(),
            provider: crate::lab::ProviderSpec::Local,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a megaplan state: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}; this megaplan reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} belongs to experiment '{found}', not '{expected}'")]
    Experiment {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path} is not a valid megaplan state: {address}: {why}")]
    Invalid {
        path: PathBuf,
        address: String,
        why: String,
    },
    #[error("refusing the state folder {path}: {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("experiment '{experiment}' is locked by pid {pid} ({command})")]
    Locked {
        experiment: String,
        pid: String,
        command: String,
    },
    #[error("'{name}' is not a plain file name inside the state folder {}", dir.display())]
    BadName { dir: PathBuf, name: String },
    #[error("there is no {} to restore", path.display())]
    NoBackup { path: PathBuf },
}

impl StateError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Locked { .. } => Some(
                "wait for it to finish; the lock is released when that process exits".to_string(),
            ),
            StateError::Experiment { .. } => Some("pass another --state-dir".to_string()),
            StateError::Unsafe { path, .. } => Some(format!(
                "megaplan keeps VM disks and step results there: it must be a folder (not a link) owned by you and writable only by you: `chown $(id -u) {0} && chmod 700 {0}`, or pass another --state-dir",
                path.display()
            )),
            StateError::Parse { path, .. }
            | StateError::Version { path, .. }
            | StateError::Invalid { path, .. } => {
                let backup = path.with_file_name(BACKUP_NAME);
                let rebuild = format!(
                    "move {} away and run apply again: it adopts what carries this experiment's marker on the host (links, QEMUs in the runtime folder, disk files in disks/)",
                    path.display()
                );
                Some(if backup.exists() {
                    format!(
                        "the state as it was before the last command that wrote it is kept in {}: `megaplan state restore-backup FILE` (with the same --state-dir) puts it back; or {rebuild}",
                        backup.display()
                    )
                } else {
                    rebuild
                })
            }
            _ => None,
        }
    }
}

/// The previous `state.json`, kept on every write.
pub const BACKUP_NAME: &str = "state.json.backup";
const STATE_NAME: &str = "state.json";
const LOCK_NAME: &str = "lock";
/// A state larger than this is refused rather than read.
const STATE_LIMIT: u64 = 512 << 20;

/// The folder of one experiment's state: `state.json`, the lock, logs, cc
/// results, consoles and created disks.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
    pub experiment: String,
}

impl StateDir {
    /// `--state-dir DIR` if given, else `.megaplan/EXPERIMENT/` beside the file.
    pub fn for_file(file: &Path, experiment: &str, state_dir: Option<&Path>) -> Self {
        let root = match state_dir {
            Some(d) => d.to_path_buf(),
            None => file
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .unwrap_or(Path::new("."))
                .join(".megaplan")
                .join(experiment),
        };
        StateDir {
            root,
            experiment: experiment.to_string(),
        }
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join(STATE_NAME)
    }
    pub fn backup_file(&self) -> PathBuf {
        self.root.join(BACKUP_NAME)
    }
    pub fn disks(&self) -> PathBuf {
        self.root.join("disks")
    }
    pub fn cc(&self) -> PathBuf {
        self.root.join("cc")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The state folder, opened without following a link and checked: it
    /// must belong to the invoking user and be writable by nobody else.
    /// `None` when it does not exist and `create` is false.
    pub fn open(&self, create: bool) -> Result<Option<Dir>, StateError> {
        let unsafe_err = |why: String| StateError::Unsafe {
            path: self.root.clone(),
            why,
        };
        let dir = match Dir::open(&self.root, create) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Other => {
                return Err(unsafe_err(e.to_string()));
            }
            Err(source) => {
                return Err(StateError::Write {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        match dir.unsafe_because() {
            Ok(None) => Ok(Some(dir)),
            Ok(Some(why)) => Err(unsafe_err(why)),
            Err(source) => Err(StateError::Read {
                path: self.root.clone(),
                source,
            }),
        }
    }

    /// A private (0700) sub-folder of the state folder, made if missing:
    /// `disks`, `cc`, `logs`, `overlays`. Never reached through a link.
    pub fn private_subdir(&self, name: &str) -> Result<PathBuf, StateError> {
        let root = self.open(true)?.expect("created");
        let werr = |source| StateError::Write {
            path: self.root.join(name),
            source,
        };
        let sub = root.subdir(name, true).map_err(werr)?.expect("created");
        Ok(sub.path)
    }

    /// The path of a disk file in `disks/`: only for a plain file name that
    /// passes the experiment file's name rules (no `/`, no `..`, no leading
    /// `.` or `-`), so no state or plan can point it elsewhere.
    /// `disks/` itself, when it exists, must be a real folder (not a link).
    pub fn disk_file(&self, file: &str) -> Result<PathBuf, StateError> {
        if crate::validate::name_problem(file).is_some() {
            return Err(StateError::BadName {
                dir: self.disks(),
                name: file.to_string(),
            });
        }
        if let Some(root) = self.open(false)?
            && let Some((mode, _)) = root.lstat("disks").map_err(|source| StateError::Read {
                path: self.disks(),
                source,
            })?
            && mode & libc::S_IFMT != libc::S_IFDIR
        {
            return Err(StateError::Unsafe {
                path: self.disks(),
                why: "it is not a folder (a link?): megaplan never follows one there".into(),
            });
        }
        Ok(self.disks().join(file))
    }

    /// Record a step's result in `cc/VM/STEP/` (folders 0700, files 0600).
    pub fn write_step_result(
        &self,
        vm: &str,
        index: usize,
        exit: i32,
        stdout: &str,
        stderr: &str,
        timed_out: Option<std::time::Duration>,
    ) -> Result<(), StateError> {
        if crate::validate::name_problem(vm).is_some() {
            return Err(StateError::BadName {
                dir: self.cc(),
                name: vm.to_string(),
            });
        }
        let root = self.open(true)?.expect("created");
        let path = self.cc().join(vm).join(index.to_string());
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let cc = root.subdir("cc", true).map_err(werr)?.expect("created");
        let v = cc.subdir(vm, true).map_err(werr)?.expect("created");
        let s = v
            .subdir(&index.to_string(), true)
            .map_err(werr)?
            .expect("created");
        s.write_atomic("stdout", stdout.as_bytes()).map_err(werr)?;
        s.write_atomic("stderr", stderr.as_bytes()).map_err(werr)?;
        // Empty when it did not time out, so a rerun clears an old timeout.
        let ms = timed_out.map_or(String::new(), |t| format!("{}\n", t.as_millis()));
        s.write_atomic("timed_out_ms", ms.as_bytes())
            .map_err(werr)?;
        s.write_atomic("exit", format!("{exit}\n").as_bytes())
            .map_err(werr)?;
        Ok(())
    }

    /// The state, or a fresh one when none was written yet. A state that
    /// does not parse, has another version or holds an address or a file
    /// name megaplan would not make is refused (see [`StateError::hint`]).
    pub fn load(&self) -> Result<State, StateError> {
        let Some(dir) = self.open(false)? else {
            return Ok(State::new(&self.experiment));
        };
        self.load_from(&dir, STATE_NAME)
    }

    fn load_from(&self, dir: &Dir, name: &str) -> Result<State, StateError> {
        let path = self.root.join(name);
        let bytes = match dir.read(name, STATE_LIMIT) {
            Ok(Some(b)) => b,
            Ok(None) if name == STATE_NAME => return Ok(State::new(&self.experiment)),
            Ok(None) => return Err(StateError::NoBackup { path }),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        // The version first, so a newer format is named as such.
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && let Some(found) = v.get("format_version").and_then(Value::as_u64)
            && found != u64::from(FORMAT_VERSION)
        {
            return Err(StateError::Version {
                path,
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        let state: State = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        if state.format_version != FORMAT_VERSION {
            return Err(StateError::Version {
                path,
                found: state.format_version,
            });
        }
        if state.experiment != self.experiment {
            return Err(StateError::Experiment {
                path,
                found: state.experiment,
                expected: self.experiment.clone(),
            });
        }
        if let Err((address, why)) = state.check() {
            return Err(StateError::Invalid { path, address, why });
        }
        Ok(state)
    }

    /// Write atomically: temp file (O_EXCL, 0600), fsync, keep the state as
    /// this process found it as `state.json.backup`, rename, fsync the
    /// folder. Bumps serial.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        state.serial += 1;
        let path = self.state_file();
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let dir = self.open(true)?.expect("created");
        let body = {
            let mut b = serde_json::to_vec_pretty(state).expect("state serialises");
            b.push(b'\n');
            b
        };
        let tmp = format!(".{STATE_NAME}.{}.tmp", std::process::id());
        dir.unlink(&tmp).map_err(werr)?;
        {
            let mut f = dir.open_file(&tmp, Open::CreateNew).map_err(werr)?;
            f.write_all(&body).map_err(werr)?;
            f.sync_all().map_err(werr)?;
        }
        // The backup: a second name for the state as this process found it
        // (its first write only), moved into place, so there is always a
        // state.json (old or new) and a complete earlier state beside it.
        if first_write_of(&self.root) && dir.exists(STATE_NAME).map_err(werr)? {
            let btmp = format!(".{BACKUP_NAME}.{}.tmp", std::process::id());
            dir.unlink(&btmp).map_err(werr)?;
            dir.link(STATE_NAME, &btmp).map_err(werr)?;
            dir.rename(&btmp, BACKUP_NAME).map_err(werr)?;
        }
        dir.rename(&tmp, STATE_NAME).map_err(werr)?;
        let _ = dir.sync();
        Ok(())
    }

    /// Put `state.json.backup` back as `state.json` (after checking that it
    /// is a valid state of this experiment). The caller holds the lock.
    pub fn restore_backup(&self) -> Result<State, StateError> {
        let Some(dir) = self.open(false)? else {
            return Err(StateError::NoBackup {
                path: self.backup_file(),
            });
        };
        let state = self.load_from(&dir, BACKUP_NAME)?;
        let body = {
            let mut b = serde_json::to_vec_pretty(&state).expect("state serialises");
            b.push(b'\n');
            b
        };
        dir.write_atomic(STATE_NAME, &body)
            .map_err(|source| StateError::Write {
                path: self.state_file(),
                source,
            })?;
        Ok(state)
    }

    /// Take the experiment's lock, or fail at once naming the holder. The
    /// lock is an `flock` on the state folder itself (so deleting a file
    /// cannot bypass it); `lock` beside it only names the holder.
    pub fn lock(&self, command: &str) -> Result<Lock, StateError> {
        let path = self.root.join(LOCK_NAME);
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let dir = self.open(true)?.expect("created");
        if !dir.try_lock().map_err(werr)? {
            let holder = dir
                .read(LOCK_NAME, 4096)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let mut parts = holder.trim().splitn(2, ' ');
            let pid = parts.next().filter(|p| !p.is_empty()).unwrap_or("?");
            let command = parts.next().unwrap_or("unknown command");
            return Err(StateError::Locked {
                experiment: self.experiment.clone(),
                pid: pid.chars().filter(char::is_ascii_digit).collect(),
                command: command.chars().filter(|c| !c.is_control()).collect(),
            });
        }
        let mut file = dir
            .open_file(LOCK_NAME, Open::ReadWriteCreate)
            .map_err(werr)?;
        file.set_len(0).map_err(werr)?;
        file.rewind().map_err(werr)?;
        write!(file, "{} {}", std::process::id(), command).map_err(werr)?;
        file.flush().map_err(werr)?;
        Ok(Lock {
            _dir: dir,
            _file: file,
        })
    }
}

/// True the first time this process writes the state in `root`: the backup
/// is the state before the command, not one operation behind (as Terraform's).
fn first_write_of(root: &Path) -> bool {
    written(root, true)
}

static WRITTEN: std::sync::Mutex<Option<std::collections::HashSet<PathBuf>>> =
    std::sync::Mutex::new(None);

/// Mark (`true`: returns whether it was new) or forget `root` as written by this process.
fn written(root: &Path, mark: bool) -> bool {
    let key = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut set = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
    let set = set.get_or_insert_with(Default::default);
    if mark {
        set.insert(key)
    } else {
        set.remove(&key)
    }
}

/// Held for the life of a refresh-plan, apply or destroy; released on drop
/// (and by the kernel if the process dies).
#[derive(Debug)]
pub struct Lock {
    _dir: Dir,
    _file: File,
}

/// Is `s` an interface name megaplan could have made (1..=15 bytes, no `/`,
/// no space or control character, not `.` or `..`)?
pub(crate) fn ifname_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 15 {
        return Some("an interface name has 1 to 15 bytes");
    }
    if s == "." || s == ".." || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Some("not a valid interface name");
    }
    None
}

fn check_index(s: &str) -> Result<usize, String> {
    let ok = !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok())
        .flatten()
        .filter(|n: &usize| n.to_string() == s)
        .ok_or_else(|| format!("'{s}' is not an index"))
}

fn check_name(what: &str, n: &str) -> Result<(), String> {
    match crate::validate::name_problem(n) {
        None => Ok(()),
        Some(p) => Err(format!("bad {what} name '{}': {p}", n.escape_debug())),
    }
}

/// `NAME[INDEX]` of a mirror address.
fn check_nic_ref(s: &str) -> Result<(), String> {
    let (name, idx) = s
        .strip_suffix(']')
        .and_then(|s| s.rsplit_once('['))
        .ok_or_else(|| format!("'{}' is not VM[NIC]", s.escape_debug()))?;
    check_name("VM", name)?;
    check_index(idx).map(|_| ())
}

/// The kind of a resource address, if it is one megaplan makes:
/// `network.N`, `disk.N`, `vm.N`, `vm.N.nic[I]`, `vm.N.cc[I]`,
/// `mirror.A[I]->B[J]`, with every name passing the experiment file's rules.
pub fn address_kind(address: &str) -> Result<Kind, String> {
    let bad = || format!("'{}' is not a resource address", address.escape_debug());
    let (head, rest) = address.split_once('.').ok_or_else(bad)?;
    match head {
        "network" => check_name("network", rest).map(|()| Kind::Network),
        "disk" => check_name("disk", rest).map(|()| Kind::Disk),
        "capture" => check_name("capture", rest).map(|()| Kind::Capture),
        "mirror" => {
            let (a, b) = rest.split_once("->").ok_or_else(bad)?;
            check_nic_ref(a)?;
            check_nic_ref(b)?;
            Ok(Kind::Mirror)
        }
        "vm" => {
            for (marker, kind) in [(".nic[", Kind::Tap), (".cc[", Kind::Step)] {
                if let Some((vm, idx)) = rest.rsplit_once(marker) {
                    let idx = idx.strip_suffix(']').ok_or_else(bad)?;
                    check_name("VM", vm)?;
                    check_index(idx)?;
                    return Ok(kind);
                }
            }
            check_name("VM", rest).map(|()| Kind::Vm)
        }
        _ => Err(bad()),
    }
}

/// Check one record (of a state or a saved plan's change): its address
/// parses to its kind, and the attributes megaplan turns into paths,
/// interface names or pids are ones it could have made.
pub fn check_record(address: &str, kind: Kind, attrs: Option<&Attrs>) -> Result<(), String> {
    let parsed = address_kind(address)?;
    if parsed != kind {
        return Err(format!(
            "the address is a {}, but the record says {}",
            parsed.as_str(),
            kind.as_str()
        ));
    }
    let Some(attrs) = attrs else {
        return Ok(());
    };
    let text = |k: &str| -> Result<Option<&str>, String> {
        match attrs.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{k} is not a string")),
        }
    };
    let ifname_keys: &[&str] = match kind {
        Kind::Network => &["bridge"],
        Kind::Tap => &["name", "bridge"],
        Kind::Mirror => &["source_tap", "dest_tap"],
        _ => &[],
    };
    for k in ifname_keys {
        if let Some(v) = text(k)?
            && let Some(p) = ifname_problem(v)
        {
            return Err(format!("{k} '{}': {p}", v.escape_debug()));
        }
    }
    if kind == Kind::Disk
        && let Some(f) = text("file")?
        && let Some(p) = crate::validate::name_problem(f)
    {
        return Err(format!(
            "file '{}' is not a plain file name in disks/: {p}",
            f.escape_debug()
        ));
    }
    if kind == Kind::Vm
        && let Some(pid) = attrs.get("pid")
        && !pid.as_u64().is_some_and(valid_pid)
    {
        return Err(format!("pid {pid} is not a process id"));
    }
    Ok(())
}

/// A process id megaplan could have recorded: never 0, 1 or one that turns
/// negative (a process group) as a `pid_t`.
pub fn valid_pid(pid: u64) -> bool {
    (2..=(1 << 22)).contains(&pid)
}

impl State {
    /// Every record and dependency holds an address megaplan makes, with
    /// attributes it could have written: `(address, why)` of the first that does not.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(p) = crate::validate::name_problem(&self.experiment) {
            return Err(("experiment".into(), p.to_string()));
        }
        crate::minimega::recorded::check(&self.provider).map_err(|why| ("provider".into(), why))?;
        for (address, rec) in &self.resources {
            let at = |why: String| (address.escape_debug().to_string(), why);
            check_record(address, rec.kind, Some(&rec.attrs)).map_err(at)?;
            if let Some(pid) = rec.pid
                && !valid_pid(u64::from(pid))
            {
                return Err(at(format!("pid {pid} is not a process id")));
            }
            for d in &rec.deps {
                address_kind(d).map_err(|e| at(format!("dependency: {e}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `AttrMap` behaves as the `BTreeMap` it replaced: sorted iteration and
    /// JSON, last of equal keys wins, order-free equality, insert/remove.
    #[test]
    fn attr_map_behaves_as_a_btreemap() {
        use std::collections::BTreeMap;
        let pairs = [("b", 1), ("a", 2), ("c", 3), ("a", 4), ("b", 5)]
            .map(|(k, v)| (k.to_string(), Value::from(v)));
        let m: AttrMap = pairs.iter().cloned().collect();
        let b: BTreeMap<String, Value> = pairs.iter().cloned().collect();
        assert_eq!(m.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert_eq!(m.get("a"), Some(&Value::from(4)));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let back: AttrMap = serde_json::from_str(r#"{"z":1,"a":2,"z":3}"#).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            [
                (&"a".to_string(), &Value::from(2)),
                (&"z".to_string(), &Value::from(3))
            ]
        );
        let mut m2 = m.clone();
        assert_eq!(m2.insert("0".into(), Value::Null), None);
        assert_eq!(m2.insert("c".into(), Value::from(9)), Some(Value::from(3)));
        assert_eq!(
            m2.keys().map(String::as_str).collect::<Vec<_>>(),
            ["0", "a", "b", "c"]
        );
        assert_eq!(m2.remove("0"), Some(Value::Null));
        assert_ne!(m2, m);
        m2.insert("c".into(), Value::from(3));
        assert_eq!(m2, m);
    }

    #[test]
    fn save_load_round_trip_and_serial() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        let mut s = sd.load().unwrap();
        assert_eq!(s.serial, 0);
        s.resources.insert(
            "network.LAN".into(),
            Record::new(Kind::Network, Attrs::new()),
        );
        sd.save(&mut s).unwrap();
        sd.save(&mut s).unwrap();
        let back = sd.load().unwrap();
        assert_eq!(back.serial, 2);
        assert_eq!(back, s);
        assert!(sd.state_file().starts_with(dir.path().join(".megaplan/x")));
    }

    #[test]
    fn second_lock_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        let held = sd.lock("apply x.kdl").unwrap();
        let err = sd.lock("destroy x.kdl").unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert!(err.contains("apply x.kdl"), "{err}");
        drop(held);
        sd.lock("destroy x.kdl").unwrap();
    }

    #[test]
    fn refuses_another_experiments_state() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateDir {
            root: dir.path().into(),
            experiment: "a".into(),
        };
        let mut s = a.load().unwrap();
        a.save(&mut s).unwrap();
        let b = StateDir {
            root: dir.path().into(),
            experiment: "b".into(),
        };
        assert!(matches!(b.load(), Err(StateError::Experiment { .. })));
    }

    fn saved_state(dir: &Path) -> (StateDir, State) {
        let sd = StateDir::for_file(&dir.join("x.kdl"), "x", None);
        let mut s = sd.load().unwrap();
        let mut disk = Record::new(Kind::Disk, Attrs::new());
        disk.attrs.insert("file".into(), "data.qcow2".into());
        s.resources.insert("disk.data".into(), disk);
        sd.save(&mut s).unwrap();
        (sd, s)
    }

    #[test]
    fn deleting_the_lock_file_does_not_release_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        let held = sd.lock("apply x.kdl").unwrap();
        std::fs::remove_file(sd.root.join("lock")).unwrap();
        let err = sd.lock("destroy x.kdl").unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(held);
        sd.lock("destroy x.kdl").unwrap();
    }

    #[test]
    fn a_planted_lock_link_truncates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        std::fs::create_dir_all(&sd.root).unwrap();
        std::os::unix::fs::symlink(&victim, sd.root.join("lock")).unwrap();
        assert!(sd.lock("plan x.kdl").is_err());
        // A planted state.json link is not read either, and save replaces the
        // link itself, never the file it points to.
        std::os::unix::fs::symlink(&victim, sd.state_file()).unwrap();
        assert!(sd.load().is_err());
        let mut s = State::new("x");
        sd.save(&mut s).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn refuses_a_folder_others_can_write_or_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        std::fs::create_dir_all(&sd.root).unwrap();
        std::fs::set_permissions(&sd.root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = sd.lock("plan").unwrap_err();
        assert!(matches!(err, StateError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("writable by other users"), "{err}");
        assert!(err.hint().unwrap().contains("chmod 700"));
        assert!(matches!(sd.load(), Err(StateError::Unsafe { .. })));
        std::fs::set_permissions(&sd.root, std::fs::Permissions::from_mode(0o700)).unwrap();
        sd.lock("plan").unwrap();
        // The state folder itself a link to somewhere else: refused.
        let elsewhere = tempfile::tempdir().unwrap();
        let linked = StateDir {
            root: dir.path().join("linked"),
            experiment: "x".into(),
        };
        std::os::unix::fs::symlink(elsewhere.path(), &linked.root).unwrap();
        assert!(matches!(
            linked.lock("plan"),
            Err(StateError::Unsafe { .. })
        ));
        let mut s = State::new("x");
        assert!(linked.save(&mut s).is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_a_folder_of_another_user() {
        use std::os::unix::fs::PermissionsExt;
        if crate::safefs::euid() != 0 {
            eprintln!("SKIP refuses_a_folder_of_another_user: needs root to chown");
            assert!(std::env::var_os("CI").is_none(), "CI must run this as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        std::fs::create_dir_all(&sd.root).unwrap();
        std::fs::set_permissions(&sd.root, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&sd.root, Some(65534), None).unwrap();
        let err = sd.lock("plan").unwrap_err().to_string();
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }

    #[test]
    fn files_are_private_whatever_the_umask() {
        crate::safefs::run_with_umask_0("state::tests::files_are_private_with_umask_0");
    }

    #[test]
    #[ignore = "run by files_are_private_whatever_the_umask in a child with umask 0"]
    fn files_are_private_with_umask_0() {
        use std::os::unix::fs::PermissionsExt;
        crate::safefs::assert_umask_0();
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::for_file(&dir.path().join("x.kdl"), "x", None);
        drop(sd.lock("apply").unwrap());
        let mut s = State::new("x");
        sd.save(&mut s).unwrap();
        written(&sd.root, false);
        sd.save(&mut s).unwrap();
        sd.write_step_result("A", 0, 0, "out", "err", None).unwrap();
        sd.private_subdir("disks").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sd.root), 0o700);
        assert_eq!(mode(sd.root.parent().unwrap()), 0o700);
        assert_eq!(mode(&sd.root.join("lock")), 0o600);
        assert_eq!(mode(&sd.state_file()), 0o600);
        assert_eq!(mode(&sd.backup_file()), 0o600);
        assert_eq!(mode(&sd.disks()), 0o700);
        for p in ["cc", "cc/A", "cc/A/0"] {
            assert_eq!(mode(&sd.root.join(p)), 0o700, "{p}");
        }
        for p in ["stdout", "stderr", "exit"] {
            assert_eq!(mode(&sd.cc().join("A/0").join(p)), 0o600, "{p}");
        }
        assert_eq!(
            std::fs::read_to_string(sd.cc().join("A/0/exit")).unwrap(),
            "0\n"
        );
    }

    #[test]
    fn the_state_before_a_command_is_kept_as_backup() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, mut s) = saved_state(dir.path());
        assert!(!sd.backup_file().exists(), "nothing to back up at first");
        // A new command (process): its first write keeps the state it found.
        written(&sd.root, false);
        s.resources.remove("disk.data");
        sd.save(&mut s).unwrap();
        // Later writes of the same command keep that backup.
        sd.save(&mut s).unwrap();
        let backup: State =
            serde_json::from_str(&std::fs::read_to_string(sd.backup_file()).unwrap()).unwrap();
        assert_eq!(backup.serial, 1);
        assert!(backup.resources.contains_key("disk.data"));
        // A truncated state names the backup and how to bring it back.
        let text = std::fs::read_to_string(sd.state_file()).unwrap();
        std::fs::write(sd.state_file(), &text[..text.len() / 2]).unwrap();
        let err = sd.load().unwrap_err();
        assert!(matches!(err, StateError::Parse { .. }), "{err}");
        let hint = err.hint().unwrap();
        assert!(hint.contains("state.json.backup"), "{hint}");
        assert!(hint.contains("restore-backup"), "{hint}");
        assert!(hint.contains("adopts"), "{hint}");
        let restored = sd.restore_backup().unwrap();
        assert_eq!(restored.serial, 1);
        assert_eq!(sd.load().unwrap(), backup);
    }

    #[test]
    fn unknown_version_and_garbage_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, _) = saved_state(dir.path());
        let text = std::fs::read_to_string(sd.state_file()).unwrap();
        std::fs::write(
            sd.state_file(),
            text.replace("\"format_version\": 1", "\"format_version\": 7"),
        )
        .unwrap();
        let err = sd.load().unwrap_err();
        assert!(matches!(err, StateError::Version { found: 7, .. }), "{err}");
        std::fs::write(sd.state_file(), "\u{0}\u{1}not json").unwrap();
        let err = sd.load().unwrap_err();
        assert!(matches!(err, StateError::Parse { .. }), "{err}");
        // No backup yet: the way out is rebuilding from the host.
        assert!(err.hint().unwrap().starts_with("move "), "{:?}", err.hint());
    }

    #[test]
    fn crafted_paths_and_addresses_in_a_state_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, s) = saved_state(dir.path());
        let bad = |edit: &dyn Fn(&mut State)| {
            let mut t = s.clone();
            edit(&mut t);
            std::fs::write(sd.state_file(), serde_json::to_vec(&t).unwrap()).unwrap();
            let err = sd.load().unwrap_err();
            assert!(matches!(err, StateError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains("state.json"), "{err}");
            err.to_string()
        };
        let e = bad(&|t| {
            t.resources
                .get_mut("disk.data")
                .unwrap()
                .attrs
                .insert("file".into(), "../../victim".into());
        });
        assert!(e.contains("disk.data: file '../../victim'"), "{e}");
        let e = bad(&|t| {
            let r = t.resources.remove("disk.data").unwrap();
            t.resources.insert("disk.../../x".into(), r);
        });
        assert!(e.contains("disk.../../x"), "{e}");
        let e = bad(&|t| {
            t.resources.insert(
                "vm.../../../dir".into(),
                Record::new(Kind::Vm, Attrs::new()),
            );
        });
        assert!(e.contains("vm.../../../dir"), "{e}");
        bad(&|t| {
            t.resources
                .insert("vm.A".into(), Record::new(Kind::Disk, Attrs::new()));
        });
        bad(&|t| {
            let mut r = Record::new(Kind::Vm, Attrs::new());
            r.pid = Some(0);
            t.resources.insert("vm.A".into(), r);
        });
        bad(&|t| {
            let mut r = Record::new(Kind::Tap, Attrs::new());
            r.attrs.insert("name".into(), "a/b".into());
            t.resources.insert("vm.A.nic[0]".into(), r);
        });
        bad(&|t| {
            t.resources.get_mut("disk.data").unwrap().deps = vec!["x/../y".into()];
        });
        // Nothing was changed by refusing: the file is what was written.
        assert!(
            std::fs::read_to_string(sd.state_file())
                .unwrap()
                .contains("deps")
        );
    }

    #[test]
    fn addresses_megaplan_makes_parse() {
        for (a, k) in [
            ("network.LAN", Kind::Network),
            ("disk.data", Kind::Disk),
            ("vm.web-1.a_b", Kind::Vm),
            ("vm.A.nic[0]", Kind::Tap),
            ("vm.A.b.cc[12]", Kind::Step),
            ("mirror.A[0]->B[1]", Kind::Mirror),
        ] {
            assert_eq!(address_kind(a), Ok(k), "{a}");
        }
        for a in [
            "",
            "vm.",
            "vm.A.nic[x]",
            "vm.A.nic[+1]",
            "vm.A.cc[01]",
            "mirror.A->B",
            "foo.A",
            "vm./etc",
            "disk..",
        ] {
            assert!(address_kind(a).is_err(), "{a}");
        }
    }

    #[test]
    fn disk_files_are_plain_names_only() {
        let sd = StateDir {
            root: "/s".into(),
            experiment: "x".into(),
        };
        assert_eq!(
            sd.disk_file("data.qcow2").unwrap(),
            Path::new("/s/disks/data.qcow2")
        );
        for bad in [
            "../../victim",
            "/etc/passwd",
            "",
            ".",
            "..",
            "a/b",
            ".hidden",
        ] {
            assert!(sd.disk_file(bad).is_err(), "{bad}");
        }
        // disks/ planted as a link to another folder: refused.
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let sd = StateDir {
            root: dir.path().into(),
            experiment: "x".into(),
        };
        sd.disk_file("data.qcow2").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), sd.disks()).unwrap();
        assert!(matches!(
            sd.disk_file("data.qcow2"),
            Err(StateError::Unsafe { .. })
        ));
    }
}
