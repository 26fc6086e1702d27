//! Host-wide ownership of experiment names. Everything an experiment makes
//! on a host is named after the experiment (interface markers, runtime
//! folders), so two state folders using one name would take each other's
//! objects for orphans and destroy them. A name therefore belongs to exactly
//! one state folder per host: `OWNERS/NAME` holds its canonical path and uid.
//!
//! Invariants:
//! - `OWNERS` is `MEGAPLAN_OWNERS_DIR`, else `$MEGAPLAN_RUNTIME_DIR/.owners`
//!   (tests), else `/var/lib/megaplan/owners`; it is 0700, belongs to the
//!   invoking user (or root) and is writable by nobody else, and is never
//!   reached through a link.
//! - Claims are made and removed under an `flock` of `OWNERS`; a claim file
//!   is created `O_EXCL` (a temp file linked into place), 0600, and read
//!   `O_NOFOLLOW`.
//! - Only commands that change the host claim (`apply`, `destroy`); the
//!   others only [`check`]. A claim whose folder has no `state.json` and is
//!   not locked may be taken over; `destroy` releases the claim when it
//!   leaves nothing recorded.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::safefs::{Dir, Open};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "experiment '{experiment}' belongs to another state folder on this host: {} (uid {uid}); this state folder is {}",
        owner.display(),
        ours.display()
    )]
    Taken {
        experiment: String,
        owner: PathBuf,
        uid: u32,
        ours: PathBuf,
    },
    #[error("cannot use the owners folder {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing the owners folder {}: {why}", path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error("{} is not an ownership claim megaplan wrote: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

impl OwnerError {
    pub fn hint(&self) -> Option<String> {
        match self {
            OwnerError::Taken { owner, .. } => Some(format!(
                "rename the experiment in this file (its objects are named after it), or work on the first one: --state-dir {}",
                owner.display()
            )),
            OwnerError::Unsafe { path, .. } => Some(format!(
                "it must be a folder owned by you (or root) and writable only by its owner: `chmod 700 {}`",
                path.display()
            )),
            OwnerError::Corrupt { path, .. } => Some(format!(
                "if no other state folder runs this experiment, remove {}",
                path.display()
            )),
            OwnerError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some("the owners folder belongs to root: run megaplan as root (apply and destroy need it anyway), or set MEGAPLAN_OWNERS_DIR".into())
            }
            OwnerError::Io { .. } => None,
        }
    }
}

/// Where the claims live.
pub fn owners_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MEGAPLAN_OWNERS_DIR") {
        return PathBuf::from(d);
    }
    if let Some(r) = std::env::var_os("MEGAPLAN_RUNTIME_DIR") {
        // Experiment names cannot start with '.', so this is no experiment's folder.
        return PathBuf::from(r).join(".owners");
    }
    PathBuf::from("/var/lib/megaplan/owners")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Claim {
    state_dir: PathBuf,
    uid: u32,
}

/// The owners folder, locked for the life of the value.
struct Owners {
    dir: Dir,
}

impl Owners {
    /// Open (and with `create`, make) the owners folder and lock it.
    fn open(base: &Path, create: bool) -> Result<Option<Owners>, OwnerError> {
        let io = |source| OwnerError::Io {
            path: base.to_path_buf(),
            source,
        };
        let dir = match Dir::open(base, create) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Other => {
                return Err(OwnerError::Unsafe {
                    path: base.to_path_buf(),
                    why: e.to_string(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        {
            use std::os::unix::fs::MetadataExt;
            let m = dir.metadata().map_err(io)?;
            let me = crate::safefs::euid();
            if m.uid() != me && m.uid() != 0 {
                return Err(OwnerError::Unsafe {
                    path: base.to_path_buf(),
                    why: format!(
                        "it belongs to uid {}, not to you (uid {me}) or root",
                        m.uid()
                    ),
                });
            }
            if m.mode() & 0o022 != 0 {
                return Err(OwnerError::Unsafe {
                    path: base.to_path_buf(),
                    why: format!("others can write to it (mode {:o})", m.mode() & 0o7777),
                });
            }
        }
        dir.lock_wait().map_err(io)?;
        Ok(Some(Owners { dir }))
    }

    fn read(&self, experiment: &str) -> Result<Option<Claim>, OwnerError> {
        let path = self.dir.path.join(experiment);
        let bytes = self.dir.read(experiment, 64 << 10).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                OwnerError::Io {
                    path: path.clone(),
                    source: e,
                }
            } else {
                OwnerError::Corrupt {
                    path: path.clone(),
                    why: e.to_string(),
                }
            }
        })?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let claim: Claim = serde_json::from_slice(&bytes).map_err(|e| OwnerError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if !claim.state_dir.is_absolute() {
            return Err(OwnerError::Corrupt {
                path,
                why: "the state folder is not an absolute path".into(),
            });
        }
        Ok(Some(claim))
    }

    /// Write a new claim: a temp file (O_EXCL, 0600) linked to NAME, which
    /// fails if NAME exists.
    fn write(&self, experiment: &str, claim: &Claim) -> Result<(), OwnerError> {
        use std::io::Write;
        let io = |source| OwnerError::Io {
            path: self.dir.path.join(experiment),
            source,
        };
        let tmp = format!(".{experiment}.{}.tmp", std::process::id());
        self.dir.unlink(&tmp).map_err(io)?;
        let body = serde_json::to_vec(claim).expect("a claim serialises");
        let r = (|| {
            let mut f = self.dir.open_file(&tmp, Open::CreateNew)?;
            f.write_all(&body)?;
            f.sync_all()?;
            self.dir.link(&tmp, experiment)
        })();
        let _ = self.dir.unlink(&tmp);
        r.map_err(io)?;
        let _ = self.dir.sync();
        Ok(())
    }
}

/// The canonical form of a state folder (absolute when it does not exist).
fn canonical(state_root: &Path) -> PathBuf {
    std::fs::canonicalize(state_root)
        .or_else(|_| std::path::absolute(state_root))
        .unwrap_or_else(|_| state_root.to_path_buf())
}

/// Is the state folder `owner` gone: no `state.json` there, and no megaplan
/// holding its lock (a first apply waiting for its confirmation)?
fn abandoned(owner: &Path) -> bool {
    let Ok(Some(dir)) = Dir::open(owner, false) else {
        return true;
    };
    if dir.exists("state.json").unwrap_or(true) {
        return false;
    }
    // The lock is held for this moment only; dropping `dir` releases it.
    dir.try_lock().unwrap_or(false)
}

fn check_name(experiment: &str) -> Result<(), OwnerError> {
    match crate::validate::name_problem(experiment) {
        None => Ok(()),
        Some(why) => Err(OwnerError::Corrupt {
            path: owners_dir().join(experiment),
            why: why.to_string(),
        }),
    }
}

/// Claim `experiment` for the state folder `state_root` (for `apply` and
/// `destroy`). `Ok(Some(notice))` when a claim of a vanished folder was
/// taken over; refused when another live folder owns the name.
pub fn claim(experiment: &str, state_root: &Path) -> Result<Option<String>, OwnerError> {
    claim_in(&owners_dir(), experiment, state_root)
}

fn claim_in(
    base: &Path,
    experiment: &str,
    state_root: &Path,
) -> Result<Option<String>, OwnerError> {
    check_name(experiment)?;
    let ours = canonical(state_root);
    let owners = Owners::open(base, true)?.expect("created");
    let mut notice = None;
    if let Some(c) = owners.read(experiment)? {
        if c.state_dir == ours {
            return Ok(None);
        }
        if !abandoned(&c.state_dir) {
            return Err(OwnerError::Taken {
                experiment: experiment.to_string(),
                owner: c.state_dir,
                uid: c.uid,
                ours,
            });
        }
        owners
            .dir
            .unlink(experiment)
            .map_err(|source| OwnerError::Io {
                path: base.join(experiment),
                source,
            })?;
        notice = Some(format!(
            "experiment '{experiment}' was owned by {}, which has no state any more; {} takes it over",
            c.state_dir.display(),
            ours.display()
        ));
    }
    owners.write(
        experiment,
        &Claim {
            state_dir: ours,
            uid: crate::safefs::euid(),
        },
    )?;
    Ok(notice)
}

/// For commands that only read (`plan`, `show`, ...): refused when another
/// live state folder owns `experiment`; claims nothing.
pub fn check(experiment: &str, state_root: &Path) -> Result<(), OwnerError> {
    check_in(&owners_dir(), experiment, state_root)
}

fn check_in(base: &Path, experiment: &str, state_root: &Path) -> Result<(), OwnerError> {
    check_name(experiment)?;
    let Some(owners) = Owners::open(base, false)? else {
        return Ok(());
    };
    let ours = canonical(state_root);
    match owners.read(experiment)? {
        Some(c) if c.state_dir != ours && !abandoned(&c.state_dir) => Err(OwnerError::Taken {
            experiment: experiment.to_string(),
            owner: c.state_dir,
            uid: c.uid,
            ours,
        }),
        _ => Ok(()),
    }
}

/// Give up the claim (destroy left nothing recorded), if it is ours.
pub fn release(experiment: &str, state_root: &Path) -> Result<(), OwnerError> {
    release_in(&owners_dir(), experiment, state_root)
}

fn release_in(base: &Path, experiment: &str, state_root: &Path) -> Result<(), OwnerError> {
    check_name(experiment)?;
    let Some(owners) = Owners::open(base, false)? else {
        return Ok(());
    };
    if owners
        .read(experiment)?
        .is_some_and(|c| c.state_dir == canonical(state_root))
    {
        owners
            .dir
            .unlink(experiment)
            .map_err(|source| OwnerError::Io {
                path: base.join(experiment),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn folder_with_state(t: &Path, name: &str) -> PathBuf {
        let d = t.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("state.json"), "{}").unwrap();
        canonical(&d)
    }

    #[test]
    fn one_folder_per_name() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("owners");
        let a = folder_with_state(t.path(), "a");
        let b = folder_with_state(t.path(), "b");
        assert_eq!(claim_in(&base, "lab", &a).unwrap(), None);
        assert_eq!(claim_in(&base, "lab", &a).unwrap(), None, "again: ours");
        let err = claim_in(&base, "lab", &b).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&a.display().to_string()), "{text}");
        assert!(
            err.hint()
                .unwrap()
                .contains(&format!("--state-dir {}", a.display()))
        );
        assert!(matches!(
            check_in(&base, "lab", &b),
            Err(OwnerError::Taken { .. })
        ));
        check_in(&base, "lab", &a).unwrap();
        // Another name is free; B's release does not free A's claim.
        claim_in(&base, "other", &b).unwrap();
        release_in(&base, "lab", &b).unwrap();
        assert!(claim_in(&base, "lab", &b).is_err());
        release_in(&base, "lab", &a).unwrap();
        claim_in(&base, "lab", &b).unwrap();
        let m = std::fs::metadata(base.join("lab"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
        let m = std::fs::metadata(&base).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o700);
    }

    #[test]
    fn a_vanished_owner_is_taken_over_a_locked_one_is_not() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("owners");
        let a = folder_with_state(t.path(), "a");
        let b = folder_with_state(t.path(), "b");
        claim_in(&base, "lab", &a).unwrap();
        std::fs::remove_file(a.join("state.json")).unwrap();
        // A's first apply still running (its folder locked): not abandoned.
        let sd = crate::state::StateDir {
            root: a.clone(),
            experiment: "lab".into(),
        };
        let lock = sd.lock("apply").unwrap();
        assert!(claim_in(&base, "lab", &b).is_err());
        drop(lock);
        let notice = claim_in(&base, "lab", &b).unwrap().unwrap();
        assert!(notice.contains("takes it over"), "{notice}");
        assert!(claim_in(&base, "lab", &a).is_err(), "now B owns it");
        // A folder removed altogether is abandoned too.
        std::fs::remove_dir_all(&b).unwrap();
        check_in(&base, "lab", &a).unwrap();
        claim_in(&base, "lab", &a).unwrap();
    }

    #[test]
    fn planted_claims_and_folders_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("owners");
        let a = folder_with_state(t.path(), "a");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A claim planted as a link is not read (nor written through).
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, base.join("lab")).unwrap();
        assert!(matches!(
            claim_in(&base, "lab", &a),
            Err(OwnerError::Corrupt { .. })
        ));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(base.join("lab")).unwrap();
        std::fs::write(base.join("lab"), "garbage").unwrap();
        let err = claim_in(&base, "lab", &a).unwrap_err();
        assert!(err.hint().unwrap().contains("remove"), "{err}");
        std::fs::remove_file(base.join("lab")).unwrap();
        // An owners folder others can write is refused.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o733)).unwrap();
        assert!(matches!(
            claim_in(&base, "lab", &a),
            Err(OwnerError::Unsafe { .. })
        ));
        // A crafted experiment name never names a file outside the folder.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(claim_in(&base, "../x", &a).is_err());
    }
}
