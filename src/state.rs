//! The state: what megaplan created, recorded beside the experiment file in
//! `.megaplan/EXPERIMENT/state.json`, and the lock that serialises writers.
//!
//! Invariants:
//! - `state.json` is replaced atomically (temp file, fsync, rename, fsync dir)
//!   and `serial` grows by one on every write; `lineage` never changes for the
//!   life of an experiment's state.
//! - A record is written *before* its effect, with status `Creating`, and set to
//!   `Ready` after: a crash in between leaves a record the next plan replaces.
//! - Only the holder of [`Lock`] writes the state.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

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
pub type Attrs = BTreeMap<String, Value>;

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
}

impl State {
    pub fn new(experiment: &str) -> Self {
        State {
            format_version: FORMAT_VERSION,
            lineage: Uuid::new_v4(),
            serial: 0,
            experiment: experiment.to_string(),
            resources: BTreeMap::new(),
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
    #[error("experiment '{experiment}' is locked by pid {pid} ({command})")]
    Locked {
        experiment: String,
        pid: String,
        command: String,
    },
}

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
        self.root.join("state.json")
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

    /// The state, or a fresh one when none was written yet.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State::new(&self.experiment));
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::Parse {
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
        Ok(state)
    }

    /// Write atomically: temp file, fsync, rename, fsync the folder. Bumps serial.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        state.serial += 1;
        let path = self.state_file();
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.root).map_err(werr)?;
        let tmp = self
            .root
            .join(format!(".state.json.{}.tmp", std::process::id()));
        let body = serde_json::to_vec_pretty(state).expect("state serialises");
        {
            let mut f = File::create(&tmp).map_err(werr)?;
            f.write_all(&body).map_err(werr)?;
            f.write_all(b"\n").map_err(werr)?;
            f.sync_all().map_err(werr)?;
        }
        fs::rename(&tmp, &path).map_err(werr)?;
        if let Ok(dir) = File::open(&self.root) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Take the experiment's lock, or fail at once naming the holder.
    pub fn lock(&self, command: &str) -> Result<Lock, StateError> {
        let path = self.root.join("lock");
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.root).map_err(werr)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(werr)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let mut parts = holder.trim().splitn(2, ' ');
            let pid = parts.next().unwrap_or("?").to_string();
            let command = parts.next().unwrap_or("unknown command").to_string();
            return Err(StateError::Locked {
                experiment: self.experiment.clone(),
                pid,
                command,
            });
        }
        file.set_len(0).map_err(werr)?;
        file.rewind().map_err(werr)?;
        write!(file, "{} {}", std::process::id(), command).map_err(werr)?;
        file.flush().map_err(werr)?;
        Ok(Lock { _file: file })
    }
}

/// Held for the life of a refresh-plan, apply or destroy; released on drop
/// (and by the kernel if the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
