//! Saved plans (`plan --out`): a plan plus what it was made from, so `apply`
//! can refuse it once the state or the file moved on.
//!
//! Invariants:
//! - A saved plan applies only if the state's lineage and serial and the
//!   experiment file's content hash are what they were when it was saved.
//! - A saved plan is untrusted input: it is checked on read ([`SavedPlan::check`]),
//!   and at apply the host is refreshed and planned again; any difference
//!   from the saved changes ([`drift`]) refuses it, and what runs is the
//!   fresh plan, made from the file and the state, never the saved attributes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plan::{Action, Mode, Plan};
use crate::state::State;

pub const SAVED_FORMAT: &str = "megaplan-plan/1";
/// A saved plan larger than this is not read.
pub const SAVED_LIMIT: u64 = 512 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: String,
    /// The experiment file, absolute.
    pub file: PathBuf,
    /// SHA-256 of the file's content when planned.
    pub file_sha256: String,
    pub plan: Plan,
    /// The `-replace` addresses the plan was made with: the re-plan at apply
    /// asks for the same replacements (checked like the command line's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace: Vec<String>,
}

pub fn file_hash(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl SavedPlan {
    pub fn new(file: &Path, plan: Plan) -> Self {
        let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        SavedPlan {
            format: SAVED_FORMAT.into(),
            file_sha256: file_hash(file).unwrap_or_default(),
            file: abs,
            plan,
            replace: Vec::new(),
        }
    }

    /// Write the plan to `path` without following a link there: a new temp
    /// file (O_EXCL, 0600) beside it, renamed over it (a link planted at
    /// `path` in a shared folder is replaced, its target never written).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("the plan file needs a UTF-8 file name"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = crate::safefs::Dir::open(&std::fs::canonicalize(parent)?, false)?
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        dir.write_atomic(
            name,
            &serde_json::to_vec_pretty(self).expect("plan serialises"),
        )
    }

    /// Read a saved plan; `None` when the file is not one (an experiment
    /// file). At most [`SAVED_LIMIT`] bytes are read.
    pub fn read(path: &Path) -> Option<Self> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .take(SAVED_LIMIT + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > SAVED_LIMIT {
            return None;
        }
        let saved: SavedPlan = serde_json::from_slice(&bytes).ok()?;
        (saved.format == SAVED_FORMAT).then_some(saved)
    }

    /// Refuse a saved plan megaplan would not have written: another mode
    /// than apply, an address that does not parse to its kind, or attributes
    /// (file names, interface names, pids) it could not have made.
    pub fn check(&self) -> Result<(), String> {
        if self.plan.mode != Mode::Apply {
            return Err("it is not a plan for apply".into());
        }
        if let Some(p) = crate::validate::name_problem(&self.plan.experiment) {
            return Err(format!("experiment: {p}"));
        }
        for c in &self.plan.changes {
            let at = |why: String| format!("{}: {why}", c.address.escape_debug());
            if let Some(spec) = &c.spec
                && spec.kind() != c.kind
            {
                return Err(at(format!(
                    "a {} spec on a {} change",
                    spec.kind().as_str(),
                    c.kind.as_str()
                )));
            }
            for attrs in [&c.before, &c.after()] {
                crate::state::check_record(&c.address, c.kind, attrs.as_ref()).map_err(at)?;
            }
            for d in c.deps.iter().chain(&c.prior_deps) {
                crate::state::address_kind(d).map_err(|e| at(format!("dependency: {e}")))?;
            }
        }
        Ok(())
    }

    /// Why this plan may no longer be applied, if it may not.
    pub fn stale_because(&self, state: &State) -> Option<String> {
        let lineage = (state.serial > 0).then_some(state.lineage);
        if lineage != self.plan.lineage || state.serial != self.plan.serial {
            return Some(format!(
                "the state changed since the plan was made (serial {} then, {} now)",
                self.plan.serial, state.serial
            ));
        }
        match file_hash(&self.file) {
            Ok(h) if h == self.file_sha256 => None,
            Ok(_) => Some(format!(
                "{} changed since the plan was made",
                self.file.display()
            )),
            Err(e) => Some(format!("cannot read {}: {e}", self.file.display())),
        }
    }
}

/// How a fresh plan of the current host differs from a saved one: one line
/// per address whose action is not the same (empty when they agree).
pub fn drift(saved: &Plan, fresh: &Plan) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut actions: BTreeMap<&str, (Option<Action>, Option<&crate::plan::Change>)> =
        BTreeMap::new();
    for c in &saved.changes {
        actions.entry(&c.address).or_default().0 = Some(c.action);
    }
    for c in &fresh.changes {
        actions.entry(&c.address).or_default().1 = Some(c);
    }
    let name =
        |a: Option<Action>| a.map_or_else(|| "nothing".to_string(), |a| a.actions().join(", "));
    let mut out = Vec::new();
    for (address, (then, now)) in actions {
        let now_action = now.map(|c| c.action);
        let same = then.unwrap_or(Action::NoOp) == now_action.unwrap_or(Action::NoOp);
        if same {
            continue;
        }
        let why = now
            .filter(|c| c.action != Action::NoOp)
            .map(|c| crate::plan::reason::joined(&c.reasons, ", "))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "no longer needed".into());
        out.push(format!(
            "{address} {why} (the plan says {}, the host now needs {})",
            name(then),
            name(now_action)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Mode;

    #[test]
    fn a_saved_plan_goes_stale_when_the_state_or_the_file_moves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.kdl");
        std::fs::write(&file, "experiment \"x\"\n").unwrap();
        let state = State::new("x");
        let plan = crate::plan::plan(None, &state, None, Mode::Apply);
        let saved = SavedPlan::new(&file, plan);
        let path = dir.path().join("x.plan");
        saved.write(&path).unwrap();
        let back = SavedPlan::read(&path).expect("a saved plan");
        assert_eq!(back.stale_because(&state), None);
        let mut moved = state.clone();
        moved.serial = 3;
        assert!(
            back.stale_because(&moved)
                .unwrap()
                .contains("state changed")
        );
        std::fs::write(&file, "experiment \"x\"\nnetwork \"LAN\"\n").unwrap();
        assert!(
            back.stale_because(&state)
                .unwrap()
                .contains("changed since")
        );
        assert!(
            SavedPlan::read(&file).is_none(),
            "an experiment file is not a saved plan"
        );
        // A link planted where the plan goes is replaced, its target untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.path().join("planted.plan");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        saved.write(&planted).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(SavedPlan::read(&planted).is_some());
        assert!(!planted.symlink_metadata().unwrap().file_type().is_symlink());
    }

    fn network_lab() -> crate::lab::Lab {
        let src = crate::diag::SourceFile::new("/lab/x.kdl", "experiment \"x\"\nnetwork \"LAN\"\n");
        crate::provider::names::check_local(&src).0.unwrap()
    }

    #[test]
    fn drift_names_what_the_host_changed() {
        use crate::observed::{Observed, ObservedLink};
        let lab = network_lab();
        let mut state = State::new("x");
        let mut rec = crate::state::Record::new(
            crate::state::Kind::Network,
            crate::graph::resources(&lab)[0].attrs(),
        );
        rec.status = crate::state::Status::Ready;
        state.resources.insert("network.LAN".into(), rec);
        state.serial = 1;
        let mut obs = Observed::default();
        obs.links.insert(
            "network.LAN".into(),
            ObservedLink {
                name: lab.networks[0].bridge.clone().unwrap(),
                kind: crate::observed::ObservedKind::Bridge,
                up: true,
                controller: None,
                mac: None,
            },
        );
        let saved = crate::plan::plan(Some(&lab), &state, Some(&obs), Mode::Apply);
        assert!(!saved.has_changes());
        let same = crate::plan::plan(Some(&lab), &state, Some(&obs), Mode::Apply);
        assert!(drift(&saved, &same).is_empty());
        // The bridge went away after the plan was made.
        obs.links.clear();
        let fresh = crate::plan::plan(Some(&lab), &state, Some(&obs), Mode::Apply);
        let d = drift(&saved, &fresh);
        assert_eq!(
            d,
            vec![
                "network.LAN bridge missing (the plan says no-op, the host now needs delete, create)"
            ]
        );
    }

    #[test]
    fn a_crafted_saved_plan_is_refused() {
        let lab = network_lab();
        let state = State::new("x");
        let good = SavedPlan::new(
            Path::new("/lab/x.kdl"),
            crate::plan::plan(Some(&lab), &state, None, Mode::Apply),
        );
        good.check().unwrap();
        let mut bad = good.clone();
        bad.plan.changes[0].kind = crate::state::Kind::Disk;
        let e = bad.check().unwrap_err();
        assert!(e.contains("a network spec on a disk change"), "{e}");
        let mut bad = good.clone();
        let c = &mut bad.plan.changes[0];
        c.kind = crate::state::Kind::Disk;
        c.address = "disk.data".into();
        c.spec = None;
        c.before = Some(
            [("file".to_string(), serde_json::Value::from("../../victim"))]
                .into_iter()
                .collect(),
        );
        let e = bad.check().unwrap_err();
        assert!(e.contains("disk.data: file '../../victim'"), "{e}");
        let mut bad = good.clone();
        bad.plan.changes[0].address = "vm.../../../dir".into();
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.plan.mode = Mode::DestroyAll;
        assert!(bad.check().is_err());
    }
}
